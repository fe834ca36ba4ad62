//! Cancels hit only their own client's query: with one server connection shared by two
//! clients (transaction mode, pool size 1) and a relay in front of PostgreSQL that holds
//! every cancel connection for two seconds, a late cancel of client A must never cancel
//! client B's query, and a cancel of an idle client goes nowhere.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgvane_tests::fixture::{Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{connect_via, Pgvane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the relay holds a cancel before passing it on.
const CANCEL_DELAY: Duration = Duration::from_secs(2);
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A TCP relay to `upstream` that holds each CancelRequest connection for [`CANCEL_DELAY`].
async fn delaying_relay(upstream: u16) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                client.read_exact(&mut head).await?;
                let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                if len == 16 && code == CANCEL_REQUEST_CODE {
                    tokio::time::sleep(CANCEL_DELAY).await;
                }
                let mut server = TcpStream::connect(("127.0.0.1", upstream)).await?;
                server.write_all(&head).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                anyhow::Ok(())
            });
        }
    });
    Ok(port)
}

#[tokio::test]
async fn a_late_cancel_never_hits_the_next_client_of_its_server_connection() -> Result<()> {
    let p = Proxied::start(ProxyOptions { auth_type: "trust", secret: SecretKind::Plain, ..ProxyOptions::default() })
        .await?;
    let relay = delaying_relay(p.cluster.port()).await?;
    let config = format!(
        "[pgvane]\nlisten_port = 0\nauth_type = \"trust\"\nauth_file = \"userlist.txt\"\n\
         pool_mode = \"transaction\"\ndefault_pool_size = 1\n\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {relay}\n"
    );
    let pgvane = Pgvane::start(&config, &[("userlist.txt", &format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n"))]).await?;
    let (a, _a_task) = connect_via(pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    let (b, _b_task) = connect_via(pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?;

    // A cancel that arrives while its query runs still cancels it.
    let cancel = a.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let err = a.simple_query("select pg_sleep(30)").await.err().context("pg_sleep(30) was not cancelled")?;
    ensure!(err.code().map(|c| c.code()) == Some("57014"), "{err}");
    canceller.await??;

    // A's cancel is still on its way when A's query ends and B asks for the connection.
    let cancel = a.cancel_token();
    let a_query = tokio::spawn(async move { a.simple_query("select pg_sleep(1)").await.map(|_| a) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = tokio::spawn(async move { cancel.cancel_query(tokio_postgres::NoTls).await });
    tokio::time::sleep(Duration::from_millis(1000)).await; // A's pg_sleep(1) is over
    let b_result = b.simple_query("select pg_sleep(3)").await;
    late.await??;
    let a = match a_query.await? {
        Ok(a) => a, // the cancel arrived after A's query: fine
        Err(e) => {
            ensure!(e.code().map(|c| c.code()) == Some("57014"), "{e}");
            return Err(anyhow::anyhow!("A's query was cancelled although its cancel was held for {CANCEL_DELAY:?}"));
        }
    };
    if let Err(e) = &b_result {
        anyhow::bail!("B's query failed ({:?}): A's late cancel reached it", e.code().map(|c| c.code()));
    }

    // A cancel of an idle client goes nowhere, even while B runs on the only connection.
    let cancel = a.cancel_token();
    let b_query = tokio::spawn(async move { b.simple_query("select pg_sleep(1)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let b_outcome = b_query.await?;
    ensure!(b_outcome.is_ok(), "B was cancelled by idle A's cancel: {:?}", b_outcome.err().map(|e| e.to_string()));
    Ok(())
}
