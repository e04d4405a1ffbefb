//! The config file read as the host reads it, and the peer filter.

use std::time::Duration;

use super::*;
use crate::capabilities::keyvalue::BackendSpec;

fn check(text: &str) -> Result<Config> {
    let file: File = toml::from_str(text)?;
    Document {
        path: Path::new("portico.toml"),
        text,
    }
    .config(&file, Path::new("/srv"))
}

/// The README's example file uses every key, and means what it says.
#[test]
fn the_example_file_is_valid() {
    let config = check(include_str!("../../../examples/portico.toml")).unwrap();
    assert_eq!(config.admin, Some("127.0.0.1:9900".parse().unwrap()));
    assert_eq!(config.services.len(), 3);
    assert_eq!(config.registry, crate::config::RegistrySettings::default());
    let echo = &config.services[0];
    assert_eq!(echo.limits.max_hibernated, 10_000);
    assert_eq!(
        echo.limits.hibernated_idle_timeout,
        Duration::from_secs(3600)
    );
    let greeter = &config.services[1];
    assert_eq!(greeter.settings["banner"], "welcome");
    assert!(!greeter.peers.admits("127.0.0.66".parse().unwrap()));
    assert_eq!(greeter.outbound.len(), 3);
    assert_eq!(greeter.messaging, vec!["rooms.*".parse().unwrap()]);
    assert_eq!(
        greeter.keyvalue[0].backend,
        BackendSpec::File("/srv/../target/portico-state/sessions.db".into())
    );
    let web = &config.services[2];
    let tls = web.tls.as_ref().unwrap();
    assert_eq!(tls.alpn, ["http/1.1"]);
    let proxy = web.proxy_protocol.as_ref().unwrap();
    assert!(proxy.v1 && proxy.v2 && proxy.trusts("10.0.3.7".parse().unwrap()));
    assert!(!proxy.trusts("10.1.2.3".parse().unwrap()));
}

#[test]
fn services_inherit_defaults_and_override_them() {
    let config = check(
        r#"
        [defaults]
        idle-timeout = "20s"
        max-connections = 50
        [services.a]
        plugin = "a.wasm"
        listen = ["127.0.0.1:1"]
        max-connections = 7
        "#,
    )
    .unwrap();
    let service = &config.services[0];
    assert_eq!(service.plugin.file(), Some(Path::new("/srv/a.wasm")));
    assert_eq!(service.limits.max_connections, 7);
    assert_eq!(service.limits.idle_timeout, Duration::from_secs(20));
    assert_eq!(service.limits.cpu_budget, Duration::from_secs(10));
}

#[test]
fn errors_name_the_line_and_the_key() {
    let error = check(
        "[services.a]\nplugin = \"a.wasm\"\nlisten = [\"127.0.0.1:1\"]\ncpu-budget = \"2x\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("portico.toml:4: services.a.cpu-budget: \"2x\""),
        "{error}"
    );
}

/// The file accepts what the flags always took: both read one set of bounds.
/// Found by the `config` fuzz target: an empty file's error named no line.
#[test]
fn every_problem_names_a_line() {
    for text in ["", "drain-timeout = \"1s\"\n"] {
        let error = format!("{:#}", check(text).unwrap_err());
        assert!(
            error.starts_with("portico.toml:1: services: no services"),
            "{error}"
        );
    }
}

#[test]
fn the_file_takes_the_flags_widest_values() {
    let config = check(
        r#"
        [services.a]
        plugin = "a.wasm"
        listen = ["127.0.0.1:1"]
        max-connections = 4294967295
        max-queued = 4294967295
        max-outbound-sockets = 5000
        max-outbound-sockets-per-service = 2000000
        max-lifetime = "0s"
        tls = { certificates = [{ cert = "c.pem", key = "k.pem" }], handshake-timeout = "0s" }
        "#,
    )
    .unwrap();
    let service = &config.services[0];
    assert_eq!(service.limits.max_connections, u32::MAX);
    assert_eq!(service.limits.max_queued, u32::MAX);
    assert_eq!(service.limits.max_outbound_sockets, 5000);
    assert_eq!(service.limits.max_outbound_sockets_per_service, 2_000_000);
    assert_eq!(service.limits.max_lifetime, Some(Duration::ZERO));
    let tls = service.tls.as_ref().unwrap();
    assert_eq!(tls.handshake_timeout, Duration::ZERO);

    let error = check(
        "[services.a]\nplugin = \"a.wasm\"\nlisten = [\"127.0.0.1:1\"]\nmax-connections = 0\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "portico.toml:4: services.a.max-connections: 0 is out of range (1 to 4294967295)"
    );
}

#[test]
fn the_filter_allows_then_denies() {
    let filter = PeerFilter {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        deny: vec!["127.0.0.66/32".parse().unwrap()],
    };
    assert!(filter.admits("127.0.0.1".parse().unwrap()));
    assert!(filter.admits("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!filter.admits("127.0.0.66".parse().unwrap()));
    assert!(!filter.admits("10.0.0.1".parse().unwrap()));
}

#[test]
fn the_admin_token_file_is_relative_to_the_config_file() {
    let config = check(
        r#"
        [admin]
        listen = "127.0.0.1:9900"
        token-file = "secrets/admin-token"
        [services.a]
        plugin = "a.wasm"
        listen = ["127.0.0.1:1"]
        "#,
    )
    .unwrap();
    assert_eq!(
        config.admin_token_file.as_deref(),
        Some(Path::new("/srv/secrets/admin-token"))
    );
}

/// A service's plugin may be an `oci://` reference; `[registry]` sets how
/// it is pulled; a bad reference or key names its line.
#[test]
fn plugins_from_a_registry_and_the_registry_table() {
    let service =
        "[services.a]\nplugin = \"oci://127.0.0.1:5000/a:v1\"\nlisten = [\"127.0.0.1:1\"]\n";
    let config = check(&format!(
        "{service}[registry]\ninsecure = [\"10.0.0.5:5000\"]\ntimeout = \"5s\"\nmax-size = 2\nauth-file = \"auths.json\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.services[0].plugin.display().to_string(),
        "oci://127.0.0.1:5000/a:v1"
    );
    assert_eq!(config.registry.insecure, ["10.0.0.5:5000"]);
    assert_eq!(config.registry.timeout, Duration::from_secs(5));
    assert_eq!(config.registry.max_size, 2 << 20);
    assert_eq!(
        config.registry.auth_file.as_deref(),
        Some(Path::new("/srv/auths.json"))
    );
    for (text, expected) in [
        (
            service.replace(":v1", ""),
            "portico.toml:2: services.a.plugin: \"oci://127.0.0.1:5000/a\" is not a plugin reference: name a tag",
        ),
        (
            format!("{service}[registry]\ninsecure = [\"oci://x\"]\n"),
            "portico.toml:5: registry.insecure: \"oci://x\" is not a registry",
        ),
        (
            format!("{service}[registry]\nmax-size = 0\n"),
            "portico.toml:5: registry.max-size: 0 is out of range (1 to 4096)",
        ),
    ] {
        let error = check(&text).unwrap_err().to_string();
        assert!(error.starts_with(expected), "{error}");
    }
}
