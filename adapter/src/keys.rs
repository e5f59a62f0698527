//! Signing keys: generation at first start, JWKS, signing and verifying our
//! own JWTs.
//!
//! Keys live in the [`Store`] so that every replica signs with, and
//! publishes, the same keys. The key of the highest generation signs; all stored keys stay in
//! the JWKS. Private keys are generated with aws-lc-rs (RS256: RSA-2048,
//! ES256: P-256), stored as PKCS#8 PEM and never logged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::store::{KeyRecord, Store, StoreError};

/// Clock-skew leeway for our own tokens, seconds (checklist C11: ≤ 60).
pub const LEEWAY_SECONDS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported signing algorithm {0:?} (use RS256 or ES256)")]
    UnsupportedAlg(String),
    #[error("key generation failed")]
    Generate,
    #[error("stored key {kid} is unusable: {source}")]
    BadKey {
        kid: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("no signing key")]
    NoKey,
    #[error("jwt: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("token rejected: {0}")]
    Rejected(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct LoadedKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_jwk: Jwk,
}

/// The loaded key set. The last key is the one that signs.
pub struct KeyManager {
    keys: Vec<LoadedKey>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("KeyManager").field("kids", &kids).finish()
    }
}

fn parse_alg(alg: &str) -> Result<Algorithm, KeyError> {
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(KeyError::UnsupportedAlg(other.to_string())),
    }
}

/// PEM label of PKCS#8 (RFC 7468 §10).
const PKCS8_LABEL: &str = "PRIVATE KEY";

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PKCS8_LABEL}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PKCS8_LABEL}-----\n"));
    out
}

/// Generates a PKCS#8 PEM private key for `alg`. CPU-bound: call from a
/// blocking task.
pub fn generate_pem(alg: &str) -> Result<String, KeyError> {
    use aws_lc_rs::encoding::AsDer;
    match parse_alg(alg)? {
        Algorithm::RS256 => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| KeyError::Generate)?;
            let der = kp.as_der().map_err(|_| KeyError::Generate)?;
            Ok(pem(der.as_ref()))
        }
        Algorithm::ES256 => {
            let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )
            .map_err(|_| KeyError::Generate)?;
            let doc = kp.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
            Ok(pem(doc.as_ref()))
        }
        other => Err(KeyError::UnsupportedAlg(format!("{other:?}"))),
    }
}

fn load(record: &KeyRecord) -> Result<LoadedKey, KeyError> {
    let bad = |source| KeyError::BadKey {
        kid: record.kid.clone(),
        source,
    };
    let alg = parse_alg(&record.alg)?;
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(record.private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(record.private_pem.as_bytes()),
    }
    .map_err(bad)?;
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(bad)?;
    jwk.common.key_id = Some(record.kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    let decoding = DecodingKey::from_jwk(&jwk).map_err(bad)?;
    Ok(LoadedKey {
        kid: record.kid.clone(),
        alg,
        encoding,
        decoding,
        public_jwk: jwk,
    })
}

impl KeyManager {
    /// Loads the stored keys, generating and storing one when there is none.
    /// Replicas racing at first start all try to insert generation 0; the
    /// store keeps exactly one, and every replica then loads that one.
    pub async fn load_or_create(store: &dyn Store, alg: &str, now: i64) -> Result<Self, KeyError> {
        parse_alg(alg)?;
        let mut records = store.list_keys().await?;
        if records.is_empty() {
            let alg_owned = alg.to_string();
            let private_pem = tokio::task::spawn_blocking(move || generate_pem(&alg_owned))
                .await
                .map_err(|_| KeyError::Generate)??;
            let tmp = KeyRecord {
                kid: String::new(),
                generation: 0,
                alg: alg.to_string(),
                private_pem,
                created_at: now,
            };
            // kid = RFC 7638 thumbprint: stable, and says nothing secret.
            let loaded = load(&KeyRecord {
                kid: "tmp".into(),
                ..tmp.clone()
            })?;
            let kid = loaded.public_jwk.thumbprint(ThumbprintHash::SHA256)?;
            if store.insert_key(&KeyRecord { kid, ..tmp }).await? {
                tracing::info!(alg, "generated a new signing key");
            }
            records = store.list_keys().await?;
        }
        Self::from_records(&records)
    }

    pub fn from_records(records: &[KeyRecord]) -> Result<Self, KeyError> {
        let keys = records.iter().map(load).collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(KeyManager { keys })
    }

    fn active(&self) -> Result<&LoadedKey, KeyError> {
        self.keys.last().ok_or(KeyError::NoKey)
    }

    /// The public JWKS: only public members, each with `kid`, `use`, `alg` (C4).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.public_jwk.clone()).collect(),
        }
    }

    /// Algorithms of the published keys, for discovery.
    pub fn algorithms(&self) -> Vec<String> {
        let mut algs: Vec<String> = self.keys.iter().map(|k| format!("{:?}", k.alg)).collect();
        algs.sort();
        algs.dedup();
        algs
    }

    /// Signs `claims` with the active key; `typ` is `JWT` or `at+jwt` (C3).
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, KeyError> {
        let key = self.active()?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_string());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Verifies one of our own tokens: known `kid`, the key's own algorithm
    /// (never the header's choice, ASVS 9.1.2), expected `typ` (rejects an ID
    /// token used as access token, C7), `iss`, and `exp`/`nbf` against the
    /// injected clock's `now`.
    pub fn verify(
        &self,
        token: &str,
        typ: &str,
        issuer: &str,
        now: i64,
    ) -> Result<Map<String, Value>, KeyError> {
        let header = jsonwebtoken::decode_header(token)?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(KeyError::Rejected("wrong token type"));
        }
        let kid = header.kid.ok_or(KeyError::Rejected("no kid"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(KeyError::Rejected("unknown kid"))?;
        let mut validation = Validation::new(key.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "iat"]);
        validation.validate_aud = false;
        // Time is checked below with our clock, not the system's.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)?;
        let leeway = LEEWAY_SECONDS as i64;
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(KeyError::Rejected("exp is not a number"))?;
        if exp + leeway <= now {
            return Err(KeyError::Rejected("expired"));
        }
        if let Some(nbf) = data.claims.get("nbf") {
            if nbf.as_i64().is_none_or(|nbf| nbf - leeway > now) {
                return Err(KeyError::Rejected("not yet valid"));
            }
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqlStore;
    use serde_json::json;

    async fn store() -> (tempfile::TempDir, SqlStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let s = SqlStore::connect(&url, 1).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn first_start_generates_then_reuses() {
        let (_d, s) = store().await;
        let a = KeyManager::load_or_create(&s, "RS256", 1).await.unwrap();
        let b = KeyManager::load_or_create(&s, "RS256", 2).await.unwrap();
        assert_eq!(s.list_keys().await.unwrap().len(), 1);
        assert_eq!(
            serde_json::to_value(a.jwks()).unwrap(),
            serde_json::to_value(b.jwks()).unwrap()
        );
    }

    /// Replicas starting together on one database end up with one key.
    #[tokio::test]
    async fn racing_first_starts_agree_on_one_key() {
        let (_d, s) = store().await;
        let (a, b, c) = tokio::join!(
            KeyManager::load_or_create(&s, "RS256", 1),
            KeyManager::load_or_create(&s, "RS256", 1),
            KeyManager::load_or_create(&s, "RS256", 1),
        );
        assert_eq!(s.list_keys().await.unwrap().len(), 1);
        let jwks = |k: KeyManager| serde_json::to_value(k.jwks()).unwrap();
        let first = jwks(a.unwrap());
        assert_eq!(first, jwks(b.unwrap()));
        assert_eq!(first, jwks(c.unwrap()));
    }

    #[tokio::test]
    async fn jwks_has_only_public_members() {
        let (_d, s) = store().await;
        for alg in ["RS256", "ES256"] {
            let records = vec![KeyRecord {
                kid: format!("k-{alg}"),
                generation: if alg == "RS256" { 0 } else { 1 },
                alg: alg.into(),
                private_pem: generate_pem(alg).unwrap(),
                created_at: 1,
            }];
            s.insert_key(&records[0]).await.unwrap();
            let km = KeyManager::from_records(&records).unwrap();
            let v = serde_json::to_value(km.jwks()).unwrap();
            let key = &v["keys"][0];
            assert_eq!(key["kid"], format!("k-{alg}"));
            assert_eq!(key["use"], "sig");
            assert_eq!(key["alg"], alg);
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(key.get(private).is_none(), "{alg} leaks {private}");
            }
        }
    }

    #[test]
    fn sign_verify_and_negative_checks() {
        let rec = KeyRecord {
            kid: "k".into(),
            generation: 0,
            alg: "RS256".into(),
            private_pem: generate_pem("RS256").unwrap(),
            created_at: 1,
        };
        let km = KeyManager::from_records(std::slice::from_ref(&rec)).unwrap();
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let claims = json!({"iss": "http://i", "sub": "u", "iat": now, "exp": now + 60});
        let at = km.sign("at+jwt", &claims).unwrap();
        assert_eq!(
            km.verify(&at, "at+jwt", "http://i", now).unwrap()["sub"],
            "u"
        );
        // Type confusion: an ID token is not an access token (C7).
        let id = km.sign("JWT", &claims).unwrap();
        assert!(km.verify(&id, "at+jwt", "http://i", now).is_err());
        // Wrong issuer.
        assert!(km.verify(&at, "at+jwt", "http://other", now).is_err());
        // Expired beyond leeway.
        let old = json!({"iss": "http://i", "sub": "u", "iat": now - 600, "exp": now - 300});
        let old = km.sign("at+jwt", &old).unwrap();
        assert!(km.verify(&old, "at+jwt", "http://i", now).is_err());
        // Signed by another key with the same kid: bad signature.
        let other = KeyManager::from_records(&[KeyRecord {
            private_pem: generate_pem("RS256").unwrap(),
            ..rec
        }])
        .unwrap();
        let forged = other.sign("at+jwt", &claims).unwrap();
        assert!(km.verify(&forged, "at+jwt", "http://i", now).is_err());
        // Tampered payload.
        let mut parts: Vec<&str> = at.split('.').collect();
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"iss":"http://i","sub":"admin","iat":now,"exp":now+60}).to_string());
        parts[1] = &evil;
        assert!(km
            .verify(&parts.join("."), "at+jwt", "http://i", now)
            .is_err());
    }
}
