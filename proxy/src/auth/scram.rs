//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, and SCRAM-SHA-256-PLUS with
//! the tls-server-end-point channel binding (RFC 5929) over TLS.
//!
//! [`ServerExchange`] is pgvane acting as the server, checking a client against a stored
//! [`ScramVerifier`]. [`ClientExchange`] is pgvane acting as the client, logging in to a
//! PostgreSQL server with either a password or the [`ScramKeys`] an earlier
//! [`ServerExchange`] recovered from a client (the way PgBouncer logs in when its
//! `auth_file` holds only a verifier).
//!
//! The message formats follow PostgreSQL's `auth-scram.c` and libpq's `fe-auth-scram.c`:
//! the username inside the SCRAM messages is ignored (the startup packet names the user),
//! libpq sends it empty, and nonces are base64 of 18 random bytes.
//!
//! PostgreSQL runs passwords through SASLprep before hashing them. This module hashes the
//! password's bytes as they are. For ASCII passwords that is the same thing (SASLprep leaves
//! them unchanged, or rejects control characters, after which PostgreSQL also uses the raw
//! bytes); a non-ASCII password that SASLprep would change (NFKC normalisation, non-ASCII
//! spaces, characters mapped to nothing) gives different keys than PostgreSQL computes.

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::constant_time_eq;

/// The SASL mechanism name, as listed in AuthenticationSASL.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The SASL mechanism with channel binding, offered over TLS.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The only channel-binding type PostgreSQL (and pgvane) supports.
pub const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";

/// The most PBKDF2 iterations [`ClientExchange`] will compute for a server, so that a
/// hostile server cannot make pgvane spin.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Length in bytes of SHA-256 digests and of every SCRAM key.
const KEY_LEN: usize = 32;

/// Random bytes in a nonce before base64 (PostgreSQL's SCRAM_RAW_NONCE_LEN).
const RAW_NONCE_LEN: usize = 18;

/// Iteration count of verifiers pgvane makes itself (derived from plain passwords, or mock
/// ones for unknown users) when nothing else decides it (PostgreSQL's
/// SCRAM_DEFAULT_ITERATIONS).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of the salts pgvane makes (PostgreSQL's SCRAM_DEFAULT_SALT_LEN).
const SALT_LEN: usize = 16;

/// Length of the per-process secret salts are derived with (PostgreSQL's MOCK_AUTH_NONCE_LEN).
const SALT_SECRET_LEN: usize = 32;

/// Why a SCRAM exchange failed.
///
/// Any error ends the exchange: later steps return [`ScramError::OutOfOrder`].
/// No variant carries text sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A step was called in the wrong order, or after the exchange had ended.
    #[error("SCRAM step called out of order")]
    OutOfOrder,
    /// The message does not follow the SCRAM grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// The client asked for channel binding (`p=...`), which is not offered.
    #[error("client requires SCRAM channel binding, which is not offered")]
    ChannelBindingRequired,
    /// The client sent an authorization identity (`a=...`), which is not supported.
    #[error("client uses an authorization identity, which is not supported")]
    AuthzidNotSupported,
    /// The other side requires a SCRAM extension (`m=...`), none of which are supported.
    #[error("peer requires an unsupported SCRAM extension")]
    ExtensionNotSupported,
    /// The client-final-message's channel-binding attribute does not repeat its gs2 header
    /// (and, with channel binding, the binding data of this TLS connection).
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client chose a mechanism that is not offered.
    #[error("client selected an invalid SASL authentication mechanism")]
    InvalidMechanism,
    /// The client chose SCRAM-SHA-256-PLUS but sent no channel binding, or chose
    /// SCRAM-SHA-256 and sent some.
    #[error("the SCRAM gs2 header does not match the selected mechanism")]
    MechanismMismatch,
    /// The client asked for a channel-binding type other than tls-server-end-point.
    #[error("unsupported SCRAM channel-binding type")]
    UnsupportedChannelBindingType,
    /// The client said it supports channel binding but thinks the server does not, while it
    /// does: someone between them removed SCRAM-SHA-256-PLUS from the offer.
    #[error(
        "client supports SCRAM channel binding but thinks the server does not; it does (possible downgrade attack)"
    )]
    ChannelBindingDowngrade,
    /// The nonce does not extend, or repeat, the one sent earlier.
    #[error("invalid SCRAM response (nonce mismatch)")]
    NonceMismatch,
    /// The server's iteration count is zero, unparsable or above [`MAX_ITERATIONS`].
    #[error("invalid SCRAM iteration count")]
    InvalidIterations,
    /// The client's proof is wrong: a wrong password, or a user without a usable verifier.
    #[error("invalid SCRAM client proof")]
    InvalidProof,
    /// The server's signature is wrong: it does not know the same secret.
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=...`; this is its text, non-printable
    /// characters replaced by `?`.
    #[error("error received from server in SCRAM exchange: {0}")]
    Server(String),
}

/// A stored SCRAM-SHA-256 secret, as in PostgreSQL's `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt, decoded.
    pub salt: Vec<u8>,
    /// SHA-256 of the ClientKey.
    pub stored_key: [u8; KEY_LEN],
    /// HMAC of "Server Key" under the salted password.
    pub server_key: [u8; KEY_LEN],
}

impl ScramVerifier {
    /// Parses PostgreSQL's `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    ///
    /// Returns `None` unless the iteration count is positive, the salt is non-empty base64
    /// and both keys are base64 of 32 bytes.
    pub fn parse(s: &str) -> Option<ScramVerifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iterations_and_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iterations_and_salt.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;

        let iterations: u32 = iterations.parse().ok()?;
        let salt = BASE64.decode(salt).ok()?;
        if iterations == 0 || salt.is_empty() {
            return None;
        }
        Some(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// The verifier pgvane uses for `user` whose auth-file secret is the plain `password`:
    /// salted with [`user_salt`], so that it shows the salt a mock exchange for the same name
    /// would. Runs PBKDF2: call it where the auth file is loaded, never on a session's path.
    pub fn derived(user: &str, password: &str, iterations: u32) -> ScramVerifier {
        ScramVerifier::from_password(password, &user_salt(user), iterations)
    }

    /// Computes the verifier PostgreSQL would store for `password` with this salt and
    /// iteration count (an iteration count of 0 is taken as 1).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let iterations = iterations.max(1);
        let keys = ScramKeys::from_password(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// The keys a successful client exchange proves: enough to log in to a server that holds
/// the same verifier, without knowing the password (what PgBouncer does when auth_file
/// holds only a verifier).
#[derive(Clone)]
pub struct ScramKeys {
    /// The ClientKey, recovered from the client's proof.
    pub client_key: [u8; KEY_LEN],
    /// The ServerKey, from the verifier.
    pub server_key: [u8; KEY_LEN],
}

impl ScramKeys {
    /// Derives both keys from a password: SaltedPassword is PBKDF2-HMAC-SHA-256 of its
    /// SASLprep form (RFC 4013), or of the password as is when SASLprep refuses it, exactly
    /// as PostgreSQL and libpq do.
    fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let prepared = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
        let salted_password = pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(prepared.as_bytes(), salt, iterations);
        ScramKeys {
            client_key: hmac_sha256(&salted_password, b"Client Key"),
            server_key: hmac_sha256(&salted_password, b"Server Key"),
        }
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramKeys { <redacted> }")
    }
}

/// The gs2 channel-binding flag of a client-first-message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gs2Flag {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but thinks the server does not.
    ServerLacks,
    /// `p=tls-server-end-point`: the client binds to the TLS connection.
    Binding,
}

/// What the server side knows of channel binding.
#[derive(Clone)]
enum ServerBinding {
    /// Not over TLS (or no binding data): only SCRAM-SHA-256.
    Unsupported,
    /// Over TLS: SCRAM-SHA-256-PLUS is offered with this tls-server-end-point data.
    Offered(Vec<u8>),
    /// The client chose SCRAM-SHA-256-PLUS.
    Selected(Vec<u8>),
}

/// The `c=` value a client-final-message must carry: base64 of the gs2 header followed by
/// the binding data (none without binding: "biws" for "n,,", "eSws" for "y,,").
fn channel_binding_attribute(gs2_header: &str, data: &[u8]) -> String {
    let mut input = Vec::with_capacity(gs2_header.len() + data.len());
    input.extend_from_slice(gs2_header.as_bytes());
    input.extend_from_slice(data);
    BASE64.encode(input)
}

/// Where a [`ServerExchange`] stands.
enum ServerState {
    /// Waiting for the client-first-message.
    AwaitingClientFirst,
    /// The server-first-message was sent; waiting for the client-final-message.
    AwaitingClientFinal(ServerFirstSent),
    /// Finished, successfully or not.
    Done,
}

/// What the server remembers between its two steps.
struct ServerFirstSent {
    /// The `c=` value the client-final-message must carry.
    channel_binding: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
}

/// pgvane as the SCRAM server, authenticating a client.
pub struct ServerExchange {
    /// The user's verifier, or a mock one with zero keys.
    verifier: ScramVerifier,
    /// Whether `verifier` is a mock, so that the exchange must fail.
    mock: bool,
    state: ServerState,
    binding: ServerBinding,
}

impl ServerExchange {
    /// `verifier: None` means the user is unknown (or has no usable secret): the same as
    /// [`ServerExchange::mock`] with [`DEFAULT_ITERATIONS`].
    ///
    /// For a user whose secret is a plain password, pass a verifier derived once, with
    /// [`ScramVerifier::derived`] (the user list does it when it is loaded).
    pub fn new(user: &str, verifier: Option<ScramVerifier>) -> ServerExchange {
        match verifier {
            Some(verifier) => ServerExchange::with_verifier(verifier, false),
            None => ServerExchange::mock(user, DEFAULT_ITERATIONS),
        }
    }

    /// A mock exchange for a user without a usable verifier: the salt is [`user_salt`], the
    /// one a plain password of this user would get, and `iterations` should be what real
    /// verifiers show (see `Userlist::scram_iterations`), so the client cannot tell unknown
    /// users from wrong passwords; the final step always fails.
    pub fn mock(user: &str, iterations: u32) -> ServerExchange {
        let verifier = ScramVerifier {
            iterations: iterations.max(1),
            salt: user_salt(user),
            stored_key: [0; KEY_LEN],
            server_key: [0; KEY_LEN],
        };
        ServerExchange::with_verifier(verifier, true)
    }

    fn with_verifier(verifier: ScramVerifier, mock: bool) -> ServerExchange {
        ServerExchange { verifier, mock, state: ServerState::AwaitingClientFirst, binding: ServerBinding::Unsupported }
    }

    /// Offers SCRAM-SHA-256-PLUS too, binding to a TLS connection whose tls-server-end-point
    /// data is `data`. A client that then claims the server lacks channel binding (`y`) is
    /// refused: the offer was stripped on the way.
    pub fn with_channel_binding(mut self, data: Vec<u8>) -> ServerExchange {
        self.binding = ServerBinding::Offered(data);
        self
    }

    /// The mechanisms to list in AuthenticationSASL, preferred first.
    pub fn mechanisms(&self) -> Vec<String> {
        match self.binding {
            ServerBinding::Unsupported => vec![MECHANISM.into()],
            _ => vec![MECHANISM_PLUS.into(), MECHANISM.into()],
        }
    }

    /// Takes the mechanism the client chose in its SASLInitialResponse.
    pub fn select_mechanism(&mut self, mechanism: &str) -> Result<(), ScramError> {
        match (mechanism, &self.binding) {
            (MECHANISM, _) => Ok(()),
            (MECHANISM_PLUS, ServerBinding::Offered(data)) => {
                self.binding = ServerBinding::Selected(data.clone());
                Ok(())
            }
            _ => {
                self.state = ServerState::Done;
                Err(ScramError::InvalidMechanism)
            }
        }
    }

    /// Takes the client-first-message (the data of SASLInitialResponse), returns the
    /// server-first-message.
    ///
    /// Accepts the gs2 headers "n,," and "y,,"; rejects an authorization identity and
    /// channel binding ("p=..."). The username in the message is ignored, as PostgreSQL
    /// ignores it.
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(ScramError::OutOfOrder);
        }
        // Until this step succeeds, the exchange counts as failed.
        self.state = ServerState::Done;

        let message = message_text(data)?;
        let (gs2_flag, client_first_bare) = parse_gs2_header(message)?;
        let gs2_header = message.get(..message.len() - client_first_bare.len()).unwrap_or_default();
        let channel_binding = match (gs2_flag, &self.binding) {
            (Gs2Flag::Binding, ServerBinding::Selected(data)) => channel_binding_attribute(gs2_header, data),
            (Gs2Flag::Binding, ServerBinding::Unsupported) => return Err(ScramError::ChannelBindingRequired),
            (Gs2Flag::Binding, ServerBinding::Offered(_)) => return Err(ScramError::MechanismMismatch),
            (_, ServerBinding::Selected(_)) => return Err(ScramError::MechanismMismatch),
            (Gs2Flag::ServerLacks, ServerBinding::Offered(_)) => return Err(ScramError::ChannelBindingDowngrade),
            (Gs2Flag::NotSupported | Gs2Flag::ServerLacks, _) => channel_binding_attribute(gs2_header, &[]),
        };
        let client_nonce = parse_client_first_bare(client_first_bare)?;

        let nonce = format!("{client_nonce}{}", random_nonce());
        let server_first = format!("r={nonce},s={},i={}", BASE64.encode(&self.verifier.salt), self.verifier.iterations);
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal(ServerFirstSent {
            channel_binding,
            client_first_bare: client_first_bare.to_owned(),
            server_first,
            nonce,
        });
        Ok(reply)
    }

    /// Takes the client-final-message; verifies the channel-binding echo ("c=biws" for
    /// "n", "c=eSws" for "y"), the nonce and the proof.
    ///
    /// On success returns the server-final-message ("v=...") and the [`ScramKeys`], the
    /// ClientKey recovered as ClientProof XOR ClientSignature. A wrong password and a mock
    /// exchange both give [`ScramError::InvalidProof`].
    pub fn client_final(&mut self, data: &[u8]) -> Result<(Vec<u8>, ScramKeys), ScramError> {
        let sent = match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::AwaitingClientFinal(sent) => sent,
            _ => return Err(ScramError::OutOfOrder),
        };

        let message = message_text(data)?;
        let client_final = parse_client_final(message)?;
        if !constant_time_eq(client_final.channel_binding.as_bytes(), sent.channel_binding.as_bytes()) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if client_final.nonce != sent.nonce {
            return Err(ScramError::NonceMismatch);
        }

        let auth_message = format!("{},{},{}", sent.client_first_bare, sent.server_first, client_final.without_proof);
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&client_final.proof, &client_signature);
        // The proof is checked even in a mock exchange, so that both take the same time.
        let proof_matches = constant_time_eq(&sha256(&client_key), &self.verifier.stored_key);
        if !proof_matches || self.mock {
            return Err(ScramError::InvalidProof);
        }

        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", BASE64.encode(server_signature));
        let keys = ScramKeys { client_key, server_key: self.verifier.server_key };
        Ok((server_final.into_bytes(), keys))
    }
}

/// How pgvane proves itself to a PostgreSQL server.
#[derive(Clone)]
pub enum ClientCredential {
    /// The user's password.
    Password(String),
    /// Keys recovered from a client's exchange; they work only if the server holds the
    /// same verifier they came from.
    Keys(ScramKeys),
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCredential::Password(_) => f.write_str("Password(<redacted>)"),
            ClientCredential::Keys(_) => f.write_str("Keys(<redacted>)"),
        }
    }
}

/// Where a [`ClientExchange`] stands.
enum ClientState {
    /// Nothing sent yet.
    Start,
    /// The client-first-message was sent.
    FirstSent { client_nonce: String, client_first_bare: String },
    /// The client-final-message was sent; the server must answer with this signature.
    FinalSent { server_signature: [u8; KEY_LEN] },
    /// Finished, successfully or not.
    Done,
}

/// Channel binding as pgvane the client uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// Not over TLS: gs2 header "n,,".
    None,
    /// Over TLS, but the server did not offer SCRAM-SHA-256-PLUS: "y,,".
    NotOffered,
    /// SCRAM-SHA-256-PLUS with this tls-server-end-point data of the server's certificate.
    TlsServerEndPoint(Vec<u8>),
}

impl ClientBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ClientBinding::None => "n,,",
            ClientBinding::NotOffered => "y,,",
            ClientBinding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The mechanism to choose.
    pub fn mechanism(&self) -> &'static str {
        match self {
            ClientBinding::TlsServerEndPoint(_) => MECHANISM_PLUS,
            _ => MECHANISM,
        }
    }
}

/// pgvane as the SCRAM client, logging in to a PostgreSQL server.
pub struct ClientExchange {
    credential: ClientCredential,
    state: ClientState,
    binding: ClientBinding,
}

impl ClientExchange {
    /// Starts an exchange that will prove `credential`, without channel binding.
    pub fn new(credential: ClientCredential) -> ClientExchange {
        ClientExchange { credential, state: ClientState::Start, binding: ClientBinding::None }
    }

    /// Uses `binding` (set before [`ClientExchange::client_first`]).
    pub fn with_channel_binding(mut self, binding: ClientBinding) -> ClientExchange {
        self.binding = binding;
        self
    }

    /// The client-first-message: the gs2 header ("n,," without channel binding), empty
    /// username "n=," as libpq sends, and a fresh random nonce (base64 of 18 bytes).
    ///
    /// Calling it again starts the exchange over with a new nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_nonce = random_nonce();
        let client_first_bare = format!("n=,r={client_nonce}");
        let message = format!("{}{client_first_bare}", self.binding.gs2_header());
        self.state = ClientState::FirstSent { client_nonce, client_first_bare };
        message.into_bytes()
    }

    /// Takes the server-first-message, returns the client-final-message.
    ///
    /// With a password, SaltedPassword is PBKDF2 of it with the server's salt and
    /// iteration count (at most [`MAX_ITERATIONS`]), and ClientKey and ServerKey follow
    /// from it. With keys, they are used directly, which works only when the server's
    /// verifier is the one they came from.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let (client_nonce, client_first_bare) = match std::mem::replace(&mut self.state, ClientState::Done) {
            ClientState::FirstSent { client_nonce, client_first_bare } => (client_nonce, client_first_bare),
            _ => return Err(ScramError::OutOfOrder),
        };

        let server_first = message_text(data)?;
        let server_first_parsed = parse_server_first(server_first)?;
        let nonce = server_first_parsed.nonce;
        if nonce.len() <= client_nonce.len() || !nonce.starts_with(&client_nonce) {
            return Err(ScramError::NonceMismatch);
        }

        let keys = match &self.credential {
            ClientCredential::Password(password) => {
                ScramKeys::from_password(password, &server_first_parsed.salt, server_first_parsed.iterations)
            }
            ClientCredential::Keys(keys) => keys.clone(),
        };

        let data = match &self.binding {
            ClientBinding::TlsServerEndPoint(data) => data.as_slice(),
            _ => &[],
        };
        let without_proof = format!("c={},r={nonce}", channel_binding_attribute(self.binding.gs2_header(), data));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let stored_key = sha256(&keys.client_key);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = xor(&keys.client_key, &client_signature);

        self.state =
            ClientState::FinalSent { server_signature: hmac_sha256(&keys.server_key, auth_message.as_bytes()) };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message's signature ("v=..."); "e=..." is an error carrying
    /// the server's text.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), ScramError> {
        let expected = match std::mem::replace(&mut self.state, ClientState::Done) {
            ClientState::FinalSent { server_signature } => server_signature,
            _ => return Err(ScramError::OutOfOrder),
        };

        let message = message_text(data)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(ScramError::Server(printable(error)));
        }
        let signature = decode_key(attr_value(message, 'v')?).ok_or_else(|| malformed("invalid server signature"))?;
        if !constant_time_eq(&signature, &expected) {
            return Err(ScramError::InvalidServerSignature);
        }
        Ok(())
    }
}

/// The fields of a client-final-message.
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    /// Everything before ",p=", which the signatures cover.
    without_proof: &'a str,
    proof: [u8; KEY_LEN],
}

/// The fields of a server-first-message.
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

/// Checks that a SCRAM message is non-empty UTF-8 without NUL bytes.
fn message_text(data: &[u8]) -> Result<&str, ScramError> {
    if data.is_empty() {
        return Err(malformed("empty message"));
    }
    if data.contains(&0) {
        return Err(malformed("message contains a NUL byte"));
    }
    std::str::from_utf8(data).map_err(|_| malformed("message is not valid UTF-8"))
}

/// Splits a client-first-message into its gs2 flag and the client-first-message-bare.
fn parse_gs2_header(message: &str) -> Result<(Gs2Flag, &str), ScramError> {
    let (flag, rest) = message.split_once(',').ok_or_else(|| malformed("missing gs2 header"))?;
    let gs2_flag = match flag {
        "n" => Gs2Flag::NotSupported,
        "y" => Gs2Flag::ServerLacks,
        _ if flag == "p=tls-server-end-point" => Gs2Flag::Binding,
        _ if flag.starts_with("p=") => return Err(ScramError::UnsupportedChannelBindingType),
        _ => return Err(malformed("unexpected channel-binding flag")),
    };
    let (authzid, bare) = rest.split_once(',').ok_or_else(|| malformed("missing gs2 header"))?;
    if authzid.starts_with("a=") {
        return Err(ScramError::AuthzidNotSupported);
    }
    if !authzid.is_empty() {
        return Err(malformed("unexpected attribute in gs2 header"));
    }
    Ok((gs2_flag, bare))
}

/// Parses a client-first-message-bare ("n=user,r=nonce[,extensions]") and returns the
/// client nonce.
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    let mut attributes = bare.split(',');
    let username = attributes.next().unwrap_or_default();
    if username.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    attr_value(username, 'n')?;
    let nonce = attr_value(next_attribute(&mut attributes)?, 'r')?;
    if !is_printable(nonce) {
        return Err(malformed("invalid nonce"));
    }
    for extension in attributes {
        check_attribute(extension)?;
    }
    Ok(nonce)
}

/// Parses a client-final-message ("c=...,r=...[,extensions],p=...").
fn parse_client_final(message: &str) -> Result<ClientFinal<'_>, ScramError> {
    let (without_proof, proof) = message.rsplit_once(",p=").ok_or_else(|| malformed("missing proof"))?;
    let proof = decode_key(proof).ok_or_else(|| malformed("invalid proof"))?;

    let mut attributes = without_proof.split(',');
    let channel_binding = attr_value(attributes.next().unwrap_or_default(), 'c')?;
    let nonce = attr_value(next_attribute(&mut attributes)?, 'r')?;
    for extension in attributes {
        check_attribute(extension)?;
        if extension.starts_with("p=") {
            return Err(malformed("proof is not the last attribute"));
        }
    }
    Ok(ClientFinal { channel_binding, nonce, without_proof, proof })
}

/// Parses a server-first-message ("r=...,s=...,i=...").
fn parse_server_first(message: &str) -> Result<ServerFirst<'_>, ScramError> {
    let mut attributes = message.split(',');
    let first = attributes.next().unwrap_or_default();
    if first.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    let nonce = attr_value(first, 'r')?;
    let salt = attr_value(next_attribute(&mut attributes)?, 's')?;
    let iterations = attr_value(next_attribute(&mut attributes)?, 'i')?;
    if attributes.next().is_some() {
        return Err(malformed("garbage at end of server-first-message"));
    }

    if !is_printable(nonce) {
        return Err(malformed("invalid nonce"));
    }
    let salt = BASE64.decode(salt).map_err(|_| malformed("invalid salt"))?;
    let iterations: u32 = iterations.parse().map_err(|_| ScramError::InvalidIterations)?;
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return Err(ScramError::InvalidIterations);
    }
    Ok(ServerFirst { nonce, salt, iterations })
}

/// The next comma-separated attribute, which must be there.
fn next_attribute<'a>(attributes: &mut std::str::Split<'a, char>) -> Result<&'a str, ScramError> {
    attributes.next().ok_or_else(|| malformed("message ends too early"))
}

/// The value of `attribute` if it is named `name` ("name=value").
fn attr_value(attribute: &str, name: char) -> Result<&str, ScramError> {
    attribute
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or_else(|| ScramError::Malformed(format!("expected attribute \"{name}\"")))
}

/// Checks the generic attribute syntax, ALPHA "=" value, of an extension we ignore.
fn check_attribute(attribute: &str) -> Result<(), ScramError> {
    let mut chars = attribute.chars();
    match (chars.next(), chars.next()) {
        (Some(name), Some('=')) if name.is_ascii_alphabetic() => Ok(()),
        _ => Err(malformed("invalid attribute")),
    }
}

/// Whether `s` is a non-empty SCRAM "printable": ASCII 0x21..=0x7E except ','.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `s` with every character outside printable ASCII replaced by '?', for error messages.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

fn malformed(reason: &str) -> ScramError {
    ScramError::Malformed(reason.to_owned())
}

/// Decodes base64 that must hold exactly one 32-byte key.
fn decode_key(b64: &str) -> Option<[u8; KEY_LEN]> {
    BASE64.decode(b64).ok()?.try_into().ok()
}

/// A fresh nonce: base64 of 18 random bytes, as PostgreSQL makes them.
fn random_nonce() -> String {
    let mut raw = [0u8; RAW_NONCE_LEN];
    rand::rng().fill_bytes(&mut raw);
    BASE64.encode(raw)
}

/// The salt pgvane gives `user` when it makes a verifier itself, for a plain password in the
/// auth file or a mock one for an unknown user: HMAC-SHA-256 of the name under a per-process
/// random secret, cut to 16 bytes (like PostgreSQL's scram_mock_salt). It is the same for
/// every login and every auth-file load of this process, whether the user exists or not, and
/// unpredictable from outside; a new process draws a new secret.
pub fn user_salt(user: &str) -> Vec<u8> {
    static SALT_SECRET: OnceLock<[u8; SALT_SECRET_LEN]> = OnceLock::new();
    let secret = SALT_SECRET.get_or_init(|| {
        let mut secret = [0u8; SALT_SECRET_LEN];
        rand::rng().fill_bytes(&mut secret);
        secret
    });
    let mut message = b"pgvane scram salt\0".to_vec();
    message.extend_from_slice(user.as_bytes());
    hmac_sha256(secret, &message).iter().take(SALT_LEN).copied().collect()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// HMAC-SHA-256 of `message` under a 32-byte key.
fn hmac_sha256(key: &[u8; KEY_LEN], message: &[u8]) -> [u8; KEY_LEN] {
    // HMAC zero-pads keys shorter than SHA-256's 64-byte block, so passing the padded block
    // gives the same MAC and avoids the fallible `new_from_slice`.
    let mut block = [0u8; 64];
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    let mut mac = <Hmac<Sha256> as Mac>::new(&block.into());
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b) {
        *o ^= x;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// "foobar" with salt 00 01 .. 0f and 4096 iterations, computed with Python:
    /// ```text
    /// sp = hashlib.pbkdf2_hmac('sha256', b"foobar", bytes(range(16)), 4096)
    /// ck = hmac.new(sp, b"Client Key", 'sha256').digest()
    /// sk = hmac.new(sp, b"Server Key", 'sha256').digest()
    /// "SCRAM-SHA-256$4096:" + b64(salt) + "$" + b64(sha256(ck)) + ":" + b64(sk)
    /// ```
    const FOOBAR_VERIFIER: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$GVtA56Y/lI7cWaw+uvT029t5aIIH9Yjaj0lWHY4kSCk=:ReztaHy2G2wk1v0TdtyzDIj82oO8wMQkIOONam3o6Zg=";

    /// What PostgreSQL 15 stored for `CREATE ROLE foo LOGIN PASSWORD 'foobar'`
    /// (`SELECT rolpassword FROM pg_authid`, in `postgres --single`).
    const POSTGRES_VERIFIER: &str = "SCRAM-SHA-256$4096:nJakA6586ryZEsVYp/ow/A==$bKi3vC8WXFnrw3qzlD3GK7hgA2kGCI30rz0SNNHR3pQ=:qRlXnTUYquIf1YLJvUPWtsSKWYugzwaYFnnNIEJX6ek=";

    // RFC 7677, section 3.
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn verifier(password: &str) -> ScramVerifier {
        ScramVerifier::from_password(password, b"0123456789abcdef", 4096)
    }

    /// Runs a whole exchange; returns the keys the server recovered.
    fn run(server: &mut ServerExchange, client: &mut ClientExchange) -> Result<ScramKeys, ScramError> {
        let server_first = server.client_first(&client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let (server_final, keys) = server.client_final(&client_final)?;
        client.server_final(&server_final)?;
        Ok(keys)
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    /// The client-final-message for a password, computed from the primitives, so that
    /// tests can send messages ClientExchange never sends.
    fn client_final_for(
        password: &str,
        verifier: &ScramVerifier,
        client_first_bare: &str,
        server_first: &str,
        without_proof: &str,
    ) -> String {
        let keys = ScramKeys::from_password(password, &verifier.salt, verifier.iterations);
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&sha256(&keys.client_key), auth_message.as_bytes());
        format!("{without_proof},p={}", BASE64.encode(xor(&keys.client_key, &signature)))
    }

    fn nonce_of(server_first: &str) -> &str {
        server_first.split(',').next().and_then(|r| r.strip_prefix("r=")).unwrap()
    }

    #[test]
    fn hmac_helper_matches_hmac_crate() {
        let key = [7u8; KEY_LEN];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(b"what do ya want for nothing?");
        let expected: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
        assert_eq!(hmac_sha256(&key, b"what do ya want for nothing?"), expected);
    }

    #[test]
    fn from_password_matches_python_vector() {
        let parsed = ScramVerifier::parse(FOOBAR_VERIFIER).unwrap();
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt, salt);
        assert!(ScramVerifier::from_password("foobar", &salt, 4096) == parsed);
        assert!(ScramVerifier::from_password("foobaz", &salt, 4096) != parsed);
    }

    #[test]
    fn parses_a_real_postgres_verifier() {
        let parsed = ScramVerifier::parse(POSTGRES_VERIFIER).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt, BASE64.decode("nJakA6586ryZEsVYp/ow/A==").unwrap());
        assert_eq!(parsed.stored_key.to_vec(), BASE64.decode("bKi3vC8WXFnrw3qzlD3GK7hgA2kGCI30rz0SNNHR3pQ=").unwrap());
        assert_eq!(parsed.server_key.to_vec(), BASE64.decode("qRlXnTUYquIf1YLJvUPWtsSKWYugzwaYFnnNIEJX6ek=").unwrap());
        // Our key derivation agrees with PostgreSQL's.
        assert!(ScramVerifier::from_password("foobar", &parsed.salt, 4096) == parsed);
    }

    #[test]
    fn rejects_malformed_verifiers() {
        let good = POSTGRES_VERIFIER;
        assert!(ScramVerifier::parse(good).is_some());
        for bad in [
            "",
            "md5abc",
            &good.replace("SCRAM-SHA-256$", "SCRAM-SHA-1$"),
            &good.replace("$4096:", "$0:"),
            &good.replace("$4096:", "$-1:"),
            &good.replace("$4096:", "$lots:"),
            &good.replace("$4096:", "$4096"),
            &good.replace("nJakA6586ryZEsVYp/ow/A==", ""),
            &good.replace("nJakA6586ryZEsVYp/ow/A==", "not base64!"),
            // Stored key one byte short.
            &good.replace(
                "bKi3vC8WXFnrw3qzlD3GK7hgA2kGCI30rz0SNNHR3pQ=",
                "bKi3vC8WXFnrw3qzlD3GK7hgA2kGCI30rz0SNNHR3g==",
            ),
            &good.replace(":qRlX", "qRlX"),
            good.rsplit_once(':').unwrap().0,
        ] {
            assert!(ScramVerifier::parse(bad).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn debug_output_hides_keys() {
        let verifier = ScramVerifier::parse(POSTGRES_VERIFIER).unwrap();
        let printed = format!("{verifier:?}");
        assert!(printed.contains("4096"));
        assert!(!printed.contains("bKi3vC8"));
        assert!(!printed.contains("qRlXnTU"));

        let keys = ScramKeys { client_key: [0xab; KEY_LEN], server_key: [0xcd; KEY_LEN] };
        let printed = format!("{keys:?} {:?}", ClientCredential::Keys(keys.clone()));
        assert!(!printed.contains("171") && !printed.contains("ab"), "{printed}");
        let printed = format!("{:?}", ClientCredential::Password("hunter2".into()));
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn client_matches_rfc_7677_example() {
        let mut client = ClientExchange {
            binding: ClientBinding::None,
            credential: ClientCredential::Password("pencil".into()),
            state: ClientState::FirstSent {
                client_nonce: RFC_CLIENT_NONCE.into(),
                client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            },
        };
        let client_final = client.server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(text(&client_final), RFC_CLIENT_FINAL);
        client.server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn server_matches_rfc_7677_example() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut server = ServerExchange::new("user", Some(ScramVerifier::from_password("pencil", &salt, 4096)));
        // The server nonce is random, so check the first step's shape, then replay the
        // RFC's own server-first-message.
        let server_first = server.client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let server_first = text(&server_first);
        assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
        assert!(server_first.ends_with(",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"));
        assert_eq!(nonce_of(server_first).len(), RFC_CLIENT_NONCE.len() + 24);

        server.state = ServerState::AwaitingClientFinal(ServerFirstSent {
            channel_binding: "biws".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_first: RFC_SERVER_FIRST.into(),
            nonce: nonce_of(RFC_SERVER_FIRST).into(),
        });
        let (server_final, keys) = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(text(&server_final), RFC_SERVER_FINAL);
        let expected = ScramKeys::from_password("pencil", &salt, 4096);
        assert_eq!(keys.client_key, expected.client_key);
        assert_eq!(keys.server_key, expected.server_key);
    }

    #[test]
    fn client_first_message_looks_like_libpq() {
        let mut client = ClientExchange::new(ClientCredential::Password("x".into()));
        let first = String::from_utf8(client.client_first()).unwrap();
        let nonce = first.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(is_printable(nonce));
        assert_eq!(BASE64.decode(nonce).unwrap().len(), RAW_NONCE_LEN);
        let again = String::from_utf8(client.client_first()).unwrap();
        assert_ne!(first, again, "each exchange needs a fresh nonce");
    }

    #[test]
    fn password_round_trip_succeeds() {
        let mut server = ServerExchange::new("alice", Some(verifier("s3cret")));
        let mut client = ClientExchange::new(ClientCredential::Password("s3cret".into()));
        let keys = run(&mut server, &mut client).unwrap();
        let expected = ScramKeys::from_password("s3cret", b"0123456789abcdef", 4096);
        assert_eq!(keys.client_key, expected.client_key);
        assert_eq!(keys.server_key, expected.server_key);
        // Both sides are finished.
        assert_eq!(server.client_final(b"c=biws").err(), Some(ScramError::OutOfOrder));
        assert_eq!(client.server_final(b"v=x"), Err(ScramError::OutOfOrder));
    }

    #[test]
    fn round_trip_against_postgres_verifier() {
        let parsed = ScramVerifier::parse(POSTGRES_VERIFIER).unwrap();
        let mut server = ServerExchange::new("foo", Some(parsed.clone()));
        let mut client = ClientExchange::new(ClientCredential::Password("foobar".into()));
        run(&mut server, &mut client).unwrap();

        let mut server = ServerExchange::new("foo", Some(parsed));
        let mut client = ClientExchange::new(ClientCredential::Password("foobar ".into()));
        assert_eq!(run(&mut server, &mut client).err(), Some(ScramError::InvalidProof));
    }

    #[test]
    fn wrong_password_fails() {
        let mut server = ServerExchange::new("alice", Some(verifier("s3cret")));
        let mut client = ClientExchange::new(ClientCredential::Password("s3cret!".into()));
        assert_eq!(run(&mut server, &mut client).err(), Some(ScramError::InvalidProof));
        // The failed exchange is over.
        assert_eq!(server.client_final(b"c=biws").err(), Some(ScramError::OutOfOrder));
    }

    #[test]
    fn recovered_keys_log_in_to_a_server_with_the_same_verifier() {
        // A client logs in to pgvane with its password...
        let mut front = ServerExchange::new("alice", Some(verifier("s3cret")));
        let mut client = ClientExchange::new(ClientCredential::Password("s3cret".into()));
        let keys = run(&mut front, &mut client).unwrap();

        // ...and pgvane reuses the proved keys towards PostgreSQL, which holds the same verifier.
        let mut backend = ServerExchange::new("alice", Some(verifier("s3cret")));
        let mut passthrough = ClientExchange::new(ClientCredential::Keys(keys.clone()));
        run(&mut backend, &mut passthrough).unwrap();

        // A server with another salt (a different verifier of the same password) rejects them.
        let other = ScramVerifier::from_password("s3cret", b"another salt", 4096);
        let mut backend = ServerExchange::new("alice", Some(other));
        let mut passthrough = ClientExchange::new(ClientCredential::Keys(keys));
        assert_eq!(run(&mut backend, &mut passthrough).err(), Some(ScramError::InvalidProof));
    }

    #[test]
    fn unknown_user_gets_a_plausible_exchange_that_fails() {
        let mut server = ServerExchange::new("ghost", None);
        let mut client = ClientExchange::new(ClientCredential::Password("anything".into()));
        let client_first = client.client_first();
        let server_first = server.client_first(&client_first).unwrap();
        let server_first = text(&server_first).to_owned();

        // Looks like a normal reply: our nonce extended, a 16-byte salt, 4096 iterations.
        let client_nonce = text(&client_first).strip_prefix("n,,n=,r=").unwrap();
        let parsed = parse_server_first(&server_first).unwrap();
        assert!(parsed.nonce.starts_with(client_nonce));
        assert_eq!(parsed.nonce.len(), client_nonce.len() + 24);
        assert_eq!(parsed.salt.len(), SALT_LEN);
        assert_eq!(parsed.iterations, DEFAULT_ITERATIONS);

        let client_final = client.server_first(server_first.as_bytes()).unwrap();
        assert_eq!(server.client_final(&client_final).err(), Some(ScramError::InvalidProof));

        // A mock exchange fails even when the proof would be right: here the mock flag is
        // paired with a real verifier and the right password.
        let mut server = ServerExchange {
            verifier: verifier("pw"),
            mock: true,
            state: ServerState::AwaitingClientFirst,
            binding: ServerBinding::Unsupported,
        };
        let mut client = ClientExchange::new(ClientCredential::Password("pw".into()));
        assert_eq!(run(&mut server, &mut client).err(), Some(ScramError::InvalidProof));
    }

    #[test]
    fn mock_salt_is_stable_per_user() {
        let salt_of = |user: &str| {
            let mut server = ServerExchange::new(user, None);
            let reply = server.client_first(b"n,,n=,r=abc").unwrap();
            parse_server_first(text(&reply)).unwrap().salt
        };
        assert_eq!(salt_of("ghost"), salt_of("ghost"));
        assert_ne!(salt_of("ghost"), salt_of("phantom"));
        // The salt is not simply a hash of the name.
        assert_ne!(salt_of("ghost"), sha256(b"ghost")[..SALT_LEN].to_vec());
    }

    #[test]
    fn mock_and_derived_verifiers_look_alike() {
        let server_first = |mut server: ServerExchange| {
            let reply = server.client_first(b"n,,n=,r=abc").unwrap();
            let parsed = parse_server_first(text(&reply)).unwrap();
            (parsed.salt, parsed.iterations)
        };
        // The salt and count a mock exchange shows for "ghost" are those a plain password of
        // "ghost" gets: adding or removing the user changes nothing the client can see.
        let derived = ScramVerifier::derived("ghost", "pw", 10_000);
        assert_eq!(
            server_first(ServerExchange::mock("ghost", 10_000)),
            server_first(ServerExchange::new("ghost", Some(derived.clone())))
        );
        assert_eq!(derived.salt, user_salt("ghost"));
        assert_eq!(derived.iterations, 10_000);
        assert!(derived == ScramVerifier::derived("ghost", "pw", 10_000), "derivation is stable");
        assert_ne!(user_salt("ghost"), user_salt("ghost2"));
        // The derived verifier accepts the password.
        let mut client = ClientExchange::new(ClientCredential::Password("pw".into()));
        run(&mut ServerExchange::new("ghost", Some(derived)), &mut client).unwrap();
    }

    #[test]
    fn accepts_y_gs2_header_with_matching_channel_binding() {
        let verifier = verifier("pw");
        for (header, binding, ok) in
            [("y,,", "eSws", true), ("y,,", "biws", false), ("n,,", "eSws", false), ("n,,", "biws", true)]
        {
            let mut server = ServerExchange::new("u", Some(verifier.clone()));
            let reply = server.client_first(format!("{header}n=,r=nonce1").as_bytes()).unwrap();
            let server_first = text(&reply).to_owned();
            let client_final = client_final_for(
                "pw",
                &verifier,
                "n=,r=nonce1",
                &server_first,
                &format!("c={binding},r={}", nonce_of(&server_first)),
            );
            let result = server.client_final(client_final.as_bytes());
            if ok {
                assert!(result.is_ok(), "{header} {binding}");
            } else {
                assert_eq!(result.err(), Some(ScramError::ChannelBindingMismatch));
            }
        }
    }

    #[test]
    fn server_ignores_username_and_extensions() {
        let verifier = verifier("pw");
        let mut server = ServerExchange::new("u", Some(verifier.clone()));
        let bare = "n=someone=2Celse,r=abc,x=ext";
        let reply = server.client_first(format!("n,,{bare}").as_bytes()).unwrap();
        let server_first = text(&reply).to_owned();
        let client_final = client_final_for(
            "pw",
            &verifier,
            bare,
            &server_first,
            &format!("c=biws,r={},z=ignored", nonce_of(&server_first)),
        );
        server.client_final(client_final.as_bytes()).unwrap();
    }

    #[test]
    fn server_rejects_bad_client_first_messages() {
        let cases: [(&[u8], ScramError); 12] = [
            (b"p=tls-server-end-point,,n=,r=abc", ScramError::ChannelBindingRequired),
            (b"n,a=admin,n=,r=abc", ScramError::AuthzidNotSupported),
            (b"n,,m=ext,n=,r=abc", ScramError::ExtensionNotSupported),
            (b"", malformed("empty message")),
            (b"x,,n=,r=abc", malformed("unexpected channel-binding flag")),
            (b"n,,n=,r=", malformed("invalid nonce")),
            (b"n,,n=,r=a\x7fb", malformed("invalid nonce")),
            (b"n,,n=,r=a\0b", malformed("message contains a NUL byte")),
            (b"n,,n=\xff,r=abc", malformed("message is not valid UTF-8")),
            (b"n,,r=abc", ScramError::Malformed("expected attribute \"n\"".into())),
            (b"n,,n=", malformed("message ends too early")),
            (b"n,,n=,r=abc,9=x", malformed("invalid attribute")),
        ];
        for (message, expected) in cases {
            let mut server = ServerExchange::new("u", Some(verifier("pw")));
            assert_eq!(server.client_first(message).err(), Some(expected), "{:?}", String::from_utf8_lossy(message));
            // An error ends the exchange.
            assert_eq!(server.client_first(b"n,,n=,r=abc").err(), Some(ScramError::OutOfOrder));
        }
    }

    #[test]
    fn server_rejects_bad_client_final_messages() {
        let verifier = verifier("pw");
        let start = || {
            let mut server = ServerExchange::new("u", Some(verifier.clone()));
            let reply = server.client_first(b"n,,n=,r=abc").unwrap();
            (server, text(&reply).to_owned())
        };

        let (mut server, server_first) = start();
        let wrong_nonce = client_final_for("pw", &verifier, "n=,r=abc", &server_first, "c=biws,r=abcX");
        assert_eq!(server.client_final(wrong_nonce.as_bytes()).err(), Some(ScramError::NonceMismatch));

        let (mut server, server_first) = start();
        let good = client_final_for(
            "pw",
            &verifier,
            "n=,r=abc",
            &server_first,
            &format!("c=biws,r={}", nonce_of(&server_first)),
        );
        for bad in [
            good.replace(",p=", ",q="),
            format!("{good},x=1"),
            good.replace(",p=", ",p=AA"),
            good.replacen("c=biws,", "", 1),
        ] {
            let (mut server, _) = start();
            assert!(matches!(server.client_final(bad.as_bytes()), Err(ScramError::Malformed(_))), "{bad}");
        }
        server.client_final(good.as_bytes()).unwrap();
    }

    #[test]
    fn steps_out_of_order_are_errors() {
        let mut server = ServerExchange::new("u", Some(verifier("pw")));
        assert_eq!(server.client_final(b"c=biws,r=a,p=b").err(), Some(ScramError::OutOfOrder));

        let mut client = ClientExchange::new(ClientCredential::Password("pw".into()));
        assert_eq!(client.server_first(b"r=a,s=b,i=1").err(), Some(ScramError::OutOfOrder));
        assert_eq!(client.server_final(b"v=abc").err(), Some(ScramError::OutOfOrder));

        let mut server = ServerExchange::new("u", Some(verifier("pw")));
        let reply = server.client_first(&client.client_first()).unwrap();
        client.server_first(&reply).unwrap();
        assert_eq!(client.server_first(&reply).err(), Some(ScramError::OutOfOrder));
    }

    #[test]
    fn client_rejects_bad_server_first_messages() {
        let cases: [(&str, ScramError); 9] = [
            ("r=OTHER,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            // The server must add its own part to the nonce.
            ("r={n},s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            ("r={n}x,s=c2FsdA==,i=0", ScramError::InvalidIterations),
            ("r={n}x,s=c2FsdA==,i=10000001", ScramError::InvalidIterations),
            ("r={n}x,s=c2FsdA==,i=-1", ScramError::InvalidIterations),
            ("r={n}x,s=c2FsdA==,i=4096,x=1", malformed("garbage at end of server-first-message")),
            ("r={n}x,s=not*base64,i=4096", malformed("invalid salt")),
            ("m=ext,r={n}x,s=c2FsdA==,i=4096", ScramError::ExtensionNotSupported),
            ("r={n}x,i=4096", ScramError::Malformed("expected attribute \"s\"".into())),
        ];
        for (template, expected) in cases {
            let mut client = ClientExchange::new(ClientCredential::Password("pw".into()));
            let first = String::from_utf8(client.client_first()).unwrap();
            let nonce = first.strip_prefix("n,,n=,r=").unwrap();
            let message = template.replace("{n}", nonce);
            assert_eq!(client.server_first(message.as_bytes()).err(), Some(expected), "{message}");
        }
    }

    #[test]
    fn client_checks_server_final_message() {
        let start = || {
            let mut server = ServerExchange::new("u", Some(verifier("pw")));
            let mut client = ClientExchange::new(ClientCredential::Password("pw".into()));
            let reply = server.client_first(&client.client_first()).unwrap();
            let client_final = client.server_first(&reply).unwrap();
            let (server_final, _) = server.client_final(&client_final).unwrap();
            (client, text(&server_final).to_owned())
        };

        let (mut client, server_final) = start();
        client.server_final(server_final.as_bytes()).unwrap();

        let (mut client, _) = start();
        let forged = format!("v={}", BASE64.encode([0u8; KEY_LEN]));
        assert_eq!(client.server_final(forged.as_bytes()).err(), Some(ScramError::InvalidServerSignature));

        let (mut client, _) = start();
        assert_eq!(client.server_final(b"e=invalid-proof").err(), Some(ScramError::Server("invalid-proof".into())));

        let (mut client, _) = start();
        assert_eq!(client.server_final(b"e=bad\x07thing").err(), Some(ScramError::Server("bad?thing".into())));

        let (mut client, server_final) = start();
        assert!(matches!(client.server_final(format!("{server_final},x=1").as_bytes()), Err(ScramError::Malformed(_))));
    }

    #[test]
    fn passwords_are_saslprepped_like_postgres() {
        let salt = b"0123456789abcdef";
        // NFKC maps the Roman numeral characters to ASCII letters; a non-ASCII space maps to a space.
        assert!(
            ScramVerifier::from_password("\u{2168}\u{216B}", salt, 4096)
                == ScramVerifier::from_password("IXXII", salt, 4096)
        );
        assert!(
            ScramVerifier::from_password("a\u{00A0}b", salt, 4096) == ScramVerifier::from_password("a b", salt, 4096)
        );
        // A password SASLprep refuses (a control character) is used as is.
        assert!(
            ScramVerifier::from_password("a\u{0007}b", salt, 4096) != ScramVerifier::from_password("ab", salt, 4096)
        );
    }

    fn plus_pair(server_data: &[u8], client_binding: ClientBinding) -> (ServerExchange, ClientExchange) {
        let server = ServerExchange::new("user", Some(verifier("pencil"))).with_channel_binding(server_data.to_vec());
        let client =
            ClientExchange::new(ClientCredential::Password("pencil".into())).with_channel_binding(client_binding);
        (server, client)
    }

    #[test]
    fn channel_binding_round_trip_succeeds() {
        let (mut server, mut client) = plus_pair(b"cert hash", ClientBinding::TlsServerEndPoint(b"cert hash".to_vec()));
        assert_eq!(server.mechanisms(), vec![MECHANISM_PLUS.to_string(), MECHANISM.to_string()]);
        server.select_mechanism(MECHANISM_PLUS).unwrap();
        let client_first = client.client_first();
        assert!(text(&client_first).starts_with("p=tls-server-end-point,,n=,r="));
        let server_first = server.client_first(&client_first).unwrap();
        let client_final = client.server_first(&server_first).unwrap();
        let expected_c = BASE64.encode(b"p=tls-server-end-point,,cert hash");
        assert!(text(&client_final).starts_with(&format!("c={expected_c},")));
        let (server_final, _) = server.client_final(&client_final).unwrap();
        client.server_final(&server_final).unwrap();
    }

    #[test]
    fn channel_binding_to_another_certificate_fails() {
        // A man in the middle terminates TLS with its own certificate: the hashes differ.
        let (mut server, mut client) = plus_pair(b"real cert", ClientBinding::TlsServerEndPoint(b"mitm cert".to_vec()));
        server.select_mechanism(MECHANISM_PLUS).unwrap();
        assert_eq!(run(&mut server, &mut client).err(), Some(ScramError::ChannelBindingMismatch));
    }

    #[test]
    fn channel_binding_downgrades_are_refused() {
        // The offer of -PLUS was stripped: the client says "y", the server knows better.
        let (mut server, mut client) = plus_pair(b"cert", ClientBinding::NotOffered);
        server.select_mechanism(MECHANISM).unwrap();
        assert_eq!(server.client_first(&client.client_first()).err(), Some(ScramError::ChannelBindingDowngrade));
        // -PLUS chosen, but the message carries no binding.
        let (mut server, mut client) = plus_pair(b"cert", ClientBinding::None);
        server.select_mechanism(MECHANISM_PLUS).unwrap();
        assert_eq!(server.client_first(&client.client_first()).err(), Some(ScramError::MechanismMismatch));
        // Binding data without -PLUS.
        let (mut server, mut client) = plus_pair(b"cert", ClientBinding::TlsServerEndPoint(b"cert".to_vec()));
        server.select_mechanism(MECHANISM).unwrap();
        assert_eq!(server.client_first(&client.client_first()).err(), Some(ScramError::MechanismMismatch));
        // -PLUS when it was never offered (no TLS).
        let mut server = ServerExchange::new("user", Some(verifier("pencil")));
        assert_eq!(server.mechanisms(), vec![MECHANISM.to_string()]);
        assert_eq!(server.select_mechanism(MECHANISM_PLUS).err(), Some(ScramError::InvalidMechanism));
        // Other binding types.
        let (mut server, _) = plus_pair(b"cert", ClientBinding::None);
        server.select_mechanism(MECHANISM_PLUS).unwrap();
        assert_eq!(
            server.client_first(b"p=tls-unique,,n=,r=abc").err(),
            Some(ScramError::UnsupportedChannelBindingType)
        );
    }

    #[test]
    fn plain_scram_still_works_when_plus_is_offered() {
        // A client without channel binding support ("n") may use SCRAM-SHA-256 over TLS.
        let (mut server, mut client) = plus_pair(b"cert", ClientBinding::None);
        server.select_mechanism(MECHANISM).unwrap();
        run(&mut server, &mut client).unwrap();
    }

    #[test]
    fn client_says_y_when_the_server_offers_no_plus() {
        let mut server = ServerExchange::new("user", Some(verifier("pencil")));
        let mut client = ClientExchange::new(ClientCredential::Password("pencil".into()))
            .with_channel_binding(ClientBinding::NotOffered);
        assert!(text(&client.client_first()).starts_with("y,,"));
        run(&mut server, &mut client).unwrap();
    }
}
