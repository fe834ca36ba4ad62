//! The content-addressed cache of pulled artifacts: `<cache_dir>/blobs/sha256/<hex>`, one
//! file per blob (manifests and Wasm layers alike), named by the sha256 of its content — the
//! layout of an OCI image layout's `blobs/`. A blob is written to a temporary file and renamed,
//! so a reader never sees half of one, and checked against its name when read: a damaged file
//! is removed and counts as missing.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in hash {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created when first written to).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        super::reference::check_digest(digest).ok()?;
        let hex = digest.strip_prefix("sha256:")?;
        Some(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// The blob named `digest`, if cached and intact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest)?;
        let data = std::fs::read(&path).ok()?;
        if sha256_digest(&data) == digest {
            Some(data)
        } else {
            tracing::warn!(path = %path.display(), digest, "cached blob does not match its digest: removed");
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    /// Stores `data` under its own digest (returned).
    pub fn put(&self, data: &[u8]) -> io::Result<String> {
        let digest = sha256_digest(data);
        let path = self.path(&digest).ok_or_else(|| io::Error::other("invalid digest"))?;
        let dir = path.parent().ok_or_else(|| io::Error::other("cache path has no folder"))?;
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.{}.tmp", &digest[7..], std::process::id()));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path)?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_their_digest_and_checked_when_read() {
        let dir = std::env::temp_dir().join(format!("pgvane-cache-test-{}", std::process::id()));
        let cache = Cache::new(&dir);
        let digest = cache.put(b"hello").unwrap();
        assert_eq!(digest, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(cache.get(&digest).as_deref(), Some(&b"hello"[..]));
        // A damaged blob is not returned, and removed.
        let path = cache.path(&digest).unwrap();
        std::fs::write(&path, b"jello").unwrap();
        assert_eq!(cache.get(&digest), None);
        assert!(!path.exists());
        assert_eq!(cache.get("sha256:../../etc/passwd"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
