//! PostgreSQL's `md5` password authentication.
//!
//! The server sends `AuthenticationMD5Password` with a 4-byte salt and the client answers
//! with `"md5" + md5hex(md5hex(password + user) + salt)`. The inner part,
//! `"md5" + md5hex(password + user)`, is what PostgreSQL stores in `pg_authid` and what an
//! `auth_file` may hold, so a response can be computed from either the password or the
//! stored hash.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::password;

use super::constant_time_eq;

/// What the server expects in PasswordMessage for AuthenticationMD5Password:
/// `"md5" + md5hex(md5hex(password + user) + salt)`.
pub fn md5_response_from_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

/// The same response computed from a stored hash, `"md5" + md5hex(password + user)`.
///
/// The `md5` prefix may also be left out. The hex digits are hashed exactly as given, so
/// they must be lowercase, as PostgreSQL writes them.
pub fn md5_response_from_hash(stored_md5: &str, salt: [u8; 4]) -> String {
    let hex = stored_md5.strip_prefix("md5").unwrap_or(stored_md5);
    let mut input = hex.as_bytes().to_vec();
    input.extend_from_slice(&salt);
    // `password::md5(data, "")` is "md5" + md5hex(data): an MD5 of arbitrary bytes, without
    // needing an MD5 crate of our own.
    password::md5(&input, "")
}

/// Constant-time check of a client's response against the expected one.
///
/// `got` is the data of the client's PasswordMessage; one trailing NUL byte, which ends the
/// string on the wire, is ignored.
pub fn verify(expected: &str, got: &[u8]) -> bool {
    let got = got.strip_suffix(&[0]).unwrap_or(got);
    constant_time_eq(expected.as_bytes(), got)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // Expected values were computed with Python's hashlib:
    //   inner = hashlib.md5(b"secretalice").hexdigest()
    //   "md5" + inner                                          -> STORED
    //   "md5" + hashlib.md5(inner.encode() + bytes([1,2,3,4])).hexdigest()
    //   "md5" + hashlib.md5(inner.encode() + bytes([0xde,0xad,0xbe,0xef])).hexdigest()
    const STORED: &str = "md54a0a68b43b6cd5cf266fa02f196e2371";
    const SALT_1234: [u8; 4] = [1, 2, 3, 4];
    const RESPONSE_1234: &str = "md598a0412b9c31436fc53776e863350083";
    const SALT_DEADBEEF: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
    const RESPONSE_DEADBEEF: &str = "md53e1d73ba00a55e8805aa0277d29996c5";

    #[test]
    fn response_from_password_matches_known_values() {
        assert_eq!(md5_response_from_password("alice", "secret", SALT_1234), RESPONSE_1234);
        assert_eq!(md5_response_from_password("alice", "secret", SALT_DEADBEEF), RESPONSE_DEADBEEF);
    }

    #[test]
    fn response_from_hash_matches_known_values() {
        assert_eq!(md5_response_from_hash(STORED, SALT_1234), RESPONSE_1234);
        assert_eq!(md5_response_from_hash(STORED, SALT_DEADBEEF), RESPONSE_DEADBEEF);
        // The prefix is optional.
        assert_eq!(md5_response_from_hash(STORED.trim_start_matches("md5"), SALT_1234), RESPONSE_1234);
    }

    #[test]
    fn stored_hash_matches_pgbouncer_documentation() {
        // PgBouncer's docs: user `admin` with password `1234` is stored as this hash.
        let stored = password::md5(b"1234", "admin");
        assert_eq!(stored, "md545f2603610af569b6155c45067268c6b");
        assert_eq!(md5_response_from_hash(&stored, SALT_1234), md5_response_from_password("admin", "1234", SALT_1234));
    }

    #[test]
    fn verify_accepts_only_the_exact_response() {
        assert!(verify(RESPONSE_1234, RESPONSE_1234.as_bytes()));
        assert!(verify(RESPONSE_1234, b"md598a0412b9c31436fc53776e863350083\0"));
        assert!(!verify(RESPONSE_1234, RESPONSE_DEADBEEF.as_bytes()));
        assert!(!verify(RESPONSE_1234, b"md598a0412b9c31436fc53776e86335008"));
        assert!(!verify(RESPONSE_1234, b""));
        assert!(!verify(RESPONSE_1234, b"md598a0412b9c31436fc53776e863350083\0\0"));
    }
}
