#![no_main]
//! OCI manifests as a registry or the plugin cache hands them to pgvane
//! (`oci::parse_manifest`, then `oci::wasm_layer`, the check of the Wasm artifact layout).
//!
//! Properties: a manifest that passes has exactly one `application/wasm` layer with a valid
//! sha256 digest and the Wasm config media type; anything refused is refused as "not a Wasm
//! OCI artifact"; a parsed manifest written out as JSON parses to the same manifest.

use libfuzzer_sys::fuzz_target;
use pgvane::oci::{check_digest, parse_manifest, wasm_layer, OciError, Reference};

fuzz_target!(|data: &[u8]| {
    let reference = Reference::parse("oci://127.0.0.1:5000/policies/guard:v1").expect("a valid reference");
    let manifest = match parse_manifest(&reference, data) {
        Ok(manifest) => manifest,
        Err(e) => {
            assert!(matches!(e, OciError::NotWasm { .. }), "{e}");
            return;
        }
    };
    match wasm_layer(&reference, &manifest) {
        Ok(layer) => {
            assert_eq!(manifest.layers.len(), 1);
            assert_eq!(layer.media_type, "application/wasm");
            assert_eq!(manifest.config.media_type, "application/vnd.wasm.config.v0+json");
            assert!(check_digest(&layer.digest).is_ok());
        }
        Err(e) => assert!(matches!(e, OciError::NotWasm { .. }), "{e}"),
    }
    let json = serde_json::to_value(&manifest).expect("a manifest serialises");
    let again = parse_manifest(&reference, json.to_string().as_bytes()).expect("what pgvane wrote parses");
    assert_eq!(serde_json::to_value(&again).expect("serialises"), json);
});
