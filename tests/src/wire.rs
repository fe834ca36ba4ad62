//! A raw protocol-3 client for tests that need exact control of the messages (pipelines,
//! statement names, Close) and want to see every response.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One message received: tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Message type byte.
    pub tag: u8,
    /// Body after the length.
    pub body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    /// A field of an ErrorResponse / NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        if self.tag != b'E' && self.tag != b'N' {
            return None;
        }
        self.body
            .split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }

    /// The text values of a DataRow.
    pub fn row(&self) -> Vec<Option<String>> {
        self.row_bytes().into_iter().map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())).collect()
    }

    /// The values of a DataRow as the bytes the server sent (text in the client encoding).
    pub fn row_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let mut values = Vec::new();
        if self.tag != b'D' || self.body.len() < 2 {
            return values;
        }
        let count = u16::from_be_bytes([self.body[0], self.body[1]]);
        let mut at = 2;
        for _ in 0..count {
            let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap_or_default());
            at += 4;
            if len < 0 {
                values.push(None);
            } else {
                let end = at + len as usize;
                values.push(Some(self.body[at..end].to_vec()));
                at = end;
            }
        }
        values
    }
}

/// A connection speaking raw protocol messages. Logs in without a password (the server
/// must trust the user).
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    read_timeout: Duration,
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A StartupMessage of protocol `version` (`3 << 16` for 3.0) with `params`.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

impl Wire {
    /// Connects to 127.0.0.1:`port` as `user` on `database` and reads up to ReadyForQuery.
    pub async fn connect(port: u16, user: &str, database: &str) -> Result<Wire> {
        Ok(Self::connect_with(port, &[("user", user), ("database", database)]).await?.0)
    }

    /// Connects with these startup parameters and reads up to ReadyForQuery; returns the
    /// login's messages too (ParameterStatus…).
    pub async fn connect_with(port: u16, params: &[(&str, &str)]) -> Result<(Wire, Vec<Msg>)> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut wire = Wire { stream, buf: Vec::new(), out: Vec::new(), read_timeout: Duration::from_secs(10) };
        wire.stream.write_all(&startup_packet(3 << 16, params)).await?;
        let login = wire.read_until_ready().await?;
        if let Some(error) = login.iter().find(|m| m.tag == b'E') {
            bail!("login failed: {:?}", error.field(b'M'));
        }
        Ok((wire, login))
    }

    /// Queues any message: `tag` and `body` as given, the length computed.
    pub fn message(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.out.push(tag);
        self.out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        self.out.extend_from_slice(body);
        self
    }

    /// Queues a simple Query.
    pub fn query(&mut self, sql: &str) -> &mut Self {
        self.query_bytes(sql.as_bytes())
    }

    /// Queues a simple Query whose SQL is these bytes (in any client encoding).
    pub fn query_bytes(&mut self, sql: &[u8]) -> &mut Self {
        let mut body = sql.to_vec();
        body.push(0);
        self.message(b'Q', &body)
    }

    /// Queues a Parse without parameter types.
    pub fn parse(&mut self, name: &str, sql: &str) -> &mut Self {
        self.parse_bytes(name, sql.as_bytes())
    }

    /// Queues a Parse without parameter types whose SQL is these bytes (any client encoding).
    pub fn parse_bytes(&mut self, name: &str, sql: &[u8]) -> &mut Self {
        let mut body = Vec::new();
        cstr(&mut body, name);
        body.extend_from_slice(sql);
        body.push(0);
        body.extend_from_slice(&[0, 0]);
        self.message(b'P', &body)
    }

    /// Queues a Bind of `statement` to the unnamed portal with text parameters, text results.
    pub fn bind(&mut self, statement: &str, params: &[&str]) -> &mut Self {
        let mut body = Vec::new();
        cstr(&mut body, "");
        cstr(&mut body, statement);
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&(p.len() as u32).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        body.extend_from_slice(&[0, 0]);
        self.message(b'B', &body)
    }

    /// Queues an Execute of the unnamed portal, all rows.
    pub fn execute(&mut self) -> &mut Self {
        self.message(b'E', &[0, 0, 0, 0, 0])
    }

    /// Queues a Describe of a statement (`S`) or portal (`P`).
    pub fn describe(&mut self, kind: u8, name: &str) -> &mut Self {
        let mut body = vec![kind];
        cstr(&mut body, name);
        self.message(b'D', &body)
    }

    /// Queues a Close of a statement (`S`) or portal (`P`).
    pub fn close(&mut self, kind: u8, name: &str) -> &mut Self {
        let mut body = vec![kind];
        cstr(&mut body, name);
        self.message(b'C', &body)
    }

    /// Queues a fastpath FunctionCall of function `oid` with text arguments and a text result.
    pub fn function_call(&mut self, oid: u32, args: &[&str]) -> &mut Self {
        let mut body = oid.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0]); // no format codes: all text
        body.extend_from_slice(&(args.len() as u16).to_be_bytes());
        for arg in args {
            body.extend_from_slice(&(arg.len() as u32).to_be_bytes());
            body.extend_from_slice(arg.as_bytes());
        }
        body.extend_from_slice(&[0, 0]); // text result
        self.message(b'F', &body)
    }

    /// Queues a Sync.
    pub fn sync(&mut self) -> &mut Self {
        self.message(b'S', &[])
    }

    /// Queues a Flush.
    pub fn flush_message(&mut self) -> &mut Self {
        self.message(b'H', &[])
    }

    /// Sends everything queued.
    pub async fn send(&mut self) -> Result<()> {
        let out = std::mem::take(&mut self.out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// How long a read may wait for bytes (10 s unless set).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    /// Writes `bytes` as they are (e.g. one message prepared once for many connections).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one message (10 s timeout unless set).
    pub async fn read(&mut self) -> Result<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into()?) as usize;
                if self.buf.len() > len {
                    let body = self.buf[5..len + 1].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..len + 1);
                    return Ok(Msg { tag, body });
                }
            }
            // Straight into the buffer: a chunk array here would sit in every future awaiting a read.
            self.buf.reserve(65536);
            let n = tokio::time::timeout(self.read_timeout, self.stream.read_buf(&mut self.buf))
                .await
                .context("timed out waiting for a message")??;
            ensure!(n > 0, "connection closed");
        }
    }

    /// Reads up to and including the next ReadyForQuery.
    pub async fn read_until_ready(&mut self) -> Result<Vec<Msg>> {
        let mut msgs = Vec::new();
        loop {
            let msg = self.read().await?;
            let done = msg.tag == b'Z';
            msgs.push(msg);
            if done {
                return Ok(msgs);
            }
        }
    }

    /// Sends what is queued and reads up to `n` ReadyForQuery messages; returns the tags
    /// (as a string, e.g. "12CZ") and the messages.
    pub async fn roundtrip(&mut self, n: usize) -> Result<(String, Vec<Msg>)> {
        self.send().await?;
        let mut msgs = Vec::new();
        for _ in 0..n {
            msgs.extend(self.read_until_ready().await?);
        }
        // Notices may come at any time; they are not part of the sequence.
        msgs.retain(|m| m.tag != b'N');
        Ok((msgs.iter().map(|m| m.tag as char).collect(), msgs))
    }
}
