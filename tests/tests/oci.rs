//! Plugins as OCI artifacts against a real registry (Debian's docker-registry): push, pull and
//! inspect from the command line, the artifact layout on the registry, digest-pinned sources in
//! pgvane.toml, content that does not match its digest, and a registry that is down at startup
//! (warm cache) or at RELOAD (the last good plugins stay).

use std::io::{Read, Write};
use std::time::Duration;

use pgvane_tests::fixture::{plugin_path, Proxied, ProxyOptions, APP_USER};
use pgvane_tests::registry::{pgvane_cli, pgvane_cli_ok, Registry};
use pgvane_tests::{describe_output, scratch_dir};

/// `GET http://<host><path>` with an Accept header; returns the body (the registry answers
/// HTTP/1.0 requests with the body up to the end of the connection).
fn http_get(host: &str, path: &str, accept: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    anyhow::ensure!(head.contains(" 200 "), "GET {path}: {head}");
    Ok(body.to_owned())
}

/// Pushes example plugin `name` as `<registry>/pgvane/<repo>:<tag>`; returns the manifest digest.
fn push(registry: &Registry, file: &std::path::Path, repo: &str, tag: &str) -> anyhow::Result<String> {
    let reference = format!("{}/pgvane/{repo}:{tag}", registry.host());
    let digest = pgvane_cli_ok(&["plugin", "push", &file.display().to_string(), &reference])?;
    anyhow::ensure!(digest.starts_with("sha256:") && digest.len() == 71, "push printed {digest:?}");
    Ok(digest)
}

/// A query_rewrite entry from `source` that answers `SELECT 'probe'` with `SELECT '<answer>'`.
/// As in reload.rs: a plugin error fails the statement instead of letting the probe pass
/// unanswered, and the deadline per call is generous (this tests loading, not speed, on a
/// machine running several clusters and registries at once).
fn probe_plugin(source: &str, answer: &str) -> String {
    format!(
        "[[plugins]]\nname = \"probe\"\nsource = \"{source}\"\non_error = \"reject\"\ntimeout_ms = 2000\n\
         [[plugins.config.rules]]\n\
         queryRegex = \"^SELECT 'probe'$\"\nreplace = \"SELECT '{answer}'\"\n"
    )
}

/// pgvane options with `plugins` and an `[oci]` cache in `cache_dir`.
fn options(plugins: &str, cache_dir: &std::path::Path) -> ProxyOptions {
    ProxyOptions {
        settings: format!("admin_users = [\"{APP_USER}\"]\npool_mode = \"transaction\""),
        extra: format!("{plugins}\n[oci]\ncache_dir = \"{}\"\n", cache_dir.display()),
        ..ProxyOptions::default()
    }
}

async fn probe(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    Ok(client.query_one("SELECT 'probe'", &[]).await?.get(0))
}

fn cache_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("pgvane-oci-cache-").tempdir_in(scratch_dir())?)
}

#[tokio::test]
async fn push_pull_inspect_and_a_pinned_source() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let wasm_path = plugin_path("query_rewrite")?;
    let wasm = std::fs::read(&wasm_path)?;
    let digest = push(&registry, &wasm_path, "rewrite", "v1")?;

    // On the registry: the CNCF Wasm OCI artifact layout.
    let manifest = http_get(
        &registry.host(),
        &format!("/v2/pgvane/rewrite/manifests/{digest}"),
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    assert!(manifest.contains("\"application/vnd.oci.image.manifest.v1+json\""), "{manifest}");
    assert!(manifest.contains("\"mediaType\":\"application/vnd.wasm.config.v0+json\""), "{manifest}");
    assert_eq!(manifest.matches("\"mediaType\":\"application/wasm\"").count(), 1, "one wasm layer: {manifest}");
    assert!(manifest.contains(&format!("\"size\":{}", wasm.len())), "{manifest}");

    // Pull, pinned: the same bytes.
    let dir = cache_dir()?;
    let out = dir.path().join("pulled.wasm");
    let pinned = format!("{}/pgvane/rewrite:v1@{digest}", registry.host());
    let pulled_digest = pgvane_cli_ok(&["plugin", "pull", &pinned, "-o", &out.display().to_string()])?;
    assert_eq!(pulled_digest, digest);
    assert_eq!(std::fs::read(&out)?, wasm, "pulled bytes differ from pushed ones");

    // Inspect a file and a reference.
    for target in [wasm_path.display().to_string(), format!("oci://{pinned}")] {
        let text = pgvane_cli_ok(&["plugin", "inspect", &target])?;
        assert!(text.contains("world: pgvane:policy/policy@0.1.0 (pgvane can load it)"), "{text}");
        assert!(text.contains(&format!("size: {} bytes", wasm.len())), "{text}");
        assert!(
            text.contains("pgvane:policy/host@0.1.0") && text.contains("decide") && text.contains("init"),
            "{text}"
        );
    }
    let text = pgvane_cli_ok(&["plugin", "inspect", &pinned])?;
    assert!(text.contains(&format!("manifest digest: {digest}")), "{text}");
    assert!(text.contains("layer: application/wasm"), "{text}");

    // pgvane with the pinned source: the plugin decides, SHOW PLUGINS tells where it came from.
    let p = Proxied::start(options(&probe_plugin(&format!("oci://{pinned}"), "from-oci"), dir.path())).await?;
    assert_eq!(probe(&p.client().await?).await?, "from-oci");
    let rows = p.show("PLUGINS").await?;
    let row = rows.iter().find(|r| r["name"] == "probe").expect("a probe row");
    assert_eq!(row["source"], format!("oci://{pinned}"));
    let layer_digest = &manifest[manifest.find("sha256:").unwrap()..];
    assert!(
        row["digest"].starts_with("sha256:") && row["digest"] != digest,
        "the digest column is the component's: {row:?}"
    );
    assert!(manifest.contains(&row["digest"]), "the component digest is the layer's: {row:?} {layer_digest}");
    Ok(())
}

#[tokio::test]
async fn references_need_a_registry_host_and_a_valid_digest() -> anyhow::Result<()> {
    let dir = cache_dir()?;
    for (source, expected) in [
        ("oci://pgvane/rewrite:v1", "no registry host"),
        ("oci://rewrite:v1", "expected <registry>/<repository>"),
        ("oci://127.0.0.1:5000/pgvane/rewrite:v1@sha256:1234", "invalid digest"),
        ("127.0.0.1:5000/pgvane/rewrite:v1", "must be an oci://"),
    ] {
        let config = dir.path().join("pgvane.toml");
        std::fs::write(
            &config,
            format!(
                "[pgvane]\nauth_type = \"trust\"\n[databases.app]\nhost = \"127.0.0.1\"\n{}",
                probe_plugin(source, "x")
            ),
        )?;
        let out = pgvane_cli(&["check", "--config", &config.display().to_string()], &[])?;
        assert!(!out.status.success(), "{source}: {}", describe_output(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("plugins[0].source") && stderr.contains(expected), "{source}: {stderr}");
    }
    // The command line refuses them too.
    let out = pgvane_cli(&["plugin", "pull", "pgvane/rewrite:v1", "-o", "/dev/null"], &[])?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no registry host"));
    Ok(())
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_refused() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let wasm_path = plugin_path("query_rewrite")?;
    let digest = push(&registry, &wasm_path, "rewrite", "v1")?;
    let dir = cache_dir()?;

    // A digest the registry does not have.
    let unknown = format!("oci://{}/pgvane/rewrite:v1@sha256:{}", registry.host(), "0".repeat(64));
    let err = Proxied::start(options(&probe_plugin(&unknown, "x"), dir.path())).await.err().expect("must not start");
    let text = format!("{err:#}");
    assert!(text.contains("plugin \"probe\"") && text.contains("registry request failed"), "{text}");

    // The registry serves damaged content (same size, other bytes) for the layer.
    let manifest = http_get(
        &registry.host(),
        &format!("/v2/pgvane/rewrite/manifests/{digest}"),
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    let layer_digest = manifest
        .split("\"digest\":\"")
        .skip(2) // config, then the layer
        .map(|rest| rest.split('"').next().unwrap_or_default().to_owned())
        .next()
        .expect("a layer digest");
    let blob = registry.blob_path(&layer_digest);
    let mut bytes = std::fs::read(&blob)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes)?;
    let pinned = format!("oci://{}/pgvane/rewrite:v1@{digest}", registry.host());
    let err = Proxied::start(options(&probe_plugin(&pinned, "x"), dir.path())).await.err().expect("must not start");
    let text = format!("{err:#}");
    assert!(text.contains("digest mismatch") && text.contains(&layer_digest) && text.contains("refused"), "{text}");
    let out = pgvane_cli(&["plugin", "pull", &pinned, "-o", &dir.path().join("x.wasm").display().to_string()], &[])?;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest mismatch"), "{}", describe_output(&out));
    assert!(!dir.path().join("x.wasm").exists(), "nothing is written when the digest does not match");

    // The manifest damaged instead: a pinned reference refuses it as well.
    std::fs::write(&blob, std::fs::read(&wasm_path)?)?;
    let manifest_blob = registry.blob_path(&digest);
    let damaged = std::fs::read_to_string(&manifest_blob)?.replace("application/wasm", "application/wasn");
    std::fs::write(&manifest_blob, damaged)?;
    let err = Proxied::start(options(&probe_plugin(&pinned, "x"), dir.path())).await.err().expect("must not start");
    let text = format!("{err:#}");
    assert!(text.contains("digest mismatch") && text.contains(&digest), "{text}");
    Ok(())
}

/// `PUT http://<host><path>` of `body` as `content_type`; the registry must answer 201.
fn http_put(host: &str, path: &str, content_type: &str, body: &[u8]) -> anyhow::Result<()> {
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "PUT {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    anyhow::ensure!(response.contains(" 201 "), "PUT {path}: {response}");
    Ok(())
}

#[tokio::test]
async fn downloads_beyond_the_size_caps_are_refused() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let wasm_path = plugin_path("query_rewrite")?;
    let wasm_len = std::fs::read(&wasm_path)?.len();
    let digest = push(&registry, &wasm_path, "rewrite", "v1")?;
    let pinned = format!("oci://{}/pgvane/rewrite:v1@{digest}", registry.host());
    let dir = cache_dir()?;
    let start = |source: &str, caps: &str| {
        let mut options = options(&probe_plugin(source, "capped"), dir.path());
        options.extra.push_str(caps);
        Proxied::start(options)
    };
    let refused = |err: anyhow::Error, what: &str, key: &str| {
        let text = format!("{err:#}");
        assert!(
            text.contains("plugin \"probe\"") && text.contains(&format!("the {what} is larger than {key}")),
            "{text}"
        );
    };

    // A layer one byte over the cap (the manifest says so): refused.
    let caps = format!("max_layer_size_bytes = {}\n", wasm_len - 1);
    refused(start(&pinned, &caps).await.err().expect("must not start"), "Wasm layer", "max_layer_size_bytes");
    // A manifest over its cap.
    let caps = "max_manifest_size_bytes = 64\n";
    refused(start(&pinned, caps).await.err().expect("must not start"), "manifest", "max_manifest_size_bytes");
    // The cache stays empty: nothing refused was kept.
    assert!(!dir.path().join("blobs/sha256").join(&digest[7..]).exists());

    // A manifest that understates its layer's size (10 bytes): the cap holds while the bytes
    // arrive, whatever the manifest said.
    let manifest = http_get(
        &registry.host(),
        &format!("/v2/pgvane/rewrite/manifests/{digest}"),
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    let lying = manifest.replace(&format!("\"size\":{wasm_len}"), "\"size\":10");
    assert_ne!(lying, manifest, "{manifest}");
    http_put(
        &registry.host(),
        "/v2/pgvane/rewrite/manifests/liar",
        "application/vnd.oci.image.manifest.v1+json",
        lying.as_bytes(),
    )?;
    let liar = format!("oci://{}/pgvane/rewrite:liar", registry.host());
    let caps = format!("max_layer_size_bytes = {}\n", wasm_len - 1);
    refused(start(&liar, &caps).await.err().expect("must not start"), "Wasm layer", "max_layer_size_bytes");

    // At the caps exactly, the same artifact loads.
    let caps = format!("max_layer_size_bytes = {wasm_len}\nmax_manifest_size_bytes = {}\n", manifest.len());
    let p = start(&pinned, &caps).await?;
    assert_eq!(probe(&p.client().await?).await?, "capped");

    // Zero is not a cap.
    let config = dir.path().join("zero.toml");
    std::fs::write(
        &config,
        "[pgvane]\nauth_type = \"trust\"\n[databases.app]\nhost = \"127.0.0.1\"\n[oci]\npull_timeout_ms = 0\n",
    )?;
    let out = pgvane_cli(&["check", "--config", &config.display().to_string()], &[])?;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oci.pull_timeout_ms"), "{}", describe_output(&out));
    Ok(())
}

#[tokio::test]
async fn a_registry_down_at_startup_is_fine_with_a_warm_cache() -> anyhow::Result<()> {
    let mut registry = Registry::start().await?;
    let digest = push(&registry, &plugin_path("query_rewrite")?, "rewrite", "v1")?;
    let pinned = format!("oci://{}/pgvane/rewrite:v1@{digest}", registry.host());
    let cache = cache_dir()?;
    {
        let p = Proxied::start(options(&probe_plugin(&pinned, "warm"), cache.path())).await?;
        assert_eq!(probe(&p.client().await?).await?, "warm");
    }
    // The cache holds the manifest and the layer, named by their digests.
    let manifest_file = cache.path().join("blobs/sha256").join(&digest[7..]);
    assert!(manifest_file.exists(), "{} is not cached", manifest_file.display());

    registry.stop();
    let p = Proxied::start(options(&probe_plugin(&pinned, "warm"), cache.path())).await?;
    assert_eq!(probe(&p.client().await?).await?, "warm");
    drop(p);

    // A cold cache with the registry down: startup fails and says why.
    let cold = cache_dir()?;
    let err = Proxied::start(options(&probe_plugin(&pinned, "cold"), cold.path())).await.err().expect("no registry");
    let text = format!("{err:#}");
    assert!(text.contains("plugin \"probe\"") && text.contains("registry request failed"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_registry_down_at_reload_keeps_the_last_good_plugins_then_the_flow_completes() -> anyhow::Result<()> {
    // The user's flow: push v1, pin it, start pgvane; push v2, change the reference, RELOAD.
    let mut registry = Registry::start().await?;
    let original = std::fs::read(plugin_path("query_rewrite")?)?;
    let v1 = push(&registry, &plugin_path("query_rewrite")?, "rewrite", "v1")?;
    let cache = cache_dir()?;
    let v1_ref = format!("oci://{}/pgvane/rewrite:v1@{v1}", registry.host());
    let p = Proxied::start(options(&probe_plugin(&v1_ref, "v1"), cache.path())).await?;
    let client = p.client().await?;
    assert_eq!(probe(&client).await?, "v1");

    // v2: other bytes (a custom section appended), pushed under a new tag.
    let mut v2_wasm = original.clone();
    v2_wasm.extend_from_slice(&[0, 6, 2, b'v', b'2', b'v', b'2', b'!']);
    let v2_file = cache.path().join("v2.wasm");
    std::fs::write(&v2_file, &v2_wasm)?;
    let v2 = push(&registry, &v2_file, "rewrite", "v2")?;
    assert_ne!(v1, v2);
    let v2_ref = format!("oci://{}/pgvane/rewrite:v2@{v2}", registry.host());
    let config = std::fs::read_to_string(p.pgvane.config_path())?;
    std::fs::write(p.pgvane.config_path(), config.replace(&v1_ref, &v2_ref).replace("'v1'", "'v2'"))?;

    // The registry is down: RELOAD fails, v1 stays, SHOW PLUGINS says why.
    registry.stop();
    let err = p.console("RELOAD").await?.expect_err("RELOAD must fail without the registry");
    assert!(err.contains("registry request failed") && err.contains("\"probe\""), "{err}");
    assert_eq!(probe(&client).await?, "v1");
    let rows = p.show("PLUGINS").await?;
    let row = rows.iter().find(|r| r["name"] == "probe").expect("a probe row");
    assert_eq!(row["source"], v1_ref, "{row:?}");
    assert!(row["last_load_error"].contains("registry request failed"), "{row:?}");

    // The registry is back: RELOAD under load switches to v2 with no failed query; the error
    // is gone.
    registry.restart().await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, stop) = (p.client().await?, stop.clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(probe(&client).await.map_err(|e| format!("{e:#}")));
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
    assert_eq!(probe(&client).await?, "v2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let answers = worker.await?;
        assert!(answers.iter().all(|a| matches!(a.as_deref(), Ok("v1" | "v2"))), "{answers:?}");
        assert_eq!(answers.last().map(|a| a.as_deref()), Some(Ok("v2")), "every client ends on v2");
    }
    let rows = p.show("PLUGINS").await?;
    let row = rows.iter().find(|r| r["name"] == "probe").expect("a probe row");
    assert_eq!((row["source"].as_str(), row["last_load_error"].as_str()), (v2_ref.as_str(), ""), "{row:?}");
    Ok(())
}
