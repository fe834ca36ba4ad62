//! pgvane's cache of compiled plugin components (the `plugin_cache_dir` key, docs/plugins.md).
//!
//! Compiling a component with Cranelift takes seconds (a Python interpreter: 9–11 s in a release
//! build); loading the artifact wasmtime made of it (`Component::serialize`) takes milliseconds.
//! This crate keeps those artifacts on disk, one file per (component, engine settings) pair, and
//! is the only code of pgvane that turns bytes read from disk into native code.
//!
//! # Why a crate of its own
//!
//! `Component::deserialize` is `unsafe`: wasmtime checks an artifact's header (its own ELF
//! format, the target, the engine's settings, its version) but not the code in it, so a file
//! someone else crafted would run as native code inside pgvane. The proxy crate is
//! `#![forbid(unsafe_code)]`, which no module can lift, so the call lives here, next to the
//! checks that make it sound, behind a safe API that has no way around them. This crate denies
//! `unsafe` and allows it on that one call ([`CompiledCache::read`]).
//!
//! # What is trusted, and why
//!
//! A file is deserialized only when all of these hold:
//!
//! 1. Its directory was accepted by [`CompiledCache::open`]: the directory and every one above
//!    it belong to pgvane's (effective) user or to root, and no other user can write to them
//!    (no group or world write bit), except that a directory *above* it may be a sticky one such
//!    as `/tmp` (others can then neither remove nor rename what is not theirs). So only pgvane's
//!    user, or root, can put a file there. Root-owned is accepted so that a cache filled as root
//!    when a container image is built can be read by the unprivileged user that serves.
//! 2. The file, as opened (`fstat` of the open descriptor, not a second look at the path), is a
//!    regular file belonging to pgvane's user or root that no other user may write.
//! 3. Its header names the component being loaded (the sha256 of its bytes) and the engine
//!    (wasmtime's `Engine::precompile_compatibility_hash`), and the sha256 of the artifact that
//!    follows matches the one in the header. This is an integrity check, not a signature: it
//!    catches a truncated, damaged or misnamed file (a full disk, a copy gone wrong, an entry of
//!    another engine), not a forger. Conditions 1 and 2 keep forgers out, as file permissions
//!    keep them from replacing pgvane's own binary.
//! 4. wasmtime's own checks pass.
//!
//! The bytes checked are the bytes deserialized: the file is read into memory once, checked, and
//! handed to `Component::deserialize`, which copies them into memory of its own. No file is
//! mapped (`Component::deserialize_file` maps it, and a later change to the file would change the
//! code that runs).
//!
//! A file that fails 2, 3 or 4 is not an error: the component is compiled and the file replaced
//! ([`Outcome::Compiled`] says why it was refused). A directory that fails 1 is refused by
//! [`CompiledCache::open`].
//!
//! # Entries
//!
//! A file is named by the sha256 of (the format version, the component's sha256, the engine's
//! compatibility hash), with the extension `.cwasm`. wasmtime's hash covers the target and its
//! CPU features, every Cranelift and engine setting that changes the code (memory reservation and
//! guard sizes, fuel, epochs, wasm features…) and the wasmtime version, so a pgvane built on
//! another wasmtime, or a chain whose largest `memory_limit_mb` differs, uses other entries.
//! An entry is written to a temporary file in the same directory, flushed to disk, and renamed
//! over its name, so no reader ever sees half of one. Entries are never deleted: one of an old
//! component or of other settings stays until removed by hand.

#![deny(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The first bytes of an entry.
const MAGIC: &[u8; 8] = b"PGVCWASM";
/// The layout of an entry; a new layout gets a new number (and so new file names).
const FORMAT: u32 = 1;
/// Magic, format, component sha256, engine hash, artifact sha256, artifact length.
const HEADER_LEN: usize = 8 + 4 + 32 + 32 + 32 + 8;
/// Write bits for the group and for others.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// The sticky bit of a directory.
const STICKY: u32 = 0o1000;

/// Why the cache, or an entry of it, could not be used.
#[derive(Debug, Error)]
pub enum CacheError {
    /// A file or directory could not be read, made or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Someone other than pgvane's user or root could write there.
    #[error("{}: {reason}", path.display())]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// Which owner or mode.
        reason: String,
    },
    /// An entry that is not one pgvane wrote for this component and engine, or is damaged.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The entry.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError::Io { path: path.to_owned(), error }
}

/// A directory of compiled components that only pgvane's user (or root) can write.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    /// Canonical: no symbolic link in it.
    dir: PathBuf,
    /// pgvane's effective user.
    uid: u32,
}

/// How a component was had.
#[derive(Debug)]
pub enum Outcome {
    /// Read from its entry: nothing was compiled.
    Hit,
    /// Compiled from the WebAssembly.
    Compiled {
        /// An entry was there and was not used: why (it has been replaced, unless `not_stored`).
        refused: Option<CacheError>,
        /// The new entry could not be written: why (the component is loaded all the same).
        not_stored: Option<CacheError>,
    },
}

/// A component, from the cache or freshly compiled.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled component.
    pub component: Component,
    /// Its entry's file.
    pub file: PathBuf,
    /// Whether it was read or compiled.
    pub outcome: Outcome,
}

impl CompiledCache {
    /// The cache in `dir`, which is made (mode 0755) when missing. Refused when `dir` or a
    /// directory above it can be written by a user other than pgvane's and root (see the crate's
    /// documentation).
    pub fn open(dir: &Path) -> Result<CompiledCache, CacheError> {
        let uid = rustix::process::geteuid().as_raw();
        if let Err(error) = fs::symlink_metadata(dir) {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(io_error(dir)(error));
            }
            fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io_error(dir))?;
        }
        let dir = dir.canonicalize().map_err(io_error(dir))?;
        check_dir(&dir, uid, false)?;
        for above in dir.ancestors().skip(1) {
            check_dir(above, uid, true)?;
        }
        Ok(CompiledCache { dir, uid })
    }

    /// The directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `wasm` compiled for `engine`: read from its entry when there is a sound one, compiled
    /// (and the entry written) otherwise. Only a component that does not compile is an error;
    /// a cache that cannot be read or written is reported in [`Loaded::outcome`].
    pub fn component(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Loaded> {
        let key = Key::new(engine, wasm);
        let file = self.dir.join(key.file_name());
        let refused = match self.read(engine, &key, &file) {
            Ok(Some(component)) => return Ok(Loaded { component, file, outcome: Outcome::Hit }),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let component = Component::from_binary(engine, wasm)?;
        let not_stored = match component.serialize() {
            Ok(artifact) => self.write(&key, &file, &artifact).err(),
            Err(e) => Some(CacheError::Invalid { path: file.clone(), reason: format!("cannot serialize: {e:#}") }),
        };
        Ok(Loaded { component, file, outcome: Outcome::Compiled { refused, not_stored } })
    }

    /// The component in `path` when it is a sound entry for `key`; `None` when there is none.
    fn read(&self, engine: &Engine, key: &Key, path: &Path) -> Result<Option<Component>, CacheError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path)(e)),
        };
        let meta = file.metadata().map_err(io_error(path))?;
        if !meta.is_file() {
            return Err(CacheError::Invalid { path: path.to_owned(), reason: "not a regular file".into() });
        }
        check_owner_and_mode(path, &meta, self.uid, false)?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(io_error(path))?;
        let artifact = key
            .verify(&bytes)
            .map_err(|reason| CacheError::Invalid { path: path.to_owned(), reason: reason.into() })?;
        // SAFETY: `Component::deserialize` requires bytes that wasmtime itself produced with
        // `serialize` (or `precompile_component`): arbitrary bytes could make it run arbitrary
        // code. These bytes are pgvane's own artifact: they come from a directory that only
        // pgvane's user or root can write (checked by `open`, parents included), from a regular
        // file only they can write (checked on the open descriptor above), and they carry the
        // header pgvane writes, naming this very component and engine, and the sha256 of these
        // exact bytes as `write` stored it (checked by `verify`). They were read into memory
        // before the checks and deserialize copies them, so nothing changes between check and
        // use. wasmtime then checks target, settings and version itself.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) };
        component
            .map(Some)
            .map_err(|e| CacheError::Invalid { path: path.to_owned(), reason: format!("wasmtime refused it: {e:#}") })
    }

    /// Writes `artifact` as the entry `path` of `key`: a temporary file, flushed, then renamed.
    fn write(&self, key: &Key, path: &Path, artifact: &[u8]) -> Result<(), CacheError> {
        static TEMPORARIES: AtomicU64 = AtomicU64::new(0);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temporary =
            self.dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), TEMPORARIES.fetch_add(1, Relaxed)));
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temporary)?;
            file.write_all(&key.header(artifact))?;
            file.write_all(artifact)?;
            file.sync_all()?;
            fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written.map_err(io_error(path))
    }
}

/// A directory (canonical path) pgvane may trust: see the crate's documentation.
fn check_dir(path: &Path, uid: u32, above: bool) -> Result<(), CacheError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return Err(CacheError::Unsafe { path: path.to_owned(), reason: "not a directory".into() });
    }
    check_owner_and_mode(path, &meta, uid, above)
}

/// Owned by `uid` or root, and writable by no one else (a sticky directory above the cache may
/// be, when `sticky_allowed`).
fn check_owner_and_mode(path: &Path, meta: &fs::Metadata, uid: u32, sticky_allowed: bool) -> Result<(), CacheError> {
    let unsafe_because = |reason: String| Err(CacheError::Unsafe { path: path.to_owned(), reason });
    if meta.uid() != uid && meta.uid() != 0 {
        return unsafe_because(format!(
            "belongs to user {}, not to pgvane's user ({uid}) or root, so pgvane does not trust what it holds",
            meta.uid()
        ));
    }
    let mode = meta.mode();
    if mode & GROUP_OTHER_WRITE != 0 && !(sticky_allowed && mode & STICKY != 0) {
        return unsafe_because(format!(
            "can be written by other users (mode {:o}), so pgvane does not trust what it holds; make it writable by its owner only",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// What an entry is for.
struct Key {
    /// sha256 of the component.
    component: [u8; 32],
    /// sha256 of what wasmtime's compatibility hash feeds a hasher.
    engine: [u8; 32],
}

impl Key {
    fn new(engine: &Engine, wasm: &[u8]) -> Key {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Key { component: Sha256::digest(wasm).into(), engine: hasher.0.finalize().into() }
    }

    /// `<sha256 of format, component and engine, in hex>.cwasm`.
    fn file_name(&self) -> String {
        let digest = Sha256::new()
            .chain_update(FORMAT.to_le_bytes())
            .chain_update(self.component)
            .chain_update(self.engine)
            .finalize();
        let mut name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        name.push_str(".cwasm");
        name
    }

    fn header(&self, artifact: &[u8]) -> Vec<u8> {
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT.to_le_bytes());
        header.extend_from_slice(&self.component);
        header.extend_from_slice(&self.engine);
        header.extend_from_slice(&Sha256::digest(artifact));
        header.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        header
    }

    /// The artifact of an entry's bytes, when they are a whole, undamaged entry for this key.
    fn verify<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], &'static str> {
        let (header, artifact) = bytes.split_at_checked(HEADER_LEN).ok_or("shorter than an entry's header")?;
        let field = |from: usize, len: usize| header.get(from..from + len).unwrap_or_default();
        if field(0, 8) != MAGIC {
            return Err("not an entry of pgvane's compiled-component cache");
        }
        if field(8, 4) != FORMAT.to_le_bytes() {
            return Err("an entry of another format version");
        }
        if field(12, 32) != self.component {
            return Err("an entry of another component");
        }
        if field(44, 32) != self.engine {
            return Err("an entry of other engine settings");
        }
        if field(108, 8) != (artifact.len() as u64).to_le_bytes() {
            return Err("truncated or extended: its length differs from the one in its header");
        }
        if field(76, 32) != Sha256::digest(artifact).as_slice() {
            return Err("damaged: its sha256 differs from the one in its header");
        }
        Ok(artifact)
    }
}

/// A `Hasher` that feeds SHA-256: wasmtime's compatibility hash as a digest that is the same in
/// every process (std's hashers promise no such thing).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A component with one core module exporting a function: real code to compile.
    const COMPONENT: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, // component preamble
        0x01, 0x25, // core module section, 37 bytes
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // module preamble
        0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // type: () -> i32
        0x03, 0x02, 0x01, 0x00, // function 0 of type 0
        0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, // export "f"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x41, 0x2a, 0x41, 0x01, 0x6a, 0x0b, // i32.const 42 + 1
    ];

    fn engine(fuel: bool) -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(fuel);
        Engine::new(&config).unwrap()
    }

    fn cache() -> (tempfile::TempDir, CompiledCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(&dir.path().join("compiled")).unwrap();
        (dir, cache)
    }

    fn compiled(loaded: &Loaded) -> (bool, bool) {
        match &loaded.outcome {
            Outcome::Hit => panic!("expected a compile, got a hit"),
            Outcome::Compiled { refused, not_stored } => (refused.is_some(), not_stored.is_some()),
        }
    }

    #[test]
    fn a_compiled_component_is_stored_then_read() {
        let (_dir, cache) = cache();
        let engine = engine(true);
        let first = cache.component(&engine, COMPONENT).unwrap();
        assert_eq!(compiled(&first), (false, false));
        assert!(first.file.exists());
        let mode = fs::metadata(&first.file).unwrap().mode() & 0o777;
        assert_eq!(mode & GROUP_OTHER_WRITE, 0, "mode {mode:o}");
        let second = cache.component(&engine, COMPONENT).unwrap();
        assert!(matches!(second.outcome, Outcome::Hit));
        assert_eq!(second.file, first.file);
        // Nothing else in the directory: the temporary file was renamed.
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 1);
    }

    #[test]
    fn other_engine_settings_or_component_use_another_entry() {
        let (_dir, cache) = cache();
        let with_fuel = cache.component(&engine(true), COMPONENT).unwrap();
        let without = cache.component(&engine(false), COMPONENT).unwrap();
        assert_eq!(compiled(&without), (false, false));
        assert_ne!(with_fuel.file, without.file);
        let mut other = COMPONENT.to_vec();
        *other.iter_mut().rev().nth(1).unwrap() = 0x6b; // i32.sub instead of i32.add
        let other = cache.component(&engine(true), &other).unwrap();
        assert_eq!(compiled(&other), (false, false));
        assert_ne!(other.file, with_fuel.file);
    }

    #[test]
    fn a_damaged_entry_is_refused_recompiled_and_replaced() {
        let (_dir, cache) = cache();
        let engine = engine(true);
        let file = cache.component(&engine, COMPONENT).unwrap().file;
        let good = fs::read(&file).unwrap();
        let damages: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", good[..good.len() / 2].to_vec()),
            ("header only", good[..HEADER_LEN].to_vec()),
            ("empty", Vec::new()),
            ("flipped byte in the artifact", {
                let mut bad = good.clone();
                let at = HEADER_LEN + (good.len() - HEADER_LEN) / 2;
                bad[at] ^= 0x40;
                bad
            }),
            ("flipped byte in the header", {
                let mut bad = good.clone();
                bad[20] ^= 1;
                bad
            }),
            ("bare wasmtime artifact", good[HEADER_LEN..].to_vec()),
        ];
        for (what, bytes) in damages {
            fs::write(&file, &bytes).unwrap();
            let loaded = cache.component(&engine, COMPONENT).unwrap();
            match &loaded.outcome {
                Outcome::Compiled { refused: Some(CacheError::Invalid { .. }), not_stored: None } => {}
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(fs::read(&file).unwrap(), good, "{what}: the entry was replaced by a sound one");
            assert!(matches!(cache.component(&engine, COMPONENT).unwrap().outcome, Outcome::Hit), "{what}");
        }
    }

    #[test]
    fn an_entry_of_another_component_under_this_name_is_refused() {
        let (_dir, cache) = cache();
        let engine = engine(true);
        let mut other = COMPONENT.to_vec();
        *other.iter_mut().rev().nth(1).unwrap() = 0x6b;
        let theirs = cache.component(&engine, &other).unwrap().file;
        let ours = cache.dir().join(Key::new(&engine, COMPONENT).file_name());
        fs::copy(&theirs, &ours).unwrap();
        let loaded = cache.component(&engine, COMPONENT).unwrap();
        match &loaded.outcome {
            Outcome::Compiled { refused: Some(CacheError::Invalid { reason, .. }), .. } => {
                assert!(reason.contains("another component"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_entry_others_can_write_is_refused_and_replaced() {
        let (_dir, cache) = cache();
        let engine = engine(true);
        let file = cache.component(&engine, COMPONENT).unwrap().file;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let loaded = cache.component(&engine, COMPONENT).unwrap();
        assert!(
            matches!(&loaded.outcome, Outcome::Compiled { refused: Some(CacheError::Unsafe { .. }), not_stored: None }),
            "{:?}",
            loaded.outcome
        );
        assert_eq!(fs::metadata(&file).unwrap().mode() & GROUP_OTHER_WRITE, 0);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o775, 0o1777] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
            let err = CompiledCache::open(dir.path()).unwrap_err();
            assert!(matches!(err, CacheError::Unsafe { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("other users"), "{err}");
        }
        // Below a world-writable directory that is not sticky: refused too (anyone could swap it).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let below = dir.path().join("compiled");
        let err = CompiledCache::open(&below).unwrap_err();
        assert!(
            matches!(&err, CacheError::Unsafe { path, .. } if path == &dir.path().canonicalize().unwrap()),
            "{err}"
        );
        // Below a sticky one (as /tmp): accepted.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        CompiledCache::open(&below).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        CompiledCache::open(dir.path()).unwrap();
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(CompiledCache::open(&file), Err(CacheError::Unsafe { .. })));
    }
}
