//! The start of a connection: SSL/GSS requests, cancel requests, the StartupMessage, protocol
//! version negotiation, the client limit and authentication.

use crate::clients::ClientHandle;
use crate::config::Config;
use crate::protocol::messages::{self, ErrorResponse};
use crate::protocol::{Startup, StartupParams};
use crate::shared::Shared;

use super::auth::{self, Authenticated};
use super::client::{ClientConn, TlsStart};
use super::SessionError;

/// A client that has logged in.
#[derive(Debug)]
pub struct Login {
    /// User name.
    pub user: String,
    /// Database name as the client gave it.
    pub database: String,
    /// Settings to apply on the server (with `set_config`), names validated.
    pub params: Vec<(String, String)>,
    /// What authentication proved.
    pub authenticated: Authenticated,
}

fn refuse(code: &str, message: impl Into<String>) -> SessionError {
    SessionError::Refused(ErrorResponse::fatal(code, message))
}

/// Reads the startup packet(s) and authenticates. `Ok(None)` means the connection carried a
/// CancelRequest, which has been handled.
pub async fn login(
    client: &mut ClientConn,
    handle: &ClientHandle,
    shared: &Shared,
    config: &Config,
) -> Result<Option<Login>, SessionError> {
    let tls = &config.client_tls;
    // TLS is not offered on the unix-domain socket (as PostgreSQL and PgBouncer): it is local,
    // and its file permissions say who may connect. Nor is it required there.
    let unix = client.stream.is_unix();
    let offers_tls = tls.acceptor().is_some() && !unix;
    // PostgreSQL 17's direct TLS: the client starts with a ClientHello, no SSLRequest.
    if offers_tls && client.peek_first_byte().await? == crate::tls::TLS_HANDSHAKE_BYTE {
        client.start_tls(tls, TlsStart::Direct).await?;
    }
    let (minor, params) = loop {
        match client.read_startup().await? {
            Startup::SslRequest if client.stream.is_tls() => {
                return Err(refuse("08P01", "SSLRequest on a connection that already uses TLS"))
            }
            Startup::SslRequest if offers_tls => {
                // Bytes pipelined after the SSLRequest would be read as part of the TLS
                // handshake, or worse after it as if they had been encrypted (CVE-2021-23214,
                // CVE-2021-3935): refuse them, as PostgreSQL does.
                if !client.read_buf.is_empty() {
                    return Err(refuse("08P01", "received unencrypted data after SSL request"));
                }
                client.write_raw(b"S").await.map_err(SessionError::ClientIo)?;
                client.start_tls(tls, TlsStart::SslRequest).await?;
            }
            Startup::SslRequest | Startup::GssEncRequest => {
                // Not offered (GSSAPI encryption never is): answer N, the client may go on in plain text.
                client.write_raw(b"N").await.map_err(SessionError::ClientIo)?;
            }
            Startup::Cancel { pid, secret } => {
                shared.clients.cancel(pid, secret, config).await;
                return Ok(None);
            }
            Startup::Startup { major: 3, minor, params } => break (minor, params),
            Startup::Startup { major, minor, .. } => {
                return Err(refuse(
                    "0A000",
                    format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
                ))
            }
        }
    };
    if tls.mode.requires_tls() && !client.stream.is_tls() && !unix {
        return Err(refuse(
            "28000",
            format!(
                "pgvane requires TLS (client_tls_sslmode = \"{}\"): connect with sslmode=require or stronger",
                tls.mode.as_str()
            ),
        ));
    }
    let unrecognized: Vec<&str> = params.iter().map(|(k, _)| k).filter(|k| k.starts_with("_pq_.")).collect();
    if minor > 0 || !unrecognized.is_empty() {
        messages::encode_negotiate_protocol_version(0, &unrecognized, &mut client.out);
    }
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| refuse("28000", "no PostgreSQL user name specified in startup packet"))?
        .to_owned();
    let database = params.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_owned();
    if params.get("replication").is_some_and(|r| r != "false" && r != "off" && r != "0" && r != "no") {
        return Err(refuse("0A000", "pgvane does not support replication connections"));
    }
    let settings = server_settings(&params).map_err(SessionError::Refused)?;

    let authenticated = auth::authenticate(client, config.settings.auth_type, config.userlist.as_ref(), &user).await?;
    let admin = database == crate::ADMIN_DATABASE && config.settings.admin_users.contains(&user);
    let application_name = params.get("application_name").unwrap_or("");
    if !handle.logged_in(&user, &database, application_name, config.settings.max_client_conn, admin) {
        return Err(refuse("53300", "sorry, too many clients already"));
    }
    Ok(Some(Login { user, database, params: settings, authenticated }))
}

/// Parameters that are not settings: handled by pgvane itself.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options", "fallback_application_name"];

/// The settings the client asked for in its startup packet, including those in `options`
/// (`-c name=value` and `--name=value`), in order. `fallback_application_name` becomes
/// `application_name` when that is not given, as libpq intends.
pub fn server_settings(params: &StartupParams) -> Result<Vec<(String, String)>, ErrorResponse> {
    let mut settings = Vec::new();
    if params.get("application_name").is_none() {
        if let Some(fallback) = params.get("fallback_application_name") {
            settings.push(("application_name".to_owned(), fallback.to_owned()));
        }
    }
    for (name, value) in params.iter() {
        if NOT_SETTINGS.contains(&name) || name.starts_with("_pq_.") {
            continue;
        }
        settings.push((checked_name(name)?, value.to_owned()));
    }
    if let Some(options) = params.get("options") {
        settings.extend(parse_options(options)?);
    }
    Ok(settings)
}

/// Only plain setting names (letters, digits, `_`, `.`) pass, as PostgreSQL knows no others.
fn checked_name(name: &str) -> Result<String, ErrorResponse> {
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if plain {
        Ok(name.to_owned())
    } else {
        Err(ErrorResponse::fatal("42704", format!("unrecognized configuration parameter \"{name}\"")))
    }
}

/// Splits `options` like PostgreSQL's `pg_split_opts` (spaces separate, `\` escapes) and
/// reads `-c name=value`, `-cname=value` and `--name=value`.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, ErrorResponse> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let unsupported = |w: &str| ErrorResponse::fatal("0A000", format!("unsupported startup option \"{w}\" in options"));
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let assignment = if w == "-c" {
            words.next().ok_or_else(|| unsupported(&w))?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(unsupported(&w));
        };
        let (name, value) = assignment.split_once('=').ok_or_else(|| unsupported(&assignment))?;
        // PostgreSQL accepts '-' for '_' in names given on the command line.
        settings.push((checked_name(&name.replace('-', "_"))?, value.to_owned()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> StartupParams {
        StartupParams::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn settings_come_from_params_and_options() {
        let p = params(&[
            ("user", "u"),
            ("database", "d"),
            ("fallback_application_name", "psql"),
            ("DateStyle", "ISO, DMY"),
            ("options", "-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB -c x.y=a\\ b"),
        ]);
        assert_eq!(
            server_settings(&p).unwrap(),
            pairs(&[
                ("application_name", "psql"),
                ("DateStyle", "ISO, DMY"),
                ("search_path", "a,b"),
                ("statement_timeout", "5s"),
                ("work_mem", "1MB"),
                ("x.y", "a b"),
            ])
        );
    }

    #[test]
    fn application_name_beats_the_fallback() {
        let p = params(&[("user", "u"), ("application_name", "app"), ("fallback_application_name", "psql")]);
        assert_eq!(server_settings(&p).unwrap(), pairs(&[("application_name", "app")]));
    }

    #[test]
    fn hostile_names_and_options_are_refused() {
        let p = params(&[("user", "u"), ("x; DROP TABLE t", "1")]);
        assert_eq!(server_settings(&p).unwrap_err().code(), "42704");
        let p = params(&[("user", "u"), ("options", "-d 5")]);
        assert_eq!(server_settings(&p).unwrap_err().code(), "0A000");
        let p = params(&[("user", "u"), ("options", "-c")]);
        assert!(server_settings(&p).is_err());
        let p = params(&[("user", "u"), ("options", "-c noequals")]);
        assert!(server_settings(&p).is_err());
    }
}
