//! Builders of the adapter's configuration blocks, written as the TOML
//! config would write them (through serde), so they keep working when a
//! field's Rust type changes.

use anyhow::Context;
use serde_json::{json, Value};

/// A confidential client (`[[clients]]`) with a secret given inline.
pub fn client(
    id: &str,
    name: Option<&str>,
    secret: &str,
    redirect_uris: &[&str],
    allowed_scopes: &[&str],
) -> anyhow::Result<adapter::config::ClientConfig> {
    from_json(json!({
        "id": id,
        "name": name,
        "secret": secret,
        "redirect_uris": redirect_uris,
        "allowed_scopes": allowed_scopes,
    }))
    .with_context(|| format!("building ClientConfig {id}"))
}

/// An OIDC upstream (`[[upstreams]]`) with its client secret inline.
pub fn upstream(
    id: &str,
    name: &str,
    issuer: &str,
    client_id: &str,
    client_secret: &str,
) -> anyhow::Result<adapter::config::UpstreamConfig> {
    from_json(json!({
        "id": id,
        "name": name,
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": client_secret,
        "scopes": ["openid", "profile", "email"],
    }))
    .with_context(|| format!("building UpstreamConfig {id}"))
}

/// A local account (`[[local_users]]`) with a plain demo password.
pub fn local_user(
    username: &str,
    password: &str,
    name: &str,
    email: &str,
) -> anyhow::Result<adapter::config::LocalUserConfig> {
    from_json(json!({
        "username": username,
        "password": password,
        "name": name,
        "email": email,
    }))
    .with_context(|| format!("building LocalUserConfig {username}"))
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}
