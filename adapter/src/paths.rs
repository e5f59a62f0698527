//! Every route path of the provider, defined once: the router, discovery,
//! the callback URLs sent upstream and the links on pages all use these.

/// OIDC Discovery §4.
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
/// RFC 8414 §3.
pub const OAUTH_AUTHORIZATION_SERVER: &str = "/.well-known/oauth-authorization-server";
pub const JWKS: &str = "/oauth2/jwks";
pub const AUTHORIZE: &str = "/oauth2/authorize";
pub const TOKEN: &str = "/oauth2/token";
pub const USERINFO: &str = "/userinfo";
/// Route of the upstream callbacks: one path per upstream (RFC 9700 §4.4.2).
pub const UPSTREAM_CALLBACK: &str = "/login/oauth2/code/{connector}";
/// Route of the connector chooser's links.
pub const LOGIN_START: &str = "/login/start/{connector}";
/// Route of a password connector's login form.
pub const LOGIN_FORM: &str = "/login/{connector}";
pub const HEALTH_LIVE: &str = "/healthz/live";
pub const HEALTH_READY: &str = "/healthz/ready";
pub const STYLE: &str = "/assets/style.css";
/// Prometheus text exposition format 0.0.4 (the scrape target).
pub const METRICS: &str = "/metrics";
/// RFC 7009 §2.
pub const REVOKE: &str = "/oauth2/revoke";
/// RFC 7662 §2.
pub const INTROSPECT: &str = "/oauth2/introspect";

/// Local accounts: the multi-step authentication API.
pub const API_AUTH: &str = "/api/auth";
/// Local accounts: self-service registration (page and post).
pub const REGISTER: &str = "/register";
/// Local accounts: the standalone sign-in page and the seed's `POST /login`.
pub const SIGN_IN: &str = "/login";
/// Local accounts: the code of an e-mail-code login.
pub const VERIFY_OTP: &str = "/verify-otp";
/// Local accounts: who is logged in (the seed's protected call on POST).
pub const DASHBOARD: &str = "/dashboard";

/// Local accounts: TOTP enrolment of the signed-in account.
pub const ACCOUNT_TOTP: &str = "/account/totp";

/// Path of the upstream callback of connector `id`.
pub fn upstream_callback(id: &str) -> String {
    UPSTREAM_CALLBACK.replace("{connector}", id)
}

/// Path that starts connector `id` for the login `login_id` (chooser page).
pub fn login_start(id: &str, login_id: &str) -> String {
    format!("{}?req={login_id}", LOGIN_START.replace("{connector}", id))
}

/// Path of the login form of connector `id` (its action, without query).
pub fn login_form(id: &str) -> String {
    LOGIN_FORM.replace("{connector}", id)
}

/// OIDC RP-Initiated Logout 1.0 §2: the `end_session_endpoint`.
pub const END_SESSION: &str = "/oauth2/logout";
/// Where an upstream sends the browser back after its own logout (the
/// adapter's `post_logout_redirect_uri` there).
pub const LOGOUT_CALLBACK: &str = "/logout/callback";
/// The development outbox: mails not sent for want of an SMTP server
/// (served only then).
pub const DEV_OUTBOX: &str = "/dev/outbox";

/// The signed-in user's devices (sessions): HTML, or JSON on request.
pub const ACCOUNT_DEVICES: &str = "/account/devices";
/// Route that ends one of the user's sessions, by its handle.
pub const ACCOUNT_DEVICE_REVOKE: &str = "/account/devices/{handle}/revoke";
/// The local logout of the account pages (not the OIDC end-session
/// endpoint [`END_SESSION`]).
pub const LOGOUT: &str = "/logout";

/// Passkeys: start a registration (creation options), signed in.
pub const WEBAUTHN_REGISTER_BEGIN: &str = "/webauthn/register/begin";
/// Passkeys: finish a registration with the authenticator's answer.
pub const WEBAUTHN_REGISTER_FINISH: &str = "/webauthn/register/finish";
/// Passkeys: the signed-in user's passkeys (JSON).
pub const WEBAUTHN_PASSKEYS: &str = "/webauthn/passkeys";
/// Passkeys: remove one of the signed-in user's passkeys, by its id.
pub const WEBAUTHN_PASSKEY_DELETE: &str = "/webauthn/passkeys/{id}/delete";
/// Passkeys: start a login (request options), username-first or
/// usernameless, for an authorization request's login or on its own.
pub const PASSKEY_LOGIN_BEGIN: &str = "/login/begin";
/// Passkeys: finish a login with the assertion.
pub const PASSKEY_LOGIN_FINISH: &str = "/login/finish";
/// The script of the passkey pages (no third-party assets).
pub const PASSKEYS_JS: &str = "/assets/passkeys.js";

/// Path that ends the session with `handle`.
pub fn device_revoke(handle: &str) -> String {
    ACCOUNT_DEVICE_REVOKE.replace("{handle}", handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_their_route_parameters() {
        assert_eq!(upstream_callback("up-1"), "/login/oauth2/code/up-1");
        assert_eq!(login_start("local", "r"), "/login/start/local?req=r");
        assert_eq!(login_form("local"), "/login/local");
        assert_eq!(device_revoke("h"), "/account/devices/h/revoke");
    }
}
