//! Random values and hashing of secrets.
//!
//! Codes, refresh tokens, session ids and client secrets are stored and
//! looked up only by their SHA-256 (RFC 9700 §4.14, OWASP ASVS 5.0 V11); comparisons of secrets are
//! constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A fresh random value: 32 bytes (256 bits) from the OS CSPRNG, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Base64url SHA-256 of a secret: the only form in which secrets are stored.
pub fn hash(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time string equality.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// RFC 7636 §4.2: `BASE64URL(SHA256(ASCII(code_verifier)))`.
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
pub fn is_valid_pkce_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// OIDC Core §3.1.3.6: the left half of the hash of the access token,
/// base64url, with the hash of the ID token's `alg`: SHA-256 for RS256,
/// PS256 and ES256, SHA-512 for EdDSA over Ed25519 (as openidconnect and
/// other certified relying parties compute it).
pub fn at_hash(id_token_alg: &str, access_token: &str) -> String {
    match id_token_alg {
        "EdDSA" => {
            let digest = sha2::Sha512::digest(access_token.as_bytes());
            URL_SAFE_NO_PAD.encode(&digest[..32])
        }
        _ => {
            let digest = Sha256::digest(access_token.as_bytes());
            URL_SAFE_NO_PAD.encode(&digest[..16])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_valid_pkce_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!is_valid_pkce_verifier("short"));
        assert!(!is_valid_pkce_verifier(&"a".repeat(129)));
        assert!(!is_valid_pkce_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn at_hash_follows_the_id_token_algorithm() {
        // Left halves of SHA-256 / SHA-512 of "token", base64url.
        let sha256 = Sha256::digest(b"token");
        let sha512 = sha2::Sha512::digest(b"token");
        assert_eq!(
            at_hash("RS256", "token"),
            URL_SAFE_NO_PAD.encode(&sha256[..16])
        );
        assert_eq!(
            at_hash("ES256", "token"),
            URL_SAFE_NO_PAD.encode(&sha256[..16])
        );
        assert_eq!(
            at_hash("EdDSA", "token"),
            URL_SAFE_NO_PAD.encode(&sha512[..32])
        );
        assert_eq!(at_hash("EdDSA", "token").len(), 43);
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "ab"));
    }
}
