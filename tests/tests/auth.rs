//! Client authentication (trust, md5, SCRAM-SHA-256 against plain, md5 and verifier secrets)
//! and server login (SCRAM with keys from the client's proof, md5, clear text).

use pgvane_tests::fixture::{
    db_error, login_error, sqlstate, Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER,
};
use pgvane_tests::{connect_via, psql};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn options(auth_type: &'static str, secret: SecretKind) -> ProxyOptions {
    ProxyOptions { auth_type, secret, ..ProxyOptions::default() }
}

/// Logs in through pgvane and checks the server session belongs to `app`.
async fn assert_login_works(p: &Proxied) -> anyhow::Result<()> {
    let client = p.client().await?;
    let user: String = client.query_one("select current_user::text", &[]).await?.get(0);
    assert_eq!(user, APP_USER);
    // psql (libpq) as well as tokio-postgres.
    let out = psql(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-At", "-c", "select 40 + 2"])?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "42\n");
    Ok(())
}

/// Wrong password and unknown user both fail with 28P01 and the same message shape.
async fn assert_failures_look_alike(p: &Proxied) -> anyhow::Result<()> {
    let wrong = login_error(p.port(), APP_USER, "wrong", APP_DB).await;
    let unknown = login_error(p.port(), "nobody", "wrong", APP_DB).await;
    for (err, user) in [(&wrong, APP_USER), (&unknown, "nobody")] {
        let db = db_error(err).unwrap_or_else(|| panic!("expected a server error, got {err:#}"));
        assert_eq!(db.code().code(), "28P01");
        assert_eq!(db.severity(), "FATAL");
        assert_eq!(db.message(), format!("password authentication failed for user \"{user}\""));
    }
    // The proxy goes on serving.
    p.client().await?.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test]
async fn scram_with_a_verifier_logs_in_to_the_server_with_derived_keys() -> anyhow::Result<()> {
    let p = Proxied::start(options("scram-sha-256", SecretKind::ScramVerifier)).await?;
    assert_login_works(&p).await?;
    assert_failures_look_alike(&p).await
}

#[tokio::test]
async fn scram_with_a_plain_secret() -> anyhow::Result<()> {
    let p = Proxied::start(options("scram-sha-256", SecretKind::Plain)).await?;
    assert_login_works(&p).await?;
    assert_failures_look_alike(&p).await
}

#[tokio::test]
async fn md5_with_plain_and_hashed_secrets() -> anyhow::Result<()> {
    // With only an MD5 hash, pgvane can log in to a server that asks for MD5 (not SCRAM).
    for secret in [SecretKind::Plain, SecretKind::Md5] {
        let p = Proxied::start(ProxyOptions { server_auth: "md5", ..options("md5", secret) }).await?;
        assert_login_works(&p).await?;
        assert_failures_look_alike(&p).await?;
    }
    Ok(())
}

#[tokio::test]
async fn md5_auth_type_uses_scram_for_verifier_secrets() -> anyhow::Result<()> {
    let p = Proxied::start(options("md5", SecretKind::ScramVerifier)).await?;
    assert_login_works(&p).await
}

#[tokio::test]
async fn trust_asks_no_password() -> anyhow::Result<()> {
    let p = Proxied::start(options("trust", SecretKind::Plain)).await?;
    let (client, _) = connect_via(p.port(), APP_USER, "anything", APP_DB).await?;
    let user: String = client.query_one("select current_user::text", &[]).await?.get(0);
    assert_eq!(user, APP_USER);
    Ok(())
}

#[tokio::test]
async fn server_login_with_md5_and_cleartext() -> anyhow::Result<()> {
    for server_auth in ["md5", "password"] {
        let p = Proxied::start(ProxyOptions {
            server_auth,
            settings: "server_allow_cleartext_password = true".into(),
            ..options("scram-sha-256", SecretKind::Plain)
        })
        .await?;
        assert_login_works(&p).await?;
        // The server really used that method: its stored password is MD5 for md5.
        let direct = p.direct_superuser().await?;
        let stored: String =
            direct.query_one("select rolpassword from pg_authid where rolname = $1", &[&APP_USER]).await?.get(0);
        assert_eq!(stored.starts_with("md5"), server_auth == "md5", "{stored}");
    }
    Ok(())
}

#[tokio::test]
async fn server_refusal_reaches_the_client() -> anyhow::Result<()> {
    // The database entry points at a server database that does not exist.
    let p = Proxied::start(ProxyOptions { database: "dbname = \"missing\"".into(), ..ProxyOptions::default() }).await?;
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, APP_DB).await;
    let db = db_error(&err).unwrap_or_else(|| panic!("expected a server error, got {err:#}"));
    assert_eq!(db.code().code(), "3D000");
    assert!(db.message().contains("missing"), "{}", db.message());

    // A database pgvane does not know.
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, "nosuchdb").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn cleartext_password_only_over_tls_or_when_allowed() -> anyhow::Result<()> {
    // The server asks pgvane for a clear-text password (pg_hba.conf `password`), over plain TCP.
    let p =
        Proxied::start(ProxyOptions { server_auth: "password", ..options("scram-sha-256", SecretKind::Plain) }).await?;
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, APP_DB).await;
    let db = db_error(&err).unwrap_or_else(|| panic!("expected an error from pgvane, got {err:#}"));
    assert_eq!((db.severity(), db.code().code()), ("FATAL", "08004"), "{}", db.message());
    let server = format!("127.0.0.1:{}", p.cluster.port());
    assert!(db.message().contains(&server) && db.message().contains("clear-text password"), "{}", db.message());
    let log = p.pgvane.log();
    assert!(log.contains("clear-text password over plain TCP") && log.contains(&server), "{log}");

    // The same server over TLS (server_tls_sslmode = "prefer" takes it when offered): allowed.
    let ca = pgvane_tests::tls::TestCa::new("cleartext")?;
    let cert = ca.server_cert()?;
    p.cluster.enable_ssl(&cert.cert_pem, &cert.key_pem).await?;
    assert_login_works(&p).await?;
    let direct = p.direct_superuser().await?;
    let over_tls: bool = direct
        .query_one(
            "select bool_and(ssl) from pg_stat_ssl join pg_stat_activity using (pid) where usename = $1",
            &[&APP_USER],
        )
        .await?
        .get(0);
    assert!(over_tls, "pgvane's connections to the server use TLS");
    Ok(())
}

#[tokio::test]
async fn cleartext_password_over_plain_tcp_when_the_key_allows_it() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions {
        server_auth: "password",
        settings: "server_allow_cleartext_password = true\nserver_tls_sslmode = \"disable\"".into(),
        ..options("scram-sha-256", SecretKind::Plain)
    })
    .await?;
    assert_login_works(&p).await
}

/// What a client sees of one failed login, message by message, over a raw socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    /// The authentication request codes (AuthenticationSASL = 10, SASLContinue = 11, MD5 = 5).
    requests: Vec<i32>,
    /// The SASL mechanisms offered.
    mechanisms: Vec<String>,
    /// The salt (base64 for SCRAM, hex for MD5).
    salt: String,
    /// The SCRAM iteration count.
    iterations: String,
    /// The final ErrorResponse's fields (code byte, value), the user name in the message
    /// replaced by `<user>`.
    error: Vec<(char, String)>,
}

async fn read_message(stream: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_exact(&mut header)).await??;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    anyhow::ensure!((4..1 << 20).contains(&len), "bad length {len}");
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    Ok((header[0], body))
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Logs in as `user` with a proof (or MD5 answer) that cannot be right and records the exchange.
async fn failed_attempt(port: u16, user: &str) -> anyhow::Result<Attempt> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for field in ["user", user, "database", APP_DB, ""] {
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(body);
    stream.write_all(&startup).await?;

    let mut attempt =
        Attempt { requests: vec![], mechanisms: vec![], salt: String::new(), iterations: String::new(), error: vec![] };
    let client_nonce = "cmFuZG9tLWNsaWVudC1ub25jZQ";
    loop {
        let (tag, body) = read_message(&mut stream).await?;
        match tag {
            b'R' => {
                let code = i32::from_be_bytes(body[..4].try_into()?);
                attempt.requests.push(code);
                let data = &body[4..];
                match code {
                    10 => {
                        attempt.mechanisms = data
                            .split(|&b| b == 0)
                            .filter(|m| !m.is_empty())
                            .map(|m| String::from_utf8_lossy(m).into_owned())
                            .collect();
                        let first = format!("n,,n=,r={client_nonce}");
                        let mut body = b"SCRAM-SHA-256\0".to_vec();
                        body.extend_from_slice(&(first.len() as u32).to_be_bytes());
                        body.extend_from_slice(first.as_bytes());
                        stream.write_all(&message(b'p', &body)).await?;
                    }
                    11 => {
                        let server_first = String::from_utf8(data.to_vec())?;
                        let attr = |name: &str| {
                            server_first.split(',').find_map(|a| a.strip_prefix(name)).unwrap_or_default().to_owned()
                        };
                        let nonce = attr("r=");
                        assert!(nonce.starts_with(client_nonce), "{server_first}");
                        (attempt.salt, attempt.iterations) = (attr("s="), attr("i="));
                        // A proof of 32 zero bytes: never right.
                        let last = format!("c=biws,r={nonce},p={}=", "A".repeat(43));
                        stream.write_all(&message(b'p', last.as_bytes())).await?;
                    }
                    5 => {
                        attempt.salt = data.iter().map(|b| format!("{b:02x}")).collect();
                        let answer = format!("md5{}\0", "0".repeat(32));
                        stream.write_all(&message(b'p', answer.as_bytes())).await?;
                    }
                    other => anyhow::bail!("unexpected authentication request {other}"),
                }
            }
            b'E' => {
                attempt.error = body
                    .split(|&b| b == 0)
                    .filter(|f| !f.is_empty())
                    .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).replace(user, "<user>")))
                    .collect();
                // Nothing follows the FATAL: the connection is closed.
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await?;
                anyhow::ensure!(rest.is_empty(), "bytes after the error: {rest:?}");
                return Ok(attempt);
            }
            other => anyhow::bail!("unexpected message {:?}", other as char),
        }
    }
}

/// Two failed attempts each for a known user with a wrong password and an unknown user:
/// field by field, the client learns nothing that tells them apart.
async fn assert_wire_alike(p: &Proxied, unknown: &str) -> anyhow::Result<(Attempt, Attempt)> {
    let known = failed_attempt(p.port(), APP_USER).await?;
    let known_again = failed_attempt(p.port(), APP_USER).await?;
    let ghost = failed_attempt(p.port(), unknown).await?;
    let ghost_again = failed_attempt(p.port(), unknown).await?;
    if known.requests.contains(&10) {
        // SCRAM: the salt is the same at every attempt (for the known user: derived once).
        assert_eq!(known, known_again, "the same user twice");
        assert_eq!(ghost, ghost_again, "the same unknown user twice");
        assert_ne!(known.salt, ghost.salt, "salts are per user");
        assert_eq!(known.salt.len(), ghost.salt.len(), "{known:?} {ghost:?}");
        assert_eq!(known.iterations, ghost.iterations);
    } else {
        // MD5: a fresh random salt at every attempt, known user or not.
        assert_ne!(known.salt, known_again.salt);
        assert_ne!(ghost.salt, ghost_again.salt);
        assert_eq!(known.salt.len(), 8);
        assert_eq!(ghost.salt.len(), 8);
    }
    assert_eq!(known.requests, ghost.requests);
    assert_eq!(known.mechanisms, ghost.mechanisms);
    assert_eq!(known.error, ghost.error);
    let field = |a: &Attempt, code: char| a.error.iter().find(|(c, _)| *c == code).map(|(_, v)| v.clone());
    assert_eq!(field(&known, 'S').as_deref(), Some("FATAL"));
    assert_eq!(field(&known, 'C').as_deref(), Some("28P01"));
    assert_eq!(field(&known, 'M').as_deref(), Some("password authentication failed for user \"<user>\""));
    Ok((known, ghost))
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_alike_on_the_wire() -> anyhow::Result<()> {
    // A plain password (its verifier derived at load) and a verifier copied from the server.
    for secret in [SecretKind::Plain, SecretKind::ScramVerifier] {
        let p = Proxied::start(options("scram-sha-256", secret)).await?;
        let (known, _) = assert_wire_alike(&p, "nobody").await?;
        assert_eq!(known.requests, [10, 11]);
        assert_eq!(known.mechanisms, ["SCRAM-SHA-256"]);
        assert_eq!(known.iterations, "4096");
        // Logins still work, and are not disturbed by the failures.
        assert_login_works(&p).await?;
        assert_eq!(failed_attempt(p.port(), APP_USER).await?, known, "salt stable across successful logins too");
    }
    // MD5, with a plain password and with a hash.
    for secret in [SecretKind::Plain, SecretKind::Md5] {
        let p = Proxied::start(ProxyOptions { server_auth: "md5", ..options("md5", secret) }).await?;
        let (known, _) = assert_wire_alike(&p, "nobody").await?;
        assert_eq!(known.requests, [5]);
        assert_login_works(&p).await?;
    }
    Ok(())
}

#[tokio::test]
async fn md5_auth_type_gives_unknown_users_scram_when_most_users_have_verifiers() -> anyhow::Result<()> {
    // The auth file's one user has a SCRAM verifier, so under auth_type = "md5" it gets SCRAM:
    // so does an unknown user.
    let p = Proxied::start(options("md5", SecretKind::ScramVerifier)).await?;
    let (known, _) = assert_wire_alike(&p, "nobody").await?;
    assert_eq!(known.requests, [10, 11]);
    Ok(())
}

#[tokio::test]
async fn derived_verifiers_follow_the_auth_file_across_reload() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions {
        settings: format!("admin_users = [\"{APP_USER}\"]"),
        ..options("scram-sha-256", SecretKind::Plain)
    })
    .await?;
    let app_before = failed_attempt(p.port(), APP_USER).await?;
    let ghost_unknown = failed_attempt(p.port(), "ghost").await?;

    // "ghost" becomes a real user, on the server and in the auth file; RELOAD.
    p.cluster.create_user("ghost", "ghost-secret").await?;
    let userlist = p.pgvane.dir().join("userlist.txt");
    let text = std::fs::read_to_string(&userlist)?;
    std::fs::write(&userlist, format!("{text}\"ghost\" \"ghost-secret\"\n"))?;
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;

    // Its derived verifier shows what its mock exchange showed: adding a user changes nothing
    // a client can see, and its password now works.
    let ghost_known = failed_attempt(p.port(), "ghost").await?;
    assert_eq!(ghost_known, ghost_unknown);
    let (client, _) = connect_via(p.port(), "ghost", "ghost-secret", APP_DB).await?;
    let user: String = client.query_one("select current_user::text", &[]).await?.get(0);
    assert_eq!(user, "ghost");
    let err = login_error(p.port(), "ghost", "wrong", APP_DB).await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:#}");

    // The other users: unchanged salt, and their logins still work.
    assert_eq!(failed_attempt(p.port(), APP_USER).await?, app_before);
    assert_login_works(&p).await
}
