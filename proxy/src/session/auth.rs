//! Client authentication: trust, MD5 and SCRAM-SHA-256 (with -PLUS channel binding over TLS)
//! against the auth file, or a TLS client certificate (`cert`).
//!
//! A failed login tells the client nothing but "no": an unknown user, a wrong password and
//! a user whose secret cannot serve the method all get the same exchange and the same
//! `FATAL 28P01`.
//!
//! - SCRAM: an unknown user gets a mock exchange whose salt is the one a plain password of
//!   that name would get ([`crate::auth::scram::user_salt`], stable per name for the life of
//!   the process, unpredictable from outside) and whose iteration count is the one derived
//!   verifiers use ([`Userlist::scram_iterations`]). Plain passwords' verifiers are derived
//!   once per auth-file load, so a login runs no PBKDF2 at all, and both paths do the same
//!   work: one HMAC for the proof, checked in constant time, then the mock flag.
//! - MD5: the salt is random per attempt (the protocol wants it so); an unknown user's
//!   answer is checked against a response computed as for a real one, then refused.
//!   Unknown users get the exchange most users of the file get (SCRAM when most secrets are
//!   SCRAM verifiers, MD5 otherwise), as PostgreSQL picks by `password_encryption`.
//!
//! What remains visible: a user stored as a SCRAM secret keeps that secret's salt across
//! restarts while pgvane's own salts change with the process, and a secret whose iteration
//! count differs from most of the file's shows that count; with `auth_type = "md5"`, users of
//! the minority kind of secret get the other exchange.

use crate::auth::md5;
use crate::auth::scram::{ScramKeys, ServerExchange, DEFAULT_ITERATIONS};
use crate::auth::userlist::{Secret, Userlist};
use crate::config::AuthType;
use crate::protocol::messages::{self, tag, Authentication, ErrorResponse};

use super::client::ClientConn;
use super::SessionError;

/// PostgreSQL's limit on an authentication message (`PG_MAX_AUTH_TOKEN_LENGTH`).
const MAX_AUTH_MESSAGE_BYTES: usize = 65_535;

/// The stored MD5 hash an unknown user's answer is checked against, so that an MD5 login
/// does the same work whether the user exists or not (it never matches a real answer: no
/// one knows a password hashing to it, and the login fails regardless).
const MOCK_MD5_HASH: &str = "md500000000000000000000000000000000";

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
        (AuthType::Md5, Some(Secret::Scram(verifier))) => {
            scram(client, user, ServerExchange::new(user, Some(verifier.clone()))).await
        }
        (AuthType::Md5, Some(Secret::Plain(password))) => {
            md5_exchange(client, user, |salt| (md5::md5_response_from_password(user, password, salt), true)).await
        }
        (AuthType::Md5, Some(Secret::Md5(hash))) => {
            md5_exchange(client, user, |salt| (md5::md5_response_from_hash(hash, salt), true)).await
        }
        (AuthType::Md5, None) if userlist.is_some_and(Userlist::mostly_scram) => {
            scram(client, user, mock_exchange(userlist, user)).await
        }
        (AuthType::Md5, None) => {
            md5_exchange(client, user, |salt| (md5::md5_response_from_hash(MOCK_MD5_HASH, salt), false)).await
        }
        (AuthType::ScramSha256, _) => {
            let exchange = match userlist.and_then(|u| u.scram_verifier(user)) {
                Some(verifier) => ServerExchange::new(user, Some(verifier.clone())),
                None => {
                    match secret {
                        Some(Secret::Md5(_)) => tracing::warn!(
                            user,
                            "auth_file holds an MD5 hash for this user; SCRAM authentication is impossible"
                        ),
                        Some(Secret::Plain(_)) => tracing::error!(
                            user,
                            "no SCRAM verifier was derived for this user's password; the login is refused"
                        ),
                        Some(Secret::Scram(_)) | None => {}
                    }
                    mock_exchange(userlist, user)
                }
            };
            scram(client, user, exchange).await
        }
    }
}

/// The mock SCRAM exchange for `user`, with the iteration count real verifiers show.
fn mock_exchange(userlist: Option<&Userlist>, user: &str) -> ServerExchange {
    ServerExchange::mock(user, userlist.map_or(DEFAULT_ITERATIONS, Userlist::scram_iterations))
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

/// MD5: `expected(salt)` is the answer to check and whether it may let the client in (false
/// for an unknown user: the answer is still computed and checked, then refused).
async fn md5_exchange(
    client: &mut ClientConn,
    user: &str,
    expected: impl FnOnce([u8; 4]) -> (String, bool),
) -> Result<Authenticated, SessionError> {
    let salt: [u8; 4] = rand::random();
    Authentication::Md5Password { salt }.encode(&mut client.out);
    client.flush().await?;
    let body = read_password_message(client).await?;
    let response = messages::parse_password(&body)?;
    let (expected, real) = expected(salt);
    if md5::verify(&expected, response.as_bytes()) && real {
        Ok(Authenticated::default())
    } else {
        Err(failed(user))
    }
}

/// SCRAM-SHA-256 with `exchange` (a mock one always fails at the end).
async fn scram(
    client: &mut ClientConn,
    user: &str,
    mut exchange: ServerExchange,
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
