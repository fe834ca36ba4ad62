//! `oci://<registry>/<repository>[:<tag>][@sha256:<hex>]`: parsing and checking, no I/O.
//!
//! Unlike Docker's references, the registry host is never implied: a reference whose first
//! component is not a host (`name.tld`, `host:port` or `localhost`) is refused instead of
//! silently going to a default registry.

use std::fmt;
use std::net::IpAddr;

use super::OciError;

/// The scheme of a `source` in pgvane.toml.
pub const SCHEME: &str = "oci://";

/// A checked reference to a Wasm OCI artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`.
    pub registry: String,
    /// `name` or `path/to/name`.
    pub repository: String,
    /// The tag, if given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, if given: the manifest's digest, which the content must match.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text`, with or without the `oci://` scheme; a tag or a digest is required.
    pub fn parse(text: &str) -> Result<Reference, OciError> {
        let invalid = |why: &str| OciError::InvalidReference { reference: text.to_owned(), why: why.to_owned() };
        let rest = text.strip_prefix(SCHEME).unwrap_or(text);
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest).map_err(|why| invalid(&why))?;
                (rest, Some(digest.to_owned()))
            }
            None => (rest, None),
        };
        let Some((registry, path)) = rest.split_once('/') else {
            return Err(invalid("expected <registry>/<repository>:<tag>"));
        };
        if !looks_like_host(registry) {
            return Err(invalid(&format!(
                "no registry host: \"{registry}\" is not a host name (write the registry in full, \
                 e.g. oci://ghcr.io/{rest} or oci://127.0.0.1:5000/{rest}; there is no default registry)"
            )));
        }
        // A `:` after the last `/` starts the tag (one before it belongs to the path).
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if repository.is_empty()
            || !repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            })
        {
            return Err(invalid("the repository must be lowercase path components ([a-z0-9._-]) separated by /"));
        }
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(invalid("invalid tag: up to 128 of [A-Za-z0-9._-], not starting with . or -"));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(invalid("give a tag (:v1), a digest (@sha256:…) or both"));
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// True when the registry is on this machine (plain HTTP is allowed without `insecure`).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => self.registry.split(':').next().unwrap_or_default(),
        };
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The same artifact pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference { digest: Some(digest.to_owned()), ..self.clone() }
    }

    /// The reference as oci-client takes it.
    #[cfg(feature = "oci")]
    pub(super) fn to_client(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone(),
                digest.clone(),
            ),
            (_, Some(digest)) => {
                oci_client::Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.clone())
            }
            (tag, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_default(),
            ),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker's rule for "the first component is a registry": it has a dot or a port, or is
/// `localhost` (or an IPv6 literal).
fn looks_like_host(part: &str) -> bool {
    !part.is_empty()
        && (part.contains('.') || part.contains(':') || part == "localhost" || part.starts_with('['))
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(format!("invalid digest \"{digest}\": expected sha256: and 64 lowercase hex digits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn full_references_parse() {
        let r = Reference::parse(&format!("oci://127.0.0.1:5000/policies/guard:v1@{D}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref(), r.digest.as_deref()),
            ("127.0.0.1:5000", "policies/guard", Some("v1"), Some(D))
        );
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), format!("oci://127.0.0.1:5000/policies/guard:v1@{D}"));
        let r = Reference::parse("ghcr.io/acme/guard:1.2.0").unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (Some("1.2.0"), None));
        assert!(!r.is_loopback());
        let r = Reference::parse(&format!("oci://localhost/guard@{D}")).unwrap();
        assert_eq!((r.registry.as_str(), r.tag.as_deref(), r.is_loopback()), ("localhost", None, true));
        assert!(Reference::parse("oci://[::1]:5000/guard:v1").unwrap().is_loopback());
    }

    #[test]
    fn a_missing_registry_host_is_an_error_not_a_default() {
        for text in ["oci://guard:v1", "oci://acme/guard:v1", "acme/guard:v1", "library/guard:latest"] {
            let err = Reference::parse(text).unwrap_err().to_string();
            assert!(err.contains("no registry host") || err.contains("expected <registry>"), "{text}: {err}");
        }
    }

    #[test]
    fn bad_parts_are_named() {
        let err = Reference::parse("oci://ghcr.io/acme/guard").unwrap_err().to_string();
        assert!(err.contains("give a tag"), "{err}");
        let err = Reference::parse("oci://ghcr.io/acme/guard:v1@sha256:abc").unwrap_err().to_string();
        assert!(err.contains("invalid digest"), "{err}");
        let err = Reference::parse("oci://ghcr.io/Acme/guard:v1").unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
        let err = Reference::parse("oci://ghcr.io/acme/guard:-x").unwrap_err().to_string();
        assert!(err.contains("invalid tag"), "{err}");
        let err = Reference::parse(&format!("oci://ghcr.io/acme/guard@{}", D.to_uppercase())).unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
    }
}
