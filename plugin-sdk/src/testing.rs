//! Stand-ins for the host in native unit tests.
//!
//! Natively, [`crate::host::databases`] returns what [`set_databases`] set on the current
//! thread, and log records are printed to stderr (captured by the test harness) and kept for
//! [`take_logs`]. Each test runs on its own thread, so tests do not see each other's state.
//! In a wasm32 build these functions exist but do nothing useful.

use crate::log::Level;
use std::cell::RefCell;

/// One log record a policy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its severity.
    pub level: Level,
    /// The formatted message.
    pub message: String,
    /// The structured fields, in order.
    pub fields: Vec<(String, String)>,
}

thread_local! {
    static DATABASES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static LOGS: RefCell<Vec<LogRecord>> = const { RefCell::new(Vec::new()) };
}

/// Sets the `[databases]` entry names [`crate::host::databases`] returns on this thread.
pub fn set_databases<S: AsRef<str>>(names: &[S]) {
    DATABASES.with(|d| *d.borrow_mut() = names.iter().map(|n| n.as_ref().to_owned()).collect());
}

/// Returns, and forgets, the log records written on this thread so far.
pub fn take_logs() -> Vec<LogRecord> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn databases() -> Vec<String> {
    DATABASES.with(|d| d.borrow().clone())
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn log(level: Level, message: &str, fields: Vec<(String, String)>) {
    let shown: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
    eprintln!("[plugin {}] {message}{shown}", level.as_str());
    LOGS.with(|l| l.borrow_mut().push(LogRecord { level, message: message.to_owned(), fields }));
}
