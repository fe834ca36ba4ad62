//! Statements of cluster databases: which node's pool runs them.

use std::sync::Arc;

use crate::cluster::Want;
use crate::policy::Route;
use crate::pool::Pool;
use crate::protocol::messages::ErrorResponse;
use crate::session::cluster_pool::pool_for_want;

use super::{Kind, Relay};

/// Where [`Relay::cluster_route`] sends a statement.
pub(super) enum ClusterRoute {
    /// The database is not a cluster: the usual rules apply.
    NotACluster,
    /// This pool.
    Pool(Arc<Pool>),
    /// No node could be had; the client has its error.
    Failed,
}

impl Relay<'_> {
    /// For a statement of a cluster database (the client's own, or the one `route` names):
    /// the pool of the node the route picks, `Primary` the writer, `Replica` a replica that
    /// is up and not lagging (else the writer), no route the entry's `default_route`.
    /// Inside a transaction the statement stays on the transaction's server. Waiting for a
    /// writer (during a switchover) ends early on a cancel request or KILL.
    pub(super) async fn cluster_route(&mut self, kind: Kind, route: Option<&Route>) -> ClusterRoute {
        let own = self.identity.database.as_str();
        let (database, want) = match route {
            Some(Route::Database(name)) => (name.as_str(), None),
            Some(Route::Primary) => (own, Some(Want::Primary)),
            Some(Route::Replica) => (own, Some(Want::Replica)),
            None => (own, None),
        };
        let Some(cluster) = self.shared.clusters.get(database) else { return ClusterRoute::NotACluster };
        if self.in_transaction() {
            return ClusterRoute::Pool(self.pool.clone());
        }
        let want = want.unwrap_or_else(|| cluster.default_route());
        let signals = self.handle.signals.clone();
        let picked = tokio::select! {
            picked = pool_for_want(self.shared, &cluster, &self.identity.user, self.scram_keys.as_ref(), want) => picked,
            () = signals.cancel.notified() => Err(ErrorResponse::error("57014", "canceling statement due to user request")),
            () = signals.kill.notified() => {
                signals.kill.notify_one(); // the query loop ends the session on it
                Err(ErrorResponse::error("57P01", "terminating connection due to administrator command"))
            }
        };
        match picked {
            Ok(pool) => ClusterRoute::Pool(pool),
            Err(error) => {
                tracing::warn!(database, code = error.code(), message = error.message(), "no server for the statement");
                self.fail(kind, error);
                ClusterRoute::Failed
            }
        }
    }
}
