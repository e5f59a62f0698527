//! Signing keys: generation at first start, JWKS, signing and verifying our
//! own JWTs.
//!
//! Keys live in the [`Store`] so that every replica signs with, and
//! publishes, the same keys. The key of the highest generation signs; all
//! stored keys stay in the JWKS, so tokens signed by an older key keep
//! verifying. Private keys are generated with aws-lc-rs (RS256: RSA-2048,
//! ES256: P-256, EdDSA: Ed25519), serialised as PKCS#8 PEM and never logged.
//!
//! At rest, the PEM is encrypted with AES-256-GCM under a key from
//! configuration ([`KeysConfig`]) and stored as the envelope
//! `enc:v1:<base64 nonce>:<base64 ciphertext and tag>`; the kid is the
//! associated data, so a row moved onto another kid no longer decrypts.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::{KeyRecord, Store, StoreError};

/// Clock-skew leeway for our own tokens, seconds: RFC 7519 §4.1.4 allows
/// "some small leeway"; we keep it under a minute.
pub const LEEWAY_SECONDS: u64 = 30;

/// Prefix of an encrypted private key in `signing_keys.private_pem`.
const ENVELOPE_PREFIX: &str = "enc:v1:";

/// Name of the key file created beside a SQLite database when no key is
/// configured.
pub const DEFAULT_KEY_FILE_NAME: &str = "signing-keys.key";

/// Where the key that encrypts private signing keys at rest comes from.
/// Both fields hold the base64 of 32 random bytes (an AES-256-GCM key), e.g.
/// `openssl rand -base64 32`. With neither set, a SQLite deployment gets a
/// key file created beside its database file; a PostgreSQL deployment
/// refuses to start, since its replicas must share one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Name of an environment variable holding the key.
    pub encryption_key_env: Option<String>,
    /// Path of a file holding the key.
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported signing algorithm {0:?} (use RS256, ES256 or EdDSA)")]
    UnsupportedAlg(String),
    #[error("key generation failed")]
    Generate,
    #[error("stored key {kid} is unusable: {source}")]
    BadKey {
        kid: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("stored key {kid} is neither encrypted ({ENVELOPE_PREFIX}...) nor a PEM private key")]
    UnknownFormat { kid: String },
    /// The configured key is not the one the row was encrypted with, or the
    /// row was altered (GCM tag mismatch).
    #[error(
        "stored key {kid} cannot be decrypted: keys.encryption_key_env / \
         keys.encryption_key_file does not hold the key it was encrypted with"
    )]
    Decrypt { kid: String },
    #[error("encrypting a signing key failed")]
    Encrypt,
    /// The encryption key is missing or malformed; the message names the
    /// configuration key.
    #[error("{0}")]
    Config(String),
    #[error("no signing key")]
    NoKey,
    #[error("jwt: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("token rejected: {0}")]
    Rejected(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The AES-256-GCM key that encrypts private signing keys at rest. Its
/// `Debug` shows nothing of it.
pub struct EncryptionKey(RandomizedNonceKey);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl EncryptionKey {
    /// Parses the base64 of 32 bytes; `source` names where it came from.
    fn from_base64(text: &str, source: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Config(format!("{source} must hold the base64 of 32 random bytes"));
        let bytes = STANDARD.decode(text.trim()).map_err(|_| bad())?;
        if bytes.len() != AES_256_GCM.key_len() {
            return Err(bad());
        }
        RandomizedNonceKey::new(&AES_256_GCM, &bytes)
            .map(EncryptionKey)
            .map_err(|_| bad())
    }

    /// The key configured in `config`, or for a SQLite `database_url` with
    /// nothing configured, the key file beside the database (created on
    /// first start).
    pub fn resolve(config: &KeysConfig, database_url: &str) -> Result<Self, KeyError> {
        match (&config.encryption_key_env, &config.encryption_key_file) {
            (Some(_), Some(_)) => Err(KeyError::Config(
                "keys.encryption_key_env and keys.encryption_key_file are both set: set one".into(),
            )),
            (Some(var), None) => {
                let value = std::env::var(var).map_err(|_| {
                    KeyError::Config(format!(
                        "keys.encryption_key_env: environment variable {var} is not set"
                    ))
                })?;
                Self::from_base64(
                    &value,
                    &format!("keys.encryption_key_env: environment variable {var}"),
                )
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    KeyError::Config(format!(
                        "keys.encryption_key_file: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                Self::from_base64(
                    &text,
                    &format!("keys.encryption_key_file: {}", path.display()),
                )
            }
            (None, None) => match sqlite_key_file(database_url) {
                Some(path) => key_file_beside_database(&path),
                None => Err(KeyError::Config(
                    "keys.encryption_key_env must be set with a PostgreSQL database.url: \
                     replicas share the database and must share the key that encrypts \
                     its signing keys (or set keys.encryption_key_file)"
                        .into(),
                )),
            },
        }
    }

    /// `enc:v1:<nonce>:<ciphertext>` of `pem`, bound to `kid`.
    fn seal(&self, kid: &str, pem: &str) -> Result<String, KeyError> {
        let mut in_out = pem.as_bytes().to_vec();
        let nonce = self
            .0
            .seal_in_place_append_tag(Aad::from(kid.as_bytes()), &mut in_out)
            .map_err(|_| KeyError::Encrypt)?;
        Ok(format!(
            "{ENVELOPE_PREFIX}{}:{}",
            STANDARD.encode(nonce.as_ref()),
            STANDARD.encode(&in_out)
        ))
    }

    /// The PEM inside `envelope` (without its prefix), if it was sealed for `kid`.
    fn open(&self, kid: &str, envelope: &str) -> Result<String, KeyError> {
        let fail = || KeyError::Decrypt {
            kid: kid.to_string(),
        };
        let (nonce, sealed) = envelope.split_once(':').ok_or_else(fail)?;
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(fail)?;
        let mut in_out = STANDARD.decode(sealed).map_err(|_| fail())?;
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain.to_vec()).map_err(|_| fail())
    }
}

/// `<folder of the database file>/signing-keys.key` for `sqlite://path`;
/// `None` for any other database.
fn sqlite_key_file(database_url: &str) -> Option<PathBuf> {
    let path = database_url.strip_prefix("sqlite://")?;
    let file = path.split('?').next().unwrap_or(path);
    let dir = Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(dir.join(DEFAULT_KEY_FILE_NAME))
}

/// Reads the key file, creating it (mode 0600) when missing. Creation writes
/// a temporary file and hard-links it into place, which fails when the file
/// exists: processes starting together on one database all end up with the
/// key of whichever linked first, and none reads a half-written file.
fn key_file_beside_database(path: &Path) -> Result<EncryptionKey, KeyError> {
    let source = format!("key file {}", path.display());
    let cannot = |what: &str, e: std::io::Error| {
        KeyError::Config(format!(
            "cannot {what} {} ({e}); or set keys.encryption_key_env",
            path.display()
        ))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            return EncryptionKey::from_base64(&text, &source);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot("read", e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cannot("create the folder of", e))?;
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Generate)?;
    let text = format!("{}\n", STANDARD.encode(bytes));
    let tmp = path.with_file_name(format!(
        ".{DEFAULT_KEY_FILE_NAME}.{}",
        crate::secret::random_token()
    ));
    let written = write_private_file(&tmp, text.as_bytes());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(
                path = %path.display(),
                "created the key file that encrypts signing keys at rest; back it up with the database"
            );
            EncryptionKey::from_base64(&text, &source)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(|e| cannot("read", e))?;
            EncryptionKey::from_base64(&text, &source)
        }
        Err(e) => Err(cannot("create", e)),
    }
}

/// Creates `path` (which must not exist), readable by its owner only.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the signing-key encryption key file is accessible to other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
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

/// The JWS algorithms we sign with (RFC 7518 §3.1, RFC 8037 §3.1).
fn parse_alg(alg: &str) -> Result<Algorithm, KeyError> {
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::UnsupportedAlg(other.to_string())),
    }
}

/// The `alg` value of `alg` (RFC 7518 §3.1, RFC 8037 §3.1).
fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
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
        Algorithm::EdDSA => {
            // PKCS#8 v1 (RFC 8410 §7): the form jsonwebtoken reads for
            // Ed25519 (v2 would add the public key).
            let kp =
                aws_lc_rs::signature::Ed25519KeyPair::generate().map_err(|_| KeyError::Generate)?;
            let doc = kp.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
            Ok(pem(doc.as_ref()))
        }
        other => Err(KeyError::UnsupportedAlg(format!("{other:?}"))),
    }
}

/// Loads a plaintext PEM key of `alg` under `kid`.
fn load_pem(kid: &str, alg: &str, private_pem: &str) -> Result<LoadedKey, KeyError> {
    let bad = |source| KeyError::BadKey {
        kid: kid.to_string(),
        source,
    };
    let alg = parse_alg(alg)?;
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
    }
    .map_err(bad)?;
    // Public members only (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2).
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(bad)?;
    jwk.common.key_id = Some(kid.to_string());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    let decoding = DecodingKey::from_jwk(&jwk).map_err(bad)?;
    Ok(LoadedKey {
        kid: kid.to_string(),
        alg,
        encoding,
        decoding,
        public_jwk: jwk,
    })
}

/// Loads a stored key: decrypts the envelope, or takes a plaintext PEM row
/// written by an older release as it is, with a warning.
fn load_record(record: &KeyRecord, key: &EncryptionKey) -> Result<LoadedKey, KeyError> {
    let stored = record.private_pem.as_str();
    if let Some(envelope) = stored.strip_prefix(ENVELOPE_PREFIX) {
        let private_pem = key.open(&record.kid, envelope)?;
        load_pem(&record.kid, &record.alg, &private_pem)
    } else if stored.starts_with("-----BEGIN ") {
        tracing::warn!(
            kid = %record.kid,
            "signing key is stored unencrypted (written by an older release); \
             it stays in use, and keys published from now on are encrypted"
        );
        load_pem(&record.kid, &record.alg, stored)
    } else {
        Err(KeyError::UnknownFormat {
            kid: record.kid.clone(),
        })
    }
}

impl KeyManager {
    /// Loads the stored keys, and publishes a new one when there is none or
    /// when the newest has another algorithm than `alg` (it then signs; the
    /// older keys stay published). The encryption key comes from `config`
    /// (see [`EncryptionKey::resolve`]); a wrong one fails here.
    ///
    /// Replicas racing to publish all insert the same next generation; the
    /// store keeps exactly one, and every replica then loads that one.
    pub async fn load_or_create(
        store: &dyn Store,
        alg: &str,
        config: &KeysConfig,
        database_url: &str,
        now: i64,
    ) -> Result<Self, KeyError> {
        let wanted = parse_alg(alg)?;
        let key = EncryptionKey::resolve(config, database_url)?;
        let records = store.list_keys().await?;
        // Decrypt what is there before writing anything.
        let current = Self::from_records(&records, &key);
        let previous = match current {
            Ok(km) if km.active()?.alg == wanted => return Ok(km),
            Ok(km) => Some(km.active()?.alg),
            Err(KeyError::NoKey) => None,
            Err(e) => return Err(e),
        };
        let generation = records.last().map_or(0, |r| r.generation + 1);
        let name = alg_name(wanted);
        let for_task = name.clone();
        let private_pem = tokio::task::spawn_blocking(move || generate_pem(&for_task))
            .await
            .map_err(|_| KeyError::Generate)??;
        // kid = RFC 7638 thumbprint: stable, and says nothing secret.
        let kid = load_pem("", &name, &private_pem)?
            .public_jwk
            .thumbprint(ThumbprintHash::SHA256)?;
        let record = KeyRecord {
            private_pem: key.seal(&kid, &private_pem)?,
            kid,
            generation,
            alg: name.clone(),
            created_at: now,
        };
        if store.insert_key(&record).await? {
            match previous {
                None => {
                    tracing::info!(alg = %name, kid = %record.kid, "generated a new signing key")
                }
                Some(old) => tracing::info!(
                    old_alg = %alg_name(old),
                    new_alg = %name,
                    kid = %record.kid,
                    "tokens.signing_alg changed from {} to {name}: published a new signing key; \
                     the old one stays in the JWKS",
                    alg_name(old)
                ),
            }
        }
        Self::from_records(&store.list_keys().await?, &key)
    }

    /// The key set of stored `records` (by generation), decrypted with `key`.
    pub fn from_records(records: &[KeyRecord], key: &EncryptionKey) -> Result<Self, KeyError> {
        let keys = records
            .iter()
            .map(|r| load_record(r, key))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(KeyManager { keys })
    }

    fn active(&self) -> Result<&LoadedKey, KeyError> {
        self.keys.last().ok_or(KeyError::NoKey)
    }

    /// The public JWKS (RFC 7517 §5): only public members, each with `kid`,
    /// `use` and `alg` (RFC 7517 §4.2, §4.4, §4.5).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.public_jwk.clone()).collect(),
        }
    }

    /// Algorithms of the published keys, for discovery.
    pub fn algorithms(&self) -> Vec<String> {
        let mut algs: Vec<String> = self.keys.iter().map(|k| alg_name(k.alg)).collect();
        algs.sort();
        algs.dedup();
        algs
    }

    /// Signs `claims` with the active key; `typ` is `JWT` or `at+jwt`
    /// (RFC 9068 §2.1).
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, KeyError> {
        let key = self.active()?;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_string());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Verifies one of our own tokens: known `kid`, the key's own algorithm
    /// (never the header's choice, RFC 8725 §3.1), expected `typ` (rejects an
    /// ID token used as access token, RFC 9068 §4, RFC 8725 §3.11), `iss`,
    /// and `exp`/`nbf` against the injected clock's `now`.
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

/// Sealing of other secrets at rest with the same AES-256-GCM envelope as
/// the signing keys (`enc:v1:<nonce>:<ciphertext and tag>`), e.g. an
/// upstream refresh token kept in a session. `context` is the associated
/// data: a value sealed under one context does not open under another.
impl EncryptionKey {
    /// The key configured in `config` (see [`EncryptionKey::resolve`]),
    /// shared, for sealing values other than signing keys.
    pub fn resolve_shared(
        config: &KeysConfig,
        database_url: &str,
    ) -> Result<std::sync::Arc<Self>, KeyError> {
        Self::resolve(config, database_url).map(std::sync::Arc::new)
    }

    /// A fresh key (tests, and values that need not outlive the process).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Generate)?;
        RandomizedNonceKey::new(&AES_256_GCM, &bytes)
            .map(EncryptionKey)
            .map_err(|_| KeyError::Generate)
    }

    /// `enc:v1:<nonce>:<ciphertext>` of `plain`, bound to `context`.
    pub fn seal_value(&self, context: &str, plain: &str) -> Result<String, KeyError> {
        self.seal(context, plain)
    }

    /// The plaintext of an envelope made by [`EncryptionKey::seal_value`]
    /// under the same `context`.
    pub fn open_value(&self, context: &str, sealed: &str) -> Result<String, KeyError> {
        let envelope = sealed
            .strip_prefix(ENVELOPE_PREFIX)
            .ok_or_else(|| KeyError::Decrypt {
                kid: context.to_string(),
            })?;
        self.open(context, envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqlStore;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    const NOW: i64 = 1_700_000_000;

    struct Db {
        dir: tempfile::TempDir,
        url: String,
        store: SqlStore,
    }

    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let store = SqlStore::connect(&url, 1).await.unwrap();
        Db { dir, url, store }
    }

    /// Reads the key from the environment variable `var`, set to 32 × `fill`.
    /// Each test uses its own variable.
    fn env_key(var: &str, fill: u8) -> KeysConfig {
        std::env::set_var(var, STANDARD.encode([fill; 32]));
        KeysConfig {
            encryption_key_env: Some(var.into()),
            encryption_key_file: None,
        }
    }

    fn claims(now: i64) -> Value {
        json!({"iss": "http://i", "sub": "u", "iat": now, "exp": now + 60})
    }

    fn jwks(km: &KeyManager) -> Value {
        serde_json::to_value(km.jwks()).unwrap()
    }

    /// Log lines written on this thread while the guard lives.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || writer.clone())
                .finish();
            (logs, tracing::subscriber::set_default(subscriber))
        }
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test]
    async fn first_start_generates_then_reuses() {
        let db = sqlite().await;
        let cfg = KeysConfig::default();
        let a = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, 1)
            .await
            .unwrap();
        let b = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, 2)
            .await
            .unwrap();
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
        assert_eq!(jwks(&a), jwks(&b));
    }

    /// Replicas starting together on one database end up with one key (and
    /// one key file).
    #[tokio::test]
    async fn racing_first_starts_agree_on_one_key() {
        let db = sqlite().await;
        let cfg = KeysConfig::default();
        let (a, b, c) = tokio::join!(
            KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, 1),
            KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, 1),
            KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, 1),
        );
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
        let first = jwks(&a.unwrap());
        assert_eq!(first, jwks(&b.unwrap()));
        assert_eq!(first, jwks(&c.unwrap()));
    }

    #[tokio::test]
    async fn stored_key_is_encrypted_and_bound_to_its_kid() {
        let db = sqlite().await;
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_BOUND", 1);
        let km = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        let rows = db.store.list_keys().await.unwrap();
        let stored = &rows[0].private_pem;
        assert!(stored.starts_with("enc:v1:"), "{stored}");
        assert!(!stored.contains("-----"), "stored as PEM");
        assert!(!stored.contains(PKCS8_LABEL), "stored as PEM");
        // No part of the key material is in the column.
        let key = EncryptionKey::resolve(&cfg, &db.url).unwrap();
        let plain = key
            .open(&rows[0].kid, stored.strip_prefix(ENVELOPE_PREFIX).unwrap())
            .unwrap();
        let body: Vec<&str> = plain.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(body.len() > 10, "an RSA-2048 PEM has many lines");
        for line in &body {
            assert!(!stored.contains(line), "key material in the column");
        }
        assert!(!stored.contains(&body.concat()));

        // Round trip: a restart with the same key loads the same key, and
        // what the first instance signed verifies.
        let again = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        assert_eq!(jwks(&km), jwks(&again));
        let token = km.sign("at+jwt", &claims(NOW)).unwrap();
        assert_eq!(
            again.verify(&token, "at+jwt", "http://i", NOW).unwrap()["sub"],
            "u"
        );

        // The same ciphertext under another kid does not decrypt.
        let moved = KeyRecord {
            kid: "another-kid".into(),
            generation: 1,
            ..rows[0].clone()
        };
        assert!(db.store.insert_key(&moved).await.unwrap());
        let err = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, KeyError::Decrypt { kid } if kid == "another-kid"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_encryption_key_is_a_clear_start_up_error() {
        let db = sqlite().await;
        let right = env_key("AUTH_ADAPTER_KEYS_TEST_RIGHT", 1);
        KeyManager::load_or_create(&db.store, "ES256", &right, &db.url, NOW)
            .await
            .unwrap();
        let kid = db.store.list_keys().await.unwrap()[0].kid.clone();
        let wrong = env_key("AUTH_ADAPTER_KEYS_TEST_WRONG", 2);
        let err = KeyManager::load_or_create(&db.store, "ES256", &wrong, &db.url, NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, KeyError::Decrypt { kid: k } if *k == kid),
            "{err}"
        );
        assert!(err.to_string().contains("keys.encryption_key_env"), "{err}");
        // Nothing was written with the wrong key.
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
    }

    #[test]
    fn malformed_or_missing_keys_name_the_setting() {
        let url = "sqlite://unused/k.db";
        std::env::set_var("AUTH_ADAPTER_KEYS_TEST_SHORT", STANDARD.encode([1u8; 16]));
        let short = KeysConfig {
            encryption_key_env: Some("AUTH_ADAPTER_KEYS_TEST_SHORT".into()),
            encryption_key_file: None,
        };
        let err = EncryptionKey::resolve(&short, url).unwrap_err().to_string();
        assert_eq!(
            err,
            "keys.encryption_key_env: environment variable AUTH_ADAPTER_KEYS_TEST_SHORT \
             must hold the base64 of 32 random bytes"
        );
        let unset = KeysConfig {
            encryption_key_env: Some("AUTH_ADAPTER_KEYS_TEST_UNSET".into()),
            encryption_key_file: None,
        };
        let err = EncryptionKey::resolve(&unset, url).unwrap_err().to_string();
        assert_eq!(
            err,
            "keys.encryption_key_env: environment variable AUTH_ADAPTER_KEYS_TEST_UNSET is not set"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = KeysConfig {
            encryption_key_env: None,
            encryption_key_file: Some(dir.path().join("absent.key")),
        };
        let err = EncryptionKey::resolve(&file, url).unwrap_err().to_string();
        assert!(
            err.starts_with("keys.encryption_key_file: cannot read "),
            "{err}"
        );
    }

    #[test]
    fn postgres_without_a_configured_key_is_refused() {
        for url in [
            "postgres://u@127.0.0.1:5432/test",
            "postgresql://u@127.0.0.1/test",
        ] {
            let err = EncryptionKey::resolve(&KeysConfig::default(), url).unwrap_err();
            let KeyError::Config(msg) = &err else {
                panic!("{err}")
            };
            assert!(
                msg.starts_with("keys.encryption_key_env must be set"),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[tokio::test]
    async fn key_file_is_created_private_and_reused() {
        let db = sqlite().await;
        let (logs, _guard) = Logs::capture();
        let cfg = KeysConfig::default();
        let a = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        let path = db.dir.path().join(DEFAULT_KEY_FILE_NAME);
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(STANDARD.decode(content.trim()).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(db.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("k.db"))
            .collect();
        names.sort();
        assert_eq!(names, [DEFAULT_KEY_FILE_NAME]);

        // Reused: same file, same key, and the stored key decrypts.
        let b = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        assert_eq!(jwks(&a), jwks(&b));
        assert!(!logs.text().contains(content.trim()), "key in the logs");
        assert!(
            !format!("{:?}", EncryptionKey::resolve(&cfg, &db.url).unwrap())
                .contains(content.trim())
        );

        // The file is what decrypts the stored key: a new one does not.
        std::fs::remove_file(&path).unwrap();
        let err = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, KeyError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn keys_section_is_read_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "[keys]\nencryption_key_file = \"/run/secrets/k\"\n[tokens]\nsigning_alg = \"EdDSA\"\n",
        )
        .unwrap();
        let c = crate::config::load(Some(&path), "AUTH_ADAPTER_KEYS_TEST_UNUSED__").unwrap();
        assert_eq!(
            c.keys.encryption_key_file,
            Some(PathBuf::from("/run/secrets/k"))
        );
        assert_eq!(c.keys.encryption_key_env, None);
        std::fs::write(&path, "[keys]\nencryption_key = \"x\"\n").unwrap();
        let err = crate::config::load(Some(&path), "AUTH_ADAPTER_KEYS_TEST_UNUSED__")
            .unwrap_err()
            .to_string();
        assert!(err.contains("found `encryption_key`"), "{err}");
    }

    #[test]
    fn key_file_sits_beside_the_sqlite_file() {
        assert_eq!(
            sqlite_key_file("sqlite://data/sub/adapter.db?mode=rwc"),
            Some(PathBuf::from("data/sub/signing-keys.key"))
        );
        assert_eq!(
            sqlite_key_file("sqlite://adapter.db"),
            Some(PathBuf::from("./signing-keys.key"))
        );
        assert_eq!(sqlite_key_file("postgres://u@h/db"), None);
    }

    /// A database from an older release holds plaintext PEM: it loads, with
    /// a warning that carries the kid and nothing of the key.
    #[tokio::test]
    async fn legacy_plaintext_row_loads_with_a_warning() {
        let db = sqlite().await;
        let private_pem = generate_pem("RS256").unwrap();
        let legacy = KeyRecord {
            kid: "legacy-kid".into(),
            generation: 0,
            alg: "RS256".into(),
            private_pem: private_pem.clone(),
            created_at: 1,
        };
        db.store.insert_key(&legacy).await.unwrap();
        let (logs, _guard) = Logs::capture();
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_LEGACY", 3);
        let km = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
        let token = km.sign("JWT", &claims(NOW)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("legacy-kid"));
        km.verify(&token, "JWT", "http://i", NOW).unwrap();
        let text = logs.text();
        let warning = text
            .lines()
            .find(|l| l.contains("WARN"))
            .unwrap_or_else(|| panic!("no warning in {text}"));
        assert!(warning.contains("legacy-kid"), "{warning}");
        assert!(warning.contains("unencrypted"), "{warning}");
        let body = private_pem.lines().nth(1).unwrap();
        assert!(!text.contains(body), "key material in the logs");
    }

    #[tokio::test]
    async fn eddsa_signs_verifies_and_publishes_an_okp_key() {
        let db = sqlite().await;
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_EDDSA", 4);
        let km = KeyManager::load_or_create(&db.store, "EdDSA", &cfg, &db.url, NOW)
            .await
            .unwrap();
        assert_eq!(db.store.list_keys().await.unwrap()[0].alg, "EdDSA");
        let v = jwks(&km);
        let key = v["keys"][0].as_object().unwrap();
        let mut members: Vec<&str> = key.keys().map(String::as_str).collect();
        members.sort();
        // RFC 8037 §2: kty OKP, crv, x; no private member `d`.
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x"]);
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key["x"].as_str().unwrap())
            .unwrap();
        assert_eq!(x.len(), 32);
        assert_eq!(km.algorithms(), ["EdDSA"]);

        let token = km.sign("at+jwt", &claims(NOW)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), key["kid"].as_str());
        assert_eq!(
            km.verify(&token, "at+jwt", "http://i", NOW).unwrap()["sub"],
            "u"
        );
    }

    #[test]
    fn jwks_has_only_public_members() {
        let key = EncryptionKey::from_base64(&STANDARD.encode([5u8; 32]), "test").unwrap();
        for alg in ["RS256", "ES256", "EdDSA"] {
            let records = vec![KeyRecord {
                kid: format!("k-{alg}"),
                generation: 0,
                alg: alg.into(),
                private_pem: generate_pem(alg).unwrap(),
                created_at: 1,
            }];
            let km = KeyManager::from_records(&records, &key).unwrap();
            let v = jwks(&km);
            let jwk = &v["keys"][0];
            assert_eq!(jwk["kid"], format!("k-{alg}"));
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["alg"], alg);
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(jwk.get(private).is_none(), "{alg} leaks {private}");
            }
            assert_eq!(km.algorithms(), [alg]);
        }
    }

    #[test]
    fn sign_verify_and_negative_checks() {
        let key = EncryptionKey::from_base64(&STANDARD.encode([6u8; 32]), "test").unwrap();
        for alg in ["RS256", "ES256", "EdDSA"] {
            let rec = KeyRecord {
                kid: "k".into(),
                generation: 0,
                alg: alg.into(),
                private_pem: generate_pem(alg).unwrap(),
                created_at: 1,
            };
            let km = KeyManager::from_records(std::slice::from_ref(&rec), &key).unwrap();
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let claims = claims(now);
            let at = km.sign("at+jwt", &claims).unwrap();
            assert_eq!(
                km.verify(&at, "at+jwt", "http://i", now).unwrap()["sub"],
                "u"
            );
            // Type confusion: an ID token is not an access token (RFC 9068 §4).
            let id = km.sign("JWT", &claims).unwrap();
            assert!(km.verify(&id, "at+jwt", "http://i", now).is_err());
            // Wrong issuer.
            assert!(km.verify(&at, "at+jwt", "http://other", now).is_err());
            // Expired beyond leeway.
            let old = json!({"iss": "http://i", "sub": "u", "iat": now - 600, "exp": now - 300});
            let old = km.sign("at+jwt", &old).unwrap();
            assert!(km.verify(&old, "at+jwt", "http://i", now).is_err());
            // Signed by another key with the same kid: bad signature.
            let other = KeyManager::from_records(
                &[KeyRecord {
                    private_pem: generate_pem(alg).unwrap(),
                    ..rec
                }],
                &key,
            )
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

    /// RFC 7517 §5: a rotation keeps the old key in the set, so tokens it
    /// signed keep verifying while the new key signs.
    #[tokio::test]
    async fn changed_alg_publishes_a_new_key_that_signs() {
        let db = sqlite().await;
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_ROTATE", 7);
        let old = KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        let old_token = old.sign("at+jwt", &claims(NOW)).unwrap();
        let (logs, _guard) = Logs::capture();
        let new = KeyManager::load_or_create(&db.store, "EdDSA", &cfg, &db.url, NOW)
            .await
            .unwrap();
        let rows = db.store.list_keys().await.unwrap();
        let summary: Vec<(i64, &str)> = rows
            .iter()
            .map(|r| (r.generation, r.alg.as_str()))
            .collect();
        assert_eq!(summary, [(0, "RS256"), (1, "EdDSA")]);
        assert!(rows[1].private_pem.starts_with("enc:v1:"));

        let token = new.sign("at+jwt", &claims(NOW)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(rows[1].kid.as_str()));
        new.verify(&token, "at+jwt", "http://i", NOW).unwrap();
        new.verify(&old_token, "at+jwt", "http://i", NOW).unwrap();
        assert_eq!(jwks(&new)["keys"].as_array().unwrap().len(), 2);
        assert_eq!(new.algorithms(), ["EdDSA", "RS256"]);
        let text = logs.text();
        assert!(
            text.lines()
                .any(|l| l.contains("INFO") && l.contains("changed from RS256 to EdDSA")),
            "{text}"
        );

        // Settled: the next start with the same setting adds nothing.
        KeyManager::load_or_create(&db.store, "EdDSA", &cfg, &db.url, NOW)
            .await
            .unwrap();
        assert_eq!(db.store.list_keys().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn racing_alg_changes_publish_one_key() {
        let db = sqlite().await;
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_RACE", 8);
        KeyManager::load_or_create(&db.store, "RS256", &cfg, &db.url, NOW)
            .await
            .unwrap();
        let (a, b, c) = tokio::join!(
            KeyManager::load_or_create(&db.store, "ES256", &cfg, &db.url, NOW),
            KeyManager::load_or_create(&db.store, "ES256", &cfg, &db.url, NOW),
            KeyManager::load_or_create(&db.store, "ES256", &cfg, &db.url, NOW),
        );
        let rows = db.store.list_keys().await.unwrap();
        let algs: Vec<&str> = rows.iter().map(|r| r.alg.as_str()).collect();
        assert_eq!(algs, ["RS256", "ES256"]);
        let first = jwks(&a.unwrap());
        assert_eq!(first, jwks(&b.unwrap()));
        assert_eq!(first, jwks(&c.unwrap()));
        assert_eq!(first["keys"][1]["kid"], rows[1].kid);
    }

    #[test]
    fn unsupported_alg_is_refused() {
        assert_eq!(
            generate_pem("HS256").unwrap_err().to_string(),
            "unsupported signing algorithm \"HS256\" (use RS256, ES256 or EdDSA)"
        );
    }

    /// The same on the project's PostgreSQL server (127.0.0.1:5432, database
    /// `test`), in a schema of its own.
    #[tokio::test]
    async fn encrypted_keys_on_postgres() {
        let base = std::env::var("AUTH_ADAPTER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!(
            "keys_test_{}",
            crate::secret::random_token()[..12].to_lowercase()
        )
        .replace('-', "_");
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&base)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (see scripts/install-test-deps.sh)");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let store = SqlStore::connect(&url, 4).await.unwrap();

        let err = KeyManager::load_or_create(&store, "RS256", &KeysConfig::default(), &url, NOW)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("keys.encryption_key_env must be set"),
            "{err}"
        );
        assert!(store.list_keys().await.unwrap().is_empty());

        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_PG", 9);
        let first = KeyManager::load_or_create(&store, "RS256", &cfg, &url, NOW)
            .await
            .unwrap();
        assert!(store.list_keys().await.unwrap()[0]
            .private_pem
            .starts_with("enc:v1:"));
        let token = first.sign("JWT", &claims(NOW)).unwrap();
        let (a, b, c) = tokio::join!(
            KeyManager::load_or_create(&store, "EdDSA", &cfg, &url, NOW),
            KeyManager::load_or_create(&store, "EdDSA", &cfg, &url, NOW),
            KeyManager::load_or_create(&store, "EdDSA", &cfg, &url, NOW),
        );
        let algs: Vec<String> = store
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.alg)
            .collect();
        assert_eq!(algs, ["RS256", "EdDSA"]);
        let a = a.unwrap();
        assert_eq!(jwks(&a), jwks(&b.unwrap()));
        assert_eq!(jwks(&a), jwks(&c.unwrap()));
        a.verify(&token, "JWT", "http://i", NOW).unwrap();

        store.pool().close().await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
