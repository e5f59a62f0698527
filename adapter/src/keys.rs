//! Signing keys: generation at first start, JWKS, signing and verifying our
//! own JWTs.
//!
//! Keys live in the [`Store`] so that every replica signs with, and
//! publishes, the same keys, and re-reads them periodically
//! ([`KeyManager::reload`]). Each key has a schedule stored with it: an
//! activation time (before it, the key is only published) and, once a
//! successor exists, a retirement time (from then on it is no longer
//! published). Per algorithm in use (the default one and each client's
//! `id_token_signed_response_alg`), the newest key whose activation has
//! passed signs; every key not yet retired is in the JWKS, so tokens signed
//! by an older key keep verifying (RFC 7517 §5, OIDC Core §10.1.1). Private keys are generated with aws-lc-rs (RS256: RSA-2048,
//! ES256: P-256, EdDSA: Ed25519), serialised as PKCS#8 PEM and never logged.
//!
//! At rest, the PEM is encrypted with AES-256-GCM under a key from
//! configuration ([`KeysConfig`]) and stored as the envelope
//! `enc:v1:<base64 nonce>:<base64 ciphertext and tag>`; the kid is the
//! associated data, so a row moved onto another kid no longer decrypts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::SharedClock;
use crate::config::{Config, TokenConfig};
use crate::store::{KeyRecord, Store, StoreError};

/// Clock-skew leeway for our own tokens, seconds: RFC 7519 §4.1.4 allows
/// "some small leeway"; we keep it under a minute.
pub const LEEWAY_SECONDS: u64 = 30;

/// How long relying parties may cache the JWKS: discovery serves it with
/// `Cache-Control: max-age=300` (RFC 9111 §5.2.2.1).
pub const JWKS_CACHE_SECONDS: i64 = 300;

/// After verification meets an unknown `kid`, the key set is re-read from
/// the store at most this often.
pub const MISS_RELOAD_THROTTLE_SECONDS: i64 = 10;

/// Default of `keys.reload_interval_seconds`.
pub const DEFAULT_RELOAD_INTERVAL_SECONDS: u64 = 60;

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
///
/// Rotation (RFC 7517 §5, OIDC Core §10.1.1): every
/// `rotation_period_seconds` the next key of each algorithm in use is
/// published, signs once every cached JWKS holds it, and the key it
/// supersedes leaves the JWKS once every token it signed has expired (see
/// [`Schedule`]). Every replica re-reads the keys every
/// `reload_interval_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Name of an environment variable holding the key.
    pub encryption_key_env: Option<String>,
    /// Path of a file holding the key.
    pub encryption_key_file: Option<PathBuf>,
    /// Age at which a signing key gets a successor, seconds; 0 (default):
    /// no automatic rotation (`adapter keys rotate` still rotates).
    pub rotation_period_seconds: u64,
    /// How often each replica re-reads the key set from the database,
    /// seconds (at least 1; default 60).
    pub reload_interval_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            encryption_key_env: None,
            encryption_key_file: None,
            rotation_period_seconds: 0,
            reload_interval_seconds: DEFAULT_RELOAD_INTERVAL_SECONDS,
        }
    }
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
    #[error("signing: {0}")]
    Sign(&'static str),
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

/// A stored key, decrypted and parsed. `meta` is its row without the
/// private key (`private_pem` is empty).
struct LoadedKey {
    meta: KeyRecord,
    material: Arc<KeyMaterial>,
}

struct KeyMaterial {
    alg: Algorithm,
    signing: SigningKey,
    decoding: DecodingKey,
    public_jwk: Jwk,
}

/// A private key parsed once, for signing JWS (RFC 7515) with aws-lc-rs.
///
/// jsonwebtoken's `encode` takes an `EncodingKey`, which holds the DER
/// document, and parses it again at every signature (for ES256 the parse
/// cost about as much as the signature: BENCHMARKS.md); a token endpoint
/// signs with the same key thousands of times a second.
pub enum SigningKey {
    /// RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3).
    Rsa(aws_lc_rs::rsa::KeyPair),
    /// ES256: ECDSA P-256 with SHA-256, `R || S` (RFC 7518 §3.4).
    Ec(aws_lc_rs::signature::EcdsaKeyPair),
    /// EdDSA: Ed25519 (RFC 8037 §3.1).
    Ed(aws_lc_rs::signature::Ed25519KeyPair),
}

impl SigningKey {
    /// Parses a private key of `alg` from the DER that jsonwebtoken's
    /// `EncodingKey` holds: an RSAPrivateKey (RFC 8017 §A.1.2) for RSA,
    /// PKCS#8 (RFC 5208, RFC 8410) for P-256 and Ed25519.
    pub fn from_der(alg: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let key = match alg {
            Algorithm::RS256 => aws_lc_rs::rsa::KeyPair::from_der(der).map(SigningKey::Rsa),
            Algorithm::ES256 => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map(SigningKey::Ec)
            }
            // PKCS#8 v1 (RFC 8410 §7), as `generate_pem` writes it.
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(SigningKey::Ed),
            other => return Err(KeyError::UnsupportedAlg(format!("{other:?}"))),
        };
        key.map_err(|_| KeyError::Sign("the private key does not parse"))
    }

    /// The signature of the JWS signing input (RFC 7515 §5.1 step 5).
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::Sign("signing failed");
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            SigningKey::Rsa(kp) => {
                let mut signature = vec![0; kp.public_modulus_len()];
                kp.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    input,
                    &mut signature,
                )
                .map_err(failed)?;
                Ok(signature)
            }
            SigningKey::Ec(kp) => Ok(kp.sign(&rng, input).map_err(failed)?.as_ref().to_vec()),
            SigningKey::Ed(kp) => Ok(kp.sign(input).as_ref().to_vec()),
        }
    }

    /// The compact serialisation (RFC 7515 §7.1) of `claims` under
    /// `header`, signed with this key: what `jsonwebtoken::encode` makes,
    /// without parsing the key again.
    pub fn encode<T: Serialize>(&self, header: &Header, claims: &T) -> Result<String, KeyError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let json_failed = |_| KeyError::Sign("JSON encoding failed");
        let mut jws = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).map_err(json_failed)?);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims).map_err(json_failed)?, &mut jws);
        let signature = self.sign(jws.as_bytes())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        Ok(jws)
    }
}

impl AsRef<KeyRecord> for LoadedKey {
    fn as_ref(&self) -> &KeyRecord {
        &self.meta
    }
}

impl AsRef<KeyRecord> for KeyRecord {
    fn as_ref(&self) -> &KeyRecord {
        self
    }
}

/// One snapshot of the stored keys, by generation.
#[derive(Default)]
struct KeySet {
    keys: Vec<LoadedKey>,
}

/// Where a key stands in its life at some time (RFC 7517 §5: a key set may
/// hold keys that do not sign yet, or no longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, signs from its activation on.
    Next,
    /// Published, and the key that signs for its algorithm.
    Active,
    /// Published, no longer signs: tokens it signed still verify.
    Retiring,
    /// Past its retirement: no longer published.
    Retired,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        })
    }
}

/// Whether key `r` is in the JWKS at `now`.
fn is_published(r: &KeyRecord, now: i64) -> bool {
    r.retires_at.is_none_or(|t| t > now)
}

/// The key that signs for `alg` at `now`: the newest published key of that
/// algorithm whose activation time has passed. `keys` are by generation.
fn active_of<'a, T: AsRef<KeyRecord>>(keys: &'a [T], alg: &str, now: i64) -> Option<&'a T> {
    keys.iter().rev().find(|k| {
        let r = k.as_ref();
        r.alg == alg && r.activates_at <= now && is_published(r, now)
    })
}

/// The state of `key`, one of `keys` (by generation), at `now`.
pub fn key_state<T: AsRef<KeyRecord>>(keys: &[T], key: &KeyRecord, now: i64) -> KeyState {
    if !is_published(key, now) {
        KeyState::Retired
    } else if key.activates_at > now {
        KeyState::Next
    } else if active_of(keys, &key.alg, now).is_some_and(|a| a.as_ref().kid == key.kid) {
        KeyState::Active
    } else {
        KeyState::Retiring
    }
}

/// The table printed by `adapter keys list`: one line per key with its
/// schedule and state, never any private material.
pub fn describe_keys(records: &[KeyRecord], now: i64) -> String {
    let time = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| t.to_string())
    };
    let mut out = format!(
        "{:<43}  {:<5}  {:>10}  {:<20}  {:<20}  {:<20}  STATE\n",
        "KID", "ALG", "GENERATION", "CREATED", "ACTIVATES", "RETIRES"
    );
    for r in records {
        out.push_str(&format!(
            "{:<43}  {:<5}  {:>10}  {:<20}  {:<20}  {:<20}  {}\n",
            r.kid,
            r.alg,
            r.generation,
            time(r.created_at),
            time(r.activates_at),
            r.retires_at.map_or_else(|| "-".to_string(), time),
            key_state(records, r, now),
        ));
    }
    out
}

/// When keys are published, activated and retired, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// A new key is published this long before it signs: the JWKS a relying
    /// party caches is at most [`JWKS_CACHE_SECONDS`] old, and a replica
    /// learns of the key within one reload interval, so every cached JWKS
    /// holds the key by its activation (OIDC Core §10.1.1).
    pub publish_lead: i64,
    /// A superseded key stays published this long after its successor
    /// activates: the longest token lifetime, the verification leeway
    /// (RFC 7519 §4.1.4) and one reload interval, so every token it signed
    /// has expired before its key leaves the JWKS.
    pub retire_after: i64,
    /// Age at which the active key of an algorithm gets a successor; 0: never.
    pub rotation_period: i64,
    /// How often every replica re-reads the key set.
    pub reload_interval: i64,
}

impl Schedule {
    pub fn new(keys: &KeysConfig, tokens: &TokenConfig) -> Self {
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX / 4);
        let reload = secs(keys.reload_interval_seconds);
        Schedule {
            publish_lead: JWKS_CACHE_SECONDS + reload,
            retire_after: tokens
                .access_token_ttl_seconds
                .max(tokens.id_token_ttl_seconds)
                + LEEWAY_SECONDS as i64
                + reload,
            rotation_period: secs(keys.rotation_period_seconds),
            reload_interval: reload,
        }
    }
}

/// The algorithms in use and the schedule of their keys.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The default algorithm (`tokens.signing_alg`) first, then each other
    /// client's `id_token_signed_response_alg` (OIDC Registration §2).
    algs: Vec<Algorithm>,
    schedule: Schedule,
}

impl Policy {
    pub fn new<'a>(
        default_alg: &str,
        client_algs: impl IntoIterator<Item = &'a str>,
        schedule: Schedule,
    ) -> Result<Self, KeyError> {
        if schedule.reload_interval < 1 {
            return Err(KeyError::Config(
                "keys.reload_interval_seconds must be at least 1".into(),
            ));
        }
        let mut algs = vec![parse_alg(default_alg)?];
        for alg in client_algs {
            let alg = parse_alg(alg)?;
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        Ok(Policy { algs, schedule })
    }

    /// The policy of a configuration: `tokens.signing_alg`, the clients'
    /// algorithms, `keys.*` and the token lifetimes. RS256 always has a key:
    /// OIDC Discovery §3 requires it in `id_token_signing_alg_values_supported`.
    pub fn from_config(config: &Config) -> Result<Self, KeyError> {
        Self::new(
            &config.tokens.signing_alg,
            config
                .clients
                .iter()
                .filter_map(|c| c.id_token_signed_response_alg.as_deref())
                .chain(std::iter::once("RS256")),
            Schedule::new(&config.keys, &config.tokens),
        )
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }
}

/// What a [`KeyManager`] needs to re-read and rotate keys.
struct Source {
    store: Arc<dyn Store>,
    key: EncryptionKey,
    policy: Policy,
}

/// The key set every replica shares through the [`Store`], reloadable
/// without a restart. Per algorithm in use, the newest key whose activation
/// time has passed signs; every key not yet retired is in the JWKS.
pub struct KeyManager {
    set: RwLock<Arc<KeySet>>,
    /// `None` for a fixed set ([`KeyManager::from_records`]).
    source: Option<Source>,
    default_alg: Algorithm,
    clock: SharedClock,
    /// When the set was last read from the store (for the throttle of
    /// reloads on an unknown `kid`).
    last_reload: AtomicI64,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.snapshot();
        let kids: Vec<&str> = set.keys.iter().map(|k| k.meta.kid.as_str()).collect();
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

/// A PEM private key of `alg` parsed for signing, as the key manager
/// parses its keys (for benchmarks of the signing path).
pub fn signing_key_from_pem(
    alg: &str,
    private_pem: &str,
) -> Result<(Algorithm, SigningKey), KeyError> {
    let material = load_pem("", alg, private_pem)?;
    Ok((material.alg, material.signing))
}

/// Loads a plaintext PEM key of `alg` under `kid`.
fn load_pem(kid: &str, alg: &str, private_pem: &str) -> Result<KeyMaterial, KeyError> {
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
    let signing = SigningKey::from_der(alg, encoding.as_bytes())
        .map_err(|_| bad(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into()))?;
    Ok(KeyMaterial {
        alg,
        signing,
        decoding,
        public_jwk: jwk,
    })
}

/// Loads a stored key: decrypts the envelope, or takes a plaintext PEM row
/// written by an older release as it is, with a warning.
fn load_record(record: &KeyRecord, key: &EncryptionKey) -> Result<KeyMaterial, KeyError> {
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

impl KeySet {
    /// Decrypts and parses `records`, reusing the keys `previous` holds
    /// already (a kid is the key's thumbprint: same kid, same key).
    fn load(
        records: &[KeyRecord],
        key: &EncryptionKey,
        previous: Option<&KeySet>,
    ) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(records.len());
        for r in records {
            let known = previous.and_then(|p| p.keys.iter().find(|k| k.meta.kid == r.kid));
            let material = match known {
                Some(k) => k.material.clone(),
                None => Arc::new(load_record(r, key)?),
            };
            keys.push(LoadedKey {
                meta: KeyRecord {
                    private_pem: String::new(),
                    ..r.clone()
                },
                material,
            });
        }
        Ok(KeySet { keys })
    }

    fn published(&self, now: i64) -> impl Iterator<Item = &LoadedKey> {
        self.keys.iter().filter(move |k| is_published(&k.meta, now))
    }
}

/// Generation of the next key: one above the highest stored.
fn next_generation(records: &[KeyRecord]) -> i64 {
    records.iter().map(|r| r.generation + 1).max().unwrap_or(0)
}

/// A new key of `alg` as a row: generated, kid = RFC 7638 thumbprint
/// (stable, and says nothing secret), private key sealed.
async fn new_record(
    key: &EncryptionKey,
    alg: &str,
    generation: i64,
    now: i64,
    activates_at: i64,
) -> Result<KeyRecord, KeyError> {
    let for_task = alg.to_string();
    let private_pem = tokio::task::spawn_blocking(move || generate_pem(&for_task))
        .await
        .map_err(|_| KeyError::Generate)??;
    let kid = load_pem("", alg, &private_pem)?
        .public_jwk
        .thumbprint(ThumbprintHash::SHA256)?;
    Ok(KeyRecord {
        private_pem: key.seal(&kid, &private_pem)?,
        kid,
        generation,
        alg: alg.to_string(),
        created_at: now,
        activates_at,
        retires_at: None,
    })
}

/// How often a step retries after another replica took the generation it
/// wanted (it then re-reads the keys and decides again).
const INSERT_ATTEMPTS: usize = 5;

impl Source {
    /// Publishes a key, active at once, for each algorithm in use that has
    /// no published key: there is no key to rotate from, and nothing can be
    /// signed with that algorithm without one.
    async fn ensure_keys(&self, now: i64) -> Result<(), KeyError> {
        for alg in &self.policy.algs {
            let name = alg_name(*alg);
            for _ in 0..INSERT_ATTEMPTS {
                let records = self.store.list_keys().await?;
                if records
                    .iter()
                    .any(|r| r.alg == name && is_published(r, now))
                {
                    break;
                }
                let record =
                    new_record(&self.key, &name, next_generation(&records), now, now).await?;
                if !self.store.insert_key(&record).await? {
                    continue;
                }
                let newest_other = records.iter().rev().find(|r| is_published(r, now));
                match newest_other {
                    None => {
                        tracing::info!(alg = %name, kid = %record.kid, "generated a new signing key")
                    }
                    Some(old) if *alg == self.policy.algs[0] => tracing::info!(
                        old_alg = %old.alg,
                        new_alg = %name,
                        kid = %record.kid,
                        "tokens.signing_alg changed from {} to {name}: published a new signing \
                         key; the old one stays in the JWKS",
                        old.alg
                    ),
                    Some(_) => tracing::info!(
                        alg = %name,
                        kid = %record.kid,
                        "published a signing key for a client's id_token_signed_response_alg"
                    ),
                }
                break;
            }
        }
        Ok(())
    }

    /// Step 1 of a rotation: for each algorithm in use whose active key is
    /// due (`force`, or older than the rotation period) and that has no key
    /// waiting, inserts the next key with an activation
    /// [`Schedule::publish_lead`] ahead. Nothing else changes, so a crash
    /// after this step leaves the active key signing. Replicas racing here
    /// insert the same generation; the store keeps one, and the losers then
    /// see a key waiting. Returns the new kids.
    async fn publish_next(&self, now: i64, force: bool) -> Result<Vec<String>, KeyError> {
        let schedule = self.policy.schedule;
        let mut published = Vec::new();
        for alg in &self.policy.algs {
            let name = alg_name(*alg);
            for _ in 0..INSERT_ATTEMPTS {
                let records = self.store.list_keys().await?;
                let Some(active) = active_of(&records, &name, now) else {
                    break;
                };
                let waiting = records
                    .iter()
                    .any(|r| r.alg == name && r.activates_at > now && is_published(r, now));
                let age = now - active.activates_at.max(active.created_at);
                let due =
                    force || (schedule.rotation_period > 0 && age >= schedule.rotation_period);
                if waiting || !due {
                    break;
                }
                let activates_at = now + schedule.publish_lead;
                let record = new_record(
                    &self.key,
                    &name,
                    next_generation(&records),
                    now,
                    activates_at,
                )
                .await?;
                if self.store.insert_key(&record).await? {
                    tracing::info!(
                        alg = %name,
                        kid = %record.kid,
                        generation = record.generation,
                        activates_at,
                        "published the next signing key; it signs from its activation on"
                    );
                    published.push(record.kid);
                    break;
                }
            }
        }
        Ok(published)
    }

    /// Step 2: every key with a successor of its algorithm and no retirement
    /// yet is retired [`Schedule::retire_after`] after that successor
    /// activates. Idempotent, and repairs a rotation that stopped after
    /// step 1; the first schedule stored wins.
    async fn schedule_retirements(&self) -> Result<(), KeyError> {
        let records = self.store.list_keys().await?;
        for (i, r) in records.iter().enumerate() {
            if r.retires_at.is_some() {
                continue;
            }
            let Some(successor) = records[i + 1..].iter().find(|s| s.alg == r.alg) else {
                continue;
            };
            let retires_at =
                successor.activates_at.max(r.activates_at) + self.policy.schedule.retire_after;
            if self.store.retire_key(&r.kid, retires_at).await? {
                tracing::info!(
                    kid = %r.kid,
                    successor = %successor.kid,
                    retires_at,
                    "scheduled the retirement of a superseded signing key"
                );
            }
        }
        Ok(())
    }
}

impl KeyManager {
    /// Opens the key set of `store`: decrypts the stored keys (the
    /// encryption key comes from `config`, see [`EncryptionKey::resolve`];
    /// a wrong one fails here, before anything is written), then publishes
    /// a key for each algorithm of `policy` that has none.
    ///
    /// Replicas racing to publish all insert the same next generation; the
    /// store keeps exactly one, and every replica then loads that one.
    pub async fn open(
        store: Arc<dyn Store>,
        policy: Policy,
        config: &KeysConfig,
        database_url: &str,
        clock: SharedClock,
    ) -> Result<Self, KeyError> {
        let key = EncryptionKey::resolve(config, database_url)?;
        let now = clock.now();
        // Decrypt what is there before writing anything.
        KeySet::load(&store.list_keys().await?, &key, None)?;
        let source = Source { store, key, policy };
        source.ensure_keys(now).await?;
        let km = KeyManager {
            set: RwLock::new(Arc::default()),
            default_alg: source.policy.algs[0],
            source: Some(source),
            clock,
            last_reload: AtomicI64::new(now),
        };
        km.reload(now).await?;
        Ok(km)
    }

    /// A fixed key set of stored `records` (by generation), decrypted with
    /// `key`; the newest key's algorithm is the default.
    pub fn from_records(records: &[KeyRecord], key: &EncryptionKey) -> Result<Self, KeyError> {
        let set = KeySet::load(records, key, None)?;
        let default_alg = set.keys.last().ok_or(KeyError::NoKey)?.material.alg;
        Ok(KeyManager {
            set: RwLock::new(Arc::new(set)),
            source: None,
            default_alg,
            clock: Arc::new(crate::clock::SystemClock),
            last_reload: AtomicI64::new(0),
        })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How often [`KeyManager::maintain`] should run.
    pub fn reload_interval(&self) -> std::time::Duration {
        let secs = self
            .source
            .as_ref()
            .map_or(60, |s| s.policy.schedule.reload_interval);
        std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(60).max(1))
    }

    /// Re-reads the key set from the store, so this replica publishes and
    /// signs with what the others stored. On failure the set in use stays.
    pub async fn reload(&self, now: i64) -> Result<(), KeyError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        self.last_reload.store(now, Ordering::SeqCst);
        let records = source.store.list_keys().await?;
        let previous = self.snapshot();
        let set = KeySet::load(&records, &source.key, Some(&previous))?;
        let set = Arc::new(set);
        match self.set.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        Ok(())
    }

    /// The periodic work of every replica: keys for new algorithms, the
    /// automatic rotation when due, the retirement schedule, deleting
    /// retired keys, then a reload. Returns the kids published by rotation.
    pub async fn maintain(&self, now: i64) -> Result<Vec<String>, KeyError> {
        let Some(source) = &self.source else {
            return Ok(Vec::new());
        };
        source.ensure_keys(now).await?;
        let published = source.publish_next(now, false).await?;
        source.schedule_retirements().await?;
        let removed = source.store.delete_retired_keys(now).await?;
        if removed > 0 {
            tracing::info!(removed, "deleted retired signing keys");
        }
        self.reload(now).await?;
        Ok(published)
    }

    /// Rotates now (`adapter keys rotate`): publishes the next key of each
    /// algorithm in use that has none waiting, schedules the retirement of
    /// the keys it supersedes, and reloads. Returns the new kids.
    pub async fn rotate(&self, now: i64) -> Result<Vec<String>, KeyError> {
        let Some(source) = &self.source else {
            return Ok(Vec::new());
        };
        let published = source.publish_next(now, true).await?;
        source.schedule_retirements().await?;
        self.reload(now).await?;
        Ok(published)
    }

    /// The public JWKS (RFC 7517 §5): every key not retired, with only
    /// public members, each with `kid`, `use` and `alg` (RFC 7517 §4.2,
    /// §4.4, §4.5).
    pub fn jwks(&self) -> JwkSet {
        let now = self.clock.now();
        JwkSet {
            keys: self
                .snapshot()
                .published(now)
                .map(|k| k.material.public_jwk.clone())
                .collect(),
        }
    }

    /// The JWS `alg` an ID token for a client preferring `alg` is signed
    /// with: its own, or the default algorithm.
    pub fn id_token_alg(&self, alg: Option<&str>) -> Result<String, KeyError> {
        Ok(match alg {
            Some(alg) => alg_name(parse_alg(alg)?),
            None => alg_name(self.default_alg),
        })
    }

    /// Algorithms with a key that signs now, for discovery
    /// (`id_token_signing_alg_values_supported`, OIDC Discovery §3).
    pub fn algorithms(&self) -> Vec<String> {
        let now = self.clock.now();
        let set = self.snapshot();
        let mut algs: Vec<String> = set
            .keys
            .iter()
            .filter(|k| key_state(&set.keys, &k.meta, now) == KeyState::Active)
            .map(|k| k.meta.alg.clone())
            .collect();
        algs.sort();
        algs.dedup();
        algs
    }

    /// Signs `claims` with the active key of the default algorithm; `typ`
    /// is `JWT` or `at+jwt` (RFC 9068 §2.1).
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, KeyError> {
        self.sign_with(None, typ, claims)
    }

    /// Signs with the active key of `alg` (a client's
    /// `id_token_signed_response_alg`, OIDC Registration §2), or of the
    /// default algorithm for `None`.
    pub fn sign_with<T: Serialize>(
        &self,
        alg: Option<&str>,
        typ: &str,
        claims: &T,
    ) -> Result<String, KeyError> {
        let alg = match alg {
            Some(alg) => parse_alg(alg)?,
            None => self.default_alg,
        };
        let set = self.snapshot();
        let key = active_of(&set.keys, &alg_name(alg), self.clock.now()).ok_or(KeyError::NoKey)?;
        let mut header = Header::new(key.material.alg);
        header.kid = Some(key.meta.kid.clone());
        header.typ = Some(typ.to_string());
        key.material.signing.encode(&header, claims)
    }

    /// Verifies one of our own tokens: `kid` of a published key, the key's
    /// own algorithm (never the header's choice, RFC 8725 §3.1), expected
    /// `typ` (rejects an ID token used as access token, RFC 9068 §4, RFC
    /// 8725 §3.11), `iss`, and `exp`/`nbf` against the injected clock's
    /// `now`. An unknown `kid` (another replica may have published a key
    /// since the last reload) re-reads the set once, at most every
    /// [`MISS_RELOAD_THROTTLE_SECONDS`].
    pub async fn verify(
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
        let mut set = self.snapshot();
        if !set.published(now).any(|k| k.meta.kid == kid)
            && self.source.is_some()
            && now - self.last_reload.load(Ordering::SeqCst) >= MISS_RELOAD_THROTTLE_SECONDS
        {
            if let Err(e) = self.reload(now).await {
                tracing::warn!(error = %e, "reloading the signing keys failed");
            }
            set = self.snapshot();
        }
        let key = set
            .published(now)
            .find(|k| k.meta.kid == kid)
            .ok_or(KeyError::Rejected("unknown kid"))?;
        verify_with(&key.material, token, issuer, now)
    }
}

/// Signature, `iss`, `exp` and `nbf` of `token` under `key`.
fn verify_with(
    key: &KeyMaterial,
    token: &str,
    issuer: &str,
    now: i64,
) -> Result<Map<String, Value>, KeyError> {
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

    /// The pre-parsed signer makes the JWS jsonwebtoken makes: the same
    /// header and payload parts, a signature that verifies, and for the
    /// deterministic schemes (RSASSA-PKCS1-v1_5, Ed25519) the same bytes.
    #[test]
    fn parsed_keys_sign_what_jsonwebtoken_signs() {
        let claims = json!({"iss": "https://op.example", "sub": "jane", "exp": 4_000_000_000u64});
        for alg in ["RS256", "ES256", "EdDSA"] {
            let pem = generate_pem(alg).unwrap();
            let material = load_pem("kid-1", alg, &pem).unwrap();
            let mut header = Header::new(material.alg);
            header.kid = Some("kid-1".into());
            header.typ = Some("at+jwt".into());
            let ours = material.signing.encode(&header, &claims).unwrap();
            let key = match alg {
                "RS256" => EncodingKey::from_rsa_pem(pem.as_bytes()),
                "ES256" => EncodingKey::from_ec_pem(pem.as_bytes()),
                _ => EncodingKey::from_ed_pem(pem.as_bytes()),
            };
            let theirs = jsonwebtoken::encode(&header, &claims, &key.unwrap()).unwrap();
            let signing_input = |t: &str| t.rsplit_once('.').unwrap().0.to_string();
            assert_eq!(signing_input(&ours), signing_input(&theirs), "{alg}");
            if alg != "ES256" {
                assert_eq!(ours, theirs, "{alg}");
            }
            let mut validation = Validation::new(material.alg);
            validation.validate_aud = false;
            let decoded =
                jsonwebtoken::decode::<Value>(&ours, &material.decoding, &validation).unwrap();
            assert_eq!(decoded.claims, claims, "{alg}");
        }
    }

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
            ..KeysConfig::default()
        }
    }

    /// Opens the key set of `store` for the single algorithm `alg`, as a
    /// replica whose clock stands at `now`.
    async fn load_on(
        store: &SqlStore,
        url: &str,
        alg: &str,
        cfg: &KeysConfig,
        now: i64,
    ) -> Result<KeyManager, KeyError> {
        let policy = Policy::new(alg, [], Schedule::new(cfg, &TokenConfig::default())).unwrap();
        let clock = Arc::new(crate::clock::ManualClock::new());
        clock.set(now);
        KeyManager::open(Arc::new(store.clone()), policy, cfg, url, clock).await
    }

    async fn load(db: &Db, alg: &str, cfg: &KeysConfig, now: i64) -> Result<KeyManager, KeyError> {
        load_on(&db.store, &db.url, alg, cfg, now).await
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
        let a = load(&db, "RS256", &cfg, 1).await.unwrap();
        let b = load(&db, "RS256", &cfg, 2).await.unwrap();
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
            load(&db, "RS256", &cfg, 1),
            load(&db, "RS256", &cfg, 1),
            load(&db, "RS256", &cfg, 1),
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
        let km = load(&db, "RS256", &cfg, NOW).await.unwrap();
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
        let again = load(&db, "RS256", &cfg, NOW).await.unwrap();
        assert_eq!(jwks(&km), jwks(&again));
        let token = km.sign("at+jwt", &claims(NOW)).unwrap();
        assert_eq!(
            again
                .verify(&token, "at+jwt", "http://i", NOW)
                .await
                .unwrap()["sub"],
            "u"
        );

        // The same ciphertext under another kid does not decrypt.
        let moved = KeyRecord {
            kid: "another-kid".into(),
            generation: 1,
            ..rows[0].clone()
        };
        assert!(db.store.insert_key(&moved).await.unwrap());
        let err = load(&db, "RS256", &cfg, NOW).await.unwrap_err();
        assert!(
            matches!(&err, KeyError::Decrypt { kid } if kid == "another-kid"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_encryption_key_is_a_clear_start_up_error() {
        let db = sqlite().await;
        let right = env_key("AUTH_ADAPTER_KEYS_TEST_RIGHT", 1);
        load(&db, "ES256", &right, NOW).await.unwrap();
        let kid = db.store.list_keys().await.unwrap()[0].kid.clone();
        let wrong = env_key("AUTH_ADAPTER_KEYS_TEST_WRONG", 2);
        let err = load(&db, "ES256", &wrong, NOW).await.unwrap_err();
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
            ..KeysConfig::default()
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
            ..KeysConfig::default()
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
            ..KeysConfig::default()
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
        let a = load(&db, "RS256", &cfg, NOW).await.unwrap();
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
        let b = load(&db, "RS256", &cfg, NOW).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        assert_eq!(jwks(&a), jwks(&b));
        assert!(!logs.text().contains(content.trim()), "key in the logs");
        assert!(
            !format!("{:?}", EncryptionKey::resolve(&cfg, &db.url).unwrap())
                .contains(content.trim())
        );

        // The file is what decrypts the stored key: a new one does not.
        std::fs::remove_file(&path).unwrap();
        let err = load(&db, "RS256", &cfg, NOW).await.unwrap_err();
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
            activates_at: 0,
            retires_at: None,
        };
        db.store.insert_key(&legacy).await.unwrap();
        let (logs, _guard) = Logs::capture();
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_LEGACY", 3);
        let km = load(&db, "RS256", &cfg, NOW).await.unwrap();
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
        let token = km.sign("JWT", &claims(NOW)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("legacy-kid"));
        km.verify(&token, "JWT", "http://i", NOW).await.unwrap();
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
        let km = load(&db, "EdDSA", &cfg, NOW).await.unwrap();
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
            km.verify(&token, "at+jwt", "http://i", NOW).await.unwrap()["sub"],
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
                activates_at: 0,
                retires_at: None,
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

    #[tokio::test]
    async fn sign_verify_and_negative_checks() {
        let key = EncryptionKey::from_base64(&STANDARD.encode([6u8; 32]), "test").unwrap();
        for alg in ["RS256", "ES256", "EdDSA"] {
            let rec = KeyRecord {
                kid: "k".into(),
                generation: 0,
                alg: alg.into(),
                private_pem: generate_pem(alg).unwrap(),
                created_at: 1,
                activates_at: 0,
                retires_at: None,
            };
            let km = KeyManager::from_records(std::slice::from_ref(&rec), &key).unwrap();
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let claims = claims(now);
            let at = km.sign("at+jwt", &claims).unwrap();
            assert_eq!(
                km.verify(&at, "at+jwt", "http://i", now).await.unwrap()["sub"],
                "u"
            );
            // Type confusion: an ID token is not an access token (RFC 9068 §4).
            let id = km.sign("JWT", &claims).unwrap();
            assert!(km.verify(&id, "at+jwt", "http://i", now).await.is_err());
            // Wrong issuer.
            assert!(km.verify(&at, "at+jwt", "http://other", now).await.is_err());
            // Expired beyond leeway.
            let old = json!({"iss": "http://i", "sub": "u", "iat": now - 600, "exp": now - 300});
            let old = km.sign("at+jwt", &old).unwrap();
            assert!(km.verify(&old, "at+jwt", "http://i", now).await.is_err());
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
            assert!(km.verify(&forged, "at+jwt", "http://i", now).await.is_err());
            // Tampered payload.
            let mut parts: Vec<&str> = at.split('.').collect();
            let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"iss":"http://i","sub":"admin","iat":now,"exp":now+60}).to_string());
            parts[1] = &evil;
            assert!(km
                .verify(&parts.join("."), "at+jwt", "http://i", now)
                .await
                .is_err());
        }
    }

    /// RFC 7517 §5: a rotation keeps the old key in the set, so tokens it
    /// signed keep verifying while the new key signs.
    #[tokio::test]
    async fn changed_alg_publishes_a_new_key_that_signs() {
        let db = sqlite().await;
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_ROTATE", 7);
        let old = load(&db, "RS256", &cfg, NOW).await.unwrap();
        let old_token = old.sign("at+jwt", &claims(NOW)).unwrap();
        let (logs, _guard) = Logs::capture();
        let new = load(&db, "EdDSA", &cfg, NOW).await.unwrap();
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
        new.verify(&token, "at+jwt", "http://i", NOW).await.unwrap();
        new.verify(&old_token, "at+jwt", "http://i", NOW)
            .await
            .unwrap();
        assert_eq!(jwks(&new)["keys"].as_array().unwrap().len(), 2);
        assert_eq!(new.algorithms(), ["EdDSA", "RS256"]);
        let text = logs.text();
        assert!(
            text.lines()
                .any(|l| l.contains("INFO") && l.contains("changed from RS256 to EdDSA")),
            "{text}"
        );

        // Settled: the next start with the same setting adds nothing.
        load(&db, "EdDSA", &cfg, NOW).await.unwrap();
        assert_eq!(db.store.list_keys().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn racing_alg_changes_publish_one_key() {
        let db = sqlite().await;
        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_RACE", 8);
        load(&db, "RS256", &cfg, NOW).await.unwrap();
        let (a, b, c) = tokio::join!(
            load(&db, "ES256", &cfg, NOW),
            load(&db, "ES256", &cfg, NOW),
            load(&db, "ES256", &cfg, NOW),
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
        let pg = crate::store::conformance::TestPostgres::new().await;
        let (url, store) = (pg.url.clone(), pg.store.clone());

        let err = load_on(&store, &url, "RS256", &KeysConfig::default(), NOW)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("keys.encryption_key_env must be set"),
            "{err}"
        );
        assert!(store.list_keys().await.unwrap().is_empty());

        let cfg = env_key("AUTH_ADAPTER_KEYS_TEST_PG", 9);
        let first = load_on(&store, &url, "RS256", &cfg, NOW).await.unwrap();
        assert!(store.list_keys().await.unwrap()[0]
            .private_pem
            .starts_with("enc:v1:"));
        let token = first.sign("JWT", &claims(NOW)).unwrap();
        let (a, b, c) = tokio::join!(
            load_on(&store, &url, "EdDSA", &cfg, NOW),
            load_on(&store, &url, "EdDSA", &cfg, NOW),
            load_on(&store, &url, "EdDSA", &cfg, NOW),
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
        a.verify(&token, "JWT", "http://i", NOW).await.unwrap();

        pg.drop_schema().await;
    }

    // ---- rotation ------------------------------------------------------------

    use crate::clock::ManualClock;

    fn manual(now: i64) -> Arc<ManualClock> {
        let clock = Arc::new(ManualClock::new());
        clock.set(now);
        clock
    }

    /// A replica: the key set of `store` for `algs` (the first is the
    /// default), with the default token lifetimes, on `clock`.
    async fn replica(
        store: &SqlStore,
        url: &str,
        algs: &[&str],
        cfg: &KeysConfig,
        clock: &Arc<ManualClock>,
    ) -> KeyManager {
        let policy = Policy::new(
            algs[0],
            algs[1..].iter().copied(),
            Schedule::new(cfg, &TokenConfig::default()),
        )
        .unwrap();
        KeyManager::open(Arc::new(store.clone()), policy, cfg, url, clock.clone())
            .await
            .unwrap()
    }

    fn rotating(var: &str, fill: u8, period: u64) -> KeysConfig {
        KeysConfig {
            rotation_period_seconds: period,
            ..env_key(var, fill)
        }
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    }

    fn kids(km: &KeyManager) -> Vec<String> {
        km.jwks()
            .keys
            .into_iter()
            .map(|k| k.common.key_id.unwrap())
            .collect()
    }

    fn states(rows: &[KeyRecord], now: i64) -> Vec<String> {
        rows.iter()
            .map(|r| key_state(rows, r, now).to_string())
            .collect()
    }

    /// A token living as long as the longest default token lifetime.
    fn long_claims(now: i64) -> Value {
        let ttl = TokenConfig::default()
            .access_token_ttl_seconds
            .max(TokenConfig::default().id_token_ttl_seconds);
        json!({"iss": "http://i", "sub": "u", "iat": now, "exp": now + ttl})
    }

    #[test]
    fn schedule_follows_the_jwks_cache_and_the_longest_token() {
        let keys = KeysConfig {
            reload_interval_seconds: 20,
            rotation_period_seconds: 86_400,
            ..KeysConfig::default()
        };
        let tokens = TokenConfig {
            access_token_ttl_seconds: 600,
            id_token_ttl_seconds: 900,
            ..TokenConfig::default()
        };
        assert_eq!(
            Schedule::new(&keys, &tokens),
            Schedule {
                publish_lead: 300 + 20,
                retire_after: 900 + 30 + 20,
                rotation_period: 86_400,
                reload_interval: 20,
            }
        );
        let never = KeysConfig {
            reload_interval_seconds: 0,
            ..KeysConfig::default()
        };
        let err = Policy::new("RS256", [], Schedule::new(&never, &tokens)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "keys.reload_interval_seconds must be at least 1"
        );
    }

    /// RFC 7517 §5, OIDC Core §10.1.1: the next key is in the JWKS a whole
    /// cache lifetime before it signs, and the old key stays there until
    /// every token it signed has expired.
    #[tokio::test]
    async fn rotation_publishes_first_and_retires_after_the_longest_token() {
        let db = sqlite().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_CYCLE", 10, 1000);
        let s = Schedule::new(&cfg, &TokenConfig::default());
        let clock = manual(NOW);
        let km = replica(&db.store, &db.url, &["RS256"], &cfg, &clock).await;
        let old = kid_of(&km.sign("JWT", &claims(NOW)).unwrap());

        // Not due yet.
        assert!(km.maintain(NOW + 999).await.unwrap().is_empty());
        assert_eq!(kids(&km), vec![old.clone()]);
        clock.set(NOW + 1000);
        let published = km.maintain(NOW + 1000).await.unwrap();
        assert_eq!(published.len(), 1);
        let new = published[0].clone();
        // Published, not yet signing.
        assert_eq!(kids(&km), [old.clone(), new.clone()]);
        let activation = NOW + 1000 + s.publish_lead;
        assert!(activation - (NOW + 1000) >= JWKS_CACHE_SECONDS);
        clock.set(activation - 1);
        let last_old = km.sign("JWT", &long_claims(activation - 1)).unwrap();
        assert_eq!(kid_of(&last_old), old);
        // A rotation is waiting: the next maintenance publishes nothing more.
        assert!(km.maintain(activation - 1).await.unwrap().is_empty());
        let rows = db.store.list_keys().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].activates_at, activation);
        let retires = activation + s.retire_after;
        assert_eq!(rows[0].retires_at, Some(retires));
        assert_eq!(rows[1].retires_at, None);
        assert_eq!(states(&rows, activation - 1), ["active", "next"]);

        // The activation needs no reload: the clock alone switches.
        clock.set(activation);
        assert_eq!(kid_of(&km.sign("JWT", &claims(activation)).unwrap()), new);
        assert_eq!(km.algorithms(), ["RS256"]);
        assert_eq!(states(&rows, activation), ["retiring", "active"]);

        // The last token of the old key verifies until it expires, its key
        // still published.
        let last_valid = activation - 1 + 300 + LEEWAY_SECONDS as i64 - 1;
        assert!(last_valid < retires);
        clock.set(last_valid);
        km.verify(&last_old, "JWT", "http://i", last_valid)
            .await
            .unwrap();
        clock.set(retires - 1);
        km.maintain(retires - 1).await.unwrap();
        assert_eq!(kids(&km), [old.clone(), new.clone()]);
        // Retired: gone from the JWKS, then from the store.
        clock.set(retires);
        assert_eq!(kids(&km), vec![new.clone()]);
        assert_eq!(states(&rows, retires), ["retired", "active"]);
        km.maintain(retires).await.unwrap();
        let rows = db.store.list_keys().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kid, new);
        assert_eq!(kid_of(&km.sign("JWT", &claims(retires)).unwrap()), new);
    }

    /// A rotation is three steps: insert the next key (future activation),
    /// schedule the old key's retirement, delete retired keys. A process
    /// dying after any of them leaves an active key that signs and is in
    /// the JWKS, and the next maintenance finishes the work.
    #[tokio::test]
    async fn a_rotation_stopped_at_any_step_leaves_a_working_active_key() {
        let db = sqlite().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_CRASH", 11, 0);
        let s = Schedule::new(&cfg, &TokenConfig::default());
        let clock = manual(NOW);
        let km = replica(&db.store, &db.url, &["ES256"], &cfg, &clock).await;
        let first = kid_of(&km.sign("JWT", &claims(NOW)).unwrap());

        // Stopped after step 1.
        let source = km.source.as_ref().unwrap();
        let second = source.publish_next(NOW, true).await.unwrap().remove(0);
        drop(km);
        let km = replica(&db.store, &db.url, &["ES256"], &cfg, &clock).await;
        assert_eq!(kid_of(&km.sign("JWT", &claims(NOW)).unwrap()), first);
        assert_eq!(kids(&km), [first.clone(), second.clone()]);
        assert_eq!(db.store.list_keys().await.unwrap()[0].retires_at, None);
        // Its activation comes, step 2 never ran: the new key signs, the
        // old one stays published however long it takes.
        let activation = NOW + s.publish_lead;
        let late = activation + 100_000;
        clock.set(late);
        let token = km.sign("JWT", &claims(late)).unwrap();
        assert_eq!(kid_of(&token), second);
        assert_eq!(kids(&km), [first.clone(), second.clone()]);
        // The next maintenance schedules the retirement from the stored
        // activation, and deletes only the retired key.
        km.maintain(late).await.unwrap();
        let rows = db.store.list_keys().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kid, second);
        assert_eq!(kids(&km), vec![second.clone()]);
        km.verify(&token, "JWT", "http://i", late).await.unwrap();

        // Stopped after step 2: the retired key leaves the JWKS at its
        // time although its row is still there.
        let source = km.source.as_ref().unwrap();
        let third = source.publish_next(late, true).await.unwrap().remove(0);
        source.schedule_retirements().await.unwrap();
        drop(km);
        let retires = late + s.publish_lead + s.retire_after;
        clock.set(retires);
        let km = replica(&db.store, &db.url, &["ES256"], &cfg, &clock).await;
        assert_eq!(db.store.list_keys().await.unwrap().len(), 2);
        assert_eq!(kids(&km), vec![third.clone()]);
        assert_eq!(kid_of(&km.sign("JWT", &claims(retires)).unwrap()), third);
        km.maintain(retires).await.unwrap();
        assert_eq!(db.store.list_keys().await.unwrap().len(), 1);
    }

    /// Replicas rotating at once (by hand, then automatically when due)
    /// publish exactly one new key per algorithm, one per generation.
    async fn replicas_rotating_at_once(stores: [SqlStore; 3], url: &str, cfg: &KeysConfig) {
        let s = Schedule::new(cfg, &TokenConfig::default());
        let clock = manual(NOW);
        let algs = ["RS256", "ES256"];
        let a = replica(&stores[0], url, &algs, cfg, &clock).await;
        let b = replica(&stores[1], url, &algs, cfg, &clock).await;
        let c = replica(&stores[2], url, &algs, cfg, &clock).await;
        assert_eq!(stores[0].list_keys().await.unwrap().len(), 2);

        let summary = |rows: &[KeyRecord]| -> Vec<(i64, String)> {
            rows.iter().map(|r| (r.generation, r.alg.clone())).collect()
        };
        let (x, y, z) = tokio::join!(a.rotate(NOW), b.rotate(NOW), c.rotate(NOW));
        let published: Vec<String> = [x.unwrap(), y.unwrap(), z.unwrap()].concat();
        assert_eq!(published.len(), 2, "{published:?}");
        let rows = stores[0].list_keys().await.unwrap();
        let mut by_alg = summary(&rows);
        by_alg.sort_by(|l, r| l.1.cmp(&r.1).then(l.0.cmp(&r.0)));
        let generations: Vec<i64> = rows.iter().map(|r| r.generation).collect();
        assert_eq!(generations, [0, 1, 2, 3]);
        let algs_of: Vec<&str> = by_alg.iter().map(|(_, a)| a.as_str()).collect();
        assert_eq!(algs_of, ["ES256", "ES256", "RS256", "RS256"]);

        // Due again one rotation period after the new keys activated.
        let due = NOW + s.publish_lead + s.rotation_period;
        clock.set(due);
        let (x, y, z) = tokio::join!(a.maintain(due), b.maintain(due), c.maintain(due));
        let published: Vec<String> = [x.unwrap(), y.unwrap(), z.unwrap()].concat();
        assert_eq!(published.len(), 2, "{published:?}");
        let rows = stores[0].list_keys().await.unwrap();
        // The first keys retired meanwhile and were deleted.
        let generations: Vec<i64> = rows.iter().map(|r| r.generation).collect();
        assert_eq!(generations, [2, 3, 4, 5]);
        let mut new: Vec<&str> = rows[2..].iter().map(|r| r.alg.as_str()).collect();
        new.sort();
        assert_eq!(new, ["ES256", "RS256"]);
        // All replicas publish the same set.
        for km in [&a, &b, &c] {
            km.reload(due).await.unwrap();
        }
        assert_eq!(jwks(&a), jwks(&b));
        assert_eq!(jwks(&a), jwks(&c));
    }

    #[tokio::test]
    async fn replicas_rotating_at_once_on_sqlite() {
        let db = sqlite().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_RACE_SQLITE", 12, 1000);
        let other = || SqlStore::connect(&db.url, 2);
        let stores = [
            db.store.clone(),
            other().await.unwrap(),
            other().await.unwrap(),
        ];
        replicas_rotating_at_once(stores, &db.url, &cfg).await;
    }

    #[tokio::test]
    async fn replicas_rotating_at_once_on_postgres() {
        let pg = crate::store::conformance::TestPostgres::new().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_RACE_PG", 13, 1000);
        let stores = [pg.store.clone(), pg.store.clone(), pg.store.clone()];
        replicas_rotating_at_once(stores, "postgres://unused", &cfg).await;
        pg.drop_schema().await;
    }

    /// A replica learns of a key another one published by its periodic
    /// reload, or at once when a token carries an unknown kid (at most
    /// every [`MISS_RELOAD_THROTTLE_SECONDS`]).
    #[tokio::test]
    async fn replicas_pick_up_new_keys_without_a_restart() {
        let db = sqlite().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_RELOAD", 14, 0);
        let s = Schedule::new(&cfg, &TokenConfig::default());
        let clock = manual(NOW);
        let a = replica(&db.store, &db.url, &["EdDSA"], &cfg, &clock).await;
        let b = replica(&db.store, &db.url, &["EdDSA"], &cfg, &clock).await;
        let c = replica(&db.store, &db.url, &["EdDSA"], &cfg, &clock).await;
        let new = a.rotate(NOW).await.unwrap().remove(0);
        assert!(kids(&a).contains(&new));
        assert!(!kids(&b).contains(&new), "b has not re-read the store");
        b.reload(NOW).await.unwrap();
        assert!(kids(&b).contains(&new));

        let activation = NOW + s.publish_lead;
        clock.set(activation);
        let token = a.sign("at+jwt", &claims(activation)).unwrap();
        assert_eq!(kid_of(&token), new);
        assert_eq!(kid_of(&b.sign("at+jwt", &claims(activation)).unwrap()), new);
        // c re-read the store 9 s ago: an unknown kid is refused...
        c.last_reload.store(activation - 9, Ordering::SeqCst);
        let err = c
            .verify(&token, "at+jwt", "http://i", activation)
            .await
            .unwrap_err();
        assert!(matches!(err, KeyError::Rejected("unknown kid")), "{err}");
        assert!(!kids(&c).contains(&new));
        // ...10 s after, it re-reads once and accepts.
        c.verify(&token, "at+jwt", "http://i", activation + 1)
            .await
            .unwrap();
        assert!(kids(&c).contains(&new));
    }

    /// OIDC Registration §2: each client's `id_token_signed_response_alg`
    /// has an active key of its own, rotated like the default one.
    #[tokio::test]
    async fn each_algorithm_in_use_has_an_active_key() {
        let db = sqlite().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_PER_CLIENT", 15, 0);
        let clock = manual(NOW);
        let km = replica(
            &db.store,
            &db.url,
            &["RS256", "ES256", "EdDSA"],
            &cfg,
            &clock,
        )
        .await;
        assert_eq!(km.algorithms(), ["ES256", "EdDSA", "RS256"]);
        for (alg, expected) in [
            (Some("ES256"), Algorithm::ES256),
            (Some("EdDSA"), Algorithm::EdDSA),
            (Some("RS256"), Algorithm::RS256),
            (None, Algorithm::RS256),
        ] {
            let token = km.sign_with(alg, "JWT", &claims(NOW)).unwrap();
            assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, expected);
            km.verify(&token, "JWT", "http://i", NOW).await.unwrap();
        }
        let published = km.rotate(NOW).await.unwrap();
        assert_eq!(published.len(), 3);
        let rows = db.store.list_keys().await.unwrap();
        let mut next: Vec<&str> = rows[3..].iter().map(|r| r.alg.as_str()).collect();
        next.sort();
        assert_eq!(next, ["ES256", "EdDSA", "RS256"]);
        assert_eq!(
            states(&rows, NOW),
            ["active", "active", "active", "next", "next", "next"]
        );
    }

    /// `adapter keys list`: every key with its schedule and state, and
    /// nothing of any private key.
    #[tokio::test]
    async fn key_list_shows_the_schedule_and_no_private_material() {
        let db = sqlite().await;
        let cfg = rotating("AUTH_ADAPTER_KEYS_TEST_LIST", 16, 0);
        let s = Schedule::new(&cfg, &TokenConfig::default());
        let clock = manual(NOW);
        let km = replica(&db.store, &db.url, &["RS256", "EdDSA"], &cfg, &clock).await;
        km.rotate(NOW).await.unwrap();
        let rows = db.store.list_keys().await.unwrap();
        let text = describe_keys(&rows, NOW);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "KID",
                "ALG",
                "GENERATION",
                "CREATED",
                "ACTIVATES",
                "RETIRES",
                "STATE"
            ]
        );
        let activation = time::OffsetDateTime::from_unix_timestamp(NOW + s.publish_lead)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let expected = [
            ("RS256", "0", "active"),
            ("EdDSA", "1", "active"),
            ("RS256", "2", "next"),
            ("EdDSA", "3", "next"),
        ];
        assert_eq!(lines.len(), 1 + expected.len());
        for (line, (row, (alg, generation, state))) in
            lines[1..].iter().zip(rows.iter().zip(expected))
        {
            assert_eq!(line[0], row.kid);
            assert_eq!((line[1], line[2], line[6]), (alg, generation, state));
        }
        assert_eq!(lines[3][4], activation);
        assert_eq!(lines[1][5], lines[2][5], "retirement column");
        assert_ne!(lines[1][5], "-");
        assert_eq!(lines[3][5], "-");
        assert_eq!(
            describe_keys(&rows, NOW + s.publish_lead)
                .lines()
                .map(|l| l.split_whitespace().last().unwrap().to_string())
                .collect::<Vec<_>>(),
            ["STATE", "retiring", "retiring", "active", "active"]
        );
        // Nothing of the stored envelopes nor of the keys inside them.
        let key = EncryptionKey::resolve(&cfg, &db.url).unwrap();
        assert!(!text.contains(ENVELOPE_PREFIX));
        assert!(!text.contains(PKCS8_LABEL));
        for row in &rows {
            let envelope = row.private_pem.strip_prefix(ENVELOPE_PREFIX).unwrap();
            for part in envelope.split(':') {
                assert!(!text.contains(part));
            }
            let plain = key.open(&row.kid, envelope).unwrap();
            for line in plain.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!text.contains(line), "key material in the list");
            }
        }
    }
}
