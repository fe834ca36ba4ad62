//! The plugin's configuration, as pgvane hands it to `init`.

use serde::de::DeserializeOwned;

/// A plugin's configuration: the `[plugins.config]` table of its `[[plugins]]` entry in
/// pgvane.toml, which pgvane passes to `init` as a JSON object (`{}` when the table is absent).
///
/// Read it into your own serde type with [`Config::parse`]:
///
/// ```
/// use pgvane_sdk::Config;
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Settings { dbkey: String }
///
/// let config = Config::from_json(r#"{"dbkey": 3}"#);
/// let err = config.parse::<Settings>().err().unwrap();
/// assert_eq!(err, "invalid config: dbkey: invalid type: integer `3`, expected a string");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    json: String,
}

impl Config {
    /// A configuration from its JSON text. Empty (or blank) text is taken as `{}`.
    pub fn from_json(json: impl Into<String>) -> Self {
        let json = json.into();
        if json.trim().is_empty() {
            Config::empty()
        } else {
            Config { json }
        }
    }

    /// The empty configuration, `{}`.
    pub fn empty() -> Self {
        Config { json: "{}".to_owned() }
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// Deserializes the configuration into `T`. The error names the key that is wrong, as a
    /// path into the table (`rules[2].dbkey: invalid type: integer `3`, expected a string`),
    /// ready to be returned from [`crate::Policy::init`]. Add `#[serde(deny_unknown_fields)]`
    /// to `T` so a misspelled key is refused instead of ignored.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut de = serde_json::Deserializer::from_str(&self.json);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // serde_json reports positions in the JSON pgvane generated, not in the user's
            // TOML: drop them, the path says where.
            let msg = inner.to_string();
            let msg = match msg.rsplit_once(" at line ") {
                Some((head, _)) if inner.line() > 0 => head.to_owned(),
                _ => msg,
            };
            if path == "." {
                format!("invalid config: {msg}")
            } else {
                format!("invalid config: {path}: {msg}")
            }
        })?;
        de.end().map_err(|e| format!("invalid config: {e}"))?;
        Ok(value)
    }
}

/// A regular expression read from the configuration, compiled while the config is parsed, so a
/// bad pattern is refused at load time with the key it came from.
///
/// Deserializes from a string with the syntax of the [`regex`] crate (close to Perl/Python:
/// `\b`, `\d`, `(?i)` …; no look-around or back-references). Matching is unanchored, like
/// Python's `re.search`: anchor with `^`/`$` when you mean the whole text.
#[cfg(feature = "regex")]
#[derive(Debug, Clone)]
pub struct Pattern {
    regex: regex::Regex,
    search: Search,
}

/// How [`Pattern::is_match`] answers: a pattern's leading and trailing `X*` (such as the `.*`
/// in pgbouncer-rr's `.*tablea.*`) cannot change whether it matches somewhere, only where, so
/// `is_match` runs the pattern without them (the regex engine can then jump to the literal
/// instead of scanning for the `.*`), and does not run a pattern that matches every text at all.
#[cfg(feature = "regex")]
#[derive(Debug, Clone)]
enum Search {
    /// Matches every text (`.*`, the empty pattern…).
    Always,
    /// The pattern itself.
    Same,
    /// The pattern without its leading and trailing `X*`.
    Trimmed(regex::Regex),
}

#[cfg(feature = "regex")]
impl Pattern {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let regex = Self::build(pattern)?;
        let search = match regex_syntax::Parser::new().parse(pattern).map(trim_unbounded_ends) {
            Ok(None) => Search::Always,
            Ok(Some(hir)) => Self::build(&hir.to_string()).map_or(Search::Same, Search::Trimmed),
            // The regex crate accepted what regex-syntax refused: not expected, and harmless.
            Err(_) => Search::Same,
        };
        Ok(Pattern { regex, search })
    }

    fn build(pattern: &str) -> Result<regex::Regex, String> {
        // Bounded so a hostile or careless pattern cannot exhaust the instance's memory.
        regex::RegexBuilder::new(pattern).size_limit(1 << 20).dfa_size_limit(1 << 20).build().map_err(|e| e.to_string())
    }

    /// True when the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        match &self.search {
            Search::Always => true,
            Search::Same => self.regex.is_match(text),
            Search::Trimmed(trimmed) => trimmed.is_match(text),
        }
    }

    /// The compiled [`regex::Regex`].
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }

    /// The pattern's source text.
    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

/// The pattern without the repetitions of minimum zero at the start and end of its top-level
/// concatenation (they can always match empty); `None` when nothing but such a repetition is
/// left, i.e. the pattern matches every text. Leaves any other pattern as it is.
#[cfg(feature = "regex")]
fn trim_unbounded_ends(hir: regex_syntax::hir::Hir) -> Option<regex_syntax::hir::Hir> {
    use regex_syntax::hir::{Hir, HirKind};
    let optional =
        |h: &Hir| matches!(h.kind(), HirKind::Repetition(r) if r.min == 0) || matches!(h.kind(), HirKind::Empty);
    if optional(&hir) {
        return None;
    }
    let HirKind::Concat(_) = hir.kind() else { return Some(hir) };
    let HirKind::Concat(mut parts) = hir.into_kind() else { return None };
    while parts.first().is_some_and(optional) {
        parts.remove(0);
    }
    while parts.last().is_some_and(optional) {
        parts.pop();
    }
    if parts.is_empty() {
        None
    } else {
        Some(Hir::concat(parts))
    }
}

#[cfg(feature = "regex")]
impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(|e| serde::de::Error::custom(format!("bad regular expression: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        dbkey: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        rules: Vec<Rule>,
        #[serde(default)]
        #[allow(dead_code)]
        default: Option<String>,
    }

    #[test]
    fn errors_name_the_key_without_json_positions() {
        let e = Config::from_json(r#"{"rules":[{"dbkey":"a"},{"dbkey":1}]}"#).parse::<Settings>().unwrap_err();
        assert_eq!(e, "invalid config: rules[1].dbkey: invalid type: integer `1`, expected a string");
        let e = Config::from_json(r#"{"rules":[],"defualt":"x"}"#).parse::<Settings>().unwrap_err();
        assert!(e.starts_with("invalid config: defualt: unknown field `defualt`"), "{e}");
        let e = Config::empty().parse::<Settings>().unwrap_err();
        assert_eq!(e, "invalid config: missing field `rules`");
        let e = Config::from_json("{").parse::<Settings>().unwrap_err();
        assert!(e.starts_with("invalid config: "), "{e}");
    }

    #[test]
    fn blank_is_empty_object() {
        assert_eq!(Config::from_json("  "), Config::empty());
        let s: Settings = Config::from_json(r#"{"rules":[{"dbkey":"a"}]}"#).parse().unwrap();
        assert_eq!(s.rules.len(), 1);
    }

    #[cfg(feature = "regex")]
    #[test]
    fn patterns_compile_at_parse_time() {
        #[derive(Deserialize)]
        struct P {
            q: Pattern,
        }
        let p: P = Config::from_json(r#"{"q":"(?i)\\btablea\\b"}"#).parse().unwrap();
        assert!(p.q.is_match("select * from TableA"));
        assert!(!p.q.is_match("select * from tableab"));
        let e = Config::from_json(r#"{"q":"(unclosed"}"#).parse::<P>().err().unwrap();
        assert!(e.starts_with("invalid config: q: bad regular expression: "), "{e}");
    }

    #[cfg(feature = "regex")]
    #[test]
    fn trimmed_patterns_match_the_same_texts() {
        let texts = ["", "x", "SELECT * FROM tablea", "tablea", "tableb\ntablea", "TABLEA", "atableab", "a\nb"];
        for source in [
            ".*",
            "",
            "^.*",
            "(?s).*",
            ".*tablea.*",
            "(.*)tablea(.*)",
            ".*?tablea",
            ".*(?i)tablea.*",
            "^.*tablea.*$",
            "^tablea",
            "tablea$",
            ".*a|b.*",
            "a*",
            "a*b*",
            ".+",
            "a?tablea\\b.*",
            "(?m)^.*$",
        ] {
            let pattern = Pattern::new(source).unwrap();
            let plain = regex::Regex::new(source).unwrap();
            for text in texts {
                assert_eq!(pattern.is_match(text), plain.is_match(text), "{source:?} on {text:?}");
            }
            assert_eq!(pattern.as_str(), source);
        }
        assert!(matches!(Pattern::new(".*").unwrap().search, Search::Always));
        assert!(matches!(Pattern::new(".*tablea.*").unwrap().search, Search::Trimmed(_)));
    }
}
