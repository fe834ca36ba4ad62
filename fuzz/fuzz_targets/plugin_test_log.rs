#![no_main]
//! The inputs of `pgvane plugin test`: query files and PostgreSQL logs
//! (`plugin_test::parse_queries`) and expectation files (`plugin_test::parse_expectations`).
//!
//! Properties: each query comes from a line of the file (`at` names it) and its SQL is not
//! empty unless a log line recorded an empty statement; the output escaping leaves no tab,
//! newline or carriage return; a query's verdict line (`<n>\t<verdict>\t<query>`) reads back
//! as an expectation for query n with that verdict.

use libfuzzer_sys::fuzz_target;
use pgvane::plugin_test::{escape, parse_expectations, parse_queries, Sender};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count();
    if let Ok(queries) = parse_queries("q.sql", text, &Sender::default()) {
        assert!(queries.len() <= lines);
        let mut expectations = String::new();
        for (n, query) in queries.iter().enumerate() {
            let line: usize = query.at.strip_prefix("q.sql:").and_then(|l| l.parse().ok()).expect("file:line");
            assert!((1..=lines).contains(&line));
            let escaped = escape(&query.sql);
            assert!(!escaped.contains(['\t', '\n', '\r']));
            let _ = query.request(n as u32);
            expectations.push_str(&format!("{}\tpass\t{escaped}\n", n + 1));
        }
        let expected = parse_expectations(&expectations).expect("our own output reads back");
        assert_eq!(expected.len(), queries.len());
        assert!(expected.values().all(|v| v == "pass"));
    }
    let _ = parse_expectations(text);
});
