//! The little of X.509 that pgvane reads itself: a certificate's signature algorithm (for the
//! tls-server-end-point channel binding) and its subject's CommonName (for `auth_type =
//! "cert"`). A minimal DER walker; rustls and webpki have already checked the certificate.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const EXPLICIT_0: u8 = 0xa0;

/// One DER element at the start of `der`: (tag, contents, what follows). `None` if malformed.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        (len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The contents of the element at the start of `der` if its tag is `tag`, and what follows.
fn expect(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, contents, rest) = tlv(der)?;
    (t == tag).then_some((contents, rest))
}

/// The hash RFC 5929 (tls-server-end-point) uses for a certificate signed with `oid`: the
/// signature's own hash, SHA-256 in place of MD5 and SHA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn end_point_hash(oid: &[u8]) -> Option<EndPointHash> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    if let Some(&[n]) = oid.strip_prefix(RSA) {
        return match n {
            0x04 | 0x05 | 0x0b => Some(EndPointHash::Sha256), // md5, sha1, sha256 WithRSAEncryption
            0x0c => Some(EndPointHash::Sha384),
            0x0d => Some(EndPointHash::Sha512),
            0x0e => Some(EndPointHash::Sha224),
            _ => None, // RSASSA-PSS carries its hash in parameters: not supported, as in PostgreSQL < 17
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    match oid.strip_prefix(ECDSA_SHA2) {
        Some(&[0x01]) => Some(EndPointHash::Sha224),
        Some(&[0x02]) => Some(EndPointHash::Sha256),
        Some(&[0x03]) => Some(EndPointHash::Sha384),
        Some(&[0x04]) => Some(EndPointHash::Sha512),
        _ => None,
    }
}

/// The tls-server-end-point channel-binding data (RFC 5929) of a DER certificate: its hash
/// under its signature's hash algorithm. `None` for a malformed certificate or a signature
/// algorithm without a defined hash (Ed25519, RSASSA-PSS): then channel binding is not offered.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let (body, _) = expect(cert, SEQUENCE)?;
    let (_tbs, rest) = expect(body, SEQUENCE)?;
    let (algorithm, _) = expect(rest, SEQUENCE)?;
    let (oid, _) = expect(algorithm, OID)?;
    Some(match end_point_hash(oid)? {
        EndPointHash::Sha224 => Sha224::digest(cert).to_vec(),
        EndPointHash::Sha256 => Sha256::digest(cert).to_vec(),
        EndPointHash::Sha384 => Sha384::digest(cert).to_vec(),
        EndPointHash::Sha512 => Sha512::digest(cert).to_vec(),
    })
}

/// The first CommonName of a DER certificate's subject, when it is a text string.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (body, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(body, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((EXPLICIT_0, _, after)) = tlv(rest) {
        rest = after; // version
    }
    // serial number, signature algorithm, issuer, validity, then the subject
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (mut rdns, _) = expect(rest, SEQUENCE)?;
    while !rdns.is_empty() {
        let (mut set, after) = expect(rdns, SET)?;
        rdns = after;
        while !set.is_empty() {
            let (attribute, after) = expect(set, SEQUENCE)?;
            set = after;
            let (oid, value) = expect(attribute, OID)?;
            if oid == CN {
                let (tag, text, _) = tlv(value)?;
                // UTF8String, PrintableString, IA5String
                return matches!(tag, 0x0c | 0x13 | 0x16).then(|| String::from_utf8(text.to_vec()).ok()).flatten();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm, cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "pgvane tests");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256, "x");
        assert_eq!(tls_server_end_point(&p256).unwrap(), Sha256::digest(&p256).to_vec());
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384, "x");
        assert_eq!(tls_server_end_point(&p384).unwrap(), Sha384::digest(&p384).to_vec());
        let ed25519 = cert(&rcgen::PKCS_ED25519, "x");
        assert_eq!(tls_server_end_point(&ed25519), None);
    }

    #[test]
    fn common_name_is_found() {
        assert_eq!(subject_common_name(&cert(&rcgen::PKCS_ECDSA_P256_SHA256, "alice")).as_deref(), Some("alice"));
    }

    #[test]
    fn malformed_input_is_none() {
        let good = cert(&rcgen::PKCS_ECDSA_P256_SHA256, "alice");
        for cut in [0, 1, 2, 10, good.len() / 2, good.len() - 1] {
            assert_eq!(tls_server_end_point(&good[..cut]), None, "cut at {cut}");
            assert_eq!(subject_common_name(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(tls_server_end_point(b"garbage"), None);
    }
}
