//! Which databases are paused (admin PAUSE): checkouts from their pools wait until RESUME.

use std::collections::BTreeSet;

/// The paused databases, shared by every pool through a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseState {
    /// Everything is paused (PAUSE without a database).
    pub all: bool,
    /// Databases paused one by one.
    pub databases: BTreeSet<String>,
}

impl PauseState {
    /// True if checkouts for `database` must wait.
    pub fn covers(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_one_or_all() {
        let mut state = PauseState::default();
        assert!(!state.covers("app"));
        state.databases.insert("app".into());
        assert!(state.covers("app") && !state.covers("other"));
        state.all = true;
        assert!(state.covers("other"));
    }
}
