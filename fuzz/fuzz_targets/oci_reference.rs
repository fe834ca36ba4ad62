#![no_main]
//! OCI references (`oci::Reference::parse`, `oci://<registry>/<repository>[:tag][@digest]`)
//! and digests (`oci::check_digest`).
//!
//! Properties: a reference that parses has a registry, a repository, and a tag or a digest (a
//! valid one); written out (`Display`) it parses to the same reference; pinning it to a digest
//! keeps it valid.

use libfuzzer_sys::fuzz_target;
use pgvane::oci::{check_digest, Reference, SCHEME};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = check_digest(text);
    let Ok(reference) = Reference::parse(text) else { return };
    assert!(!reference.registry.is_empty() && !reference.repository.is_empty());
    assert!(reference.tag.is_some() || reference.digest.is_some());
    if let Some(digest) = &reference.digest {
        assert!(check_digest(digest).is_ok());
    }
    let written = reference.to_string();
    assert!(written.starts_with(SCHEME));
    assert_eq!(Reference::parse(&written).as_ref().ok(), Some(&reference), "{written}");
    let _ = reference.is_loopback();
    let pinned = reference.pinned(DIGEST);
    assert_eq!(Reference::parse(&pinned.to_string()).ok(), Some(pinned));
});
