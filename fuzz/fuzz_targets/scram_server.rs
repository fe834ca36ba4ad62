#![no_main]
//! SCRAM-SHA-256 as pgvane the server parses it: the client-first-message and the
//! client-final-message (`auth::ServerExchange`), with and without channel binding; and a
//! whole exchange between pgvane's client and server sides for a fuzzed password.
//!
//! Input: one flag byte, then the client-first-message, a NUL, the client-final-message (in
//! which `%N` stands for the nonce the server chose, so the fuzzer gets past the nonce check).
//! Flag bits: 1 = the server offers SCRAM-SHA-256-PLUS, 2 = the client selects it, 4 = instead
//! run a whole exchange with the rest of the input as the password.
//!
//! Properties: the server-first-message is `r=<client nonce><server nonce>,s=<salt>,i=<n>`;
//! no client-final-message the fuzzer writes passes the proof check; a whole exchange with
//! the right password succeeds (both signatures, the recovered keys match the verifier) and
//! with a wrong one fails with InvalidProof.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pgvane::auth::scram::{ClientBinding, MECHANISM, MECHANISM_PLUS};
use pgvane::auth::{ClientCredential, ClientExchange, ScramError, ScramVerifier, ServerExchange};
use sha2::{Digest, Sha256};

const SALT: &[u8] = b"pgvane-fuzz-salt";
const BINDING: &[u8] = b"tls-server-end-point data";

fn verifier() -> &'static ScramVerifier {
    static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| ScramVerifier::from_password("pencil", SALT, 4096))
}

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else { return };
    if flags & 4 != 0 {
        whole_exchange(&String::from_utf8_lossy(rest), flags & 1 != 0);
        return;
    }
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let mut server = ServerExchange::new("alice", Some(verifier().clone()));
    if flags & 1 != 0 {
        server = server.with_channel_binding(BINDING.to_vec());
    }
    let mechanism = if flags & 2 != 0 { MECHANISM_PLUS } else { MECHANISM };
    if server.select_mechanism(mechanism).is_err() {
        assert!(flags & 1 == 0 && mechanism == MECHANISM_PLUS);
        return;
    }
    let Ok(server_first) = server.client_first(first) else { return };

    let server_first = String::from_utf8(server_first).expect("the server-first-message is text");
    let (nonce, salt_and_iterations) =
        server_first.strip_prefix("r=").and_then(|r| r.split_once(",s=")).expect("server-first-message starts r=…,s=");
    let client_nonce = std::str::from_utf8(first)
        .ok()
        .and_then(|m| m.split(",r=").nth(1))
        .map(|n| n.split(',').next().unwrap_or_default());
    assert!(client_nonce.is_some_and(|c| nonce.starts_with(c) && nonce.len() > c.len()), "{server_first}");
    assert_eq!(salt_and_iterations, format!("{},i=4096", BASE64.encode(SALT)));

    if let Some(last) = last {
        let last = String::from_utf8_lossy(last).replace("%N", nonce);
        // Without the password, no proof can pass.
        assert!(server.client_final(last.as_bytes()).is_err());
        // The exchange is over after its final step, failed or not.
        assert!(matches!(server.client_final(b"c=biws,r=x,p=x"), Err(ScramError::OutOfOrder)));
    }
});

/// pgvane's SCRAM client logging in to pgvane's SCRAM server with `password` (PBKDF2 with one
/// iteration, to keep it cheap): must succeed, and a wrong password must fail.
fn whole_exchange(password: &str, binding: bool) {
    let verifier = ScramVerifier::from_password(password, SALT, 1);
    let run = |password: &str| -> Result<(), ScramError> {
        let mut server = ServerExchange::new("alice", Some(verifier.clone()));
        let mut client = ClientExchange::new(ClientCredential::Password(password.to_owned()));
        if binding {
            server = server.with_channel_binding(BINDING.to_vec());
            server.select_mechanism(MECHANISM_PLUS)?;
            client = client.with_channel_binding(ClientBinding::TlsServerEndPoint(BINDING.to_vec()));
        }
        let server_first = server.client_first(&client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let (server_final, keys) = server.client_final(&client_final)?;
        assert_eq!(<[u8; 32]>::from(Sha256::digest(keys.client_key)), verifier.stored_key);
        assert_eq!(keys.server_key, verifier.server_key);
        client.server_final(&server_final)
    };
    if let Err(e) = run(password) {
        panic!("exchange with the right password failed: {e}");
    }
    let wrong = format!("{password}x");
    assert!(matches!(run(&wrong), Err(ScramError::InvalidProof)));
}
