#![no_main]
//! The auth file (`auth::Userlist::parse`, PgBouncer's format) and the SCRAM verifiers in it
//! (`auth::ScramVerifier::parse`).
//!
//! Properties: an error names a line of the file; a file that parses lists at most one user
//! per line; a verifier that parses has a positive iteration count and a salt, and written out
//! again in PostgreSQL's format it parses to the same verifier; a user written back into a
//! one-line file (quotes doubled) is found under the same name.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pgvane::auth::{ScramVerifier, Secret, Userlist};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count();
    match Userlist::parse(text) {
        Ok(users) => assert!(users.len() <= lines),
        Err(e) => assert!((1..=lines).contains(&e.line()), "{e} in a file of {lines} lines"),
    }

    for line in text.lines() {
        if let Some(verifier) = ScramVerifier::parse(line) {
            assert!(verifier.iterations > 0 && !verifier.salt.is_empty());
            let again = format!(
                "SCRAM-SHA-256${}:{}${}:{}",
                verifier.iterations,
                BASE64.encode(&verifier.salt),
                BASE64.encode(verifier.stored_key),
                BASE64.encode(verifier.server_key)
            );
            assert_eq!(ScramVerifier::parse(&again).as_ref(), Some(&verifier), "{again}");
        }
    }

    // The text as one user's name and secret, written the way the format quotes them.
    if !text.is_empty() && !text.contains(['\n', '\r']) {
        let quoted = text.replace('"', "\"\"");
        let file = format!("\"{quoted}\" \"{quoted}\"\n");
        if let Ok(users) = Userlist::parse(&file) {
            let secret = users.get(text).expect("the user written is listed");
            if let Secret::Plain(password) = secret {
                assert_eq!(password, text);
            }
        } else {
            // Only a malformed verifier is refused.
            assert!(text.starts_with("SCRAM-SHA-256$"), "{file:?}");
        }
    }
});
