//! pgvane: a PostgreSQL proxy whose routing and rewrite decisions are made by sandboxed
//! WebAssembly plugins.
//!
//! The path of a query: [`listener`] accepts a client, [`session`] runs its startup,
//! authentication and query loop, [`pool`] provides server connections. [`protocol`] holds
//! the wire format (no I/O), [`auth`] the password mechanisms, [`config`] the configuration, [`tls`]
//! encryption on both legs.
//!
//! The modules read bottom-up, each importing only ones below it: [`metrics`] (counters and
//! histograms in atomics), [`protocol`], [`auth`],
//! [`tls`], [`endpoint`] (TCP or unix-domain addresses), [`oci`], [`policy`] (the plugin engine and its settings), [`config`], [`lifecycle`]
//! (loading a plugin set), [`pool`], [`cluster`], [`peers`] (cancel keys across instances), [`clients`] (cancel keys, states,
//! signals),
//! [`shared`] (the state every session shares, and the reload), [`session`], [`admin`],
//! [`unix_socket`] (pgvane's own unix-domain socket file), [`listener`], [`shutdown`] (signals
//! and the drain); `main` on top.
//!
//! Without the default feature `plugin-host` (wasmtime and the OCI client), only the modules
//! that read outside input without serving it are built: [`protocol`], [`auth`], [`tls`],
//! [`oci`] (references), [`policy`] (settings and verdict types), [`config`] and
//! [`plugin_test`]'s parsers. That is the build the fuzz targets use (fuzz/, docs/fuzzing.md).
#![forbid(unsafe_code)]

#[cfg(feature = "plugin-host")]
pub mod admin;
pub mod auth;
#[cfg(feature = "plugin-host")]
pub mod budget;
#[cfg(feature = "plugin-host")]
pub mod clients;
#[cfg(feature = "plugin-host")]
pub mod cluster;
pub mod config;
pub mod endpoint;
#[cfg(feature = "plugin-host")]
pub mod lifecycle;
#[cfg(feature = "plugin-host")]
pub mod listener;
pub mod metrics;
pub mod oci;
#[cfg(feature = "plugin-host")]
pub mod peers;
pub mod plugin_test;
pub mod policy;
#[cfg(feature = "plugin-host")]
pub mod pool;
pub mod protocol;
#[cfg(feature = "plugin-host")]
pub mod session;
#[cfg(feature = "plugin-host")]
pub mod shared;
#[cfg(feature = "plugin-host")]
pub mod shutdown;
pub mod tls;
#[cfg(feature = "plugin-host")]
pub mod unix_socket;

/// The virtual database of the admin console; no `[databases]` entry may use it.
pub const ADMIN_DATABASE: &str = "pgvane";

/// pgvane's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit pgvane was built from (`unknown` outside a git checkout); set by build.rs.
pub const COMMIT: &str = env!("PGVANE_COMMIT");
