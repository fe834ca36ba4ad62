//! Client authentication: trust, MD5 and SCRAM-SHA-256 (with -PLUS channel binding over TLS)
//! against the auth file, or a TLS client certificate (`cert`).
//!
//! An unknown user and a wrong password look the same to the client: the same exchange (a
//! mock SCRAM exchange for unknown users) and the same 28P01 error.

use crate::auth::md5;
use crate::auth::scram::{ScramKeys, ScramVerifier, ServerExchange};
use crate::auth::userlist::{Secret, Userlist};
use crate::config::AuthType;
use crate::protocol::messages::{self, tag, Authentication, ErrorResponse};

use super::client::ClientConn;
use super::SessionError;

/// PostgreSQL's limit on an authentication message (`PG_MAX_AUTH_TOKEN_LENGTH`).
const MAX_AUTH_MESSAGE_BYTES: usize = 65_535;

/// Iterations for verifiers pgvane derives from plain passwords in the auth file.
const SCRAM_ITERATIONS: u32 = 4096;

/// What a successful authentication yields beyond "yes".
#[derive(Debug, Default)]
pub struct Authenticated {
    /// SCRAM keys proven by the client, usable to log in to a server with the same verifier.
    pub scram_keys: Option<ScramKeys>,
}

/// Runs the exchange `auth_type` asks for. On success nothing has been sent yet to say so:
/// the caller sends AuthenticationOk.
pub async fn authenticate(
    client: &mut ClientConn,
    auth_type: AuthType,
    userlist: Option<&Userlist>,
    user: &str,
) -> Result<Authenticated, SessionError> {
    let secret = userlist.and_then(|u| u.get(user));
    match (auth_type, secret) {
        (AuthType::Trust, _) => Ok(Authenticated::default()),
        (AuthType::Cert, _) => {
            // The certificate was verified against client_tls_ca_file in the handshake
            // (config validation ensures verify-ca/verify-full); its CommonName names the user.
            match crate::tls::peer_common_name(&client.stream) {
                Some(cn) if cn == user => Ok(Authenticated::default()),
                cn => {
                    tracing::info!(
                        user,
                        certificate_cn = cn.as_deref().unwrap_or(""),
                        "certificate does not name the user"
                    );
                    Err(SessionError::Refused(ErrorResponse::fatal(
                        "28000",
                        format!("certificate authentication failed for user \"{user}\""),
                    )))
                }
            }
        }
        (AuthType::Md5, Some(Secret::Scram(verifier))) => scram(client, user, Some(verifier.clone())).await,
        (AuthType::Md5, Some(Secret::Plain(password))) => {
            md5_exchange(client, user, |salt| Some(md5::md5_response_from_password(user, password, salt))).await
        }
        (AuthType::Md5, Some(Secret::Md5(hash))) => {
            md5_exchange(client, user, |salt| Some(md5::md5_response_from_hash(hash, salt))).await
        }
        (AuthType::Md5, None) => md5_exchange(client, user, |_| None).await,
        (AuthType::ScramSha256, Some(Secret::Scram(verifier))) => scram(client, user, Some(verifier.clone())).await,
        (AuthType::ScramSha256, Some(Secret::Plain(password))) => {
            let salt: [u8; 16] = rand::random();
            scram(client, user, Some(ScramVerifier::from_password(password, &salt, SCRAM_ITERATIONS))).await
        }
        (AuthType::ScramSha256, Some(Secret::Md5(_))) => {
            tracing::warn!(user, "auth_file holds an MD5 hash for this user; SCRAM authentication is impossible");
            scram(client, user, None).await
        }
        (AuthType::ScramSha256, None) => scram(client, user, None).await,
    }
}

/// The one error for every failed login, whatever the reason.
fn failed(user: &str) -> SessionError {
    SessionError::Refused(ErrorResponse::fatal("28P01", format!("password authentication failed for user \"{user}\"")))
}

/// Reads the client's next `p` message body.
async fn read_password_message(client: &mut ClientConn) -> Result<Vec<u8>, SessionError> {
    let frame = client.read_frame(MAX_AUTH_MESSAGE_BYTES).await?;
    if frame.tag() != tag::PASSWORD {
        return Err(SessionError::Refused(ErrorResponse::fatal(
            "08P01",
            format!("expected password response, got message type {}", frame.tag()),
        )));
    }
    Ok(frame.body().to_vec())
}

/// MD5: `expected(salt)` is the right answer, or `None` when there is none (unknown user).
async fn md5_exchange(
    client: &mut ClientConn,
    user: &str,
    expected: impl FnOnce([u8; 4]) -> Option<String>,
) -> Result<Authenticated, SessionError> {
    let salt: [u8; 4] = rand::random();
    Authentication::Md5Password { salt }.encode(&mut client.out);
    client.flush().await?;
    let body = read_password_message(client).await?;
    let response = messages::parse_password(&body)?;
    match expected(salt) {
        Some(expected) if md5::verify(&expected, response.as_bytes()) => Ok(Authenticated::default()),
        _ => Err(failed(user)),
    }
}

/// SCRAM-SHA-256; `verifier: None` runs the mock exchange that always fails at the end.
async fn scram(
    client: &mut ClientConn,
    user: &str,
    verifier: Option<ScramVerifier>,
) -> Result<Authenticated, SessionError> {
    let protocol_error =
        |e: crate::auth::scram::ScramError| SessionError::Refused(ErrorResponse::fatal("08P01", e.to_string()));
    let malformed = |e: crate::auth::scram::ScramError| match e {
        crate::auth::scram::ScramError::Malformed(_) => protocol_error(e),
        e => {
            tracing::info!(user, error = %e, "SCRAM channel binding refused");
            protocol_error(e)
        }
    };
    let mut exchange = ServerExchange::new(user, verifier);
    if let Some(data) = &client.channel_binding {
        exchange = exchange.with_channel_binding(data.to_vec());
    }
    Authentication::Sasl { mechanisms: exchange.mechanisms() }.encode(&mut client.out);
    client.flush().await?;

    let body = read_password_message(client).await?;
    let (mechanism, data) = messages::parse_sasl_initial_response(&body)?;
    exchange.select_mechanism(mechanism).map_err(protocol_error)?;
    let server_first = exchange.client_first(data).map_err(malformed)?;
    Authentication::SaslContinue(server_first).encode(&mut client.out);
    client.flush().await?;

    let body = read_password_message(client).await?;
    let (server_final, keys) = exchange.client_final(&body).map_err(|e| {
        tracing::debug!(user, error = %e, "SCRAM authentication failed");
        failed(user)
    })?;
    Authentication::SaslFinal(server_final).encode(&mut client.out);
    Ok(Authenticated { scram_keys: Some(keys) })
}
