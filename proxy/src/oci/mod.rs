//! Plugins as OCI artifacts: the CNCF "Wasm OCI artifact" layout (a config of media type
//! `application/vnd.wasm.config.v0+json` and one `application/wasm` layer), pushed and pulled
//! with `oci-wasm`/`oci-client` (rustls), and a content-addressed cache so a digest-pinned
//! plugin loads without the registry once it has been pulled.
//!
//! Every digest is checked here, whatever the registry or the client library did: the
//! manifest's bytes against the pinned digest, the layer's bytes against the manifest.
//!
//! A registry is not trusted with pgvane's memory or time either: the manifest and the layer
//! are capped in size ([`Limits`]) as they stream in, whatever `Content-Length` or the
//! manifest's `size` claim, and a pull has connect, read and total timeouts.

// Without the plugin host (the fuzz targets' build), only references, settings and the cache.
#![cfg_attr(not(feature = "oci"), allow(dead_code, unused_imports))]

mod cache;
mod reference;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

#[cfg(feature = "oci")]
use oci_client::client::{ClientConfig, ClientProtocol};
#[cfg(feature = "oci")]
use oci_client::manifest::OciImageManifest;
#[cfg(feature = "oci")]
use oci_client::secrets::RegistryAuth;
#[cfg(feature = "oci")]
use oci_client::RegistryOperation;
#[cfg(feature = "oci")]
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
    /// The registry sent more than the configured cap (or declared it would).
    #[error("{reference}: the {what} is larger than {key} ({limit} bytes); refused")]
    TooLarge {
        /// The artifact.
        reference: String,
        /// `manifest` or `Wasm layer`.
        what: &'static str,
        /// The `[oci]` key setting the cap.
        key: &'static str,
        /// The cap in bytes.
        limit: u64,
    },
    /// The pull took longer than `[oci] pull_timeout_ms`.
    #[error("{reference}: pulling took longer than pull_timeout_ms ({ms} ms); gave up")]
    Timeout {
        /// The artifact.
        reference: String,
        /// The timeout.
        ms: u64,
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
    /// Largest manifest accepted from a registry.
    pub max_manifest_size_bytes: u64,
    /// Largest Wasm layer (the component) accepted from a registry.
    pub max_layer_size_bytes: u64,
    /// Connecting to a registry gives up after this long.
    pub connect_timeout_ms: u64,
    /// A read from a registry that stalls this long fails.
    pub read_timeout_ms: u64,
    /// A whole pull (manifest and layer, token exchange included) gives up after this long.
    pub pull_timeout_ms: u64,
}

impl Default for OciSettings {
    fn default() -> Self {
        let limits = Limits::default();
        OciSettings {
            cache_dir: PathBuf::from("plugin-cache"),
            registries: BTreeMap::new(),
            max_manifest_size_bytes: limits.max_manifest_bytes,
            max_layer_size_bytes: limits.max_layer_bytes,
            connect_timeout_ms: limits.connect_timeout_ms,
            read_timeout_ms: limits.read_timeout_ms,
            pull_timeout_ms: limits.pull_timeout_ms,
        }
    }
}

impl OciSettings {
    /// The caps and timeouts of pulls.
    pub fn limits(&self) -> Limits {
        Limits {
            max_manifest_bytes: self.max_manifest_size_bytes,
            max_layer_bytes: self.max_layer_size_bytes,
            connect_timeout_ms: self.connect_timeout_ms,
            read_timeout_ms: self.read_timeout_ms,
            pull_timeout_ms: self.pull_timeout_ms,
        }
    }

    /// The first size or timeout key that is 0 (none may be), as `oci.<key>`.
    pub fn zero_limit(&self) -> Option<&'static str> {
        [
            ("oci.max_manifest_size_bytes", self.max_manifest_size_bytes),
            ("oci.max_layer_size_bytes", self.max_layer_size_bytes),
            ("oci.connect_timeout_ms", self.connect_timeout_ms),
            ("oci.read_timeout_ms", self.read_timeout_ms),
            ("oci.pull_timeout_ms", self.pull_timeout_ms),
        ]
        .into_iter()
        .find_map(|(key, value)| (value == 0).then_some(key))
    }
}

/// Size caps and timeouts of registry requests (the `[oci]` keys of the same names; the
/// defaults are the command line's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max_manifest_size_bytes`.
    pub max_manifest_bytes: u64,
    /// `max_layer_size_bytes`.
    pub max_layer_bytes: u64,
    /// `connect_timeout_ms`.
    pub connect_timeout_ms: u64,
    /// `read_timeout_ms`.
    pub read_timeout_ms: u64,
    /// `pull_timeout_ms`.
    pub pull_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            max_layer_bytes: 64 << 20,
            connect_timeout_ms: 5_000,
            read_timeout_ms: 30_000,
            pull_timeout_ms: 300_000,
        }
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
    /// Size caps and timeouts.
    pub limits: Limits,
}

impl Access {
    /// The registry's settings from the config; credentials fall back to [`USERNAME_ENV`] and
    /// [`PASSWORD_ENV`] when the config has none.
    pub fn for_registry(settings: &OciSettings, registry: &str) -> Access {
        let configured = settings.registries.get(registry).cloned().unwrap_or_default();
        let limits = settings.limits();
        if configured.username.is_some() {
            return Access {
                username: configured.username,
                password: configured.password,
                insecure: configured.insecure,
                limits,
            };
        }
        Access { insecure: configured.insecure, limits, ..Access::from_env() }
    }

    /// Credentials from the environment only (the command line).
    pub fn from_env() -> Access {
        Access {
            username: std::env::var(USERNAME_ENV).ok().filter(|u| !u.is_empty()),
            password: std::env::var(PASSWORD_ENV).ok().map(Secret),
            insecure: false,
            limits: Limits::default(),
        }
    }

    #[cfg(feature = "oci")]
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

/// Whether to talk plain HTTP to the registry of `reference`: loopback registries and those
/// marked `insecure`; HTTPS (rustls, the system's and webpki's roots) otherwise.
#[cfg(feature = "oci")]
fn plain_http(reference: &Reference, access: &Access) -> bool {
    reference.is_loopback() || access.insecure
}

/// A client for the registry of `reference`.
#[cfg(feature = "oci")]
fn client(reference: &Reference, access: &Access) -> WasmClient {
    let protocol = if plain_http(reference, access) {
        ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_millis(access.limits.connect_timeout_ms)),
        read_timeout: Some(Duration::from_millis(access.limits.read_timeout_ms)),
        ..ClientConfig::default()
    };
    WasmClient::new(oci_client::Client::new(config))
}

#[cfg(feature = "oci")]
/// Fetches the manifest of `reference` (by digest when pinned, else by tag), at most
/// `max_manifest_bytes` of it: oci-client reads a manifest whole, so the request is made here,
/// with the token oci-client obtained (or HTTP basic credentials).
async fn fetch_manifest(client: &WasmClient, reference: &Reference, access: &Access) -> Result<Vec<u8>, OciError> {
    let image = reference.to_client();
    let auth = access.auth();
    let token = client
        .auth(&image, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| client_error(reference, "manifest", e))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(access.limits.connect_timeout_ms))
        .read_timeout(Duration::from_millis(access.limits.read_timeout_ms))
        .build()
        .map_err(|e| registry_error(reference, &e))?;
    let scheme = if plain_http(reference, access) { "http" } else { "https" };
    let name = reference.digest.as_deref().or(reference.tag.as_deref()).unwrap_or("latest");
    let url = format!("{scheme}://{}/v2/{}/manifests/{name}", image.resolve_registry(), image.repository());
    let mut request = http.get(&url).header(reqwest::header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
    request = match (token, &access.username) {
        (Some(token), _) => request.bearer_auth(token),
        (None, Some(user)) => request.basic_auth(user, access.password.as_ref().map(Secret::expose)),
        (None, None) => request,
    };
    let mut response = request.send().await.map_err(|e| registry_error(reference, &e))?;
    let status = response.status();
    let limit = access.limits.max_manifest_bytes;
    let too_large = || OciError::TooLarge {
        reference: reference.to_string(),
        what: "manifest",
        key: "max_manifest_size_bytes",
        limit,
    };
    if status.is_success() && response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // An error's body is read too (its text says why), within the same cap.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| registry_error(reference, &e))? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let message = format!("GET {url}: {status}: {}", text.trim().chars().take(500).collect::<String>());
        return Err(OciError::Registry { reference: reference.to_string(), message });
    }
    Ok(body)
}

#[cfg(feature = "oci")]
/// A buffer that takes at most `limit` bytes: a write beyond it fails (and is remembered), so a
/// download into it stops there.
struct CappedBuffer {
    bytes: Vec<u8>,
    limit: u64,
    exceeded: bool,
}

#[cfg(feature = "oci")]
impl tokio::io::AsyncWrite for CappedBuffer {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if (this.bytes.len() + data.len()) as u64 > this.limit {
            this.exceeded = true;
            return Poll::Ready(Err(std::io::Error::other("size cap reached")));
        }
        this.bytes.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "oci")]
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
#[cfg(feature = "oci")]
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
#[cfg(feature = "oci")]
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
#[cfg(feature = "oci")]
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
#[cfg(feature = "oci")]
pub fn parse_manifest(reference: &Reference, bytes: &[u8]) -> Result<OciImageManifest, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::NotWasm {
        reference: reference.to_string(),
        why: format!("manifest is not an OCI image manifest: {e}"),
    })
}

/// The artifact from the cache alone, if `reference` is pinned and both blobs are there.
#[cfg(feature = "oci")]
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
#[cfg(feature = "oci")]
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

/// Pulls the artifact from its registry, checking every digest, within the size caps and the
/// timeouts of `access.limits`.
#[cfg(feature = "oci")]
pub async fn pull(reference: &Reference, access: &Access) -> Result<Artifact, OciError> {
    let ms = access.limits.pull_timeout_ms;
    tokio::time::timeout(Duration::from_millis(ms), pull_within_time(reference, access))
        .await
        .map_err(|_| OciError::Timeout { reference: reference.to_string(), ms })?
}

#[cfg(feature = "oci")]
async fn pull_within_time(reference: &Reference, access: &Access) -> Result<Artifact, OciError> {
    let client = client(reference, access);
    let image = reference.to_client();
    let manifest_bytes = fetch_manifest(&client, reference, access).await?;
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
    let limit = access.limits.max_layer_bytes;
    let too_large = || OciError::TooLarge {
        reference: reference.to_string(),
        what: "Wasm layer",
        key: "max_layer_size_bytes",
        limit,
    };
    // The manifest's word is enough to refuse; to accept, the bytes are counted as they come.
    if u64::try_from(layer.size).map_or(true, |size| size > limit) {
        return Err(too_large());
    }
    let mut buffer = CappedBuffer { bytes: Vec::new(), limit, exceeded: false };
    let pulled = client.pull_blob(&image, &layer, &mut buffer).await;
    if buffer.exceeded {
        return Err(too_large());
    }
    pulled.map_err(|e| client_error(reference, "Wasm layer", e))?;
    let wasm = buffer.bytes;
    let actual = sha256_digest(&wasm);
    if actual != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            what: "Wasm layer",
            expected: layer.digest,
            actual,
        });
    }
    Ok(Artifact { wasm, manifest_digest, manifest, from_cache: false, raw_manifest: manifest_bytes })
}

/// Publishes `wasm` (a component) at `reference` in the Wasm OCI artifact layout, the layer
/// titled `title` (`org.opencontainers.image.title`, the file name tools give it, as wkg does);
/// returns the manifest's digest, as the registry now serves it.
#[cfg(feature = "oci")]
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
    Ok(sha256_digest(&fetch_manifest(&client, reference, access).await?))
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

#[cfg(feature = "oci")]
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
