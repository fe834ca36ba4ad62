//! The console's command language: what a Query's text means.
//!
//! Keywords are case-insensitive; statements are separated by `;` (a trailing one is fine);
//! a database name is a bare word taken as written, or a double-quoted name (`""` for `"`).

use super::AdminError;

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
    /// `SHUTDOWN`.
    Shutdown,
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
    /// Counters per database.
    Stats,
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
    ("CONFIG", Show::Config),
    ("VERSION", Show::Version),
    ("BACKENDS", Show::Backends),
    ("PLUGINS", Show::Plugins),
];

/// Every command, as the HINT of an unknown one lists them.
pub const USAGE: &str = "SHOW HELP|POOLS|CLIENTS|SERVERS|DATABASES|STATS|CONFIG|VERSION|BACKENDS|PLUGINS; \
                         PAUSE [db]; RESUME [db]; RELOAD; RECONNECT [db]; KILL [db]; SHUTDOWN";

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

/// Splits at `;` outside double quotes, trimming each statement.
fn split_statements(sql: &str) -> Result<Vec<Vec<Word>>, AdminError> {
    let mut statements = Vec::new();
    let mut words = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ';' => statements.push(std::mem::take(&mut words)),
            c if c.is_whitespace() => {}
            '"' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            text.push('"');
                        }
                        Some('"') => break,
                        Some(c) => text.push(c),
                        None => return Err(AdminError::Syntax("unterminated quoted name".into())),
                    }
                }
                words.push(Word { text, quoted: true });
            }
            c => {
                let mut text = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || next == ';' || next == '"' {
                        break;
                    }
                    text.push(next);
                    chars.next();
                }
                words.push(Word { text, quoted: false });
            }
        }
    }
    statements.push(words);
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
        "SHUTDOWN" => no_args(Command::Shutdown),
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
        assert_eq!(one("shutdown"), Command::Shutdown);
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
        assert!(parse_script("").unwrap().is_empty());
        assert!(parse_script(" ; ;").unwrap().is_empty());
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
