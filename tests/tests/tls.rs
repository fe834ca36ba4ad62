//! TLS on both legs: psql and tokio-postgres to pgvane with verify-full and SCRAM channel
//! binding, pgvane to a PostgreSQL cluster with `ssl = on` and verify-full, plain text refused
//! under `require`, PostgreSQL 17's direct TLS, hostile bytes around the handshake, client
//! certificates, and certificate rotation on RELOAD. Certificates are made per test (rcgen).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgvane_tests::fixture::{sqlstate, Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::tls::{client_tls_config, CertPair, RustlsConnector, TestCa};
use pgvane_tests::{client_config, connect_via, describe_output, psql, tail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::{ChannelBinding, SslMode, SslNegotiation};

/// pg_hba.conf that lets `app` in over TLS only.
const HBA_TLS_ONLY: &str = "hostssl all app 127.0.0.1/32 scram-sha-256\n\
                            hostnossl all app 127.0.0.1/32 reject\n\
                            host all all 127.0.0.1/32 scram-sha-256\n\
                            local all all trust\n";

/// Certificates for one test, in a temporary folder.
struct Pki {
    dir: TempDir,
    ca: TestCa,
}

impl Pki {
    fn new(name: &str) -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new(name)?;
        ca.write(dir.path(), "ca.crt")?;
        Ok(Pki { dir, ca })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes a fresh server certificate for pgvane as pgvane.crt/pgvane.key.
    fn write_pgvane_cert(&self) -> Result<()> {
        self.ca.server_cert()?.write(self.dir.path(), "pgvane")?;
        Ok(())
    }

    /// `[pgvane]` lines for TLS towards clients with this CA's certificate.
    fn client_side(&self, mode: &str) -> String {
        format!(
            "client_tls_sslmode = \"{mode}\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
            self.path("pgvane.crt").display(),
            self.path("pgvane.key").display()
        )
    }
}

/// A tokio-postgres config to pgvane over TLS trusting `ca` (verify-full: the host is
/// 127.0.0.1, in the certificate's names), with channel binding required.
fn tls_client(port: u16, user: &str, password: &str) -> tokio_postgres::Config {
    let mut config = client_config(port, user, password, APP_DB);
    config.ssl_mode(SslMode::Require).channel_binding(ChannelBinding::Require);
    config
}

async fn connect_tls(
    config: &tokio_postgres::Config,
    ca: &TestCa,
    client_cert: Option<&CertPair>,
) -> Result<tokio_postgres::Client> {
    let connector = RustlsConnector::new(client_tls_config(ca, client_cert, true)?);
    let (client, connection) = config.connect(connector).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `ssl` and `version` from pg_stat_ssl for the server session running the query.
async fn server_ssl(client: &tokio_postgres::Client) -> Result<(bool, String)> {
    let row = client
        .query_one("select ssl, coalesce(version, '') from pg_stat_ssl where pid = pg_backend_pid()", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// pgvane with TLS on both legs: clients must use TLS (`client_mode`), the cluster has
/// `ssl = on` with a certificate from the same CA, lets `app` in over TLS only, and pgvane
/// verifies it (`verify-full`).
async fn both_legs(pki: &Pki, client_mode: &str, secret: SecretKind, extra: &str) -> Result<Proxied> {
    pki.write_pgvane_cert()?;
    let settings = format!(
        "{}server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\n{extra}",
        pki.client_side(client_mode),
        pki.path("ca.crt").display()
    );
    let p = Proxied::start(ProxyOptions { settings, secret, ..ProxyOptions::default() }).await?;
    let server = pki.ca.server_cert()?;
    p.cluster.enable_ssl(&server.cert_pem, &server.key_pem).await?;
    p.cluster.set_hba(HBA_TLS_ONLY).await?;
    Ok(p)
}

fn psql_conninfo(pki: &Pki, extra: &str) -> String {
    format!(
        "dbname={APP_DB} sslmode=verify-full sslrootcert={} channel_binding=require {extra}",
        pki.path("ca.crt").display()
    )
}

#[tokio::test]
async fn psql_verify_full_through_pgvane_verify_full_to_postgres() -> Result<()> {
    let pki = Pki::new("both-legs")?;
    let p = both_legs(&pki, "require", SecretKind::ScramVerifier, "").await?;

    // psql (libpq 15): verify-full against pgvane's certificate, SCRAM-SHA-256-PLUS required.
    // pgvane logs in to the server with the keys from that exchange, over TLS it verified.
    let out = psql(
        p.port(),
        APP_USER,
        APP_PASSWORD,
        &psql_conninfo(&pki, ""),
        &["-At", "-c", "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"],
    )?;
    assert!(out.status.success(), "{}\n--- pgvane log ---\n{}", describe_output(&out), tail(&p.pgvane.log(), 30));
    let line = String::from_utf8(out.stdout)?;
    assert!(line.starts_with("t|TLSv1."), "the server session must use TLS: {line}");

    // tokio-postgres with channel binding required, too.
    let client = connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &pki.ca, None).await?;
    let (ssl, version) = server_ssl(&client).await?;
    assert!(ssl, "pg_stat_ssl.ssl must be true, version {version}");
    assert_eq!(client.query_one("select 40 + 2", &[]).await?.get::<_, i32>(0), 42);

    // A password typed wrong is still wrong over TLS.
    let err = connect_tls(&tls_client(p.port(), APP_USER, "wrong"), &pki.ca, None).await.err().context("must fail")?;
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn plaintext_is_refused_under_require() -> Result<()> {
    let pki = Pki::new("require")?;
    pki.write_pgvane_cert()?;
    let p = Proxied::start(ProxyOptions { settings: pki.client_side("require"), ..ProxyOptions::default() }).await?;

    let err = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await.err().context("plain text must fail")?;
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:#}");
    assert!(format!("{err:#}").contains("requires TLS"), "{err:#}");

    let out = psql(p.port(), APP_USER, APP_PASSWORD, &format!("dbname={APP_DB} sslmode=disable"), &["-c", "select 1"])?;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pgvane requires TLS"), "{}", describe_output(&out));

    // libpq's default (prefer) gets TLS and goes in; so does verify-full.
    let out = psql(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-At", "-c", "select 1"])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = psql(p.port(), APP_USER, APP_PASSWORD, &psql_conninfo(&pki, ""), &["-At", "-c", "select 1"])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    Ok(())
}

#[tokio::test]
async fn tls_is_optional_under_prefer_and_absent_under_disable() -> Result<()> {
    let pki = Pki::new("prefer")?;
    pki.write_pgvane_cert()?;
    let p = Proxied::start(ProxyOptions { settings: pki.client_side("prefer"), ..ProxyOptions::default() }).await?;
    connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await?.0.simple_query("select 1").await?;
    connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &pki.ca, None).await?.simple_query("select 1").await?;

    let p = Proxied::start(ProxyOptions { settings: pki.client_side("disable"), ..ProxyOptions::default() }).await?;
    let out = psql(p.port(), APP_USER, APP_PASSWORD, &format!("dbname={APP_DB} sslmode=require"), &["-c", "select 1"])?;
    assert!(!out.status.success(), "no TLS under disable: {}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support SSL"), "{}", describe_output(&out));
    Ok(())
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() -> Result<()> {
    let pki = Pki::new("direct")?;
    let p = both_legs(&pki, "require", SecretKind::ScramVerifier, "").await?;

    // PostgreSQL 17's sslnegotiation=direct: a ClientHello with ALPN "postgresql" first.
    let mut config = tls_client(p.port(), APP_USER, APP_PASSWORD);
    config.ssl_negotiation(SslNegotiation::Direct);
    let client = connect_tls(&config, &pki.ca, None).await?;
    assert!(server_ssl(&client).await?.0);

    // Without ALPN the handshake completes, then pgvane refuses with a FATAL inside TLS.
    let tcp = TcpStream::connect(("127.0.0.1", p.port())).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = tokio_rustls::TlsConnector::from(client_tls_config(&pki.ca, None, false)?).connect(name, tcp).await?;
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await; // pgvane may close without close_notify
    assert_eq!(reply.first(), Some(&b'E'), "expected an ErrorResponse, got {reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("ALPN"), "{}", String::from_utf8_lossy(&reply));
    Ok(())
}

/// Sends `bytes` on a new connection and returns everything pgvane answers until it closes.
async fn exchange_raw(port: u16, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(bytes).await?;
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply).await; // a reset counts as closed
    Ok(reply)
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

#[tokio::test]
async fn hostile_bytes_around_the_handshake_are_refused() -> Result<()> {
    let pki = Pki::new("hostile")?;
    pki.write_pgvane_cert()?;
    let p = Proxied::start(ProxyOptions { settings: pki.client_side("require"), ..ProxyOptions::default() }).await?;

    // Bytes pipelined after the SSLRequest (CVE-2021-23214): no 'S', a FATAL in plain text.
    let mut pipelined = SSL_REQUEST.to_vec();
    pipelined.extend_from_slice(b"\0\0\0\x08\0\x03\0\0");
    let reply = exchange_raw(p.port(), &pipelined).await?;
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("received unencrypted data after SSL request"));

    // Garbage instead of a ClientHello after 'S': the handshake fails, the connection closes.
    let mut tcp = TcpStream::connect(("127.0.0.1", p.port())).await?;
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"S");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
    assert!(!rest.starts_with(b"R"), "no authentication may follow garbage: {rest:?}");

    // A GSSENCRequest gets 'N'; a second SSLRequest inside TLS is a protocol violation.
    let reply = exchange_raw(p.port(), &GSSENC_REQUEST).await?;
    assert_eq!(reply.first(), Some(&b'N'));

    // pgvane goes on serving TLS clients, and says why it refused the others.
    connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &pki.ca, None).await?.simple_query("select 1").await?;
    let log = p.pgvane.log();
    assert!(log.contains("TLS handshake with the client failed"), "{}", tail(&log, 20));
    Ok(())
}

#[tokio::test]
async fn pgvane_checks_the_server_certificate() -> Result<()> {
    // The cluster's certificate comes from another CA than the one pgvane trusts.
    let pki = Pki::new("trusted")?;
    let other = TestCa::new("impostor")?;
    let settings =
        format!("server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\n", pki.path("ca.crt").display());
    let p = Proxied::start(ProxyOptions { settings, ..ProxyOptions::default() }).await?;
    let server = other.server_cert()?;
    p.cluster.enable_ssl(&server.cert_pem, &server.key_pem).await?;
    let err = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await.err().context("must fail")?;
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:#}");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");

    // require refuses a server without TLS.
    let p =
        Proxied::start(ProxyOptions { settings: "server_tls_sslmode = \"require\"".into(), ..ProxyOptions::default() })
            .await?;
    let err = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await.err().context("must fail")?;
    assert!(format!("{err:#}").contains("does not support TLS"), "{err:#}");

    // prefer (the default) goes on in plain text with it.
    let p = Proxied::default_setup().await?;
    assert!(!server_ssl(&p.client().await?).await?.0);
    Ok(())
}

#[tokio::test]
async fn client_certificates_with_auth_type_cert() -> Result<()> {
    let pki = Pki::new("client-certs")?;
    let extra = format!("client_tls_ca_file = \"{}\"\n", pki.path("ca.crt").display());
    pki.write_pgvane_cert()?;
    let settings = format!("{}{extra}", pki.client_side("verify-full"));
    let p = Proxied::start(ProxyOptions {
        auth_type: "cert",
        secret: SecretKind::Plain,
        settings,
        ..ProxyOptions::default()
    })
    .await?;
    let mut config = client_config(p.port(), APP_USER, "not used", APP_DB);
    config.ssl_mode(SslMode::Require);

    let app = pki.ca.client_cert(APP_USER)?;
    let client = connect_tls(&config, &pki.ca, Some(&app)).await?;
    assert_eq!(client.query_one("select current_user::text", &[]).await?.get::<_, String>(0), APP_USER);

    let mallory = pki.ca.client_cert("mallory")?;
    let err = connect_tls(&config, &pki.ca, Some(&mallory)).await.err().context("wrong CN must fail")?;
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err:#}");

    let stranger = TestCa::new("stranger")?.client_cert(APP_USER)?;
    assert!(connect_tls(&config, &pki.ca, Some(&stranger)).await.is_err(), "a certificate from another CA");
    assert!(connect_tls(&config, &pki.ca, None).await.is_err(), "no client certificate");
    Ok(())
}

/// Runs an admin console command with psql (TLS by libpq's default, unverified).
async fn console(p: &Proxied, sql: &str) -> Result<()> {
    let (port, sql) = (p.port(), sql.to_owned());
    let out =
        tokio::task::spawn_blocking(move || psql(port, APP_USER, APP_PASSWORD, "pgvane", &["-c", &sql])).await??;
    anyhow::ensure!(out.status.success(), "{}", describe_output(&out));
    Ok(())
}

fn replace_cert(dir: &Path, pair: &CertPair) -> Result<()> {
    pair.write(dir, "pgvane")?;
    Ok(())
}

#[tokio::test]
async fn certificates_rotate_on_reload_without_dropping_sessions() -> Result<()> {
    let pki = Pki::new("before")?;
    let p = both_legs(&pki, "require", SecretKind::ScramVerifier, &format!("admin_users = [\"{APP_USER}\"]\n")).await?;
    let old_session = connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &pki.ca, None).await?;
    old_session.simple_query("select 1").await?;

    // A certificate from a new CA replaces the files; RELOAD reads them.
    let new_ca = TestCa::new("after")?;
    replace_cert(pki.dir.path(), &new_ca.server_cert()?)?;
    console(&p, "RELOAD").await?;

    let fresh = connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &new_ca, None).await?;
    assert_eq!(fresh.query_one("select 1", &[]).await?.get::<_, i32>(0), 1);
    let err = connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &pki.ca, None).await.err();
    assert!(err.is_some(), "the old CA must no longer verify pgvane");
    // The session from before the reload is untouched.
    assert!(server_ssl(&old_session).await?.0);

    // A broken file is refused by RELOAD, and the certificate in force stays.
    std::fs::write(pki.path("pgvane.key"), "not a key")?;
    assert!(console(&p, "RELOAD").await.is_err(), "RELOAD must refuse an unusable key");
    connect_tls(&tls_client(p.port(), APP_USER, APP_PASSWORD), &new_ca, None).await?.simple_query("select 1").await?;
    Ok(())
}
