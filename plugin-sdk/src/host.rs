//! The functions pgvane provides to plugins.
//!
//! In a wasm32 build these call the host; natively (unit tests) they use the stand-ins in
//! [`crate::testing`].

use crate::log::Level;

/// The names of the `[databases]` entries of the configuration the plugin was loaded with.
/// Use it in [`crate::Policy::init`] to refuse a config that routes to an unknown database.
/// Natively it returns what [`crate::testing::set_databases`] set (empty by default).
pub fn databases() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::pgvane::policy::host::databases()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::databases()
    }
}

/// Sends a log record to the host. Use the macros in [`crate::log`] instead.
pub(crate) fn log(level: Level, message: &str, fields: Vec<(String, String)>) {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::pgvane::policy::host::log(level.into(), message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::log(level, message, fields);
    }
}
