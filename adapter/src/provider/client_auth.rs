//! Client authentication and form parsing shared by the endpoints clients
//! call directly: token (RFC 6749 §3.2), revocation (RFC 7009 §2.1) and
//! introspection (RFC 7662 §2.1).
//!
//! Methods: `client_secret_basic`, `client_secret_post` (RFC 6749 §2.3.1)
//! and `none` for public clients (RFC 8252 §8.5), one per request.

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{AppState, Client};
use crate::error::OAuthError;
use crate::secret::{ct_eq, hash};
use crate::web::{form_pairs, WebError};

/// RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={}", s.replace('&', "%26")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Credentials from `Authorization: Basic`.
pub fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), OAuthError>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad());
    Some(decoded.and_then(|bytes| {
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        Ok((form_decode(id), form_decode(secret)))
    }))
}

/// The form parameters of a request; empty values count as absent
/// (RFC 6749 §3.1).
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, v)| p == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// Parses an `application/x-www-form-urlencoded` body (RFC 6749 §3.2,
/// RFC 7009 §2.1, RFC 7662 §2.1) whose parameters each appear at most once
/// (RFC 6749 §3.1); anything else is `invalid_request`.
pub fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<Params, WebError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        )
        .into());
    }
    let pairs = form_pairs(body);
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(OAuthError::invalid_request(format!("parameter {k} is repeated")).into());
        }
    }
    Ok(Params(pairs))
}

/// Authenticates the client (RFC 6749 §2.3.1, §3.2.1). A public client
/// authenticates by its `client_id` alone (method `none`).
pub fn authenticate<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<&'a Client, WebError> {
    let param = |k: &str| params.get(k);
    let invalid = |msg: &str| WebError::Token(OAuthError::invalid_client(msg));
    let (client_id, secret) = match basic_credentials(headers) {
        Some(Err(e)) => return Err(WebError::Token(e)),
        Some(Ok((id, secret))) => {
            if param("client_secret").is_some() {
                return Err(
                    OAuthError::invalid_request("use one client authentication method").into(),
                );
            }
            if param("client_id").is_some_and(|p| p != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                )
                .into());
            }
            (id, Some(secret))
        }
        None => match param("client_id") {
            Some(id) => (id.to_string(), param("client_secret").map(String::from)),
            None => return Err(invalid("client authentication is required")),
        },
    };
    let client = st
        .clients
        .get(&client_id)
        .ok_or_else(|| invalid("client authentication failed"))?;
    match (&client.secret_hash, secret) {
        (Some(expected), Some(given)) if ct_eq(expected, &hash(&given)) => Ok(client),
        (None, None) => Ok(client),
        (None, Some(s)) if s.is_empty() => Ok(client),
        _ => Err(invalid("client authentication failed")),
    }
}

/// [`authenticate`], for endpoints only confidential clients may call
/// (RFC 7662 §2.1: the caller must be authenticated; a public client's
/// `client_id` proves nothing).
pub fn authenticate_confidential<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<&'a Client, WebError> {
    let client = authenticate(st, headers, params)?;
    if client.secret_hash.is_none() {
        return Err(OAuthError::invalid_client("this endpoint needs a confidential client").into());
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn basic_credentials_are_form_decoded() {
        // RFC 6749 §2.3.1: "a:b%c" is sent as "a%3Ab%25c".
        let mut h = HeaderMap::new();
        let raw = STANDARD.encode("my+client:a%3Ab%25c~-");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {raw}").parse().unwrap(),
        );
        let (id, secret) = basic_credentials(&h).unwrap().unwrap();
        assert_eq!(id, "my client");
        assert_eq!(secret, "a:b%c~-");
    }

    #[test]
    fn malformed_basic_is_invalid_client() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(
            basic_credentials(&h).unwrap().unwrap_err().code,
            ErrorCode::InvalidClient
        );
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("nocolon"))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            basic_credentials(&h).unwrap().unwrap_err().code,
            ErrorCode::InvalidClient
        );
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic_credentials(&h).is_none());
    }

    #[test]
    fn forms_need_their_content_type_and_unique_parameters() {
        let mut h = HeaderMap::new();
        assert!(parse_form(&h, b"token=a").is_err());
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert_eq!(parse_form(&h, b"token=a").unwrap().get("token"), Some("a"));
        assert!(parse_form(&h, b"token=a&token=b").is_err());
        assert_eq!(parse_form(&h, b"token=").unwrap().get("token"), None);
    }
}
