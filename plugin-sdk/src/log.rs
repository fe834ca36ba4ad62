//! Structured logging into pgvane's log.
//!
//! ```
//! use pgvane_sdk::log::{info, warn};
//! let dbkey = "dev.1";
//! info!("routed by rule {}", 2; "dbkey" => dbkey, "user" => "alice");
//! warn!("no rule matched");
//! ```
//!
//! Each macro takes a format string and its arguments, then optionally `;` and `"key" => value`
//! pairs (any `Display` value) logged as structured fields. pgvane adds the plugin's name and the
//! client's session fields itself. Natively (in tests) records go to stderr and to
//! [`crate::testing::take_logs`].
//!
//! Formatting costs fuel: keep `debug!`/`trace!` off the per-statement path of a busy plugin.

use std::fmt::Display;

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The level's lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one record to pgvane's log. The macros ([`info!`](crate::log::info) …) call this.
pub fn log(level: Level, message: &str, fields: &[(&str, &dyn Display)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| ((*k).to_owned(), v.to_string())).collect();
    crate::host::log(level, message, fields);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __pgvane_log {
    ($level:expr, $fmt:literal $(, $arg:expr)* ; $($key:literal => $value:expr),+ $(,)?) => {
        $crate::log::log(
            $level,
            &::std::format!($fmt $(, $arg)*),
            &[$(($key, &$value as &dyn ::std::fmt::Display)),+],
        )
    };
    ($level:expr, $fmt:literal $(, $arg:expr)*) => {
        $crate::log::log($level, &::std::format!($fmt $(, $arg)*), &[])
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __pgvane_trace {
    ($($t:tt)+) => { $crate::__pgvane_log!($crate::log::Level::Trace, $($t)+) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __pgvane_debug {
    ($($t:tt)+) => { $crate::__pgvane_log!($crate::log::Level::Debug, $($t)+) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __pgvane_info {
    ($($t:tt)+) => { $crate::__pgvane_log!($crate::log::Level::Info, $($t)+) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __pgvane_warn {
    ($($t:tt)+) => { $crate::__pgvane_log!($crate::log::Level::Warn, $($t)+) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __pgvane_error {
    ($($t:tt)+) => { $crate::__pgvane_log!($crate::log::Level::Error, $($t)+) };
}

/// Logs at debug level: `debug!("format {}", arg; "key" => value, …)`.
#[doc(inline)]
pub use crate::__pgvane_debug as debug;
/// Logs at error level: `error!("format {}", arg; "key" => value, …)`.
#[doc(inline)]
pub use crate::__pgvane_error as error;
/// Logs at info level: `info!("format {}", arg; "key" => value, …)`.
#[doc(inline)]
pub use crate::__pgvane_info as info;
/// Logs at trace level: `trace!("format {}", arg; "key" => value, …)`.
#[doc(inline)]
pub use crate::__pgvane_trace as trace;
/// Logs at warn level: `warn!("format {}", arg; "key" => value, …)`.
#[doc(inline)]
pub use crate::__pgvane_warn as warn;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{take_logs, LogRecord};

    #[test]
    fn macros_log_message_and_fields() {
        take_logs();
        let n = 2;
        info!("rule {} matched", n; "dbkey" => "dev.1", "n" => n);
        warn!("plain {n}");
        error!("no args");
        assert_eq!(
            take_logs(),
            vec![
                LogRecord {
                    level: Level::Info,
                    message: "rule 2 matched".into(),
                    fields: vec![("dbkey".into(), "dev.1".into()), ("n".into(), "2".into())],
                },
                LogRecord { level: Level::Warn, message: "plain 2".into(), fields: vec![] },
                LogRecord { level: Level::Error, message: "no args".into(), fields: vec![] },
            ]
        );
    }
}
