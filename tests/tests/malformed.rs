//! Bad input gets a clear answer (or a close) and pgvane goes on serving everyone else:
//! oversized and undersized startup packets, bad message lengths, unsupported protocol
//! versions, protocol negotiation, SSL/GSS requests.

use std::time::Duration;

use pgvane_tests::fixture::{Proxied, ProxyOptions, SecretKind, APP_DB, APP_USER};
use pgvane_tests::wire::startup_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(p: &Proxied) -> anyhow::Result<TcpStream> {
    Ok(TcpStream::connect(("127.0.0.1", p.port())).await?)
}

/// Reads until the server closes (or 5 s pass) and returns everything received.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

/// Reads until ReadyForQuery (idle) and returns everything received up to then.
async fn read_until_ready(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut seen = Vec::new();
    while !seen.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "closed before ReadyForQuery: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
    Ok(seen)
}

/// The SQLSTATE in the first ErrorResponse found in `bytes`.
fn error_code(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().ok()?) as usize;
        let body = bytes.get(at + 5..at + 1 + len)?;
        if bytes[at] == b'E' {
            let mut fields = body.split(|&b| b == 0);
            return fields.find(|f| f.first() == Some(&b'C')).map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
        }
        at += 1 + len;
    }
    None
}

async fn still_serving(p: &Proxied) -> anyhow::Result<()> {
    let row = p.client().await?.query_one("select 1 + 1", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 2);
    Ok(())
}

#[tokio::test]
async fn hostile_startup_packets_are_refused_without_harm() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions::default()).await?;
    // A bystander connected throughout must not notice anything.
    let bystander = p.client().await?;

    // A claimed length of 2 GB: closed at once, nothing allocated.
    let mut s = connect(&p).await?;
    s.write_all(&0x7fff_fff0u32.to_be_bytes()).await?;
    assert!(read_to_close(&mut s).await.is_empty());

    // Just over PostgreSQL's 10,000-byte limit.
    let mut s = connect(&p).await?;
    s.write_all(&10_001u32.to_be_bytes()).await?;
    assert!(read_to_close(&mut s).await.is_empty());

    // Lengths below the minimum, -1 and 1 GiB.
    for declared in [3u32, 0, u32::MAX, 1 << 30] {
        let mut s = connect(&p).await?;
        s.write_all(&declared.to_be_bytes()).await?;
        assert!(read_to_close(&mut s).await.is_empty(), "startup length {declared}");
    }

    // Garbage parameters (no terminator).
    let mut s = connect(&p).await?;
    let mut packet = 15u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&(3u32 << 16).to_be_bytes());
    packet.extend_from_slice(b"user\0ap");
    s.write_all(&packet).await?;
    let reply = read_to_close(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("08P01"));

    // Many half-open connections do not stop service.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = connect(&p).await?;
        s.write_all(&[0, 0]).await?;
        idle.push(s);
    }
    still_serving(&p).await?;
    bystander.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test]
async fn bad_message_lengths_after_login_get_fatal_08p01() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: "max_packet_size_bytes = 65536".into(),
        ..ProxyOptions::default()
    })
    .await?;
    for bad in [
        // A Query claiming 1 GB, above max_packet_size_bytes.
        [b'Q', 0x40, 0, 0, 0].to_vec(),
        // Lengths below 4, 0 and -1.
        [b'Q', 0, 0, 0, 2].to_vec(),
        [b'Q', 0, 0, 0, 0].to_vec(),
        [b'P', 0xff, 0xff, 0xff, 0xff].to_vec(),
        // One byte over the limit.
        [b'Q', 0, 1, 0, 1].to_vec(),
    ] {
        let mut s = connect(&p).await?;
        s.write_all(&startup_packet(3 << 16, &[("user", APP_USER), ("database", APP_DB)])).await?;
        read_until_ready(&mut s).await?;
        s.write_all(&bad).await?;
        let reply = read_to_close(&mut s).await;
        assert_eq!(error_code(&reply).as_deref(), Some("08P01"), "reply to {bad:?}");
    }
    still_serving(&p).await
}

#[tokio::test]
async fn truncated_and_slow_huge_messages_hold_no_memory() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: "pool_mode = \"transaction\"".into(),
        ..ProxyOptions::default()
    })
    .await?;
    let before = p.pgvane.memory()?.rss;
    p.pgvane.reset_peak_memory()?;
    // A message cut short by a closed connection.
    let mut s = connect(&p).await?;
    s.write_all(&startup_packet(3 << 16, &[("user", APP_USER), ("database", APP_DB)])).await?;
    read_until_ready(&mut s).await?;
    s.write_all(&[b'Q', 0, 0, 0, 100, b's', b'e', b'l']).await?;
    drop(s);
    // Twenty clients declaring 1 GiB statements and sending them a trickle at a time.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = connect(&p).await?;
        s.write_all(&startup_packet(3 << 16, &[("user", APP_USER), ("database", APP_DB)])).await?;
        read_until_ready(&mut s).await?;
        s.write_all(&[b'Q', 0x3f, 0xff, 0xff, 0xff]).await?;
        slow.push(s);
    }
    for _ in 0..10 {
        for s in &mut slow {
            s.write_all(&[b'x'; 4096]).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_serving(&p).await?;
    let grown = p.pgvane.memory()?.peak.saturating_sub(before);
    println!("peak RSS growth with 20 slow 1 GiB declarations: {} KiB", grown / 1024);
    assert!(grown < 32 << 20, "peak RSS grew by {grown} bytes");
    Ok(())
}

#[tokio::test]
async fn protocol_versions_and_negotiation() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions { auth_type: "trust", secret: SecretKind::Plain, ..ProxyOptions::default() })
        .await?;

    // Protocol 2.0 is refused with 0A000, as PostgreSQL does.
    let mut s = connect(&p).await?;
    s.write_all(&startup_packet(2 << 16, &[("user", APP_USER)])).await?;
    assert_eq!(error_code(&read_to_close(&mut s).await).as_deref(), Some("0A000"));

    // 3.2 with a _pq_ option: NegotiateProtocolVersion (newest minor 0, the option listed), then login.
    let mut s = connect(&p).await?;
    let packet = startup_packet((3 << 16) | 2, &[("user", APP_USER), ("database", APP_DB), ("_pq_.magic", "1")]);
    s.write_all(&packet).await?;
    let reply = read_until_ready(&mut s).await?;
    assert_eq!(reply[0], b'v', "NegotiateProtocolVersion first");
    let expected_body = [&0u32.to_be_bytes()[..], &1u32.to_be_bytes()[..], b"_pq_.magic\0"].concat();
    assert_eq!(&reply[5..5 + expected_body.len()], &expected_body[..]);

    // SSLRequest and GSSENCRequest are answered N and the startup goes on in plain text.
    let mut s = connect(&p).await?;
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"N");
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).await?;
    s.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"N");
    s.write_all(&startup_packet(3 << 16, &[("user", APP_USER), ("database", APP_DB)])).await?;
    let mut first = [0u8; 9];
    s.read_exact(&mut first).await?;
    assert_eq!(first, [b'R', 0, 0, 0, 8, 0, 0, 0, 0], "AuthenticationOk under trust");
    still_serving(&p).await
}
