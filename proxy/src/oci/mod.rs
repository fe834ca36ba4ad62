//! Plugins as OCI artifacts: the CNCF "Wasm OCI artifact" layout (a config of media type
//! `application/vnd.wasm.config.v0+json` and one `application/wasm` layer), pushed and pulled
//! with `oci-wasm`/`oci-client` (rustls), and a content-addressed cache so a digest-pinned
//! plugin loads without the registry once it has been pulled.
//!
//! Every digest is checked here, whatever the registry or the client library did: the
//! manifest's bytes against the pinned digest, the layer's bytes against the manifest.

// Without the plugin host (the fuzz targets' build), only references, settings and the cache.
#![cfg_attr(not(feature = "plugin-host"), allow(dead_code, unused_imports))]

mod cache;
mod reference;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(feature = "plugin-host")]
use oci_client::client::{ClientConfig, ClientProtocol};
#[cfg(feature = "plugin-host")]
use oci_client::manifest::OciImageManifest;
#[cfg(feature = "plugin-host")]
use oci_client::secrets::RegistryAuth;
#[cfg(feature = "plugin-host")]
use oci_wasm::{WasmClient, WasmConfig, WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use cache::{sha256_digest, Cache};
pub use reference::{check_digest, Reference, SCHEME};

/// Environment variables holding registry credentials (for registries without any in the
/// config file, and for `pgvane plugin push|pull|inspect`).
pub const USERNAME_ENV: &str = "PGVANE_REGISTRY_USERNAME";
/// See [`USERNAME_ENV`].
pub const PASSWORD_ENV: &str = "PGVANE_REGISTRY_PASSWORD";

/// Connecting to a registry gives up after this long…
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// …and a read that stalls, after this long.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The manifest media types a pull accepts.
const MANIFEST_MEDIA_TYPES: &[&str] = &["application/vnd.oci.image.manifest.v1+json"];

/// Why an artifact could not be pushed, pulled or read.
#[derive(Debug, Error)]
pub enum OciError {
    /// Not a valid `oci://` reference.
    #[error("invalid OCI reference \"{reference}\": {why}")]
    InvalidReference {
        /// As written.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// The registry could not be reached or refused the request.
    #[error("{reference}: registry request failed: {message}")]
    Registry {
        /// The artifact.
        reference: String,
        /// The client's error, with its causes.
        message: String,
    },
    /// The content does not match the digest it must have.
    #[error("{reference}: digest mismatch: the {what} has digest {actual}, expected {expected}; refused")]
    DigestMismatch {
        /// The artifact.
        reference: String,
        /// `manifest` or `Wasm layer`.
        what: &'static str,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// The artifact is not a Wasm OCI artifact.
    #[error("{reference}: not a Wasm OCI artifact: {why}")]
    NotWasm {
        /// The artifact.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// The cache or a local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A secret from the config file: never shown by `Debug` (nor logged).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<secret>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<secret>")
    }
}

/// `[oci.registries."<host[:port]>"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// User name for HTTP basic (or token) authentication.
    pub username: Option<String>,
    /// Its password or token.
    pub password: Option<Secret>,
    /// Talk plain HTTP to this registry even though it is not on this machine.
    #[serde(default)]
    pub insecure: bool,
}

/// The `[oci]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciSettings {
    /// Where pulled artifacts are kept, relative to the config file.
    pub cache_dir: PathBuf,
    /// Per-registry settings, by `host` or `host:port` as written in references.
    pub registries: BTreeMap<String, RegistrySettings>,
}

impl Default for OciSettings {
    fn default() -> Self {
        OciSettings { cache_dir: PathBuf::from("plugin-cache"), registries: BTreeMap::new() }
    }
}

/// How to talk to one registry: its settings, or credentials from the environment.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Credentials, if any.
    pub username: Option<String>,
    /// Password or token.
    pub password: Option<Secret>,
    /// Plain HTTP allowed beyond loopback.
    pub insecure: bool,
}

impl Access {
    /// The registry's settings from the config; credentials fall back to [`USERNAME_ENV`] and
    /// [`PASSWORD_ENV`] when the config has none.
    pub fn for_registry(settings: &OciSettings, registry: &str) -> Access {
        let configured = settings.registries.get(registry).cloned().unwrap_or_default();
        if configured.username.is_some() {
            return Access {
                username: configured.username,
                password: configured.password,
                insecure: configured.insecure,
            };
        }
        Access { insecure: configured.insecure, ..Access::from_env() }
    }

    /// Credentials from the environment only (the command line).
    pub fn from_env() -> Access {
        Access {
            username: std::env::var(USERNAME_ENV).ok().filter(|u| !u.is_empty()),
            password: std::env::var(PASSWORD_ENV).ok().map(Secret),
            insecure: false,
        }
    }

    #[cfg(feature = "plugin-host")]
    fn auth(&self) -> RegistryAuth {
        match &self.username {
            Some(user) => RegistryAuth::Basic(
                user.clone(),
                self.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default(),
            ),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// A client for the registry of `reference`: plain HTTP for loopback registries and those
/// marked `insecure`, HTTPS (rustls, the system's and webpki's roots) otherwise.
#[cfg(feature = "plugin-host")]
fn client(reference: &Reference, access: &Access) -> WasmClient {
    let protocol = if reference.is_loopback() || access.insecure {
        ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    };
    WasmClient::new(oci_client::Client::new(config))
}

/// The error text of a client error with all its causes (credentials are never part of them:
/// they travel in headers, which the errors do not carry).
fn registry_error(reference: &Reference, e: &(dyn std::error::Error + 'static)) -> OciError {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    OciError::Registry { reference: reference.to_string(), message }
}

/// A client error: a digest check the client library made is a mismatch like ours.
#[cfg(feature = "plugin-host")]
fn client_error(reference: &Reference, what: &'static str, e: oci_client::errors::OciDistributionError) -> OciError {
    use oci_client::errors::{DigestError, OciDistributionError};
    match e {
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            OciError::DigestMismatch { reference: reference.to_string(), what, expected, actual }
        }
        e => registry_error(reference, &e),
    }
}

/// A pulled artifact.
#[cfg(feature = "plugin-host")]
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The component.
    pub wasm: Vec<u8>,
    /// The manifest's digest (what a reference pins).
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: OciImageManifest,
    /// The manifest as the registry sent it (its sha256 is `manifest_digest`).
    pub raw_manifest: Vec<u8>,
    /// True when it came from the cache, without asking the registry.
    pub from_cache: bool,
}

/// Checks the Wasm OCI artifact layout and returns the one layer's descriptor.
#[cfg(feature = "plugin-host")]
pub fn wasm_layer(
    reference: &Reference,
    manifest: &OciImageManifest,
) -> Result<oci_client::manifest::OciDescriptor, OciError> {
    let not_wasm = |why: String| OciError::NotWasm { reference: reference.to_string(), why };
    if manifest.config.media_type != WASM_MANIFEST_CONFIG_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "config media type is {:?}, expected {WASM_MANIFEST_CONFIG_MEDIA_TYPE}",
            manifest.config.media_type
        )));
    }
    match manifest.layers.as_slice() {
        [layer] if layer.media_type == WASM_LAYER_MEDIA_TYPE => {
            check_digest(&layer.digest).map_err(not_wasm)?;
            Ok(layer.clone())
        }
        [layer] => {
            Err(not_wasm(format!("layer media type is {:?}, expected {WASM_LAYER_MEDIA_TYPE}", layer.media_type)))
        }
        layers => Err(not_wasm(format!("{} layers, expected exactly one {WASM_LAYER_MEDIA_TYPE} layer", layers.len()))),
    }
}

/// Parses a manifest as a registry (or the cache) sent it; what it holds is checked by
/// [`wasm_layer`].
#[cfg(feature = "plugin-host")]
pub fn parse_manifest(reference: &Reference, bytes: &[u8]) -> Result<OciImageManifest, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::NotWasm {
        reference: reference.to_string(),
        why: format!("manifest is not an OCI image manifest: {e}"),
    })
}

/// The artifact from the cache alone, if `reference` is pinned and both blobs are there.
#[cfg(feature = "plugin-host")]
pub fn from_cache(reference: &Reference, cache: &Cache) -> Option<Artifact> {
    let digest = reference.digest.as_ref()?;
    let manifest_bytes = cache.get(digest)?;
    let manifest = parse_manifest(reference, &manifest_bytes).ok()?;
    let layer = wasm_layer(reference, &manifest).ok()?;
    let wasm = cache.get(&layer.digest)?;
    Some(Artifact { wasm, manifest_digest: digest.clone(), manifest, raw_manifest: manifest_bytes, from_cache: true })
}

/// Fetches the artifact: from the cache when the reference is pinned and cached, else from
/// the registry (then cached). Content that does not match the pinned digest is refused.
#[cfg(feature = "plugin-host")]
pub async fn fetch(reference: &Reference, access: &Access, cache: Option<&Cache>) -> Result<Artifact, OciError> {
    if let Some(artifact) = cache.and_then(|cache| from_cache(reference, cache)) {
        return Ok(artifact);
    }
    let artifact = pull(reference, access).await?;
    if let Some(cache) = cache {
        let io = |source| OciError::Io { path: cache.dir().to_owned(), source };
        // Layer first: a cached manifest always has its layer.
        cache.put(&artifact.wasm).map_err(io)?;
        // The manifest is stored as the registry sent it: its digest is what pins it.
        cache.put(&artifact.raw_manifest).map_err(io)?;
    }
    Ok(artifact)
}

/// Pulls the artifact from its registry, checking every digest.
#[cfg(feature = "plugin-host")]
pub async fn pull(reference: &Reference, access: &Access) -> Result<Artifact, OciError> {
    let client = client(reference, access);
    let auth = access.auth();
    let image = reference.to_client();
    let (manifest_bytes, _) = client
        .pull_manifest_raw(&image, &auth, MANIFEST_MEDIA_TYPES)
        .await
        .map_err(|e| client_error(reference, "manifest", e))?;
    let manifest_digest = sha256_digest(&manifest_bytes);
    if let Some(expected) = &reference.digest {
        if *expected != manifest_digest {
            return Err(OciError::DigestMismatch {
                reference: reference.to_string(),
                what: "manifest",
                expected: expected.clone(),
                actual: manifest_digest,
            });
        }
    }
    let manifest = parse_manifest(reference, &manifest_bytes)?;
    let layer = wasm_layer(reference, &manifest)?;
    let mut wasm = Vec::new();
    client.pull_blob(&image, &layer, &mut wasm).await.map_err(|e| client_error(reference, "Wasm layer", e))?;
    let actual = sha256_digest(&wasm);
    if actual != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            what: "Wasm layer",
            expected: layer.digest,
            actual,
        });
    }
    Ok(Artifact { wasm, manifest_digest, manifest, from_cache: false, raw_manifest: manifest_bytes.to_vec() })
}

/// Publishes `wasm` (a component) at `reference` in the Wasm OCI artifact layout, the layer
/// titled `title` (`org.opencontainers.image.title`, the file name tools give it, as wkg does);
/// returns the manifest's digest, as the registry now serves it.
#[cfg(feature = "plugin-host")]
pub async fn push(wasm: Vec<u8>, title: &str, reference: &Reference, access: &Access) -> Result<String, OciError> {
    if reference.tag.is_none() || reference.digest.is_some() {
        return Err(OciError::InvalidReference {
            reference: reference.to_string(),
            why: "push needs a tag and no digest (the digest is what push prints)".into(),
        });
    }
    let (config, mut layer) = WasmConfig::from_raw_component(wasm, None).map_err(|e| OciError::NotWasm {
        reference: reference.to_string(),
        why: format!("not a WebAssembly component: {e:#}"),
    })?;
    layer.annotations =
        Some(BTreeMap::from([(oci_client::annotations::ORG_OPENCONTAINERS_IMAGE_TITLE.to_owned(), title.to_owned())]));
    let client = client(reference, access);
    let auth = access.auth();
    let image = reference.to_client();
    client.push(&image, &auth, layer, config, None).await.map_err(|e| registry_error(reference, e.as_ref()))?;
    let (manifest_bytes, _) = client
        .pull_manifest_raw(&image, &auth, MANIFEST_MEDIA_TYPES)
        .await
        .map_err(|e| registry_error(reference, &e))?;
    Ok(sha256_digest(&manifest_bytes))
}

/// What `pgvane plugin inspect` shows about a component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Its size in bytes.
    pub size: usize,
    /// `sha256:` of its bytes.
    pub digest: String,
    /// Imported interfaces and functions, as WIT names.
    pub imports: Vec<String>,
    /// Exported interfaces and functions, as WIT names.
    pub exports: Vec<String>,
}

#[cfg(feature = "plugin-host")]
impl Inspection {
    /// Decodes the component's WIT world (its imports and exports).
    pub fn of(wasm: &[u8]) -> Result<Inspection, String> {
        let component = oci_wasm::Component::from_raw_component(wasm).map_err(|e| format!("{e:#}"))?;
        let (mut imports, mut exports) = (component.imports, component.exports);
        imports.sort();
        exports.sort();
        Ok(Inspection { size: wasm.len(), digest: sha256_digest(wasm), imports, exports })
    }
}

/// Reads a local component file.
pub fn read_file(path: &Path) -> Result<Vec<u8>, OciError> {
    std::fs::read(path).map_err(|source| OciError::Io { path: path.to_owned(), source })
}
