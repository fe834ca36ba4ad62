//! Admission before login: connections count from accept, connections still logging in have
//! their own cap (`max_pending_logins`) and the oldest of them makes room for a new one, and
//! a few connections beyond `max_client_conn` stay for the admin console's users.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pgvane_tests::fixture::{console_rows, Proxied, ProxyOptions, APP_DB, APP_USER};
use pgvane_tests::wire::startup_packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first message pgvane sends on `stream` (type byte and SQLSTATE if it is an error).
async fn first_message(stream: &mut TcpStream) -> Result<(u8, Option<String>)> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if bytes.len() >= 5 {
            let len = u32::from_be_bytes(bytes[1..5].try_into()?) as usize;
            if bytes.len() > len {
                let body = &bytes[5..len + 1];
                let code = body.split(|&b| b == 0).find(|f| f.first() == Some(&b'C'));
                return Ok((bytes[0], code.map(|c| String::from_utf8_lossy(&c[1..]).into_owned())));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await??;
        ensure!(n > 0, "closed without a message");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn silent_and_stalled_connections_do_not_lock_anyone_out() -> Result<()> {
    let p = Proxied::start(ProxyOptions {
        settings: "admin_users = [\"app\"]\nmax_client_conn = 1000\nmax_pending_logins = 100".into(),
        ..ProxyOptions::default()
    })
    .await?;
    let port = p.port();
    // 1,000 sockets that never send a byte.
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await?);
    }
    // 1,000 clients that stop at the password prompt.
    let mut stalled = Vec::new();
    let mut at_prompt = 0;
    for _ in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(&startup_packet(3 << 16, &[("user", APP_USER), ("database", APP_DB)])).await?;
        if first_message(&mut s).await?.0 == b'R' {
            at_prompt += 1;
        }
        stalled.push(s);
    }
    ensure!(at_prompt > 0, "no client reached the password prompt");

    // A well-behaved client logs in, and so does an admin.
    let started = Instant::now();
    let client = p.client().await?;
    let login = started.elapsed();
    let one: i32 = client.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1);
    let clients = console_rows(port, "CLIENTS").await?;
    println!(
        "after 1,000 silent and 1,000 stalled connections ({at_prompt} reached the prompt): login took {login:?}; SHOW CLIENTS lists {}",
        clients.len()
    );
    // Connections count from accept, and the waiting ones are capped.
    let logging_in = clients.iter().filter(|c| c.get("state").map(String::as_str) == Some("login")).count();
    ensure!(logging_in <= 100, "{logging_in} connections logging in, more than max_pending_logins");

    // The oldest silent socket was dropped with the reason.
    let (tag, code) = first_message(&mut silent[0]).await?;
    ensure!(tag == b'E' && code.as_deref() == Some("53300"), "the oldest silent socket got {tag} {code:?}");
    Ok(())
}

#[tokio::test]
async fn logged_in_clients_are_limited_and_admins_keep_their_reserved_connections() -> Result<()> {
    let p = Proxied::start(ProxyOptions {
        settings: "admin_users = [\"app\"]\nmax_client_conn = 3\nmax_pending_logins = 10".into(),
        ..ProxyOptions::default()
    })
    .await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(p.client().await?);
    }
    let refused = p.client().await.map(|_| ()).expect_err("a fourth client must be refused");
    ensure!(pgvane_tests::fixture::sqlstate(&refused).as_deref() == Some("53300"), "{refused:#}");
    // The admin console still takes a login.
    let clients = console_rows(p.port(), "CLIENTS").await?;
    ensure!(clients.len() >= 3, "SHOW CLIENTS: {clients:?}");
    // A client that leaves frees its place (pgvane notices the close a moment later).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match p.client().await {
            Ok(client) => {
                client.simple_query("select 1").await?;
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                ensure!(pgvane_tests::fixture::sqlstate(&e).as_deref() == Some("53300"), "{e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context("the freed place was not given to a new client")),
        }
    }
}
