//! An upstream's JSON Web Keys, verified with aws-lc-rs.
//!
//! `openidconnect`'s `CoreJsonWebKey` verifies RSA signatures with the
//! RustCrypto `rsa` crate, several times slower than aws-lc-rs, and every
//! federated login verifies one upstream ID token. [`AwsLcJwk`] is a key
//! type for `openidconnect`'s own `IdTokenVerifier` (which keeps checking
//! `iss`, `aud`, `exp`, the nonce, the `alg` allow-list and the key
//! selection by `kid`, `kty`, `use` and `alg`, OIDC Core §3.1.3.7): it
//! parses the same JWK JSON (RFC 7517 §4) through `CoreJsonWebKey`, which
//! answers everything but the signature, and verifies the four algorithms
//! the adapter accepts with a public key aws-lc-rs parsed once, when the
//! JWKS was fetched: RS256 (RFC 7518 §3.3), PS256 (RFC 7518 §3.5), ES256
//! (RFC 7518 §3.4) and EdDSA over Ed25519 (RFC 8037 §3.1). Any other
//! algorithm, and any key that does not fit the JWS `alg`, is refused.

use std::sync::Arc;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, NO_PAD};
use base64::Engine;
use openidconnect::core::{
    CoreJsonWebKey, CoreJsonWebKeyType, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeyId, JsonWebKeyUse, JwsSigningAlgorithm,
    SignatureVerificationError,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A public JWK of an upstream: the `CoreJsonWebKey` it parses as, and the
/// aws-lc-rs key its members make. Cheap to clone (the verifier clones the
/// whole JWKS for every ID token).
#[derive(Clone, Debug)]
pub struct AwsLcJwk(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    jwk: CoreJsonWebKey,
    /// The parsed public key, or why there is none. A key that does not
    /// parse stays in the set, as with `CoreJsonWebKey`, and is refused
    /// when a token picks it (`InvalidKey`), not skipped.
    public: Result<PublicKey, String>,
}

#[derive(Debug)]
enum PublicKey {
    /// One parse per padding: an `RsaParameters` fixes it, and a JWK
    /// without `alg` may serve RS256 and PS256 alike.
    Rsa {
        pkcs1: ParsedPublicKey,
        pss: ParsedPublicKey,
    },
    P256(ParsedPublicKey),
    Ed25519(ParsedPublicKey),
}

/// RFC 7515 §2 / RFC 7518 §2 base64url without padding, lenient on the
/// trailing bits as `openidconnect` is when it reads the same members.
const B64: GeneralPurpose =
    GeneralPurpose::new(&URL_SAFE, NO_PAD.with_decode_allow_trailing_bits(true));

impl AwsLcJwk {
    fn new(jwk: CoreJsonWebKey, members: &Value) -> Self {
        AwsLcJwk(Arc::new(Inner {
            jwk,
            public: parse_public(members),
        }))
    }

    /// The `CoreJsonWebKey` this key parses as.
    #[cfg(test)]
    pub fn core(&self) -> &CoreJsonWebKey {
        &self.0.jwk
    }
}

/// The member `name` of a JWK, base64url-decoded.
fn member(members: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = members
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}` is missing"))?;
    B64.decode(text).map_err(|e| format!("`{name}`: {e}"))
}

/// A curve coordinate or Ed25519 key of exactly `len` octets (RFC 7518
/// §6.2.1.2: "MUST be the full size of a coordinate"; RFC 8037 §2).
fn fixed(members: &Value, name: &str, len: usize) -> Result<Vec<u8>, String> {
    let bytes = member(members, name)?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(format!("`{name}` is {} octets, not {len}", bytes.len()))
    }
}

/// RFC 7518 §6.3.1: `n` and `e` are unsigned big-endian integers, which
/// aws-lc-rs takes without leading zero octets; a few issuers send one.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn parse_public(members: &Value) -> Result<PublicKey, String> {
    let kty = members.get("kty").and_then(Value::as_str);
    let crv = members.get("crv").and_then(Value::as_str);
    let rejected = |e: aws_lc_rs::error::KeyRejected| format!("key rejected: {e}");
    match (kty, crv) {
        (Some("RSA"), _) => {
            let (n, e) = (member(members, "n")?, member(members, "e")?);
            let components = RsaPublicKeyComponents {
                n: unsigned(&n),
                e: unsigned(&e),
            };
            // RFC 7518 §3.3 and §3.5: keys of 2048 bits or more.
            Ok(PublicKey::Rsa {
                pkcs1: components
                    .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
                    .map_err(rejected)?,
                pss: components
                    .to_parsed_public_key(&signature::RSA_PSS_2048_8192_SHA256)
                    .map_err(rejected)?,
            })
        }
        (Some("EC"), Some("P-256")) => {
            // SEC 1 §2.3.3 uncompressed point: 0x04 || x || y.
            let mut point = vec![0x04];
            point.extend(fixed(members, "x", 32)?);
            point.extend(fixed(members, "y", 32)?);
            ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .map(PublicKey::P256)
                .map_err(rejected)
        }
        (Some("OKP"), Some("Ed25519")) => {
            ParsedPublicKey::new(&signature::ED25519, fixed(members, "x", 32)?)
                .map(PublicKey::Ed25519)
                .map_err(rejected)
        }
        (kty, crv) => Err(format!(
            "not an RSA, P-256 or Ed25519 public key (kty {kty:?}, crv {crv:?})"
        )),
    }
}

impl<'de> Deserialize<'de> for AwsLcJwk {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let members = Value::deserialize(deserializer)?;
        let jwk = CoreJsonWebKey::deserialize(&members).map_err(serde::de::Error::custom)?;
        Ok(AwsLcJwk::new(jwk, &members))
    }
}

impl Serialize for AwsLcJwk {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.jwk.serialize(serializer)
    }
}

impl PartialEq for AwsLcJwk {
    fn eq(&self, other: &Self) -> bool {
        self.0.jwk == other.0.jwk
    }
}

impl Eq for AwsLcJwk {}

fn alg_name(alg: &CoreJwsSigningAlgorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{alg:?}"))
}

/// The rules `openidconnect` applies to a key before it verifies with it
/// (the same as its key selection): `use` allows signatures (RFC 7517
/// §4.2), `kty` is the one of `alg` (RFC 7518 §3.1), and the JWK's own
/// `alg`, if any, is `alg` (RFC 7517 §4.4).
fn check_compatible(
    key: &AwsLcJwk,
    alg: &CoreJwsSigningAlgorithm,
) -> Result<(), SignatureVerificationError> {
    let invalid = |why: &str| Err(SignatureVerificationError::InvalidKey(why.into()));
    if key.key_use().is_some_and(|u| !u.allows_signature()) {
        return invalid("key usage not permitted for digital signatures");
    }
    if alg.key_type().as_ref() != Some(key.key_type()) {
        return invalid("key type does not match signature algorithm");
    }
    match key.signing_alg() {
        JsonWebKeyAlgorithm::Unspecified => Ok(()),
        JsonWebKeyAlgorithm::Algorithm(own) if own == alg => Ok(()),
        JsonWebKeyAlgorithm::Algorithm(_) => invalid("incompatible key algorithm"),
        JsonWebKeyAlgorithm::Unsupported => invalid("key algorithm is not a signing algorithm"),
    }
}

impl JsonWebKey for AwsLcJwk {
    type KeyUse = CoreJsonWebKeyUse;
    type SigningAlgorithm = CoreJwsSigningAlgorithm;

    fn key_id(&self) -> Option<&JsonWebKeyId> {
        self.0.jwk.key_id()
    }

    fn key_type(&self) -> &CoreJsonWebKeyType {
        self.0.jwk.key_type()
    }

    fn key_use(&self) -> Option<&CoreJsonWebKeyUse> {
        self.0.jwk.key_use()
    }

    fn signing_alg(&self) -> JsonWebKeyAlgorithm<&CoreJwsSigningAlgorithm> {
        self.0.jwk.signing_alg()
    }

    /// The client secret as an HMAC key (OIDC Core §10.1); it never
    /// verifies anything here (HS* are not accepted on upstream ID tokens).
    fn new_symmetric(key: Vec<u8>) -> Self {
        AwsLcJwk(Arc::new(Inner {
            jwk: CoreJsonWebKey::new_symmetric(key),
            public: Err("a shared secret, not a public key".into()),
        }))
    }

    /// RFC 7515 §5.2 step 8, with the aws-lc-rs key of `alg`: RSASSA-PKCS1
    /// v1.5 or RSASSA-PSS with SHA-256 (RFC 7518 §3.3, §3.5), ECDSA P-256
    /// SHA-256 over the 64-octet R || S (RFC 7518 §3.4), Ed25519 (RFC 8037
    /// §3.1).
    fn verify_signature(
        &self,
        signature_alg: &CoreJwsSigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureVerificationError> {
        use CoreJwsSigningAlgorithm::{
            EcdsaP256Sha256, EdDsa, RsaSsaPkcs1V15Sha256, RsaSsaPssSha256,
        };
        check_compatible(self, signature_alg)?;
        let public = self
            .0
            .public
            .as_ref()
            .map_err(|why| SignatureVerificationError::InvalidKey(why.clone()))?;
        let key = match (signature_alg, public) {
            (RsaSsaPkcs1V15Sha256, PublicKey::Rsa { pkcs1, .. }) => pkcs1,
            (RsaSsaPssSha256, PublicKey::Rsa { pss, .. }) => pss,
            (EcdsaP256Sha256, PublicKey::P256(key)) => key,
            (EdDsa, PublicKey::Ed25519(key)) => key,
            (RsaSsaPkcs1V15Sha256 | RsaSsaPssSha256 | EcdsaP256Sha256 | EdDsa, _) => {
                return Err(SignatureVerificationError::InvalidKey(format!(
                    "the key does not fit {}",
                    alg_name(signature_alg)
                )))
            }
            (other, _) => return Err(SignatureVerificationError::UnsupportedAlg(alg_name(other))),
        };
        key.verify_sig(message, signature)
            .map_err(|_| SignatureVerificationError::CryptoError("bad signature".into()))
    }

    /// The hash of `alg` for `at_hash` and `c_hash` (OIDC Core §3.1.3.6,
    /// §3.3.2.11): `CoreJsonWebKey`'s, which also checks the key fits.
    fn hash_bytes(&self, bytes: &[u8], alg: &CoreJwsSigningAlgorithm) -> Result<Vec<u8>, String> {
        self.0.jwk.hash_bytes(bytes, alg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::oidc::ACCEPTED_ALGS;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use openidconnect::core::CoreIdToken;
    use openidconnect::{
        ClaimsVerificationError, ClientId, ClientSecret, IdTokenVerifier, IssuerUrl, JsonWebKeySet,
        Nonce,
    };
    use serde_json::json;

    const ISS: &str = "https://up.example";
    const CLIENT: &str = "adapter";
    const NONCE: &str = "nonce-1";

    /// A private key of `alg` and its public JWK (with `kid` and `use`).
    fn keypair(alg: Algorithm, kid: &str) -> (EncodingKey, Value) {
        let key = match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                let pem = crate::keys::generate_pem("RS256").unwrap();
                EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
            }
            Algorithm::ES256 => {
                let pem = crate::keys::generate_pem("ES256").unwrap();
                EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
            }
            Algorithm::EdDSA => {
                let pem = crate::keys::generate_pem("EdDSA").unwrap();
                EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()
            }
            Algorithm::ES384 => {
                let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                )
                .unwrap();
                EncodingKey::from_ec_der(kp.to_pkcs8v1().unwrap().as_ref())
            }
            other => panic!("no test key for {other:?}"),
        };
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        let members = jwk.as_object_mut().unwrap();
        // No `alg` member: the key must fit the token's `alg` by itself.
        members.remove("alg");
        members.insert("kid".into(), json!(kid));
        members.insert("use".into(), json!("sig"));
        (key, jwk)
    }

    fn claims() -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({"iss": ISS, "aud": CLIENT, "sub": "jane", "iat": now, "exp": now + 300,
            "nonce": NONCE})
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: &str) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims(), key).unwrap()
    }

    fn jwks(keys: &[&Value]) -> JsonWebKeySet<AwsLcJwk> {
        serde_json::from_value(json!({ "keys": keys })).unwrap()
    }

    /// The adapter's verifier (`OidcConnector::verify`): the client, the
    /// issuer, the JWKS and [`ACCEPTED_ALGS`]; confidential, like an
    /// upstream client with a secret.
    fn verify(keys: JsonWebKeySet<AwsLcJwk>, token: &str) -> Result<(), ClaimsVerificationError> {
        let verifier = IdTokenVerifier::new_confidential_client(
            ClientId::new(CLIENT.into()),
            ClientSecret::new("the-client-secret".into()),
            IssuerUrl::new(ISS.into()).unwrap(),
            keys,
        )
        .set_allowed_algs(ACCEPTED_ALGS);
        let token: CoreIdToken = token.parse().unwrap();
        token
            .claims(&verifier, &Nonce::new(NONCE.into()))
            .map(|c| assert_eq!(c.subject().as_str(), "jane"))
    }

    fn signature_error(r: Result<(), ClaimsVerificationError>) -> SignatureVerificationError {
        match r {
            Err(ClaimsVerificationError::SignatureVerification(e)) => e,
            other => panic!("expected a signature error, got {other:?}"),
        }
    }

    /// `token` with one bit of its signature flipped.
    fn altered(token: &str) -> String {
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut sig = B64.decode(sig).unwrap();
        sig[10] ^= 1;
        format!("{input}.{}", B64.encode(sig))
    }

    const ALGS: [Algorithm; 4] = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];

    #[test]
    fn a_token_signed_by_the_right_key_verifies_and_an_altered_one_does_not() {
        for alg in ALGS {
            let (key, jwk) = keypair(alg, "k1");
            let (_, other) = keypair(alg, "k0");
            let token = sign(alg, &key, "k1");
            verify(jwks(&[&other, &jwk]), &token).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
            assert_eq!(
                signature_error(verify(jwks(&[&other, &jwk]), &altered(&token))),
                SignatureVerificationError::CryptoError("bad signature".into()),
                "{alg:?}"
            );
            // Signed by another key of the same kind under the same kid.
            let (stranger, _) = keypair(alg, "k1");
            assert_eq!(
                signature_error(verify(jwks(&[&jwk]), &sign(alg, &stranger, "k1"))),
                SignatureVerificationError::CryptoError("bad signature".into()),
                "{alg:?}"
            );
        }
    }

    /// The key of `jwk` asked to verify a signature of `alg` directly (past
    /// `openidconnect`'s key selection, which already filters on `kty`).
    fn direct(jwk: &Value, alg: &str) -> SignatureVerificationError {
        let key: AwsLcJwk = serde_json::from_value(jwk.clone()).unwrap();
        let alg: CoreJwsSigningAlgorithm = serde_json::from_value(json!(alg)).unwrap();
        key.verify_signature(&alg, b"header.payload", &[0; 256])
            .unwrap_err()
    }

    fn invalid_key(why: &str) -> SignatureVerificationError {
        SignatureVerificationError::InvalidKey(why.into())
    }

    #[test]
    fn a_key_of_the_wrong_type_or_curve_is_refused() {
        let (_, rsa) = keypair(Algorithm::RS256, "rsa");
        let (_, p256) = keypair(Algorithm::ES256, "p256");
        let (_, ed) = keypair(Algorithm::EdDSA, "ed");
        let (_, p384) = keypair(Algorithm::ES384, "p384");
        let kty = invalid_key("key type does not match signature algorithm");
        for (jwk, algs) in [
            (&rsa, ["ES256", "EdDSA"]),
            (&p256, ["RS256", "PS256"]),
            (&p256, ["EdDSA", "RS256"]),
            (&ed, ["ES256", "PS256"]),
        ] {
            for alg in algs {
                assert_eq!(direct(jwk, alg), kty, "{alg} with {jwk}");
            }
        }
        // The right `kty`, the wrong curve: ES256 with a P-384 key (RFC 7518
        // §3.4), EdDSA with an X25519 key (RFC 8037 §3.1 signs with Ed25519
        // or Ed448; X25519 is for ECDH, §3.2).
        let (p256_key, _) = keypair(Algorithm::ES256, "p384");
        let token = sign(Algorithm::ES256, &p256_key, "p384");
        let e = signature_error(verify(jwks(&[&p384]), &token));
        assert!(
            matches!(&e, SignatureVerificationError::InvalidKey(m) if m.starts_with("not an RSA, P-256 or Ed25519")),
            "{e:?}"
        );
        let mut x25519 = ed.clone();
        x25519["crv"] = json!("X25519");
        let e = direct(&x25519, "EdDSA");
        assert!(
            matches!(&e, SignatureVerificationError::InvalidKey(m) if m.starts_with("not an RSA, P-256 or Ed25519")),
            "{e:?}"
        );
        // A JWK bound to RS256 (RFC 7517 §4.4) does not verify PS256, nor
        // one for encryption (§4.2) anything.
        let mut rs256_only = rsa.clone();
        rs256_only["alg"] = json!("RS256");
        assert_eq!(
            direct(&rs256_only, "PS256"),
            invalid_key("incompatible key algorithm")
        );
        let mut enc = rsa.clone();
        enc["use"] = json!("enc");
        assert_eq!(
            direct(&enc, "RS256"),
            invalid_key("key usage not permitted for digital signatures")
        );
        // Through the verifier: a PS256 token under the kid of an RS256-only
        // key finds no key at all.
        let (rsa_key, _) = keypair(Algorithm::RS256, "rsa");
        let (_, mut bound) = keypair(Algorithm::RS256, "rsa");
        bound["alg"] = json!("RS256");
        let token = sign(Algorithm::PS256, &rsa_key, "rsa");
        assert_eq!(
            signature_error(verify(jwks(&[&bound]), &token)),
            SignatureVerificationError::NoMatchingKey
        );
    }

    #[test]
    fn an_rsa_key_checks_the_padding_the_header_names() {
        // A signature with one padding over a header naming the other
        // (RFC 7518 §3.3 vs §3.5): the two parsed keys are not mixed up.
        for (signed, claimed) in [
            (Algorithm::RS256, Algorithm::PS256),
            (Algorithm::PS256, Algorithm::RS256),
        ] {
            let (key, jwk) = keypair(signed, "k");
            let header = json!({"alg": format!("{claimed:?}"), "kid": "k"});
            let input = format!(
                "{}.{}",
                B64.encode(serde_json::to_vec(&header).unwrap()),
                B64.encode(serde_json::to_vec(&claims()).unwrap())
            );
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, signed).unwrap();
            assert_eq!(
                signature_error(verify(jwks(&[&jwk]), &format!("{input}.{sig}"))),
                SignatureVerificationError::CryptoError("bad signature".into()),
                "{signed:?} as {claimed:?}"
            );
            // The same input signed with the padding it names verifies.
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, claimed).unwrap();
            verify(jwks(&[&jwk]), &format!("{input}.{sig}")).unwrap();
        }
    }

    #[test]
    fn an_alg_outside_the_allow_list_is_refused() {
        let (_, jwk) = keypair(Algorithm::RS256, "rsa");
        let n = B64.decode(jwk["n"].as_str().unwrap()).unwrap();
        let payload = B64.encode(serde_json::to_vec(&claims()).unwrap());
        // HS256 keyed with the RSA modulus (the key-confusion attack),
        // and with the client secret (OIDC Core §10.1): both refused by
        // the allow-list before any key is looked at.
        for secret in [n.as_slice(), b"the-client-secret"] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa".into());
            let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret))
                .unwrap();
            let e = signature_error(verify(jwks(&[&jwk]), &token));
            assert!(
                matches!(&e, SignatureVerificationError::DisallowedAlg(m) if m.starts_with("algorithm `HS256` is not one of")),
                "{e:?}"
            );
        }
        // `alg: none` (OIDC Core §2: ID tokens MUST be signed).
        for sig in ["", "c2ln"] {
            let header = B64.encode(br#"{"alg":"none"}"#);
            let token: CoreIdToken = format!("{header}.{payload}.{sig}").parse().unwrap();
            let verifier = IdTokenVerifier::new_public_client(
                ClientId::new(CLIENT.into()),
                IssuerUrl::new(ISS.into()).unwrap(),
                jwks(&[&jwk]),
            )
            .set_allowed_algs(ACCEPTED_ALGS);
            assert_eq!(
                token
                    .claims(&verifier, &Nonce::new(NONCE.into()))
                    .unwrap_err(),
                ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoSignature
                )
            );
        }
        // And past the allow-list, the key itself verifies none of them:
        // not HMAC, not RS384, not with a shared secret.
        assert_eq!(
            direct(&jwk, "RS384"),
            SignatureVerificationError::UnsupportedAlg("RS384".into())
        );
        let secret = AwsLcJwk::new_symmetric(n.clone());
        let hs256: CoreJwsSigningAlgorithm = serde_json::from_value(json!("HS256")).unwrap();
        assert_eq!(
            secret.verify_signature(&hs256, b"m", &[0; 32]).unwrap_err(),
            invalid_key("a shared secret, not a public key")
        );
    }

    #[test]
    fn parses_like_core_json_web_key_and_hashes_like_it() {
        for alg in ALGS {
            let (_, jwk) = keypair(alg, "k");
            let ours: AwsLcJwk = serde_json::from_value(jwk.clone()).unwrap();
            let core: CoreJsonWebKey = serde_json::from_value(jwk.clone()).unwrap();
            assert_eq!(ours.core(), &core);
            assert_eq!(
                serde_json::to_value(&ours).unwrap(),
                serde_json::to_value(&core).unwrap()
            );
            assert!(ours.0.public.is_ok(), "{alg:?}");
            let js: CoreJwsSigningAlgorithm =
                serde_json::from_value(json!(format!("{alg:?}"))).unwrap();
            assert_eq!(ours.hash_bytes(b"at", &js), core.hash_bytes(b"at", &js));
        }
        // A malformed key stays in the set (and fails when used), as with
        // `CoreJsonWebKey`, rather than vanishing from key selection.
        let bad = json!({"kty": "RSA", "kid": "bad", "n": "not base64url!", "e": "AQAB"});
        assert_eq!(jwks(&[&bad]).keys().len(), 1);
        let e = direct(&bad, "RS256");
        assert!(
            matches!(&e, SignatureVerificationError::InvalidKey(m) if m.starts_with("`n`: ")),
            "{e:?}"
        );
        // RFC 7518 §6.3.1.1: a leading zero octet on `n` is tolerated.
        let (key, mut jwk) = keypair(Algorithm::RS256, "z");
        let mut n = vec![0];
        n.extend(B64.decode(jwk["n"].as_str().unwrap()).unwrap());
        jwk["n"] = json!(B64.encode(n));
        verify(jwks(&[&jwk]), &sign(Algorithm::RS256, &key, "z")).unwrap();
    }
}
