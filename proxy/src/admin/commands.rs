//! The console's command language: what a Query's text means.
//!
//! Keywords are case-insensitive; statements are separated by `;` (a trailing one is fine);
//! a database name is a bare word taken as written, or a double-quoted name (`""` for `"`).
//! Comments (`--`, `/* */`) are skipped; the text is lexed as the proxy lexes SQL.

use super::AdminError;
use crate::shared::ShutdownMode;

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW <what>`.
    Show(Show),
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RELOAD`.
    Reload,
    /// `RECONNECT [db]`.
    Reconnect(Option<String>),
    /// `KILL [db]`.
    Kill(Option<String>),
    /// `SHUTDOWN` (immediate), `SHUTDOWN WAIT_FOR_CLIENTS`, `SHUTDOWN WAIT_FOR_SERVERS`.
    Shutdown(ShutdownMode),
}

/// What `SHOW` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The list of commands.
    Help,
    /// One row per pool.
    Pools,
    /// One row per client connection.
    Clients,
    /// One row per server connection.
    Servers,
    /// One row per configured database.
    Databases,
    /// Totals and averages per database.
    Stats,
    /// Totals per database.
    StatsTotals,
    /// Averages per database over the last stats period.
    StatsAverages,
    /// The `[pgvane]` settings.
    Config,
    /// pgvane's version.
    Version,
    /// One row per policy plugin.
    Plugins,
    /// One row per node of every cluster database.
    Backends,
}

/// The SHOW items, by name.
const SHOW_ITEMS: &[(&str, Show)] = &[
    ("HELP", Show::Help),
    ("POOLS", Show::Pools),
    ("CLIENTS", Show::Clients),
    ("SERVERS", Show::Servers),
    ("DATABASES", Show::Databases),
    ("STATS", Show::Stats),
    ("STATS_TOTALS", Show::StatsTotals),
    ("STATS_AVERAGES", Show::StatsAverages),
    ("CONFIG", Show::Config),
    ("VERSION", Show::Version),
    ("BACKENDS", Show::Backends),
    ("PLUGINS", Show::Plugins),
];

/// Every command, as the HINT of an unknown one lists them.
pub const USAGE: &str =
    "SHOW HELP|POOLS|CLIENTS|SERVERS|DATABASES|STATS|STATS_TOTALS|STATS_AVERAGES|CONFIG|VERSION|BACKENDS|PLUGINS; \
                         PAUSE [db]; RESUME [db]; RELOAD; RECONNECT [db]; KILL [db]; SHUTDOWN [WAIT_FOR_CLIENTS|WAIT_FOR_SERVERS]";

/// A word of a statement.
#[derive(Debug)]
struct Word {
    text: String,
    quoted: bool,
}

/// Parses a Query's text into its commands (none for an empty query). Nothing runs if any
/// statement is wrong.
pub fn parse_script(sql: &str) -> Result<Vec<Command>, AdminError> {
    let mut commands = Vec::new();
    for statement in split_statements(sql)? {
        if !statement.is_empty() {
            commands.push(parse_statement(statement)?);
        }
    }
    Ok(commands)
}

/// Splits at `;` with the lexer the proxy uses (so a `;` in a quoted name, a literal or a
/// comment does not split, and comments are skipped). A word is a double-quoted name, or a run
/// of anything else up to white space, a comment, `;` or a double quote, taken as written.
fn split_statements(sql: &str) -> Result<Vec<Vec<Word>>, AdminError> {
    let mut statements = Vec::new();
    for statement in pgvane_sql_lexer::statements(sql) {
        let mut words: Vec<Word> = Vec::new();
        // Where the last unquoted word ends: a token starting there continues it.
        let mut word_end = None;
        for (range, token) in pgvane_sql_lexer::spanned_tokens(statement) {
            let text = statement.get(range.clone()).unwrap_or_default();
            match token.ident().filter(|ident| ident.is_quoted()) {
                Some(ident) if !ident.is_terminated() => {
                    return Err(AdminError::Syntax("unterminated quoted name".into()))
                }
                Some(ident) => {
                    words.push(Word { text: ident.name().into_owned(), quoted: true });
                    word_end = None;
                    continue;
                }
                None => {}
            }
            match words.last_mut() {
                Some(word) if word_end == Some(range.start) => word.text.push_str(text),
                _ => words.push(Word { text: text.to_owned(), quoted: false }),
            }
            word_end = Some(range.end);
        }
        statements.push(words);
    }
    Ok(statements)
}

fn keyword(word: &Word) -> Option<String> {
    (!word.quoted).then(|| word.text.to_ascii_uppercase())
}

fn parse_statement(words: Vec<Word>) -> Result<Command, AdminError> {
    let mut words = words.into_iter();
    let Some(first) = words.next() else {
        return Err(AdminError::Syntax("empty statement".into()));
    };
    let rest: Vec<Word> = words.collect();
    let name = keyword(&first).unwrap_or_default();
    let no_args = |command: Command| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(AdminError::Syntax(format!("{name} takes no arguments")))
        }
    };
    let optional_db = |make: fn(Option<String>) -> Command| match rest.as_slice() {
        [] => Ok(make(None)),
        [db] => Ok(make(Some(db.text.clone()))),
        _ => Err(AdminError::Syntax(format!("{name} takes at most one database name"))),
    };
    match name.as_str() {
        "SHOW" => match rest.as_slice() {
            [item] => {
                let wanted = keyword(item).unwrap_or_default();
                SHOW_ITEMS
                    .iter()
                    .find(|(name, _)| *name == wanted)
                    .map(|(_, show)| Command::Show(*show))
                    .ok_or_else(|| AdminError::UnknownShow(item.text.clone()))
            }
            _ => Err(AdminError::Syntax("SHOW takes one item, e.g. SHOW POOLS".into())),
        },
        "PAUSE" => optional_db(Command::Pause),
        "RESUME" => optional_db(Command::Resume),
        "RECONNECT" => optional_db(Command::Reconnect),
        "KILL" => optional_db(Command::Kill),
        "RELOAD" => no_args(Command::Reload),
        "SHUTDOWN" => match rest.as_slice() {
            [] => Ok(Command::Shutdown(ShutdownMode::Immediate)),
            [mode] => match keyword(mode).as_deref() {
                Some("WAIT_FOR_CLIENTS") => Ok(Command::Shutdown(ShutdownMode::WaitForClients)),
                Some("WAIT_FOR_SERVERS") => Ok(Command::Shutdown(ShutdownMode::WaitForServers)),
                _ => Err(AdminError::Syntax("SHUTDOWN takes WAIT_FOR_CLIENTS, WAIT_FOR_SERVERS or nothing".into())),
            },
            _ => Err(AdminError::Syntax("SHUTDOWN takes at most one word".into())),
        },
        _ => Err(AdminError::UnknownCommand(first.text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Command {
        let mut commands = parse_script(sql).unwrap();
        assert_eq!(commands.len(), 1, "{sql}");
        commands.remove(0)
    }

    #[test]
    fn keywords_are_case_insensitive_and_semicolons_optional() {
        assert_eq!(one("SHOW POOLS"), Command::Show(Show::Pools));
        assert_eq!(one("  show\tclients ; "), Command::Show(Show::Clients));
        assert_eq!(one("show plugins"), Command::Show(Show::Plugins));
        assert_eq!(one("Reload;"), Command::Reload);
        assert_eq!(one("shutdown"), Command::Shutdown(ShutdownMode::Immediate));
        assert_eq!(one("shutdown wait_for_clients"), Command::Shutdown(ShutdownMode::WaitForClients));
        assert_eq!(one("SHUTDOWN WAIT_FOR_SERVERS;"), Command::Shutdown(ShutdownMode::WaitForServers));
        assert!(parse_script("SHUTDOWN NOW").is_err());
        assert_eq!(one("pause"), Command::Pause(None));
        assert_eq!(one("PAUSE app"), Command::Pause(Some("app".into())));
        assert_eq!(one("resume App"), Command::Resume(Some("App".into())));
        assert_eq!(one("reconnect \"my \"\"db\"\";\""), Command::Reconnect(Some("my \"db\";".into())));
        assert_eq!(one("KILL app;"), Command::Kill(Some("app".into())));
    }

    #[test]
    fn scripts_hold_several_commands_or_none() {
        assert_eq!(
            parse_script("show version; show stats;;").unwrap(),
            vec![Command::Show(Show::Version), Command::Show(Show::Stats)]
        );
        assert_eq!(
            parse_script("SHOW stats_totals; show STATS_AVERAGES").unwrap(),
            vec![Command::Show(Show::StatsTotals), Command::Show(Show::StatsAverages)]
        );
        assert!(parse_script("").unwrap().is_empty());
        assert!(parse_script(" ; ;").unwrap().is_empty());
    }

    #[test]
    fn semicolons_split_only_outside_quotes_and_comments() {
        assert_eq!(one("pause my-db.x$1"), Command::Pause(Some("my-db.x$1".into())));
        assert_eq!(one("kill 'a;b'"), Command::Kill(Some("'a;b'".into())));
        assert_eq!(one("show /* ; */ pools -- ; kill\n"), Command::Show(Show::Pools));
        assert!(matches!(parse_script("resume app\"x;y\""), Err(AdminError::Syntax(_))));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(matches!(parse_script("VACUUM"), Err(AdminError::UnknownCommand(c)) if c == "VACUUM"));
        assert!(matches!(parse_script("show fds"), Err(AdminError::UnknownShow(c)) if c == "fds"));
        assert!(matches!(parse_script("show"), Err(AdminError::Syntax(_))));
        assert!(matches!(parse_script("show pools extra"), Err(AdminError::Syntax(_))));
        assert!(matches!(parse_script("reload now"), Err(AdminError::Syntax(_))));
        assert!(matches!(parse_script("pause a b"), Err(AdminError::Syntax(_))));
        assert!(matches!(parse_script("kill \"a"), Err(AdminError::Syntax(_))));
        assert!(matches!(parse_script("\"SHOW\" pools"), Err(AdminError::UnknownCommand(_))));
        // One bad statement stops the whole script before anything runs.
        assert!(parse_script("show pools; bogus").is_err());
    }
}
