//! Client authentication (trust, md5, SCRAM-SHA-256 against plain, md5 and verifier secrets)
//! and server login (SCRAM with keys from the client's proof, md5, clear text).

use pgvane_tests::fixture::{
    db_error, login_error, sqlstate, Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER,
};
use pgvane_tests::{connect_via, psql};

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
        let p = Proxied::start(ProxyOptions { server_auth, ..options("scram-sha-256", SecretKind::Plain) }).await?;
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
