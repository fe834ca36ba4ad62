//! LISTEN/NOTIFY in transaction mode (issue 19): the pool's listening connection hands each
//! notification to every client listening on its channel, exactly once and in order, with the
//! drivers applications use, while other clients keep the pool busy.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgvane_tests::drivers;
use pgvane_tests::fixture::{Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn transaction_mode(pool_size: usize) -> ProxyOptions {
    ProxyOptions {
        settings: format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = {pool_size}\nquery_wait_timeout_ms = 60000"
        ),
        ..ProxyOptions::default()
    }
}

async fn observe(what: &str, run: impl std::future::Future<Output = Result<std::process::Output>>) -> Result<String> {
    drivers::observe(what, RUN_TIMEOUT, run).await
}

/// psycopg's `notifies()`: notifications from three other connections, then UNLISTEN stops
/// delivery on that channel only. Run directly and through pgvane: the same is observed.
const PSYCOPG_LISTEN: &str = r#"
import sys, json, psycopg
port, user, password, db = sys.argv[1:5]
def connect():
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db,
                           autocommit=True, connect_timeout=10)
listener, senders = connect(), [connect() for _ in range(3)]
listener.execute("LISTEN jobs")
listener.execute("LISTEN other")
for i in range(10):
    for k, s in enumerate(senders):
        s.execute("select pg_notify('jobs', %s)", (f"{k}-{i}",))
senders[0].execute("begin; select pg_notify('jobs', 'rolled back'); rollback")
got = [(n.channel, n.payload) for n in listener.notifies(timeout=20, stop_after=30)]
listener.execute("UNLISTEN jobs")
senders[1].execute("select pg_notify('jobs', 'after unlisten')")
senders[2].execute("select pg_notify('other', 'still listening')")
later = [(n.channel, n.payload) for n in listener.notifies(timeout=2)]
print(json.dumps({"notified": got, "after unlisten": later}))
"#;

#[tokio::test]
async fn psycopg_listens_through_a_transaction_pool_as_directly() -> Result<()> {
    let p = Proxied::start(transaction_mode(2)).await?;
    let args = |port: u16| vec![port.to_string(), APP_USER.into(), APP_PASSWORD.into(), APP_DB.into()];
    let direct = observe("psycopg direct", drivers::run_python(PSYCOPG_LISTEN, args(p.cluster.port()))).await?;
    let proxied = observe("psycopg through pgvane", drivers::run_python(PSYCOPG_LISTEN, args(p.port()))).await?;
    assert!(direct.contains("\"0-9\""), "the direct run got the notifications: {direct}");
    assert_eq!(proxied, direct, "through pgvane (left) and directly (right)");
    // The listener is one connection of pgvane's own, gone with the last listening client.
    let direct_client = p.direct_superuser().await?;
    let mut listening = 1;
    for _ in 0..50 {
        let row = direct_client
            .query_one("select count(*) from pg_stat_activity where query like 'LISTEN%' and usename = 'app'", &[])
            .await?;
        listening = row.get::<_, i64>(0);
        if listening == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listening, 0, "the listening connection is closed once no client listens");
    Ok(())
}

/// Listens on `jobs`, records itself in `ready`, and prints the payloads of the first
/// `count` notifications as a JSON list.
const ASYNCPG_LISTENER: &str = r#"
import sys, json, asyncio, asyncpg
port, user, password, db, count = sys.argv[1:6]
async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user=user, password=password, database=db)
    got, done = [], asyncio.Event()
    def on(conn, pid, channel, payload):
        got.append(payload)
        if len(got) >= int(count): done.set()
    await conn.add_listener("jobs", on)
    await conn.execute("insert into ready values ('asyncpg')")
    await asyncio.wait_for(done.wait(), 90)
    await asyncio.sleep(0.5)  # anything more would be a duplicate
    print(json.dumps(got))
asyncio.run(main())
"#;

const NODE_PG_LISTENER: &str = r#"
import pg from 'pg';
const [port, user, password, database, count] = process.argv.slice(2);
const c = new pg.Client({ host: '127.0.0.1', port: +port, user, password, database });
await c.connect();
const got = [];
const done = new Promise(resolve => c.on('notification', n => { got.push(n.payload); if (got.length >= +count) resolve(); }));
await c.query('LISTEN jobs');
await c.query("insert into ready values ('node-postgres')");
const timer = setTimeout(() => { console.error(`got ${got.length}`); process.exit(2); }, 90000);
await done;
await new Promise(r => setTimeout(r, 500));
clearTimeout(timer);
console.log(JSON.stringify(got));
await c.end();
"#;

const PSYCOPG_LISTENER: &str = r#"
import sys, json, psycopg
port, user, password, db, count = sys.argv[1:6]
conn = psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname=db, autocommit=True)
conn.execute("LISTEN jobs")
conn.execute("insert into ready values ('psycopg')")
got = [n.payload for n in conn.notifies(timeout=90, stop_after=int(count))]
got += [n.payload for n in conn.notifies(timeout=0.5)]
print(json.dumps(got))
"#;

/// Three drivers listen on one channel; three clients notify it 20 times each, concurrently,
/// while pgbench keeps the same small pool busy. Every listener gets every notification once,
/// all in the same order (the order the server committed them), each sender's in sequence.
#[tokio::test]
async fn notifications_reach_every_listener_once_in_order_under_load() -> Result<()> {
    const SENDERS: usize = 3;
    const EACH: usize = 20;
    let p = Proxied::start(transaction_mode(4)).await?;
    let setup = p.client().await?;
    setup.batch_execute("create table ready(name text)").await?;
    let init = pgvane_tests::pgbench(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-q", "-s", "1"])?;
    ensure!(init.status.success(), "pgbench -i: {}", pgvane_tests::describe_output(&init));
    let count = (SENDERS * EACH).to_string();
    let args =
        |count: &str| vec![p.port().to_string(), APP_USER.into(), APP_PASSWORD.into(), APP_DB.into(), count.into()];
    let listeners = [
        ("asyncpg", tokio::spawn(drivers::run_python(ASYNCPG_LISTENER, args(&count)))),
        ("node-postgres", tokio::spawn(drivers::run_node(NODE_PG_LISTENER, args(&count)))),
        ("psycopg", tokio::spawn(drivers::run_python(PSYCOPG_LISTENER, args(&count)))),
    ];
    let mut ready = 0;
    for _ in 0..600 {
        ready = setup.query_one("select count(*) from ready", &[]).await?.get::<_, i64>(0);
        if ready == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(ready == 3, "only {ready} listeners got ready");
    let port = p.port();
    let load = tokio::task::spawn_blocking(move || {
        pgvane_tests::pgbench(port, APP_USER, APP_PASSWORD, APP_DB, &["-c", "4", "-T", "5", "-S", "-n"])
    });
    let mut senders = Vec::new();
    for k in 0..SENDERS {
        let client = p.client().await?;
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                client.execute("select pg_notify('jobs', $1)", &[&format!("{k}-{i}")]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let mut orders = Vec::new();
    for (driver, listener) in listeners {
        let got = observe(driver, async { listener.await? }).await?;
        let got: Vec<String> = serde_json::from_str(&got).with_context(|| format!("{driver} printed {got}"))?;
        assert_eq!(got.len(), SENDERS * EACH, "{driver}: every notification once: {got:?}");
        for k in 0..SENDERS {
            let mine: Vec<String> = got.iter().filter(|p| p.starts_with(&format!("{k}-"))).cloned().collect();
            let sent: Vec<String> = (0..EACH).map(|i| format!("{k}-{i}")).collect();
            assert_eq!(mine, sent, "{driver}: sender {k}'s notifications in order");
        }
        orders.push((driver, got));
    }
    assert_eq!(orders[0].1, orders[1].1, "{} and {} saw different orders", orders[0].0, orders[1].0);
    assert_eq!(orders[0].1, orders[2].1, "{} and {} saw different orders", orders[0].0, orders[2].0);
    let bench = load.await??;
    ensure!(bench.status.success(), "pgbench: {}", pgvane_tests::describe_output(&bench));
    Ok(())
}
