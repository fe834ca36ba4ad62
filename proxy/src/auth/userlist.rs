//! The user list: PgBouncer's `auth_file` format.
//!
//! Each line holds two double-quoted fields, the user name and the secret:
//!
//! ```text
//! ; comment
//! "alice" "plain password"
//! "bob"   "md5" followed by 32 lowercase hex digits
//! "carol" "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
//! ```
//!
//! As in PgBouncer (`load_auth_file` in `src/loader.c`): leading whitespace and blank lines
//! are skipped, a line starting with `;` is a comment, `""` inside a field is a literal `"`,
//! anything after the second field is ignored, and when a user appears twice the later line
//! wins. Lines starting with `#` are comments too. Unlike PgBouncer, only spaces and tabs
//! may separate the two fields, both must be on the same line, and a malformed line is an
//! error for the whole file rather than the end of loading.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::scram::{ScramVerifier, DEFAULT_ITERATIONS};

/// Why a user list could not be read. Every variant carries the 1-based line number;
/// none carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserlistError {
    /// The line is not two quoted fields.
    #[error("line {line}: expected \"user\" \"secret\"")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A quoted field has no closing quote on its line.
    #[error("line {line}: unterminated quoted field")]
    Unterminated {
        /// 1-based line number.
        line: usize,
    },
    /// The user name is empty.
    #[error("line {line}: empty user name")]
    EmptyUser {
        /// 1-based line number.
        line: usize,
    },
    /// The secret starts with `SCRAM-SHA-256$` but is not a valid verifier.
    #[error("line {line}: malformed SCRAM-SHA-256 verifier")]
    BadScramVerifier {
        /// 1-based line number.
        line: usize,
    },
}

impl UserlistError {
    /// The 1-based number of the offending line.
    pub fn line(&self) -> usize {
        match self {
            UserlistError::Syntax { line }
            | UserlistError::Unterminated { line }
            | UserlistError::EmptyUser { line }
            | UserlistError::BadScramVerifier { line } => *line,
        }
    }
}

/// A user's secret, as written in the user list. Its `Debug` output names only the kind.
#[derive(Clone)]
pub enum Secret {
    /// A plain-text password. It may be empty; an empty password must not let anyone in.
    Plain(String),
    /// A PostgreSQL MD5 hash: "md5" followed by 32 lowercase hex digits, the MD5 of the
    /// password followed by the user name.
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

impl Secret {
    /// Sorts a secret by its form: an MD5 hash, a SCRAM verifier (which must parse), or
    /// else a plain password.
    fn classify(secret: String, line: usize) -> Result<Secret, UserlistError> {
        if is_md5_hash(&secret) {
            Ok(Secret::Md5(secret))
        } else if secret.starts_with("SCRAM-SHA-256$") {
            ScramVerifier::parse(&secret).map(Secret::Scram).ok_or(UserlistError::BadScramVerifier { line })
        } else {
            Ok(Secret::Plain(secret))
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Scram(_) => f.write_str("Scram(<redacted>)"),
        }
    }
}

/// Users and their secrets, read from an `auth_file`.
///
/// For SCRAM logins every listed user needs a verifier. Those of plain-password users are
/// derived once per load, by [`Userlist::derive_scram_verifiers`] (PBKDF2, so it runs where
/// the file is loaded, off the sessions' path), with the salt a mock exchange shows for the
/// same name and the iteration count [`Userlist::scram_iterations`]: an unknown user, a
/// plain-password user and (in the common case) a user stored as a SCRAM secret show the
/// client the same kind of salt and the same count.
#[derive(Debug, Clone, Default)]
pub struct Userlist {
    users: HashMap<String, Secret>,
    /// SCRAM verifiers of the plain-password users, once derived.
    derived: HashMap<String, ScramVerifier>,
    /// See [`Userlist::scram_iterations`].
    scram_iterations: u32,
}

impl Userlist {
    /// Parses the text of an `auth_file`. Cheap: no verifier is derived yet.
    pub fn parse(text: &str) -> Result<Userlist, UserlistError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            if let Some((user, secret)) = parse_line(line, index + 1)? {
                users.insert(user, secret);
            }
        }
        let scram_iterations = most_common_iterations(&users);
        Ok(Userlist { users, derived: HashMap::new(), scram_iterations })
    }

    /// Derives the SCRAM verifier of every plain-password user (PBKDF2 each): call it once,
    /// where the file is loaded, when clients log in with SCRAM.
    pub fn derive_scram_verifiers(&mut self) {
        let iterations = self.scram_iterations();
        self.derived = self
            .users
            .iter()
            .filter_map(|(user, secret)| match secret {
                Secret::Plain(password) => Some((user.clone(), ScramVerifier::derived(user, password, iterations))),
                Secret::Md5(_) | Secret::Scram(_) => None,
            })
            .collect();
    }

    /// The iteration count of the verifiers pgvane makes (derived and mock): the count most
    /// SCRAM secrets in the file use (the larger one on a tie), or PostgreSQL's default 4096
    /// when the file holds none. A user stored with another count than most is the one case
    /// where the count tells the client something: that such a user exists.
    pub fn scram_iterations(&self) -> u32 {
        if self.scram_iterations == 0 {
            DEFAULT_ITERATIONS
        } else {
            self.scram_iterations
        }
    }

    /// The verifier to check `user` against in a SCRAM exchange: the stored one, or the one
    /// derived from a plain password. `None` for unknown users, users with only an MD5
    /// hash, and plain-password users when [`Userlist::derive_scram_verifiers`] has not run.
    pub fn scram_verifier(&self, user: &str) -> Option<&ScramVerifier> {
        match self.users.get(user)? {
            Secret::Scram(verifier) => Some(verifier),
            Secret::Plain(_) => self.derived.get(user),
            Secret::Md5(_) => None,
        }
    }

    /// Whether most users have a SCRAM secret (rather than a plain password or an MD5
    /// hash): with `auth_type = "md5"`, unknown users then get a (mock) SCRAM exchange, as
    /// those users do, instead of an MD5 one.
    pub fn mostly_scram(&self) -> bool {
        let scram = self.users.values().filter(|s| matches!(s, Secret::Scram(_))).count();
        scram * 2 > self.users.len()
    }

    /// The secret of `user`, if listed.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// How many users are listed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The iteration count most SCRAM secrets use (the larger on a tie); 0 when there are none.
fn most_common_iterations(users: &HashMap<String, Secret>) -> u32 {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for secret in users.values() {
        if let Secret::Scram(verifier) = secret {
            *counts.entry(verifier.iterations).or_default() += 1;
        }
    }
    // max_by_key keeps the last maximum: the larger count on a tie.
    counts.into_iter().max_by_key(|&(_, n)| n).map_or(0, |(iterations, _)| iterations)
}

/// Parses one line; `None` for blank lines and comments.
fn parse_line(line: &str, number: usize) -> Result<Option<(String, Secret)>, UserlistError> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = quoted_field(line, number)?;
    let (secret, _ignored) = quoted_field(rest.trim_start_matches([' ', '\t']), number)?;
    if user.is_empty() {
        return Err(UserlistError::EmptyUser { line: number });
    }
    Ok(Some((user, Secret::classify(secret, number)?)))
}

/// Reads the double-quoted field that `s` starts with, turning `""` into `"`; returns the
/// field's value and the text after its closing quote.
fn quoted_field(s: &str, line: usize) -> Result<(String, &str), UserlistError> {
    let body = s.strip_prefix('"').ok_or(UserlistError::Syntax { line })?;
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        if c != '"' {
            value.push(c);
        } else if chars.next_if(|&(_, next)| next == '"').is_some() {
            value.push('"');
        } else {
            let rest = body.get(index + 1..).unwrap_or_default();
            return Ok((value, rest));
        }
    }
    Err(UserlistError::Unterminated { line })
}

/// Whether `s` is "md5" followed by exactly 32 lowercase hex digits, as PostgreSQL and
/// PgBouncer recognise MD5 hashes.
fn is_md5_hash(s: &str) -> bool {
    s.strip_prefix("md5")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MD5: &str = "md545f2603610af569b6155c45067268c6b";
    const SCRAM: &str = "SCRAM-SHA-256$4096:nJakA6586ryZEsVYp/ow/A==$bKi3vC8WXFnrw3qzlD3GK7hgA2kGCI30rz0SNNHR3pQ=:qRlXnTUYquIf1YLJvUPWtsSKWYugzwaYFnnNIEJX6ek=";

    fn plain(list: &Userlist, user: &str) -> String {
        match list.get(user) {
            Some(Secret::Plain(password)) => password.clone(),
            other => panic!("{user}: expected a plain password, got {other:?}"),
        }
    }

    #[test]
    fn parses_each_kind_of_secret() {
        let text = format!("\"alice\" \"wonderland\"\n\"admin\" \"{MD5}\"\n\"foo\" \"{SCRAM}\"\n");
        let list = Userlist::parse(&text).unwrap();
        assert_eq!(list.len(), 3);
        assert!(!list.is_empty());
        assert_eq!(plain(&list, "alice"), "wonderland");
        match list.get("admin") {
            Some(Secret::Md5(hash)) => assert_eq!(hash, MD5),
            other => panic!("{other:?}"),
        }
        match list.get("foo") {
            Some(Secret::Scram(verifier)) => {
                assert_eq!(verifier.iterations, 4096);
                assert!(*verifier == ScramVerifier::from_password("foobar", &verifier.salt, 4096));
            }
            other => panic!("{other:?}"),
        }
        assert!(list.get("nobody").is_none());
        assert!(list.get("Alice").is_none());
    }

    #[test]
    fn skips_comments_blank_lines_and_leading_whitespace() {
        let text = "; a comment\n# another\n\n   \n\t \"alice\"\t \"pw\"\r\n  ; \"bob\" \"pw\"\n";
        let list = Userlist::parse(text).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(plain(&list, "alice"), "pw");
        assert!(list.get("bob").is_none());
    }

    #[test]
    fn empty_text_gives_empty_list() {
        let list = Userlist::parse("").unwrap();
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
        assert!(Userlist::parse("; nothing here\n").unwrap().is_empty());
    }

    #[test]
    fn doubled_quotes_are_literal_quotes() {
        let text = r#""say ""hi""" "pa""ss" "" "#;
        let list = Userlist::parse(text).unwrap();
        assert_eq!(plain(&list, r#"say "hi""#), r#"pa"ss"#);
        // An empty secret is kept as an empty plain password.
        let list = Userlist::parse(r#""u" """#).unwrap();
        assert_eq!(plain(&list, "u"), "");
    }

    #[test]
    fn ignores_everything_after_the_second_field() {
        let text = "\"alice\" \"pw\" \"extra\" trailing ; junk\n\"bob\" \"pw2\"garbage";
        let list = Userlist::parse(text).unwrap();
        assert_eq!(plain(&list, "alice"), "pw");
        assert_eq!(plain(&list, "bob"), "pw2");
    }

    #[test]
    fn later_line_wins_for_a_repeated_user() {
        let list = Userlist::parse("\"alice\" \"old\"\n\"alice\" \"new\"\n").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(plain(&list, "alice"), "new");
    }

    #[test]
    fn only_well_formed_md5_hashes_are_md5() {
        let kind = |secret: &str| {
            let list = Userlist::parse(&format!("\"u\" \"{secret}\"")).unwrap();
            format!("{:?}", list.get("u").unwrap())
        };
        assert_eq!(kind(MD5), "Md5(<redacted>)");
        assert_eq!(kind(&MD5.to_uppercase().replacen("MD5", "md5", 1)), "Plain(<redacted>)");
        assert_eq!(kind(&MD5[..34]), "Plain(<redacted>)");
        assert_eq!(kind(&format!("{MD5}0")), "Plain(<redacted>)");
        assert_eq!(kind(&MD5.replace('f', "g")), "Plain(<redacted>)");
        assert_eq!(kind("md5"), "Plain(<redacted>)");
        assert_eq!(kind("scram-sha-256$whatever"), "Plain(<redacted>)");
        assert_eq!(kind(SCRAM), "Scram(<redacted>)");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("\"a\" \"1\"\n; ok\nbob secret\n", UserlistError::Syntax { line: 3 }),
            ("\"a\" \"1\"\n\"bob\" secret\n", UserlistError::Syntax { line: 2 }),
            ("\"bob\"\n", UserlistError::Syntax { line: 1 }),
            ("\"bob\" ; \"pw\"\n", UserlistError::Syntax { line: 1 }),
            ("\n\"bob\" \"pw\n\"", UserlistError::Unterminated { line: 2 }),
            ("\"bob \"pw\"", UserlistError::Syntax { line: 1 }),
            ("\"bob", UserlistError::Unterminated { line: 1 }),
            ("\"\" \"pw\"", UserlistError::EmptyUser { line: 1 }),
            ("\"a\" \"1\"\n\"b\" \"SCRAM-SHA-256$4096:bad\"\n", UserlistError::BadScramVerifier { line: 2 }),
        ];
        for (text, expected) in cases {
            assert_eq!(Userlist::parse(text).err(), Some(expected.clone()), "{text:?}");
            assert!(expected.to_string().starts_with(&format!("line {}: ", expected.line())));
        }
        assert_eq!(UserlistError::Syntax { line: 3 }.to_string(), "line 3: expected \"user\" \"secret\"");
    }

    #[test]
    fn plain_passwords_get_verifiers_with_the_common_iteration_count() {
        let high = ScramVerifier::from_password("x", b"0123456789abcdef", 8192);
        let secret_of = |v: &ScramVerifier| {
            use base64::Engine as _;
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            format!("SCRAM-SHA-256${}:{}${}:{}", v.iterations, b64(&v.salt), b64(&v.stored_key), b64(&v.server_key))
        };
        let text = format!(
            "\"alice\" \"pw\"\n\"admin\" \"{MD5}\"\n\"foo\" \"{SCRAM}\"\n\"bar\" \"{}\"\n\"baz\" \"{}\"\n",
            secret_of(&high),
            secret_of(&high)
        );
        let mut list = Userlist::parse(&text).unwrap();
        // Two secrets at 8192, one at 4096: 8192 wins.
        assert_eq!(list.scram_iterations(), 8192);
        assert!(list.scram_verifier("alice").is_none(), "nothing derived before derive_scram_verifiers");
        list.derive_scram_verifiers();
        let alice = list.scram_verifier("alice").unwrap();
        assert_eq!(alice.iterations, 8192);
        assert!(*alice == ScramVerifier::derived("alice", "pw", 8192));
        assert_eq!(list.scram_verifier("foo").unwrap().iterations, 4096);
        assert!(list.scram_verifier("admin").is_none());
        assert!(list.scram_verifier("nobody").is_none());
        assert!(list.mostly_scram());

        // No SCRAM secret at all: PostgreSQL's default count; a tie takes the larger count.
        let list = Userlist::parse("\"alice\" \"pw\"\n").unwrap();
        assert_eq!(list.scram_iterations(), DEFAULT_ITERATIONS);
        assert!(!list.mostly_scram());
        let text = format!("\"foo\" \"{SCRAM}\"\n\"bar\" \"{}\"\n", secret_of(&high));
        assert_eq!(Userlist::parse(&text).unwrap().scram_iterations(), 8192);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let text = format!("\"alice\" \"hunter2\"\n\"admin\" \"{MD5}\"\n\"foo\" \"{SCRAM}\"\n");
        let list = Userlist::parse(&text).unwrap();
        let printed = format!("{list:?}");
        assert!(printed.contains("alice"));
        assert!(printed.contains("Plain(<redacted>)"));
        for secret in ["hunter2", "45f2603610", "nJakA6586", "bKi3vC8", "qRlXnTU"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
