#![no_main]
//! SCRAM-SHA-256 as pgvane the client of PostgreSQL parses it: the server-first-message and
//! the server-final-message (`auth::ClientExchange`), with keys (no PBKDF2, so a hostile
//! iteration count costs nothing here) and with or without channel binding.
//!
//! Input: one flag byte (1 = channel binding, 2 = "y,," over TLS without PLUS), then the
//! server-first-message, a NUL, the server-final-message; `%N` in the server-first-message
//! stands for the client's nonce.
//!
//! Properties: an accepted server-first-message has a nonce that extends the client's and
//! `i` in 1..=MAX_ITERATIONS; the reply is `c=<binding>,r=<nonce>,p=<proof>`; no
//! server-final-message the fuzzer writes passes the signature check unless it is the one
//! computed from the keys.

use libfuzzer_sys::fuzz_target;
use pgvane::auth::scram::{ClientBinding, MAX_ITERATIONS};
use pgvane::auth::{ClientCredential, ClientExchange, ScramKeys};

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else { return };
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let keys = ScramKeys { client_key: [7; 32], server_key: [9; 32] };
    let binding = match flags & 3 {
        1 => ClientBinding::TlsServerEndPoint(b"end-point".to_vec()),
        2 => ClientBinding::NotOffered,
        _ => ClientBinding::None,
    };
    let mut client = ClientExchange::new(ClientCredential::Keys(keys)).with_channel_binding(binding.clone());
    let client_first = String::from_utf8(client.client_first()).expect("text");
    let client_nonce = client_first.rsplit_once(",r=").expect("r=").1.to_owned();

    let server_first = String::from_utf8_lossy(first).replace("%N", &client_nonce);
    let Ok(client_final) = client.server_first(server_first.as_bytes()) else { return };

    // Accepted: r=<nonce>,s=<salt>,i=<n> with the client's nonce extended.
    let mut attributes = server_first.split(',');
    let nonce = attributes.next().and_then(|a| a.strip_prefix("r=")).expect("r=");
    assert!(nonce.starts_with(&client_nonce) && nonce.len() > client_nonce.len());
    assert!(attributes.next().is_some_and(|a| a.starts_with("s=")));
    let iterations: u32 =
        attributes.next().and_then(|a| a.strip_prefix("i=")).and_then(|i| i.parse().ok()).expect("i=");
    assert!((1..=MAX_ITERATIONS).contains(&iterations));

    let client_final = String::from_utf8(client_final).expect("text");
    let expected_binding = match binding {
        ClientBinding::None => "c=biws".to_owned(),
        ClientBinding::NotOffered => "c=eSws".to_owned(),
        ClientBinding::TlsServerEndPoint(_) => "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsZW5kLXBvaW50".to_owned(),
    };
    assert_eq!(client_final.split(',').next(), Some(expected_binding.as_str()), "{client_final}");
    assert!(client_final.contains(&format!(",r={nonce},p=")));

    if let Some(last) = last {
        // A fuzzed server-final-message is accepted only if it carries the right signature,
        // which only the keys' owner can compute: it never does here by chance.
        if client.server_final(last).is_ok() {
            assert!(last.starts_with(b"v="));
        }
    }
});
