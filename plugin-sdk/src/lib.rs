//! The pgvane plugin SDK.
//!
//! A placeholder until the policy engine lands: the WIT contract (`wit/`) and the
//! `export!` macro that lets a plugin author implement a trait instead of raw bindings
//! come with that work. Nothing here is usable yet, on purpose.
