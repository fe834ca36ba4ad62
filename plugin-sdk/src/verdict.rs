//! What a policy answers.

/// Where a statement should run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// The `[databases]` entry with this name (pgbouncer-rr's "dbkey"). A name that is not an
    /// entry is a plugin error; check names in [`crate::Policy::init`] with
    /// [`crate::host::databases`].
    Database(String),
    /// The primary server of the client's database.
    Primary,
    /// A replica of the client's database, chosen by pgvane (the primary when it has none).
    Replica,
}

/// Why a statement is refused: the client receives an ErrorResponse with these fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rejection {
    /// Five characters, digits or upper-case ASCII letters, e.g. `42501`.
    pub sqlstate: String,
    /// The one-line primary message.
    pub message: String,
    /// An optional detail.
    pub detail: Option<String>,
    /// An optional hint.
    pub hint: Option<String>,
}

/// A policy's decision about one statement.
///
/// Build one with the constructors ([`Verdict::pass`], [`Verdict::route_to`],
/// [`Verdict::primary`], [`Verdict::replica`], [`Verdict::rewrite`], [`Verdict::reject`]) and
/// combine with [`Verdict::and_rewrite`], [`Verdict::and_route`], [`Verdict::or_else`],
/// [`Verdict::with_detail`] and [`Verdict::with_hint`].
///
/// In a chain of plugins pgvane applies verdicts in order: rewrites compose (each plugin sees
/// the SQL as rewritten before it), the first route wins, and a rejection ends the chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Verdict {
    /// No opinion: the statement goes on unchanged.
    #[default]
    Pass,
    /// Run the statement, unchanged, on this route.
    Route(Route),
    /// Replace the SQL and keep the route.
    Rewrite(String),
    /// Replace the SQL and run it on this route.
    RouteAndRewrite {
        /// Where the statement runs.
        route: Route,
        /// The new SQL.
        sql: String,
    },
    /// Refuse the statement.
    Reject(Rejection),
}

impl Verdict {
    /// No opinion: the statement goes on unchanged.
    pub fn pass() -> Self {
        Verdict::Pass
    }

    /// Run the statement on the `[databases]` entry named `database`.
    pub fn route_to(database: impl Into<String>) -> Self {
        Verdict::Route(Route::Database(database.into()))
    }

    /// Run the statement on the primary of the client's database.
    pub fn primary() -> Self {
        Verdict::Route(Route::Primary)
    }

    /// Run the statement on a replica of the client's database.
    pub fn replica() -> Self {
        Verdict::Route(Route::Replica)
    }

    /// Replace the statement's SQL with `sql`.
    pub fn rewrite(sql: impl Into<String>) -> Self {
        Verdict::Rewrite(sql.into())
    }

    /// Refuse the statement with SQLSTATE `sqlstate` (e.g. `"42501"`) and `message`.
    pub fn reject(sqlstate: impl Into<String>, message: impl Into<String>) -> Self {
        Verdict::Reject(Rejection { sqlstate: sqlstate.into(), message: message.into(), detail: None, hint: None })
    }

    /// Also replace the SQL with `sql`: a pass becomes a rewrite, a route a route-and-rewrite,
    /// a rewrite gets the new SQL; a rejection stays as it is.
    pub fn and_rewrite(self, sql: impl Into<String>) -> Self {
        let sql = sql.into();
        match self {
            Verdict::Pass | Verdict::Rewrite(_) => Verdict::Rewrite(sql),
            Verdict::Route(route) | Verdict::RouteAndRewrite { route, .. } => Verdict::RouteAndRewrite { route, sql },
            reject @ Verdict::Reject(_) => reject,
        }
    }

    /// Also route to `route`: a pass becomes a route, a rewrite a route-and-rewrite, a route
    /// takes the new route; a rejection stays as it is.
    pub fn and_route(self, route: Route) -> Self {
        match self {
            Verdict::Pass | Verdict::Route(_) => Verdict::Route(route),
            Verdict::Rewrite(sql) | Verdict::RouteAndRewrite { sql, .. } => Verdict::RouteAndRewrite { route, sql },
            reject @ Verdict::Reject(_) => reject,
        }
    }

    /// This verdict, or the one `other` computes if this one is a pass.
    pub fn or_else(self, other: impl FnOnce() -> Verdict) -> Self {
        match self {
            Verdict::Pass => other(),
            decided => decided,
        }
    }

    /// Adds a detail to a rejection; other verdicts are returned unchanged.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        if let Verdict::Reject(r) = &mut self {
            r.detail = Some(detail.into());
        }
        self
    }

    /// Adds a hint to a rejection; other verdicts are returned unchanged.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        if let Verdict::Reject(r) = &mut self {
            r.hint = Some(hint.into());
        }
        self
    }

    /// True for [`Verdict::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// The route this verdict asks for, if any.
    pub fn route(&self) -> Option<&Route> {
        match self {
            Verdict::Route(route) | Verdict::RouteAndRewrite { route, .. } => Some(route),
            _ => None,
        }
    }

    /// The new SQL this verdict asks for, if any.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Verdict::Rewrite(sql) | Verdict::RouteAndRewrite { sql, .. } => Some(sql),
            _ => None,
        }
    }

    /// The rejection, if this verdict is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Verdict::Reject(r) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinators_build_every_verdict() {
        assert_eq!(Verdict::pass().and_rewrite("b"), Verdict::rewrite("b"));
        assert_eq!(
            Verdict::replica().and_rewrite("b"),
            Verdict::RouteAndRewrite { route: Route::Replica, sql: "b".into() }
        );
        assert_eq!(
            Verdict::rewrite("a").and_route(Route::Primary),
            Verdict::RouteAndRewrite { route: Route::Primary, sql: "a".into() }
        );
        assert_eq!(Verdict::route_to("x").and_route(Route::Primary), Verdict::primary());
        let reject = Verdict::reject("42501", "no").with_detail("d").with_hint("h");
        assert_eq!(reject.clone().and_rewrite("x"), reject);
        assert_eq!(reject.clone().and_route(Route::Replica), reject);
        let r = reject.rejection().unwrap();
        assert_eq!((r.detail.as_deref(), r.hint.as_deref()), (Some("d"), Some("h")));
        assert_eq!(Verdict::primary().with_hint("ignored"), Verdict::primary());
    }

    #[test]
    fn or_else_only_replaces_a_pass() {
        assert_eq!(Verdict::pass().or_else(Verdict::primary), Verdict::primary());
        assert_eq!(Verdict::replica().or_else(Verdict::primary), Verdict::replica());
    }

    #[test]
    fn accessors() {
        let v = Verdict::route_to("dev.1").and_rewrite("SELECT 2");
        assert_eq!(v.route(), Some(&Route::Database("dev.1".into())));
        assert_eq!(v.sql(), Some("SELECT 2"));
        assert!(Verdict::default().is_pass());
        assert_eq!(Verdict::pass().route(), None);
    }
}
