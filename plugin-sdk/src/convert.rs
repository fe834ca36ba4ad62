//! The one place converting between the generated WIT types and the SDK's own types.

use crate::__bindings::pgvane::policy::host;
use crate::__bindings::pgvane::policy::types as wit;
use crate::{Context, Message, Rejection, Route, Verdict};

impl From<wit::Context> for Context {
    fn from(c: wit::Context) -> Self {
        Context {
            user: c.user,
            database: c.database,
            application_name: c.application_name,
            client_addr: c.client_addr,
            session_id: c.session_id,
            sql: c.sql,
            in_transaction: c.in_transaction,
            message: match c.message {
                wit::Message::SimpleQuery => Message::SimpleQuery,
                wit::Message::Parse(statement) => Message::Parse { statement },
            },
        }
    }
}

fn route(r: Route) -> wit::Route {
    match r {
        Route::Database(name) => wit::Route::Database(name),
        Route::Primary => wit::Route::Primary,
        Route::Replica => wit::Route::Replica,
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Pass => wit::Verdict::Pass,
            Verdict::Route(r) => wit::Verdict::Route(route(r)),
            Verdict::Rewrite(sql) => wit::Verdict::Rewrite(sql),
            Verdict::RouteAndRewrite { route: r, sql } => {
                wit::Verdict::RouteAndRewrite(wit::RoutedRewrite { route: route(r), sql })
            }
            Verdict::Reject(Rejection { sqlstate, message, detail, hint }) => {
                wit::Verdict::Reject(wit::Rejection { sqlstate, message, detail, hint })
            }
        }
    }
}

impl From<crate::log::Level> for host::Level {
    fn from(l: crate::log::Level) -> Self {
        use crate::log::Level;
        match l {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        }
    }
}
