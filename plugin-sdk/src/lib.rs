//! Write pgvane policy plugins in Rust.
//!
//! A policy plugin decides, for every statement a client sends, whether pgvane lets it through,
//! sends it to another server, rewrites it, or rejects it. It is a WebAssembly component built
//! for `wasm32-wasip2`; this crate hides the component plumbing behind one trait:
//!
//! ```
//! use pgvane_sdk::{Config, Context, Policy, Verdict};
//!
//! struct ReportsToReplica;
//!
//! impl Policy for ReportsToReplica {
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(ReportsToReplica)
//!     }
//!
//!     fn decide(&self, ctx: &Context) -> Verdict {
//!         if ctx.application_name == "reports" && !ctx.in_transaction {
//!             Verdict::replica()
//!         } else {
//!             Verdict::pass()
//!         }
//!     }
//! }
//!
//! pgvane_sdk::export!(ReportsToReplica);
//! # fn main() {
//! #     let p = ReportsToReplica::init(Config::empty()).unwrap();
//! #     let ctx = Context::query("SELECT 1").with_application_name("reports");
//! #     assert_eq!(p.decide(&ctx), Verdict::replica());
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! `.wasm` in `target/wasm32-wasip2/release/` is the plugin. The same code compiles natively,
//! where [`export!`] expands to nothing, so the policy's logic is unit-tested with plain
//! `cargo test`: build a [`Context`], call [`Policy::decide`], compare [`Verdict`]s. The
//! [`testing`] module stands in for the host there.
//!
//! The contract behind this crate is the WIT package `pgvane:policy@0.1.0` (`wit/policy.wit`);
//! the crate's `README.md` is a step-by-step guide to a first plugin.

#![warn(missing_docs)]

mod config;
mod context;
pub mod host;
pub mod log;
pub mod sql;
pub mod testing;
mod verdict;

#[doc(hidden)]
#[path = "bindings.rs"]
pub mod __bindings;
mod convert;

pub use config::Config;
#[cfg(feature = "regex")]
pub use config::Pattern;
pub use context::{Context, Message};
pub use verdict::{Rejection, Route, Verdict};

/// A policy: what a plugin implements.
///
/// pgvane creates an instance of the plugin, calls [`Policy::init`] once with the plugin's
/// configuration, and then calls [`Policy::decide`] for each statement, one call at a time. The
/// value `init` returns lives as long as the instance: keep compiled patterns and parsed config
/// in it. pgvane may run several instances of a plugin and throws one away after any trap
/// (panic, exhausted fuel or memory), so a policy must not rely on one instance seeing every
/// statement of a client.
pub trait Policy: Sized + 'static {
    /// Builds the policy from its configuration, the `[plugins.config]` table of pgvane.toml.
    /// Read it with [`Config::parse`]. An `Err` refuses the configuration: pgvane does not
    /// start (or keeps its previous configuration on reload) and logs the message, so say what
    /// is wrong and where.
    fn init(config: Config) -> Result<Self, String>;

    /// Decides what happens to one statement. Must not panic for any input: a panic traps the
    /// instance and the host applies the plugin's `on_error` policy.
    fn decide(&self, ctx: &Context) -> Verdict;
}

/// Exports a [`Policy`] implementation as the plugin's component interface.
///
/// Invoke it once, at the top level of the plugin crate, with the type implementing
/// [`Policy`]: `pgvane_sdk::export!(MyPolicy);`. On wasm32 it defines the component's `init`
/// and `decide` exports; on every other target it expands to nothing, so the crate still builds
/// and tests natively.
#[macro_export]
macro_rules! export {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct PgvaneExport;

            impl $crate::__bindings::Guest for PgvaneExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__runtime::init::<$policy>(config)
                }

                fn decide(
                    ctx: $crate::__bindings::pgvane::policy::types::Context,
                ) -> $crate::__bindings::pgvane::policy::types::Verdict {
                    $crate::__runtime::decide::<$policy>(ctx.into()).into()
                }
            }

    $crate::__bindings::__export_policy!(PgvaneExport with_types_in $crate::__bindings);
        };
    };
}

#[doc(hidden)]
pub mod __runtime {
    //! What the `export!` expansion calls: keeps the instance's policy between calls.

    use crate::{Config, Context, Policy, Verdict};
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        // A component instance is single-threaded: this is simply the instance's policy.
        static POLICY: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// The `init` export: builds the policy and keeps it.
    pub fn init<P: Policy>(config: String) -> Result<(), String> {
        let policy = P::init(Config::from_json(config))?;
        POLICY.with(|slot| *slot.borrow_mut() = Some(Box::new(policy)));
        Ok(())
    }

    /// The `decide` export. Called before a successful `init` it panics (a trap: the host's
    /// `on_error` policy applies), since there is no policy to ask.
    #[allow(clippy::panic)]
    pub fn decide<P: Policy>(ctx: Context) -> Verdict {
        POLICY.with(|slot| match slot.borrow().as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(policy) => policy.decide(&ctx),
            None => panic!("pgvane-sdk: decide called before a successful init"),
        })
    }
}
