//! `docker-compose.yml` and the `Dockerfile` against the workspace: no
//! Docker engine runs here, so this test reads the compose file and loads
//! each service's configuration (its `environment` and its mounted config
//! file) through the service's own configuration loader, whose structs deny
//! unknown fields. A misspelt key fails here, not at `docker compose up`.
//! It also checks that every command names a binary the workspace builds
//! and the Dockerfile installs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What the compose file's `${VAR:?message}` references stand for in this
/// test (the user sets them; the file must not hold real values).
fn interpolate(text: &str) -> String {
    let placeholders: BTreeMap<&str, &str> = [
        // 32 zero bytes: a well-formed AES-256 key for the loader's checks.
        (
            "AUTH_ADAPTER_ENCRYPTION_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
        ("POSTGRES_PASSWORD", "compose-test-password"),
    ]
    .into_iter()
    .collect();
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing }") + start;
        let inner = &rest[start + 2..end];
        let name = inner.split([':', '-', '?']).next().unwrap();
        assert!(
            inner.contains(":?"),
            "${{{inner}}} must be required (`:?message`), not defaulted"
        );
        let value = placeholders
            .get(name)
            .unwrap_or_else(|| panic!("unknown variable {name} in docker-compose.yml"));
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml_ng::from_str(&interpolate(&text)).unwrap()
}

fn raw_compose() -> String {
    std::fs::read_to_string(root().join("docker-compose.yml")).unwrap()
}

/// A service's `environment` (map form) as strings.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(map) = service.get("environment").and_then(Value::as_mapping) {
        for (k, v) in map {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("environment value {other:?}"),
            };
            env.insert(k.as_str().unwrap().to_string(), value);
        }
    }
    env
}

fn command(service: &Value) -> Vec<String> {
    service
        .get("command")
        .and_then(Value::as_sequence)
        .map(|s| s.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The host file mounted at `container_path` (a `./host:container` volume).
fn mounted_file(service: &Value, container_path: &str) -> PathBuf {
    for v in service
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let spec = v.as_str().unwrap();
        let parts: Vec<&str> = spec.split(':').collect();
        if parts.len() >= 2 && parts[1] == container_path && parts[0].starts_with("./") {
            let path = root().join(&parts[0][2..]);
            assert!(path.is_file(), "{} is mounted but missing", path.display());
            return path;
        }
    }
    panic!("{container_path} is not mounted from the repository")
}

/// The binaries the workspace builds: each member's package name when it
/// has `src/main.rs`, and `src/bin/*.rs`.
fn workspace_binaries() -> Vec<String> {
    let manifest: String = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>();
    let mut bins = Vec::new();
    for m in members {
        let dir = root().join(&m);
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = cargo
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        if dir.join("src/main.rs").exists() {
            bins.push(name);
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("src/bin")) {
            for e in entries {
                let p = e.unwrap().path();
                bins.push(p.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    bins
}

/// Sets exactly `env` among the variables with one of `prefixes` (and the
/// plain variables the service gets), clearing the others.
fn set_env(env: &BTreeMap<String, String>, prefixes: &[&str]) {
    for (k, _) in std::env::vars() {
        if prefixes.iter().any(|p| k.starts_with(p)) {
            std::env::remove_var(k);
        }
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
}

fn load_adapter(service: &Value, env: &BTreeMap<String, String>) -> adapter::Config {
    let cmd = command(service);
    let file = cmd
        .iter()
        .position(|a| a == "--config")
        .map(|i| mounted_file(service, &cmd[i + 1]));
    set_env(env, &[adapter::config::ENV_PREFIX]);
    let config = adapter::config::load_from(
        adapter::Config::default(),
        file.as_deref(),
        adapter::config::ENV_PREFIX,
    )
    .unwrap_or_else(|e| panic!("adapter configuration from docker-compose.yml: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("adapter configuration: {e}"));
    config
}

// Sets process environment variables under the services' prefixes; the
// other test of this binary uses a prefix of its own.
#[test]
fn compose_configuration_keys_and_binaries_exist() {
    let compose = compose();
    let services = compose.get("services").unwrap().as_mapping().unwrap();
    let bins = workspace_binaries();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();

    let mut seen = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let env = environment(service);
        if name == "postgres" {
            assert!(service.get("build").is_none());
            continue;
        }
        // Our services are built from the Dockerfile and run a binary of
        // the workspace that the image installs.
        assert_eq!(
            service.get("build").and_then(Value::as_str),
            Some("."),
            "{name}"
        );
        let cmd = command(service);
        let bin = cmd.first().unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            bins.contains(bin),
            "{name}: {bin} is not a workspace binary ({bins:?})"
        );
        assert!(
            dockerfile.contains(&format!("-p {bin}")),
            "Dockerfile does not build {bin}"
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/{bin} ")),
            "Dockerfile does not install {bin}"
        );
        match bin.as_str() {
            "adapter" => {
                let config = load_adapter(service, &env);
                assert!(config.database.url.starts_with("postgres://"));
                // PostgreSQL needs the signing keys' encryption key from an
                // environment variable the service is given.
                let var = config.keys.encryption_key_env.clone().unwrap();
                assert!(
                    env.contains_key(&var),
                    "{var} is not in the adapter's environment"
                );
                adapter::keys::EncryptionKey::resolve(&config.keys, &config.database.url).unwrap();
            }
            "upstream-test-server" => {
                set_env(&env, &[upstream_test_server::ENV_PREFIX]);
                let config = adapter::config::load_from(
                    upstream_test_server::default_config(),
                    None,
                    upstream_test_server::ENV_PREFIX,
                )
                .unwrap_or_else(|e| panic!("upstream configuration: {e}"));
                config.validate().unwrap();
            }
            "test-app" => {
                set_env(&env, &[test_app::config::ENV_PREFIX]);
                test_app::Config::load(None)
                    .unwrap_or_else(|e| panic!("test-app configuration: {e}"));
            }
            other => panic!("no configuration check for {other}"),
        }
        seen.push(bin.clone());
    }
    seen.sort();
    assert_eq!(seen, ["adapter", "test-app", "upstream-test-server"]);

    // The encryption key and the database password are placeholders the
    // user must set; no value of them is in the file.
    let raw = raw_compose();
    assert!(raw.contains("AUTH_ADAPTER_ENCRYPTION_KEY: ${AUTH_ADAPTER_ENCRYPTION_KEY:?"));
    assert!(raw.contains("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?"));
}

#[test]
fn a_misspelt_key_is_refused_by_the_loader() {
    // The mechanism the test above relies on: an unknown key under the
    // adapter's prefix stops loading, and names the key.
    let mut env = BTreeMap::new();
    env.insert(
        "AUTH_ADAPTER_COMPOSE_TEST__DATABASE__URLL".to_string(),
        "x".to_string(),
    );
    set_env(&env, &["AUTH_ADAPTER_COMPOSE_TEST__"]);
    let err = adapter::config::load_from(
        adapter::Config::default(),
        None,
        "AUTH_ADAPTER_COMPOSE_TEST__",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("urll"), "{err}");
}
