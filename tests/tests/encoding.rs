//! Client encodings other than UTF-8 through pgvane, against real PostgreSQL: statements in
//! LATIN9 and EUC_JP reach the policy plugins as text and a rewrite goes back in the client's
//! encoding (simple and extended protocol, session and transaction pooling, a raw client and
//! psycopg), statements that are not in the client encoding fail with 22021 and the session
//! goes on, and the login reports the parameters as the server spells them.

use pgvane_tests::describe_output;
use pgvane_tests::drivers::run_python;
use pgvane_tests::fixture::{plugin_path, Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::wire::{Msg, Wire};

/// `select '日本語'` in EUC_JP.
const EUC_JP_TEXT: &[u8] = b"\xc6\xfc\xcb\xdc\xb8\xec";
/// `漢字` in EUC_JP.
const EUC_JP_KANJI: &[u8] = b"\xb4\xc1\xbb\xfa";
/// `é€` in LATIN9.
const LATIN9_TEXT: &[u8] = b"\xe9\xa4";

/// pgvane in `mode` with query-rewrite rules whose patterns and replacements are not ASCII:
/// a plugin can only match them if it gets the statement decoded, and the rewrite must be
/// encoded back into the client's encoding.
async fn proxied(mode: &str) -> anyhow::Result<Proxied> {
    let rules = r#"rules = [
        { queryRegex = "'(é€|日本語)'", replace = "'rewritten $1'" },
        { queryRegex = "'to-kanji'", replace = "'漢字'" },
    ]"#;
    let plugin = format!(
        "[[plugins]]\nname = \"rewrite\"\npath = \"{}\"\n[plugins.config]\n{rules}\n",
        plugin_path("query_rewrite")?.display()
    );
    Proxied::start(ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: format!("pool_mode = \"{mode}\"\ndefault_pool_size = 2"),
        extra: plugin,
        ..ProxyOptions::default()
    })
    .await
}

fn sql(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The single value of the single row among `msgs`, as bytes.
fn value(msgs: &[Msg]) -> Vec<u8> {
    let rows: Vec<_> = msgs.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(rows.len(), 1, "one row expected: {msgs:?}");
    rows[0].row_bytes().into_iter().next().flatten().unwrap_or_default()
}

/// Runs `statement` with the simple protocol and, as a named prepared statement, with the
/// extended one; both must answer `expected`.
async fn both_protocols(wire: &mut Wire, statement: &[u8], expected: &[u8], what: &str) -> anyhow::Result<()> {
    let (tags, msgs) = wire.query_bytes(statement).roundtrip(1).await?;
    assert_eq!(tags, "TDCZ", "{what}, simple: {msgs:?}");
    assert_eq!(value(&msgs), expected, "{what}, simple");
    let (tags, msgs) =
        wire.parse_bytes("s", statement).bind("s", &[]).execute().close(b'S', "s").sync().roundtrip(1).await?;
    assert_eq!(tags, "12DC3Z", "{what}, extended: {msgs:?}");
    assert_eq!(value(&msgs), expected, "{what}, extended");
    Ok(())
}

fn parameter_status(login: &[Msg], name: &str) -> Option<String> {
    login.iter().filter(|m| m.tag == b'S').find_map(|m| {
        let mut parts = m.body.split(|&b| b == 0);
        let key = parts.next()?;
        let value = parts.next()?;
        (key == name.as_bytes()).then(|| String::from_utf8_lossy(value).into_owned())
    })
}

#[tokio::test]
async fn euc_jp_and_latin9_statements_round_trip_through_a_rewriting_plugin() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let p = proxied(mode).await?;

        // EUC_JP from the startup packet (as libpq's PGCLIENTENCODING sends it).
        let params = [("user", APP_USER), ("database", APP_DB), ("client_encoding", "euc-jp")];
        let (mut euc_jp, _) = Wire::connect_with(p.port(), &params).await?;
        let what = format!("{mode}, EUC_JP");
        let statement = sql(&[b"select '", EUC_JP_TEXT, b"'::text"]);
        both_protocols(&mut euc_jp, &statement, &sql(&[b"rewritten ", EUC_JP_TEXT]), &what).await?;
        // The rewrite's own non-ASCII text is encoded into EUC_JP.
        both_protocols(&mut euc_jp, b"select 'to-kanji'::text", EUC_JP_KANJI, &what).await?;
        // A statement no rule matches goes to the server byte for byte.
        both_protocols(&mut euc_jp, &sql(&[b"select '", EUC_JP_KANJI, b"'::text"]), EUC_JP_KANJI, &what).await?;

        // LATIN9 set during the session: pgvane follows the server's ParameterStatus.
        let mut latin9 = Wire::connect(p.port(), APP_USER, APP_DB).await?;
        // PostgreSQL reports the new value when the statement is done, before ReadyForQuery.
        let (tags, msgs) = latin9.query("set client_encoding to 'LATIN9'").roundtrip(1).await?;
        assert_eq!(tags, "CSZ", "{mode}: {msgs:?}");
        let what = format!("{mode}, LATIN9");
        let statement = sql(&[b"select '", LATIN9_TEXT, b"'::text"]);
        both_protocols(&mut latin9, &statement, &sql(&[b"rewritten ", LATIN9_TEXT]), &what).await?;
        // A rewrite LATIN9 cannot represent fails that statement, as PostgreSQL fails
        // untranslatable characters; the session goes on.
        let (tags, msgs) = latin9.query("select 'to-kanji'::text").roundtrip(1).await?;
        assert_eq!(tags, "EZ", "{what}: {msgs:?}");
        assert_eq!(msgs[0].sqlstate().as_deref(), Some("22P05"), "{what}: {msgs:?}");
        let (tags, msgs) =
            latin9.parse("", "select 'to-kanji'::text").bind("", &[]).execute().sync().roundtrip(1).await?;
        assert_eq!((tags.as_str(), msgs[0].sqlstate().as_deref()), ("EZ", Some("22P05")), "{what}: {msgs:?}");
        both_protocols(&mut latin9, &statement, &sql(&[b"rewritten ", LATIN9_TEXT]), &what).await?;

        // Back to UTF-8: the same text now comes in UTF-8.
        let (tags, msgs) = latin9.query("set client_encoding to 'UTF8'").roundtrip(1).await?;
        assert_eq!(tags, "CSZ", "{mode}: {msgs:?}");
        both_protocols(&mut latin9, "select 'é€'::text".as_bytes(), "rewritten é€".as_bytes(), mode).await?;
    }
    Ok(())
}

#[tokio::test]
async fn statements_not_in_the_client_encoding_fail_with_22021_and_the_session_goes_on() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let p = proxied(mode).await?;
        let mut utf8 = Wire::connect(p.port(), APP_USER, APP_DB).await?;
        let (tags, msgs) = utf8.query_bytes(b"select '\xff'").roundtrip(1).await?;
        assert_eq!(tags, "EZ", "{mode}: {msgs:?}");
        assert_eq!(msgs[0].sqlstate().as_deref(), Some("22021"), "{mode}: {msgs:?}");
        assert_eq!(msgs[0].field(b'M').as_deref(), Some("invalid byte sequence for encoding \"UTF8\": 0xff"), "{mode}");
        // A Parse: the error, then everything up to Sync is skipped, as PostgreSQL does.
        let (tags, msgs) =
            utf8.parse_bytes("bad", b"select '\xc3\x28'").bind("bad", &[]).execute().sync().roundtrip(1).await?;
        assert_eq!(tags, "EZ", "{mode}: {msgs:?}");
        assert_eq!(
            msgs[0].field(b'M').as_deref(),
            Some("invalid byte sequence for encoding \"UTF8\": 0xc3 0x28"),
            "{mode}"
        );
        // The session goes on, and the failed Parse left no statement behind.
        let (tags, msgs) = utf8.parse("bad", "select 1").bind("bad", &[]).execute().sync().roundtrip(1).await?;
        assert_eq!(tags, "12DCZ", "{mode}: {msgs:?}");
        let (tags, _) = utf8.query("select 1").roundtrip(1).await?;
        assert_eq!(tags, "TDCZ", "{mode}");

        // In EUC_JP, a lead byte without its second byte.
        let params = [("user", APP_USER), ("database", APP_DB), ("client_encoding", "EUC_JP")];
        let (mut euc_jp, _) = Wire::connect_with(p.port(), &params).await?;
        let (tags, msgs) = euc_jp.query_bytes(b"select '\xc6'").roundtrip(1).await?;
        assert_eq!((tags.as_str(), msgs[0].sqlstate().as_deref()), ("EZ", Some("22021")), "{mode}: {msgs:?}");
        let message = msgs[0].field(b'M').unwrap_or_default();
        assert!(message.starts_with("invalid byte sequence for encoding \"EUC_JP\": 0xc6"), "{mode}: {message}");
        let (tags, _) = euc_jp.query("select 1").roundtrip(1).await?;
        assert_eq!(tags, "TDCZ", "{mode}");
    }
    Ok(())
}

#[tokio::test]
async fn the_login_reports_parameters_as_the_server_spells_them() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let p = proxied(mode).await?;
        // Twice: in transaction mode the second login is answered without a server connection.
        for (encoding, datestyle) in [("euc-jp", "iso, dmy"), ("euc-jp", "iso, dmy"), ("EUC-JP", "dmy")] {
            let params =
                [("user", APP_USER), ("database", APP_DB), ("client_encoding", encoding), ("DateStyle", datestyle)];
            let (mut wire, login) = Wire::connect_with(p.port(), &params).await?;
            let what = format!("{mode}, {encoding}, {datestyle}");
            assert_eq!(parameter_status(&login, "client_encoding").as_deref(), Some("EUC_JP"), "{what}");
            assert_eq!(parameter_status(&login, "DateStyle").as_deref(), Some("ISO, DMY"), "{what}");
            // And the session really runs with them.
            let (_, msgs) = wire.query("select current_setting('DateStyle')").roundtrip(1).await?;
            assert_eq!(value(&msgs), b"ISO, DMY", "{what}");
        }
    }
    Ok(())
}

/// psycopg 3 in LATIN9 (from the connection string) and EUC_JP (set in the session), every
/// statement prepared (`prepare_threshold=0`), through the rewriting plugin.
const PSYCOPG_SCRIPT: &str = r#"
import sys
import psycopg

port = int(sys.argv[1])
args = dict(host="127.0.0.1", port=port, user=sys.argv[2], password=sys.argv[3], dbname=sys.argv[4])
with psycopg.connect(client_encoding="LATIN9", prepare_threshold=0, **args) as conn:
    assert conn.info.encoding == "iso8859-15", conn.info.encoding
    for _ in range(3):
        assert conn.execute("select 'é€'::text").fetchone()[0] == "rewritten é€"
        assert conn.execute("select %s::text || 'xé€'", ["ü"]).fetchone()[0] == "üxé€"
        try:
            conn.execute("select 'to-kanji'::text")
            raise SystemExit("to-kanji must fail in LATIN9")
        except psycopg.errors.UntranslatableCharacter:
            pass
with psycopg.connect(prepare_threshold=0, autocommit=True, **args) as conn:
    conn.execute("set client_encoding to 'EUC_JP'")
    assert conn.info.encoding == "euc_jp", conn.info.encoding
    for _ in range(3):
        assert conn.execute("select '日本語'::text").fetchone()[0] == "rewritten 日本語"
        assert conn.execute("select 'to-kanji'::text").fetchone()[0] == "漢字"
        with conn.transaction():
            assert conn.execute("select %s::text || '語'", ["日本"]).fetchone()[0] == "日本語"
print("ok")
"#;

#[tokio::test]
async fn psycopg_in_latin9_and_euc_jp_through_a_rewriting_plugin() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let p = proxied(mode).await?;
        let args = vec![p.port().to_string(), APP_USER.into(), APP_PASSWORD.into(), APP_DB.into()];
        let output = run_python(PSYCOPG_SCRIPT, args).await?;
        assert!(output.status.success(), "{mode}: {}", describe_output(&output));
    }
    Ok(())
}
