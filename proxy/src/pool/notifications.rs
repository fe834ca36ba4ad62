//! LISTEN/NOTIFY in the transaction and statement modes, without keeping a client on a server
//! connection: per (database, user) with any listening client, pgvane holds one extra server
//! connection of its own that listens on every channel its clients listen on, and hands each
//! NotificationResponse to every client listening on that channel, in the order the server
//! sent them. The connection is opened with the first channel and closed with the last.
//! A client's LISTEN and UNLISTEN still run on the server connection it holds (which is
//! reset before anyone else gets it); notifications from those are dropped by the session,
//! so each arrives once, from here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use postgres_protocol::escape::escape_identifier;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::messages::tag;

use super::{Pool, ServerConn};

/// Where a client gets its notifications: the raw NotificationResponse messages.
pub type Subscriber = mpsc::UnboundedSender<Bytes>;

/// What a session asks of its (database, user)'s listener.
#[derive(Debug)]
enum Command {
    Listen { client: u32, channel: String, subscriber: Subscriber, listening: oneshot::Sender<()> },
    Unlisten { client: u32, channel: String },
    UnlistenAll { client: u32 },
}

/// The listeners, one per (database, user) that ever had a listening client.
#[derive(Debug, Default)]
pub struct Notifications {
    listeners: Mutex<HashMap<(String, String), mpsc::UnboundedSender<Command>>>,
}

impl Notifications {
    /// Client `client` of `pool` listens on `channel` (as the server names it). The receiver
    /// completes once the listening connection listens on it (or gave up trying), so the
    /// client's LISTEN completes only when notifications sent after it reach the client.
    pub fn listen(
        &self,
        pool: &Arc<Pool>,
        client: u32,
        channel: &str,
        subscriber: Subscriber,
    ) -> oneshot::Receiver<()> {
        let (listening, done) = oneshot::channel();
        self.send(pool, Command::Listen { client, channel: channel.to_owned(), subscriber, listening });
        done
    }

    /// Client `client` stops listening on `channel`.
    pub fn unlisten(&self, pool: &Arc<Pool>, client: u32, channel: &str) {
        self.send(pool, Command::Unlisten { client, channel: channel.to_owned() });
    }

    /// Client `client` stops listening on every channel (UNLISTEN *, DISCARD ALL, logout).
    pub fn unlisten_all(&self, pool: &Arc<Pool>, client: u32) {
        self.send(pool, Command::UnlistenAll { client });
    }

    fn send(&self, pool: &Arc<Pool>, command: Command) {
        let mut listeners = self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (pool.database.clone(), pool.user.clone());
        let listener = listeners.entry(key).or_insert_with(|| {
            let (commands, receiver) = mpsc::unbounded_channel();
            tokio::spawn(Listener::new(pool.clone()).run(receiver));
            commands
        });
        if let Err(mpsc::error::SendError(command)) = listener.send(command) {
            tracing::warn!(?command, "the listener of this pool is gone; starting another");
            let (commands, receiver) = mpsc::unbounded_channel();
            tokio::spawn(Listener::new(pool.clone()).run(receiver));
            let _ = commands.send(command);
            *listener = commands;
        }
    }
}

/// One (database, user)'s listening connection and who listens on what.
struct Listener {
    pool: Arc<Pool>,
    conn: Option<ServerConn>,
    /// Channel → client → where its notifications go.
    channels: HashMap<String, HashMap<u32, Subscriber>>,
    /// For each query sent and not yet answered (ReadyForQuery), who waits for it.
    answers: VecDeque<Option<oneshot::Sender<()>>>,
}

impl Listener {
    fn new(pool: Arc<Pool>) -> Self {
        Listener { pool, conn: None, channels: HashMap::new(), answers: VecDeque::new() }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let conn = self.conn.as_mut();
            let read = async {
                match conn {
                    Some(conn) => conn.read_frame().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.apply(command).await,
                    None => return,
                },
                frame = read => match frame {
                    Ok(frame) if frame.tag() == tag::NOTIFICATION_RESPONSE => self.dispatch(frame.into_raw()),
                    Ok(frame) if frame.tag() == tag::READY_FOR_QUERY => {
                        if let Some(Some(waiting)) = self.answers.pop_front() {
                            let _ = waiting.send(());
                        }
                    }
                    Ok(frame) if frame.tag() == tag::ERROR_RESPONSE => {
                        tracing::warn!(database = %self.pool.database, body = ?String::from_utf8_lossy(frame.body()), "the listening connection's LISTEN failed");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(database = %self.pool.database, %error, "the listening connection was lost; listening again (notifications meanwhile are lost)");
                        self.conn = None;
                        self.reconnect(None).await;
                    }
                },
            }
        }
    }

    async fn apply(&mut self, command: Command) {
        match command {
            Command::Listen { client, channel, subscriber, listening } => {
                let clients = self.channels.entry(channel.clone()).or_default();
                let first = clients.is_empty();
                clients.insert(client, subscriber);
                match first {
                    true => self.query(&format!("LISTEN {}", escape_identifier(&channel)), Some(listening)).await,
                    false => {
                        let _ = listening.send(());
                    }
                }
            }
            Command::Unlisten { client, channel } => self.drop_client(client, Some(&channel)).await,
            Command::UnlistenAll { client } => self.drop_client(client, None).await,
        }
    }

    /// Forgets `client` on `channel` (every channel if `None`), and unlistens channels left
    /// without listeners.
    async fn drop_client(&mut self, client: u32, channel: Option<&str>) {
        let mut emptied = Vec::new();
        for (name, clients) in self.channels.iter_mut() {
            if channel.is_none_or(|c| c == name) && clients.remove(&client).is_some() && clients.is_empty() {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            self.channels.remove(&name);
            self.query(&format!("UNLISTEN {}", escape_identifier(&name)), None).await;
        }
        if self.channels.is_empty() {
            self.conn = None; // the last channel is gone: so is the connection
            self.answers.clear();
        }
    }

    /// Sends `sql` on the listening connection (opened if needed); its answers are read by
    /// the main loop.
    /// `waiting` is told once the server has answered it.
    async fn query(&mut self, sql: &str, waiting: Option<oneshot::Sender<()>>) {
        if self.conn.is_none() {
            self.reconnect(waiting).await;
            return; // reconnecting listened on every channel, this one included
        }
        if let Some(conn) = self.conn.as_mut() {
            match conn.send_query(sql).await {
                Ok(()) => self.answers.push_back(waiting),
                Err(error) => {
                    tracing::warn!(%error, "the listening connection failed");
                    self.conn = None;
                    self.reconnect(waiting).await;
                }
            }
        }
    }

    /// Opens the listening connection and listens on every channel, while there is any.
    async fn reconnect(&mut self, waiting: Option<oneshot::Sender<()>>) {
        // Answers the old connection owed are not coming: whoever waits is let go.
        self.answers.clear();
        if self.channels.is_empty() {
            return;
        }
        let mut conn = match self.pool.connect_dedicated().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(database = %self.pool.database, %error, "could not open the listening connection");
                return;
            }
        };
        let sql: Vec<String> = self.channels.keys().map(|c| format!("LISTEN {}", escape_identifier(c))).collect();
        if let Err(error) = conn.send_query(&sql.join("; ")).await {
            tracing::warn!(%error, "the listening connection failed");
            return;
        }
        tracing::debug!(database = %self.pool.database, channels = self.channels.len(), "listening connection open");
        self.answers.push_back(waiting); // one ReadyForQuery answers the whole query
        self.conn = Some(conn);
    }

    /// Hands a NotificationResponse to every client listening on its channel.
    fn dispatch(&mut self, message: Bytes) {
        let Some(channel) = notification_channel(&message) else { return };
        let Some(clients) = self.channels.get_mut(channel.as_str()) else { return };
        clients.retain(|_, subscriber| subscriber.send(message.clone()).is_ok());
    }
}

/// The channel a raw NotificationResponse names: after the tag, length and process ID.
fn notification_channel(message: &[u8]) -> Option<String> {
    let rest = message.get(9..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// A NotificationResponse, for tests.
#[cfg(test)]
fn notification(pid: u32, channel: &str, payload: &str) -> Bytes {
    use bytes::BytesMut;
    let mut body = BytesMut::new();
    body.extend_from_slice(&pid.to_be_bytes());
    for s in [channel, payload] {
        body.extend_from_slice(s.as_bytes());
        body.extend_from_slice(&[0]);
    }
    let mut message = BytesMut::new();
    message.extend_from_slice(&[tag::NOTIFICATION_RESPONSE]);
    message.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    message.extend_from_slice(&body);
    message.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_is_read_from_the_message() {
        assert_eq!(notification_channel(&notification(7, "jobs", "x")).as_deref(), Some("jobs"));
        assert_eq!(notification_channel(&notification(7, "Weird \"name\"", "")).as_deref(), Some("Weird \"name\""));
        assert_eq!(notification_channel(b"A\0\0\0\x08"), None);
    }
}
