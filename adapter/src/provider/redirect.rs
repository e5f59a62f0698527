//! Responses that travel to the client through its redirect URI: the code
//! (RFC 6749 §4.1.2) and errors (§4.1.2.1), both with `state` and `iss`
//! (RFC 9207 §2). Pure URL building, used by the flow engine and handlers;
//! only ever called with a redirect URI already matched against the
//! client's registration.

use crate::error::OAuthError;

/// `redirect_uri` with `params` appended to its query.
pub fn client_redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = url::Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

/// The authorization response carrying a code.
pub fn code_redirect(
    redirect_uri: &str,
    code: &str,
    state: Option<&str>,
    issuer: &str,
) -> Option<String> {
    let mut params = vec![("code", code)];
    if let Some(s) = state {
        params.push(("state", s));
    }
    params.push(("iss", issuer));
    client_redirect(redirect_uri, &params)
}

/// The error response: `error`, `error_description`, `state`, `iss`.
pub fn error_redirect(
    redirect_uri: &str,
    state: Option<&str>,
    error: &OAuthError,
    issuer: &str,
) -> Option<String> {
    let mut params = vec![
        ("error", error.code.as_str()),
        ("error_description", error.description.as_str()),
    ];
    if let Some(s) = state {
        params.push(("state", s));
    }
    params.push(("iss", issuer));
    client_redirect(redirect_uri, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_appended_and_encoded() {
        let url = code_redirect("https://a/cb?x=1", "c d", Some("s&t"), "https://i").unwrap();
        assert_eq!(
            url,
            "https://a/cb?x=1&code=c+d&state=s%26t&iss=https%3A%2F%2Fi"
        );
        let url = error_redirect(
            "https://a/cb",
            None,
            &OAuthError::access_denied("no"),
            "https://i",
        )
        .unwrap();
        assert_eq!(
            url,
            "https://a/cb?error=access_denied&error_description=no&iss=https%3A%2F%2Fi"
        );
    }
}
