//! A client's named prepared statements in transaction and statement modes.
//!
//! The client's names never reach a server. Each statement is prepared on servers under a
//! name derived from its text, parameter types and statement epoch (`pgvane_<hash>`), so
//! clients cannot clash, identical statements share one server-side preparation until the
//! schema may have changed, and a statement can be prepared again, transparently, on
//! whichever server connection the client gets next.
//!
//! The SQL is kept as the client's bytes, in its client encoding: the name hashes those bytes,
//! and the encoding too when the text is not ASCII (the same bytes are another statement in
//! another encoding; ASCII reads the same in all of them).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::protocol::{ClientEncoding, Frame, Parse};

use super::sql::StateCommand;

/// How the names of pgvane's own statements on servers begin.
const SERVER_NAME_PREFIX: &str = "pgvane_";

/// True for a name in pgvane's own statement namespace, which clients may not touch.
pub fn is_server_name(name: &str) -> bool {
    name.starts_with(SERVER_NAME_PREFIX)
}

/// A statement as the client prepared it.
#[derive(Debug)]
pub struct Statement {
    /// Its name on servers.
    pub server_name: String,
    /// A complete Parse message creating it under `server_name`.
    pub parse_message: Bytes,
}

impl Statement {
    /// The server-side form of a client's Parse, its SQL in `encoding`, made in statement
    /// `epoch` (see [`crate::pool::StatementEpoch`]).
    pub fn from_parse(parse: &Parse<'_>, encoding: ClientEncoding, epoch: u64) -> Statement {
        let mut hash = Sha256::new();
        hash.update(parse.query);
        hash.update([0]);
        hash.update(parse.param_types);
        hash.update(epoch.to_le_bytes());
        if !parse.query.is_ascii() {
            hash.update(encoding.name().as_bytes());
        }
        let digest = hash.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let server_name = format!("{SERVER_NAME_PREFIX}{hex}");
        let mut message = BytesMut::new();
        Parse { name: &server_name, ..parse.clone() }.encode(&mut message);
        Statement { server_name, parse_message: message.freeze() }
    }
}

/// A statement as the client prepared it, in every pool mode.
#[derive(Debug, Clone)]
pub struct ClientStatement {
    /// The client's Parse as it came (its SQL before any rewrite): the statement is decided
    /// again from it when the policy in force changes.
    pub parse: Frame,
    /// The generation of the chain whose verdict the statement carries.
    pub decided_by: u64,
    /// Its server-side form in the pooled modes, where pgvane renames statements.
    pub server: Option<Arc<Statement>>,
    /// What running it does to the session (settings, state that cannot follow the client):
    /// noted at each Bind, on the server it runs on, not at the Parse.
    pub commands: Vec<StateCommand>,
}

/// The client's statements by the client's names (the unnamed one included).
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, ClientStatement>,
    /// The unnamed statement, kept apart: it is replaced at every unnamed Parse, and that
    /// must cost no allocation.
    unnamed: Option<ClientStatement>,
}

impl ClientStatements {
    /// The statement the client calls `name`.
    pub fn get(&self, name: &str) -> Option<&ClientStatement> {
        match name.is_empty() {
            true => self.unnamed.as_ref(),
            false => self.by_name.get(name),
        }
    }

    /// The statement the client calls `name`, to update.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ClientStatement> {
        match name.is_empty() {
            true => self.unnamed.as_mut(),
            false => self.by_name.get_mut(name),
        }
    }

    /// Named statements the client holds.
    pub fn named(&self) -> usize {
        self.by_name.len()
    }

    /// True if the client has a statement called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Records a statement the client created.
    pub fn insert(&mut self, name: &str, mut statement: ClientStatement) {
        match name.is_empty() {
            true => {
                // Replaced at every unnamed Parse: its Parse is copied into the memory of the
                // one it replaces, so that it does not keep the client's read buffer (which
                // then could not be reused) and costs no allocation.
                let old = self.unnamed.take().map(|old| old.parse);
                statement.parse = statement.parse.detached(old);
                self.unnamed = Some(statement);
            }
            false => {
                self.by_name.insert(name.to_owned(), statement);
            }
        }
    }

    /// Forgets one (Close, DEALLOCATE, or its Parse failed). True if it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        match name.is_empty() {
            true => self.unnamed.take().is_some(),
            false => self.by_name.remove(name).is_some(),
        }
    }

    /// Forgets all (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.unnamed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_frame;
    use crate::protocol::FrontendMessage;

    #[test]
    fn server_names_depend_on_text_types_and_epoch_only() {
        let types = [0u8, 0];
        let utf8 = ClientEncoding::UTF8;
        let a = Statement::from_parse(&Parse { name: "a", query: b"select 1", param_types: &types }, utf8, 1);
        let b = Statement::from_parse(&Parse { name: "b", query: b"select 1", param_types: &types }, utf8, 1);
        let c = Statement::from_parse(&Parse { name: "a", query: b"select 2", param_types: &types }, utf8, 1);
        let int4 = [0u8, 1, 0, 0, 0, 23];
        let d = Statement::from_parse(&Parse { name: "a", query: b"select 1", param_types: &int4 }, utf8, 1);
        let e = Statement::from_parse(&Parse { name: "a", query: b"select 1", param_types: &types }, utf8, 2);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert_ne!(a.server_name, d.server_name);
        assert_ne!(a.server_name, e.server_name, "a new statement epoch gets a fresh statement");
        assert!(a.server_name.len() < 64, "server names must fit NAMEDATALEN");
        let mut buf = BytesMut::from(&a.parse_message[..]);
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let FrontendMessage::Parse(parsed) = FrontendMessage::decode(&frame).unwrap() else { panic!("not a Parse") };
        assert_eq!((parsed.name, parsed.query), (a.server_name.as_str(), &b"select 1"[..]));
    }

    #[test]
    fn non_ascii_statements_are_told_apart_by_encoding() {
        let types = [0u8, 0];
        let latin9 = ClientEncoding::from_name("LATIN9").unwrap();
        let latin1 = ClientEncoding::from_name("LATIN1").unwrap();
        let named = |query: &[u8], encoding| {
            Statement::from_parse(&Parse { name: "a", query, param_types: &types }, encoding, 1).server_name
        };
        // 0xa4 is € in LATIN9 and ¤ in LATIN1: two statements.
        assert_ne!(named(b"select '\xa4'", latin9), named(b"select '\xa4'", latin1));
        // ASCII reads the same in every encoding: one statement.
        assert_eq!(named(b"select 1", latin9), named(b"select 1", ClientEncoding::UTF8));
        // The client's bytes go to the server as they came.
        let statement =
            Statement::from_parse(&Parse { name: "a", query: b"select '\xa4'", param_types: &types }, latin9, 1);
        let mut buf = BytesMut::from(&statement.parse_message[..]);
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let FrontendMessage::Parse(parsed) = FrontendMessage::decode(&frame).unwrap() else { panic!("not a Parse") };
        assert_eq!(parsed.query, b"select '\xa4'");
    }
}
