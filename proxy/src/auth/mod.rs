//! Password authentication: checking the clients that connect to pgvane, and logging in to
//! the PostgreSQL servers behind it.
//!
//! - [`userlist`] reads a PgBouncer-style `auth_file` (`"user" "secret"` lines).
//! - [`scram`] speaks SCRAM-SHA-256 both as the server (checking a client) and as the client
//!   (logging in to PostgreSQL), including reuse of the keys a client proved.
//! - [`md5`] computes and checks PostgreSQL's legacy `md5` password responses.

pub mod md5;
pub mod scram;
pub mod userlist;

pub use scram::{ClientCredential, ClientExchange, ScramError, ScramKeys, ScramVerifier, ServerExchange};
pub use userlist::{Secret, Userlist, UserlistError};

/// Compares two byte strings in a time that depends on their lengths but not on their
/// contents, so that checking a proof or signature does not reveal how much of it matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
