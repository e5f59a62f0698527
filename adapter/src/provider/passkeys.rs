//! The passkey registration API of a signed-in local user
//! ([`paths::WEBAUTHN_REGISTER_BEGIN`], [`paths::WEBAUTHN_REGISTER_FINISH`])
//! and the list of their passkeys ([`paths::WEBAUTHN_PASSKEYS`]). Each
//! handler is guarded by [`AccountSession`] (a valid session, and for
//! `POST` the session's CSRF token from a same-site request) and calls one
//! function of [`crate::accounts::passkeys::Passkeys`]. Logging in with a
//! passkey goes through the authentication state machine (`/api/auth`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::account::AccountSession;
use super::AppState;
use crate::accounts::authn::Authenticator;
use crate::accounts::passkeys::{PasskeyError, Passkeys};
use crate::accounts::{AccountError, LOCAL_CONNECTOR_ID};
use crate::{paths, web};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::WEBAUTHN_REGISTER_BEGIN, post(register_begin))
        .route(paths::WEBAUTHN_REGISTER_FINISH, post(register_finish))
        .route(paths::WEBAUTHN_PASSKEYS, get(list))
        .route(paths::WEBAUTHN_PASSKEY_DELETE, post(remove))
}

/// A refused passkey request: `{"error", "error_description"}`.
#[derive(Debug)]
pub struct PasskeyApiError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl PasskeyApiError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        PasskeyApiError {
            status,
            code,
            description: description.into(),
        }
    }
}

impl IntoResponse for PasskeyApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            web::no_store(),
            Json(json!({"error": self.code, "error_description": self.description})),
        )
            .into_response()
    }
}

impl From<PasskeyError> for PasskeyApiError {
    fn from(e: PasskeyError) -> Self {
        match e {
            PasskeyError::Malformed(m) => PasskeyApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("malformed credential: {m}"),
            ),
            PasskeyError::Refused(m) => {
                PasskeyApiError::new(StatusCode::BAD_REQUEST, "passkey_refused", m)
            }
            PasskeyError::Account(AccountError::NotFound) => PasskeyApiError::new(
                StatusCode::FORBIDDEN,
                "not_local",
                "passkeys are for local accounts",
            ),
            PasskeyError::Account(AccountError::Conflict) => PasskeyApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the account changed meanwhile; start again",
            ),
            other => {
                tracing::error!(error = %other, "passkey operation failed");
                PasskeyApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "please retry shortly",
                )
            }
        }
    }
}

/// The local accounts and the Relying Party, and the local username of
/// the session; refused when passkeys are off or the user is not local.
fn resolve(
    st: &AppState,
    session: &AccountSession,
) -> Result<(Arc<Authenticator>, Arc<Passkeys>, String), PasskeyApiError> {
    let off = || PasskeyApiError::new(StatusCode::NOT_FOUND, "not_found", "passkeys are off");
    let authn = st.flows.local_accounts().ok_or_else(off)?;
    let passkeys = authn.passkeys().ok_or_else(off)?.clone();
    let identity = &session.session.identity;
    if identity.connector_id != LOCAL_CONNECTOR_ID {
        return Err(PasskeyApiError::new(
            StatusCode::FORBIDDEN,
            "not_local",
            "passkeys are for local accounts",
        ));
    }
    Ok((authn.clone(), passkeys, identity.subject.clone()))
}

/// `POST /webauthn/register/begin`: the creation options
/// (`{"publicKey": ...}`, WebAuthn L2 §5.4) for `navigator.credentials.create()`.
async fn register_begin(
    State(st): State<AppState>,
    session: AccountSession,
) -> Result<Response, PasskeyApiError> {
    let (authn, passkeys, username) = resolve(&st, &session)?;
    let options = passkeys
        .begin_registration(authn.accounts(), &username)
        .await?;
    Ok((web::no_store(), Json(options)).into_response())
}

/// `POST /webauthn/register/finish` with `{"credential": <the
/// PublicKeyCredential of create()>, "label": "..."}`: 201 and the passkey.
async fn register_finish(
    State(st): State<AppState>,
    session: AccountSession,
) -> Result<Response, PasskeyApiError> {
    let (authn, passkeys, username) = resolve(&st, &session)?;
    let bad = |m: String| PasskeyApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    let body: Value =
        serde_json::from_slice(&session.body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let credential = body
        .get("credential")
        .ok_or_else(|| bad("`credential` is required".into()))?;
    let label = match body.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(bad("`label` must be a string".into())),
    };
    let view = passkeys
        .finish_registration(authn.accounts(), &username, label, credential)
        .await?;
    Ok((StatusCode::CREATED, web::no_store(), Json(view)).into_response())
}

/// `GET /webauthn/passkeys`: the user's passkeys with their metadata.
async fn list(
    State(st): State<AppState>,
    session: AccountSession,
) -> Result<Response, PasskeyApiError> {
    let (authn, passkeys, username) = resolve(&st, &session)?;
    let list = passkeys.list(authn.accounts(), &username).await?;
    Ok((web::no_store(), Json(json!({ "passkeys": list }))).into_response())
}

/// `POST /webauthn/passkeys/{id}/delete`: removes one of the user's
/// passkeys (204), or 404 when the user has none with that id.
async fn remove(
    State(st): State<AppState>,
    Path(id): Path<String>,
    session: AccountSession,
) -> Result<Response, PasskeyApiError> {
    let (authn, _, username) = resolve(&st, &session)?;
    let removed = authn
        .accounts()
        .remove_passkey(&username, &id)
        .await
        .map_err(PasskeyError::from)?;
    if !removed {
        return Err(PasskeyApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "you have no passkey with this id",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
