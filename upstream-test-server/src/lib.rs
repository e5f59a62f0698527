//! The upstream test identity provider: the adapter's own provider engine
//! run with only the local-accounts connector and a seeded demo user.
//!
//! Running the same engine on both sides of the chain keeps one
//! implementation of the provider protocol; the chain still tests two
//! independent OIDC implementations, because the adapter talks to this
//! server through the `openidconnect` crate and the test-app is its own
//! relying party.

use std::net::SocketAddr;

use adapter::config::{
    AccountsConfig, ClientConfig, Config, CustomizerKind, DatabaseConfig, LocalUserConfig,
    ServerConfig, SessionConfig, UiConfig,
};

/// Environment overrides: `TEST_AUTH_SERVER__SERVER__LISTEN=...`.
pub const ENV_PREFIX: &str = "TEST_AUTH_SERVER__";

/// Defaults: port 9001, the demo user `testuser` / `password`, and the
/// adapter's demo client `auth-adapter`.
pub fn default_config() -> Config {
    Config {
        server: ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            // `localhost`, not 127.0.0.1: browsers refuse an IP address as
            // the WebAuthn RP ID of the passkeys (WebAuthn L2 §5.1.2).
            issuer: Some("http://localhost:9001".into()),
            ..ServerConfig::default()
        },
        database: DatabaseConfig {
            url: "sqlite://data/upstream-test-server.db".into(),
            ..DatabaseConfig::default()
        },
        session: SessionConfig {
            cookie_name: "TEST_AUTH_SERVER_SESSION".into(),
            transaction_cookie_name: "TEST_AUTH_SERVER_TX".into(),
            ..SessionConfig::default()
        },
        ui: UiConfig {
            title: "Test Auth Server".into(),
            login_hint: Some(
                "Demo account: testuser / password. New here? Create an account at /register."
                    .into(),
            ),
        },
        // A realistic identity provider: self-service registration, TOTP
        // for whoever enrols it (at /account/totp after signing in).
        accounts: AccountsConfig {
            enabled: true,
            registration: true,
            ..AccountsConfig::default()
        },
        // Passkeys for RP ID `localhost` (a secure context on plain http).
        passkeys: adapter::config::PasskeysConfig {
            rp_id: Some("localhost".into()),
            rp_origin: Some("http://localhost:9001".into()),
            ..Default::default()
        },
        claims: adapter::config::ClaimsConfig {
            customizer: CustomizerKind::Passthrough,
            ..Default::default()
        },
        clients: vec![ClientConfig {
            id: "auth-adapter".into(),
            name: Some("Auth Adapter".into()),
            // A demo credential of the local test chain, not a real secret.
            secret: Some("auth-adapter-demo-secret".into()),
            secret_env: None,
            redirect_uris: vec!["http://127.0.0.1:9000/login/oauth2/code/test-auth-server".into()],
            // The adapter's logout callback (OIDC RP-Initiated Logout 1.0 §3).
            post_logout_redirect_uris: vec!["http://127.0.0.1:9000/logout/callback".into()],
            allowed_scopes: vec!["openid".into(), "profile".into(), "email".into()],
            public: false,
            require_pkce: true,
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            backchannel_logout_uri: None,
            id_token_signed_response_alg: None,
            claims: Default::default(),
            upstreams: None,
        }],
        local_users: vec![LocalUserConfig {
            username: "testuser".into(),
            password_hash: None,
            // The seed's demo password; hashed with argon2id at start-up.
            password: Some("password".into()),
            name: Some("Test User".into()),
            email: Some("testuser@example.org".into()),
            groups: vec!["user".into()],
        }],
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keep_the_demo_credentials() {
        let c =
            adapter::config::load_from(default_config(), None, "TEST_AUTH_SERVER_UNIT_UNUSED__")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.issuer(), "http://localhost:9001");
        assert_eq!(c.passkeys.rp_id.as_deref(), Some("localhost"));
        assert_eq!(
            c.passkeys.rp_origin.as_deref(),
            Some("http://localhost:9001")
        );
        assert_eq!(
            c.clients[0].secret.as_ref().map(|s| s.expose()),
            Some("auth-adapter-demo-secret")
        );
        assert_eq!(
            c.local_users[0].password.as_ref().map(|s| s.expose()),
            Some("password")
        );
        assert!(c.accounts.enabled && c.accounts.registration);
    }
}
