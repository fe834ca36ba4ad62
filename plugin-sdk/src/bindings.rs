//! The component bindings generated from `wit/`: the one `generate!` site. The conversions to
//! and from the SDK's own types are in `convert.rs`.
//!
//! The generated code is compiled on every target so that `cargo check` on the host already
//! catches a WIT change the SDK does not follow; only the `export!` expansion (which defines the
//! component's exported functions) is limited to wasm32.

#![allow(unsafe_code, missing_docs, clippy::all)]

wit_bindgen::generate!({
    world: "policy",
    path: "../wit",
    pub_export_macro: true,
    export_macro_name: "__export_policy",
    default_bindings_module: "::pgvane_sdk::__bindings",
});
