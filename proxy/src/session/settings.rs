//! A client's session settings, carried across server connections in transaction and
//! statement modes.
//!
//! The client's startup parameters, and every setting it changes with `SET`/`RESET` (seen by
//! [`super::sql`]), are re-read from the server after the batch that changed them (so a SET
//! rolled back with its transaction is rolled back here too) and applied with `set_config`
//! to any server connection the client gets whose applied settings differ.

use std::collections::{BTreeMap, BTreeSet};

use postgres_protocol::escape::escape_literal;

use super::sql::StateCommand;

/// What the client has set, and what must be re-read.
#[derive(Debug, Default)]
pub struct ClientSettings {
    startup: BTreeMap<String, String>,
    /// Current values, by lowercase name.
    pub current: BTreeMap<String, String>,
    dirty: BTreeSet<String>,
    restore_startup: bool,
}

impl ClientSettings {
    /// Starts from the startup parameters.
    pub fn new(startup: &[(String, String)]) -> Self {
        let startup: BTreeMap<String, String> =
            startup.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        ClientSettings { current: startup.clone(), startup, ..Default::default() }
    }

    /// Notes the effect of a statement the client sends.
    pub fn observe(&mut self, command: &StateCommand) {
        match command {
            StateCommand::Set(name) | StateCommand::Reset(name) => {
                self.dirty.insert(name.to_ascii_lowercase());
            }
            StateCommand::ResetAll | StateCommand::DiscardAll => self.restore_startup = true,
            _ => {}
        }
    }

    /// True when something must be done before the server connection is given back.
    pub fn needs_work(&self) -> bool {
        self.restore_startup || !self.dirty.is_empty()
    }

    /// After RESET ALL / DISCARD ALL: the server is back to its connection defaults, while
    /// a client connected directly would be back to its startup values. Returns the SQL that
    /// restores those, and records them as applied on that server.
    pub fn restore_startup(&mut self, applied: &mut BTreeMap<String, String>) -> Option<String> {
        if !std::mem::take(&mut self.restore_startup) {
            return None;
        }
        self.current = self.startup.clone();
        applied.clear();
        sync_sql(&self.current, applied)
    }

    /// The query reading back the values of the settings the client changed, and their names.
    pub fn capture_query(&mut self) -> Option<(String, Vec<String>)> {
        if self.dirty.is_empty() {
            return None;
        }
        let names: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        let columns: Vec<String> =
            names.iter().map(|n| format!("pg_catalog.current_setting({}, true)", escape_literal(n))).collect();
        Some((format!("SELECT {}", columns.join(", ")), names))
    }

    /// Records the values read back by [`ClientSettings::capture_query`].
    pub fn captured(&mut self, names: &[String], values: &[Option<String>], applied: &mut BTreeMap<String, String>) {
        for (name, value) in names.iter().zip(values) {
            match value {
                Some(v) => {
                    self.current.insert(name.clone(), v.clone());
                    applied.insert(name.clone(), v.clone());
                }
                None => {
                    self.current.remove(name);
                    applied.remove(name);
                }
            }
        }
    }
}

/// SQL that takes a server connection from `applied` settings to `desired` ones, and updates
/// `applied`; `None` when they already match.
pub fn sync_sql(desired: &BTreeMap<String, String>, applied: &mut BTreeMap<String, String>) -> Option<String> {
    let mut statements = Vec::new();
    for (name, value) in desired {
        if applied.get(name) != Some(value) {
            // set_config takes the value as the startup packet does (a list stays a list).
            statements.push(format!(
                "SELECT pg_catalog.set_config({}, {}, false)",
                escape_literal(name),
                escape_literal(value)
            ));
        }
    }
    for name in applied.keys().filter(|name| !desired.contains_key(*name)) {
        // Names were checked at startup or come from the SQL lexer: plain identifiers, but
        // quote them anyway.
        statements.push(format!("RESET {}", postgres_protocol::escape::escape_identifier(name)));
    }
    if statements.is_empty() {
        return None;
    }
    *applied = desired.clone();
    Some(statements.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sync_sets_what_differs_and_resets_what_is_extra() {
        let desired = map(&[("application_name", "a"), ("work_mem", "8MB")]);
        let mut applied = map(&[("application_name", "a"), ("search_path", "x")]);
        let sql = sync_sql(&desired, &mut applied).unwrap();
        assert_eq!(sql, "SELECT pg_catalog.set_config('work_mem', '8MB', false); RESET \"search_path\"");
        assert_eq!(applied, desired);
        assert_eq!(sync_sql(&desired, &mut applied), None);
    }

    #[test]
    fn values_are_quoted() {
        let mut applied = BTreeMap::new();
        let sql = sync_sql(&map(&[("application_name", "it's")]), &mut applied).unwrap();
        assert!(sql.contains("'it''s'"), "{sql}");
    }

    #[test]
    fn set_commands_are_captured_and_recorded() {
        let mut s = ClientSettings::new(&[("Application_Name".into(), "app".into())]);
        assert!(!s.needs_work());
        s.observe(&StateCommand::Set("Work_Mem".into()));
        s.observe(&StateCommand::Other);
        assert!(s.needs_work());
        let (sql, names) = s.capture_query().unwrap();
        assert_eq!(sql, "SELECT pg_catalog.current_setting('work_mem', true)");
        let mut applied = BTreeMap::new();
        s.captured(&names, &[Some("8MB".into())], &mut applied);
        assert_eq!(s.current, map(&[("application_name", "app"), ("work_mem", "8MB")]));
        assert_eq!(applied, map(&[("work_mem", "8MB")]));
        assert!(!s.needs_work());
    }

    #[test]
    fn reset_all_restores_startup_values() {
        let mut s = ClientSettings::new(&[("application_name".into(), "app".into())]);
        s.current.insert("work_mem".into(), "8MB".into());
        s.observe(&StateCommand::ResetAll);
        let mut applied = map(&[("work_mem", "8MB"), ("application_name", "app")]);
        let sql = s.restore_startup(&mut applied).unwrap();
        assert_eq!(sql, "SELECT pg_catalog.set_config('application_name', 'app', false)");
        assert_eq!(s.current, map(&[("application_name", "app")]));
        assert_eq!(applied, s.current);
    }
}
