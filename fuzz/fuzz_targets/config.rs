#![no_main]
//! pgvane.toml (`config::Config::from_toml`): parsing and validation.
//!
//! The file is read as if it were `<temp dir>/pgvane.toml`, next to an auth file `userlist.txt`
//! (so `auth_file = "userlist.txt"` loads one). Properties: a config that loads satisfies the
//! rules validation promises (a listen address, sizes and timeouts of at least 1, at least
//! one database, each with a host and a port, unique plugin names, each plugin with exactly
//! one of `path` and `source`, sources that are valid oci:// references).

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgvane::config::Config;
use pgvane::oci::Reference;

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgvane-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("userlist.txt"),
            "\"alice\" \"pencil\"\n\"monitor\" \"md5a1b2c3d4e5f60718293a4b5c6d7e8f90\"\n",
        )
        .expect("userlist");
        dir.join("pgvane.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_toml(config_path(), text) else { return };
    let s = &config.settings;
    assert!(s.listen_addr.parse::<std::net::IpAddr>().is_ok());
    assert!(s.policy_max_sql_bytes >= 1 && s.max_prepared_statements >= 1);
    assert!(s.default_pool_size >= 1 && s.max_client_conn >= 1);
    assert!(s.max_packet_size_bytes >= 1024);
    assert!(s.server_connect_timeout_ms > 0 && s.client_login_timeout_ms > 0);
    assert!(s.health_check_period_ms > 0 && s.polling_frequency_ms > 0 && s.switchover_timeout_ms > 0);
    assert!(!config.databases.is_empty());
    for (name, db) in &config.databases {
        assert!(!db.host.is_empty() && db.port != 0, "{name}");
        assert!(config.pool_size(db) >= 1);
        assert_ne!(name, pgvane::ADMIN_DATABASE);
    }
    let mut names = std::collections::BTreeSet::new();
    for plugin in &config.plugins {
        assert!(!plugin.name.is_empty() && names.insert(plugin.name.as_str()));
        assert!(plugin.fuel > 0 && plugin.timeout_ms > 0 && plugin.memory_limit_mb > 0 && plugin.max_instances > 0);
        assert!(plugin.path.is_some() != plugin.source.is_some());
        if let Some(source) = &plugin.source {
            assert!(Reference::parse(source).is_ok());
        }
    }
});
