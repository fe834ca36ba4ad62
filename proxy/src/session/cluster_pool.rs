//! Pools of cluster databases: the node a client's statements go to, and its pool.

use std::sync::Arc;

use crate::auth::scram::ScramKeys;
use crate::cluster::{Cluster, Want};
use crate::pool::Pool;
use crate::protocol::messages::ErrorResponse;
use crate::shared::Shared;

/// The pool a client of cluster database `database` starts on: its `default_route`'s node.
/// `None` when the database is not a cluster. Gives the cluster's monitor the client's
/// credential, in case it has no other way to log in (see [`Cluster::login`]).
pub(crate) async fn home_pool(
    shared: &Shared,
    database: &str,
    user: &str,
    keys: Option<&ScramKeys>,
) -> Option<Result<Arc<Pool>, ErrorResponse>> {
    let cluster = shared.clusters.get(database)?;
    let config = shared.config();
    if let Some(db) = config.databases.get(database) {
        let server_user = db.user.as_deref().unwrap_or(user);
        cluster.offer_login(server_user, &super::server_credential(&config, db, user, keys.cloned()));
    }
    // The client's pools on every node, so that reads moving and a switchover find them.
    for node in cluster.node_addrs() {
        super::pool_on_node(shared, database, user, keys, &node);
    }
    let want = cluster.default_route();
    Some(pool_for_want(shared, &cluster, user, keys, want).await)
}

/// After RELOAD: every (database, user) with a pool on a node of a cluster gets one on each
/// of the cluster's nodes (new ones included), logging in as its other pools do.
pub(crate) fn pools_on_every_node(shared: &Shared) {
    let config = shared.config();
    for cluster in shared.clusters.list() {
        let mut users = std::collections::BTreeMap::new();
        for pool in shared.pools.of(Some(&cluster.database)).into_iter().filter(|p| p.node.is_some()) {
            users.entry(pool.user.clone()).or_insert_with(|| pool.credential());
        }
        for (user, credential) in users {
            for node in cluster.node_addrs() {
                super::node_pool(shared, &config, &cluster.database, &user, &node, &credential);
            }
        }
    }
}

/// The pool of the node `cluster` picks for `want`, for the client `user`: waits while the
/// cluster has no writer (up to `switchover_timeout_ms`).
pub(crate) async fn pool_for_want(
    shared: &Shared,
    cluster: &Cluster,
    user: &str,
    keys: Option<&ScramKeys>,
    want: Want,
) -> Result<Arc<Pool>, ErrorResponse> {
    let node = cluster.node_for(want).await.map_err(|e| e.to_response())?;
    super::pool_on_node(shared, &cluster.database, user, keys, &node).ok_or_else(|| {
        ErrorResponse::error("3D000", format!("database \"{}\" was removed from the configuration", cluster.database))
    })
}
