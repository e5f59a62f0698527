//! The TOTP enrolment pages of a signed-in local account (RFC 6238): a QR
//! code and the secret of a pending enrolment, confirmed by a first code,
//! which turns the account's password logins into two-factor ones and
//! shows the recovery codes once.
//!
//! Replacing an enrolled authenticator needs a session that was itself
//! made with one (its `amr` holds `otp`): a stolen password alone cannot
//! swap the second factor.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::account::AccountSession;
use super::AppState;
use crate::accounts::{AccountError, Accounts, LOCAL_CONNECTOR_ID};
use crate::flow::Session;
use crate::paths;
use crate::ratelimit::{ClientIp, Scope};
use crate::web::{PageError, WebError};

#[derive(Template, WebTemplate)]
#[template(path = "adapter/totp.html")]
pub struct TotpPage {
    pub title: String,
    pub action: &'static str,
    pub csrf_token: String,
    pub secret: String,
    pub qr_svg: String,
    pub error: Option<String>,
    pub recovery_codes: Option<Vec<String>>,
}

fn accounts(st: &AppState) -> Result<&Accounts, WebError> {
    match st.flows.local_accounts() {
        Some(a) => Ok(a.accounts()),
        None => Err(PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "Local accounts are not enabled.",
        )
        .into()),
    }
}

/// The signed-in session must be a local account's.
fn local_session(acct: &AccountSession) -> Result<&Session, WebError> {
    if acct.session.identity.connector_id == LOCAL_CONNECTOR_ID {
        Ok(&acct.session)
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Not a local account",
            "This session did not sign in with a local account.",
        )
        .into())
    }
}

fn account_error(e: AccountError) -> WebError {
    match e {
        AccountError::Storage(s) => WebError::Storage(s),
        AccountError::Invalid(m) => PageError::bad_request("Invalid request", m).into(),
        AccountError::Conflict => PageError::new(
            StatusCode::CONFLICT,
            "Changed meanwhile",
            "The account changed meanwhile; reload the page.",
        )
        .into(),
        other => {
            tracing::error!(error = %other, "TOTP enrolment failed");
            PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "Please try again shortly.",
            )
            .into()
        }
    }
}

/// A second factor may be replaced only by a session made with one.
async fn may_enrol(accounts: &Accounts, session: &Session) -> Result<(), WebError> {
    let account = accounts
        .find(&session.identity.subject)
        .await
        .map_err(account_error)?
        .ok_or_else(|| {
            PageError::new(
                StatusCode::NOT_FOUND,
                "Not found",
                "The account no longer exists.",
            )
        })?;
    if account.data.totp.is_some() && !session.identity.amr.iter().any(|m| m == "otp") {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Sign in with your authenticator",
            "An authenticator app is already enrolled. Sign in with it to replace it.",
        )
        .into());
    }
    Ok(())
}

/// `GET /account/totp`: the pending enrolment (a new one when none is).
pub async fn totp_page(
    State(st): State<AppState>,
    acct: AccountSession,
) -> Result<Response, WebError> {
    let accounts = accounts(&st)?;
    let session = local_session(&acct)?;
    may_enrol(accounts, session).await?;
    let user = &session.identity.subject;
    let enrolment = match accounts.pending_totp(user).await.map_err(account_error)? {
        Some(e) => e,
        None => accounts.begin_totp(user).await.map_err(account_error)?,
    };
    Ok(TotpPage {
        title: st.title().to_string(),
        action: paths::ACCOUNT_TOTP,
        csrf_token: acct.csrf_token.clone(),
        secret: enrolment.secret_base32,
        qr_svg: enrolment.qr_svg,
        error: None,
        recovery_codes: None,
    }
    .into_response())
}

/// `POST /account/totp`: confirms the pending enrolment with a first code.
/// The session, its CSRF token and a same-origin request are checked by
/// [`AccountSession`] (OWASP ASVS 5.0 V3.5).
pub async fn totp_confirm(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    acct: AccountSession,
) -> Result<Response, WebError> {
    if let Err(limited) = st.rate_limits.check_ip(Scope::VerifyTotp, ip) {
        return Ok(limited.respond(&headers));
    }
    let accounts = accounts(&st)?;
    let session = local_session(&acct)?;
    may_enrol(accounts, session).await?;
    let code = acct
        .form
        .iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| PageError::bad_request("Invalid request", "The form is incomplete."))?;
    let user = &session.identity.subject;
    match accounts
        .confirm_totp(user, &code)
        .await
        .map_err(account_error)?
    {
        Some(codes) => Ok(TotpPage {
            title: st.title().to_string(),
            action: paths::ACCOUNT_TOTP,
            csrf_token: String::new(),
            secret: String::new(),
            qr_svg: String::new(),
            error: None,
            recovery_codes: Some(codes),
        }
        .into_response()),
        None => {
            let enrolment = accounts
                .pending_totp(user)
                .await
                .map_err(account_error)?
                .ok_or_else(|| {
                    PageError::bad_request("Invalid request", "No enrolment is pending.")
                })?;
            Ok((
                StatusCode::BAD_REQUEST,
                TotpPage {
                    title: st.title().to_string(),
                    action: paths::ACCOUNT_TOTP,
                    csrf_token: acct.csrf_token.clone(),
                    secret: enrolment.secret_base32,
                    qr_svg: enrolment.qr_svg,
                    error: Some(
                        "That code is not valid. Check the clock of your device and try again."
                            .into(),
                    ),
                    recovery_codes: None,
                },
            )
                .into_response())
        }
    }
}
