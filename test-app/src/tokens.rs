//! Token handling that `openidconnect` does not do for us:
//! - verification of the JWT access token (RFC 9068, `typ: at+jwt`) against the
//!   provider's JWKS with `jsonwebtoken` (algorithm allowlist RS256/ES256, never
//!   the header's word alone; `iss` and `exp` required and checked);
//! - decoding a JWT's header and payload into JSON maps for display, which is
//!   only done for tokens whose signature has been verified.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// A JWT claim set or header, as JSON.
pub type Claims = Map<String, Value>;

/// Signature algorithms accepted for access tokens (and ID tokens).
pub const ALLOWED_ALGS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// Clock-skew leeway in seconds for `exp`/`nbf` (RFC 7519 §4.1.4: "usually no
/// more than a few minutes").
pub const LEEWAY_SECS: u64 = 60;

/// Why an access token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url segments with JSON header and payload.
    #[error("not a JWT")]
    NotAJwt,
    /// The JOSE `typ` is not `at+jwt` (RFC 9068 §2.1, §4).
    #[error("JOSE header typ is {0:?}, expected \"at+jwt\"")]
    WrongType(Option<String>),
    /// The header names an algorithm outside the allowlist.
    #[error("algorithm {0} is not allowed (allowed: RS256, ES256)")]
    DisallowedAlg(String),
    /// No key in the provider's JWKS matches the header's `kid`.
    #[error("no key in the provider's JWKS matches kid {0:?}")]
    UnknownKey(Option<String>),
    /// The selected key cannot verify this algorithm.
    #[error("the JWKS key {0:?} does not fit the token's algorithm")]
    KeyMismatch(Option<String>),
    /// `exp` is in the past, beyond [`LEEWAY_SECS`] (RFC 9068 §4, RFC 7519 §4.1.4).
    #[error("it has expired (exp is in the past)")]
    Expired,
    /// `aud` does not name the expected audience (RFC 9068 §4, RFC 7519 §4.1.3).
    #[error("its aud does not contain {0:?}")]
    WrongAudience(String),
    /// Signature, `iss` or another registered claim failed validation.
    #[error("{0}")]
    Invalid(String),
}

/// Splits a compact JWS and base64url-decodes one JSON segment (0 = header, 1 = payload).
fn segment(jwt: &str, index: usize) -> Result<Claims, TokenError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::NotAJwt);
    }
    let raw = parts
        .get(index)
        .ok_or(TokenError::NotAJwt)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::NotAJwt))?;
    serde_json::from_slice(&raw).map_err(|_| TokenError::NotAJwt)
}

/// The JOSE header of a compact JWS. No verification: display only.
pub fn decode_header(jwt: &str) -> Result<Claims, TokenError> {
    segment(jwt, 0)
}

/// The payload of a compact JWS. No verification: call it only on a token
/// whose signature was verified (e.g. by `openidconnect`).
pub fn decode_payload(jwt: &str) -> Result<Claims, TokenError> {
    segment(jwt, 1)
}

/// Converts the provider's JWKS (as served) into `jsonwebtoken` keys. Keys
/// `jsonwebtoken` cannot parse are skipped rather than failing the whole set.
pub fn jwk_set_from_json(jwks: &Value) -> JwkSet {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    JwkSet { keys }
}

fn is_at_jwt(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    typ == "at+jwt" || typ == "application/at+jwt"
}

fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let family_ok = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    let alg_ok = jwk
        .common
        .key_algorithm
        .is_none_or(|ka| Algorithm::try_from(ka).ok() == Some(alg));
    let use_ok = jwk
        .common
        .public_key_use
        .as_ref()
        .is_none_or(|u| *u == PublicKeyUse::Signature);
    family_ok && alg_ok && use_ok
}

/// What [`verify_access_token`] checks beyond the signature.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The `iss` the token must carry.
    pub issuer: &'a str,
    /// The audience `aud` must contain; `None` leaves `aud` unchecked.
    pub audience: Option<&'a str>,
    /// The current unix time, for `exp` and `nbf`.
    pub now: i64,
}

/// Verifies a JWT access token (RFC 9068) and returns its claims.
///
/// Checks, in order: `typ` is `at+jwt`; the header `alg` is in
/// [`ALLOWED_ALGS`]; a JWKS key matches `kid` (or, without `kid`, exactly one
/// key fits the algorithm) and fits the algorithm; the signature; `iss` equals
/// `expect.issuer`; `exp` is present and not past `expect.now` (with
/// [`LEEWAY_SECS`]), `nbf`, when present, not after it; `aud` contains
/// `expect.audience` when one is given (RFC 9068 §4: the resource server
/// checks that it is the audience; at login the client leaves it unchecked).
pub fn verify_access_token(
    token: &str,
    jwks: &JwkSet,
    expect: Expect<'_>,
) -> Result<Claims, TokenError> {
    let issuer = expect.issuer;
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::NotAJwt)?;
    if !header.typ.as_deref().is_some_and(is_at_jwt) {
        return Err(TokenError::WrongType(header.typ));
    }
    let alg = header.alg;
    if !ALLOWED_ALGS.contains(&alg) {
        return Err(TokenError::DisallowedAlg(format!("{alg:?}")));
    }
    let jwk = match &header.kid {
        Some(kid) => jwks
            .find(kid)
            .ok_or_else(|| TokenError::UnknownKey(Some(kid.clone())))?,
        None => {
            let mut fitting = jwks.keys.iter().filter(|k| key_fits(k, alg));
            match (fitting.next(), fitting.next()) {
                (Some(only), None) => only,
                _ => return Err(TokenError::UnknownKey(None)),
            }
        }
    };
    if !key_fits(jwk, alg) {
        return Err(TokenError::KeyMismatch(header.kid));
    }
    let key =
        DecodingKey::from_jwk(jwk).map_err(|_| TokenError::KeyMismatch(header.kid.clone()))?;

    // Only the one algorithm we already checked against the allowlist.
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    validation.validate_aud = false;
    // Time is judged below with the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| TokenError::Invalid(describe(&e, issuer)))?;
    let claims = data.claims;
    let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| TokenError::Invalid("the claim exp is malformed".into()))?;
    if expect.now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf
            .as_i64()
            .ok_or_else(|| TokenError::Invalid("the claim nbf is malformed".into()))?;
        if nbf.saturating_sub(leeway) > expect.now {
            return Err(TokenError::Invalid(
                "it is not valid yet (nbf is in the future)".into(),
            ));
        }
    }
    if let Some(audience) = expect.audience {
        let contains = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !contains {
            return Err(TokenError::WrongAudience(audience.to_owned()));
        }
    }
    Ok(claims)
}

/// The `exp` of a token's claims, if it is a number.
pub fn expiry(claims: &Claims) -> Option<i64> {
    claims.get("exp").and_then(Value::as_i64)
}

/// A readable reason for a `jsonwebtoken` validation failure.
fn describe(err: &jsonwebtoken::errors::Error, issuer: &str) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => {
            "the signature does not verify with the provider's key".into()
        }
        ErrorKind::ExpiredSignature => "it has expired (exp is in the past)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidIssuer => format!("its iss is not {issuer:?}"),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the required claim {claim} is missing")
        }
        ErrorKind::InvalidClaimFormat(claim) => format!("the claim {claim} is malformed"),
        ErrorKind::InvalidAlgorithm => "the key does not fit the token's algorithm".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(decode_payload("abc"), Err(TokenError::NotAJwt));
        assert_eq!(decode_payload("a.b.c"), Err(TokenError::NotAJwt));
        assert_eq!(decode_payload("a.b.c.d"), Err(TokenError::NotAJwt));
    }

    #[test]
    fn decode_reads_json_segments() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"at+jwt"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"testuser","authorities":["ROLE_USER"]}"#);
        let jwt = format!("{h}.{p}.sig");
        assert_eq!(decode_header(&jwt).unwrap()["typ"], "at+jwt");
        assert_eq!(decode_payload(&jwt).unwrap()["authorities"][0], "ROLE_USER");
    }

    fn expect_x() -> Expect<'static> {
        Expect {
            issuer: "x",
            audience: None,
            now: 0,
        }
    }

    #[test]
    fn typ_and_alg_are_checked_before_anything_else() {
        let empty = JwkSet { keys: vec![] };
        let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"x","exp":1}"#);
        let jwt = |h: &[u8]| format!("{}.{p}.c2ln", URL_SAFE_NO_PAD.encode(h));
        assert_eq!(
            verify_access_token(&jwt(br#"{"alg":"RS256","typ":"JWT"}"#), &empty, expect_x()),
            Err(TokenError::WrongType(Some("JWT".into())))
        );
        assert_eq!(
            verify_access_token(&jwt(br#"{"alg":"RS256"}"#), &empty, expect_x()),
            Err(TokenError::WrongType(None))
        );
        assert_eq!(
            verify_access_token(
                &jwt(br#"{"alg":"HS256","typ":"at+jwt"}"#),
                &empty,
                expect_x()
            ),
            Err(TokenError::DisallowedAlg("HS256".into()))
        );
        assert_eq!(
            verify_access_token(
                &jwt(br#"{"alg":"RS256","typ":"at+jwt","kid":"k9"}"#),
                &empty,
                expect_x()
            ),
            Err(TokenError::UnknownKey(Some("k9".into())))
        );
        assert!(is_at_jwt("application/AT+JWT"));
    }

    #[test]
    fn only_fitting_keys_are_used() {
        let set = jwk_set_from_json(&serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "broken"},
            {"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB", "use": "sig", "alg": "RS256"},
            {"kty": "RSA", "kid": "enc", "n": "AQAB", "e": "AQAB", "use": "enc"},
            "not an object"
        ]}));
        assert_eq!(set.keys.len(), 3, "the non-object entry is skipped");
        let key = |kid: &str| set.find(kid).unwrap();
        assert!(key_fits(key("a"), Algorithm::RS256));
        assert!(
            !key_fits(key("a"), Algorithm::ES256),
            "family and alg must match"
        );
        assert!(
            !key_fits(key("broken"), Algorithm::RS256),
            "malformed key never fits"
        );
        assert!(
            !key_fits(key("enc"), Algorithm::RS256),
            "encryption key never fits"
        );
    }
}
