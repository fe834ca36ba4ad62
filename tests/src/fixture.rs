//! The usual test setup: one PostgreSQL cluster with an `app` user and database, and pgvane in
//! front of it with an auth file for `app`.

use anyhow::Result;

use crate::{connect_via, quote_literal, PgCluster, Pgvane};

/// The application user created in every fixture cluster.
pub const APP_USER: &str = "app";
/// Its password.
pub const APP_PASSWORD: &str = "app-secret";
/// Its database.
pub const APP_DB: &str = "app";

/// What the auth file holds for `app`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// The plain password.
    Plain,
    /// `md5` + md5(password + user).
    Md5,
    /// The SCRAM verifier copied from the server's `pg_authid`.
    ScramVerifier,
}

/// How to set pgvane up.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `auth_type` in the config.
    pub auth_type: &'static str,
    /// The secret stored for `app` in the auth file.
    pub secret: SecretKind,
    /// Extra lines for the `[pgvane]` table (e.g. `default_pool_size = 1`).
    pub settings: String,
    /// Extra lines for the `[databases.app]` table.
    pub database: String,
    /// Raw TOML appended after the `[databases.app]` table, e.g. `[[plugins]]` entries.
    pub extra: String,
    /// How the server authenticates `app` (pg_hba.conf method): `scram-sha-256`, `md5`
    /// (the password is then stored as an MD5 hash) or `password` (clear text).
    pub server_auth: &'static str,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            auth_type: "scram-sha-256",
            secret: SecretKind::ScramVerifier,
            settings: String::new(),
            database: String::new(),
            server_auth: "scram-sha-256",
            extra: String::new(),
        }
    }
}

/// Makes the server authenticate `app` with `method`; for `md5` the password is re-stored as an MD5 hash.
async fn set_server_auth(cluster: &PgCluster, method: &str) -> Result<()> {
    let hba = format!(
        "host all {APP_USER} 127.0.0.1/32 {method}\nhost all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n"
    );
    std::fs::write(cluster.data_dir().join("pg_hba.conf"), hba)?;
    let encryption = if method == "md5" { "md5" } else { "scram-sha-256" };
    cluster
        .exec(&format!(
            "set password_encryption = '{encryption}'; alter user {APP_USER} password {}; select pg_reload_conf()",
            quote_literal(APP_PASSWORD)
        ))
        .await
}

/// A cluster and a pgvane in front of it.
pub struct Proxied {
    /// The PostgreSQL cluster.
    pub cluster: PgCluster,
    /// The pgvane process.
    pub pgvane: Pgvane,
}

impl Proxied {
    /// Starts a cluster with the `app` user and database, and pgvane in front of it.
    pub async fn start(options: ProxyOptions) -> Result<Proxied> {
        let cluster = PgCluster::start().await?;
        cluster.create_user(APP_USER, APP_PASSWORD).await?;
        cluster.create_database(APP_DB, APP_USER).await?;
        if options.server_auth != "scram-sha-256" {
            set_server_auth(&cluster, options.server_auth).await?;
        }
        let secret = match options.secret {
            SecretKind::Plain => APP_PASSWORD.to_owned(),
            SecretKind::Md5 => {
                let client = cluster.connect("postgres", "postgres", "postgres").await?;
                let sql = format!("select 'md5' || md5({})", quote_literal(&format!("{APP_PASSWORD}{APP_USER}")));
                client.query_one(sql.as_str(), &[]).await?.get(0)
            }
            SecretKind::ScramVerifier => cluster.scram_verifier(APP_USER).await?,
        };
        let config = format!(
            "[pgvane]\nlisten_port = 0\nauth_type = \"{}\"\nauth_file = \"userlist.txt\"\n{}\n\n\
             [databases.app]\nhost = \"127.0.0.1\"\nport = {}\n{}\n\n{}\n",
            options.auth_type,
            options.settings,
            cluster.port(),
            options.database,
            options.extra,
        );
        let userlist = format!("\"{APP_USER}\" \"{secret}\"\n");
        let pgvane = Pgvane::start(&config, &[("userlist.txt", &userlist)]).await?;
        Ok(Proxied { cluster, pgvane })
    }

    /// Starts with the default options.
    pub async fn default_setup() -> Result<Proxied> {
        Self::start(ProxyOptions::default()).await
    }

    /// pgvane's port.
    pub fn port(&self) -> u16 {
        self.pgvane.port()
    }

    /// A tokio-postgres client connected through pgvane as `app`.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        Ok(connect_via(self.port(), APP_USER, APP_PASSWORD, APP_DB).await?.0)
    }

    /// A superuser client connected to the cluster directly, to look at the server side.
    pub async fn direct_superuser(&self) -> Result<tokio_postgres::Client> {
        self.cluster.connect("postgres", "postgres", APP_DB).await
    }
}

/// The path of an example plugin's component (`regex_router`, `query_rewrite`, `rw_split`,
/// `tenant_guard`, `hostile_fixture`), building all of them once per test process if needed.
/// (The Python and JavaScript plugins are not built here: tests/tests/languages.rs expects
/// `plugins/build.sh` to have built them.)
pub fn plugin_path(name: &str) -> Result<std::path::PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/plugins").join(format!("{name}.wasm"));
    if !path.exists() {
        BUILT
            .get_or_init(|| {
                let status = std::process::Command::new("bash")
                    .arg(root.join("plugins/build.sh"))
                    .arg("--rust")
                    .status()
                    .map_err(|e| e.to_string())?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("plugins/build.sh failed: {status}"))
                }
            })
            .clone()
            .map_err(anyhow::Error::msg)?;
    }
    anyhow::ensure!(path.exists(), "{} was not built", path.display());
    Ok(path)
}

/// The server error (SQLSTATE, message…) somewhere in an error's chain, if there is one.
pub fn db_error(err: &anyhow::Error) -> Option<&tokio_postgres::error::DbError> {
    err.chain().find_map(|e| {
        e.downcast_ref::<tokio_postgres::error::DbError>()
            .or_else(|| e.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.as_db_error()))
    })
}

/// The SQLSTATE of the server error in an error's chain.
pub fn sqlstate(err: &anyhow::Error) -> Option<String> {
    db_error(err).map(|e| e.code().code().to_owned())
}

/// Connects through pgvane (or a cluster) at `port` expecting the login to fail; returns the error.
pub async fn login_error(port: u16, user: &str, password: &str, db: &str) -> anyhow::Error {
    match connect_via(port, user, password, db).await {
        Ok(_) => panic!("login as {user} to {db} on port {port} succeeded but must fail"),
        Err(e) => e,
    }
}

/// A row of a console result: column → value.
pub type ConsoleRow = std::collections::BTreeMap<String, String>;

/// `SHOW <what>` on the admin console of the pgvane at `port`, over tokio-postgres, as rows of
/// column → value (NULL as "").
pub async fn console_rows(port: u16, what: &str) -> Result<Vec<ConsoleRow>> {
    let (console, _task) = connect_via(port, APP_USER, APP_PASSWORD, "pgvane").await?;
    let mut rows = Vec::new();
    for message in console.simple_query(&format!("SHOW {what}")).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let columns = row.columns().iter().enumerate();
            rows.push(columns.map(|(i, c)| (c.name().to_owned(), row.get(i).unwrap_or("").to_owned())).collect());
        }
    }
    Ok(rows)
}

impl Proxied {
    /// Runs `sql` on the admin console with `psql --csv` as `app` (who must be in
    /// `admin_users`): Ok(stdout) when it succeeded, Err(stderr) when psql reported an error.
    pub async fn console(&self, sql: &str) -> Result<std::result::Result<String, String>> {
        let (port, sql) = (self.port(), sql.to_owned());
        let out = tokio::task::spawn_blocking(move || {
            crate::psql(port, APP_USER, APP_PASSWORD, "pgvane", &["--csv", "-c", &sql])
        })
        .await??;
        Ok(if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        })
    }

    /// `SHOW <what>` on the admin console, as rows.
    pub async fn show(&self, what: &str) -> Result<Vec<ConsoleRow>> {
        let out = self.console(&format!("SHOW {what}")).await?.map_err(anyhow::Error::msg)?;
        let mut lines = out.lines();
        let header = csv_fields(lines.next().unwrap_or_default());
        Ok(lines.map(|line| header.iter().cloned().zip(csv_fields(line)).collect()).collect())
    }
}

/// Splits one line of `psql --csv` output (fields holding `,` or `"` are quoted).
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().map(|f| f as &mut String);
        match (c, quoted, field) {
            ('"', true, Some(field)) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _, _) => quoted = !quoted,
            (',', false, _) => fields.push(String::new()),
            (c, _, Some(field)) => field.push(c),
            (_, _, None) => {}
        }
    }
    fields
}
