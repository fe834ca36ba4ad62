//! The commands that change what pgvane does: PAUSE, RESUME, RECONNECT, KILL, RELOAD.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::BytesMut;

use crate::clients::ClientHandle;
use crate::shared::Shared;

use super::{notice, AdminError};

/// How often PAUSE looks whether the server connections are all free.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Checks a database argument: it must be configured, and not the console itself.
fn configured(shared: &Shared, database: Option<&str>) -> Result<(), AdminError> {
    match database {
        None => Ok(()),
        Some(crate::ADMIN_DATABASE) => Err(AdminError::AdminDatabase),
        Some(db) if shared.config().databases.contains_key(db) => Ok(()),
        Some(db) => Err(AdminError::NoSuchDatabase(db.to_owned())),
    }
}

fn describe(database: Option<&str>) -> String {
    database.map_or_else(|| "pgvane".to_owned(), |db| format!("database \"{db}\""))
}

/// `PAUSE [db]`: holds new checkouts, retires server connections as they come free, and
/// returns once none is in use. A CancelRequest ends the wait; the pause stays.
pub async fn pause(shared: &Shared, handle: &ClientHandle, database: Option<&str>) -> Result<(), AdminError> {
    configured(shared, database)?;
    if !shared.pools.pause(database) {
        return Err(AdminError::State(format!("{} is already paused", describe(database))));
    }
    tracing::info!(database, "PAUSE: waiting for server connections to come free");
    for pool in shared.pools.of(database) {
        pool.reconnect();
    }
    loop {
        // Pools created meanwhile are paused too: their count stays 0.
        if shared.pools.of(database).iter().all(|pool| pool.active_count() == 0) {
            tracing::info!(database, "paused");
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(PAUSE_POLL) => {}
            () = handle.signals.cancel.notified() => return Err(AdminError::Canceled),
            () = handle.signals.kill.raised() => return Err(AdminError::Terminated),
        }
    }
}

/// `RESUME [db]`: lets held checkouts go on.
pub fn resume(shared: &Shared, database: Option<&str>) -> Result<(), AdminError> {
    let state = shared.pools.pause_state();
    if shared.pools.resume(database) {
        tracing::info!(database, "resumed");
        return Ok(());
    }
    let message = format!("{} is not paused", describe(database));
    Err(match database {
        Some(_) if state.all => {
            AdminError::StateHint(message, "everything is paused: RESUME without a database resumes all")
        }
        _ => AdminError::State(message),
    })
}

/// `RECONNECT [db]`: replaces every server connection as it comes free.
pub fn reconnect(shared: &Shared, database: Option<&str>) -> Result<(), AdminError> {
    configured(shared, database)?;
    for pool in shared.pools.of(database) {
        pool.reconnect();
    }
    tracing::info!(database, "RECONNECT: server connections are replaced as they come free");
    Ok(())
}

/// `KILL [db]`: disconnects the clients of `db` (of every database but the console for
/// `None`) at once and closes their server connections.
pub fn kill(shared: &Shared, database: Option<&str>) -> Result<(), AdminError> {
    configured(shared, database)?;
    let databases: BTreeSet<String> = match database {
        Some(db) => BTreeSet::from([db.to_owned()]),
        None => shared
            .clients
            .snapshot()
            .into_iter()
            .map(|c| c.database)
            .filter(|db| !db.is_empty() && db != crate::ADMIN_DATABASE)
            .collect(),
    };
    let killed: usize = databases.iter().map(|db| shared.clients.kill(Some(db))).sum();
    for pool in shared.pools.of(database) {
        pool.reconnect();
    }
    tracing::info!(database, clients = killed, "KILL");
    Ok(())
}

/// `RELOAD`: re-reads the configuration file; NOTICEs say what changed and what needs a
/// restart.
pub async fn reload(shared: &Shared, out: &mut BytesMut) -> Result<(), AdminError> {
    let outcome = shared.reload().await.map_err(AdminError::Reload)?;
    tracing::info!(?outcome, "RELOAD: configuration reloaded");
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut notices = Vec::new();
    for (what, set) in [
        ("added", &outcome.added),
        ("removed", &outcome.removed),
        ("changed", &outcome.changed),
        ("reconnecting (server connections are replaced as they come free)", &outcome.reconnecting),
    ] {
        if !set.is_empty() {
            notices.push(format!("databases {what}: {}", list(set)));
        }
    }
    for key in &outcome.restart_needed {
        notices.push(format!("{key} changed: it takes effect at the next start"));
    }
    for message in notices {
        notice(&message, None, out);
    }
    Ok(())
}
