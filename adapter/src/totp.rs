//! Time-based one-time passwords (RFC 6238) and single-use recovery codes.
//!
//! This module owns the TOTP secret (20 random bytes, RFC 4226 §4's
//! recommended 160 bits), its provisioning URI (the Key URI format that
//! authenticator apps scan) and QR code, code verification with one step of
//! clock skew and replay refusal, and the recovery codes shown once at
//! enrolment. Parameters are the ones every authenticator app supports:
//! HMAC-SHA1, 6 digits, 30-second steps (RFC 6238 §4, §5.2); apps that are
//! handed another algorithm often silently use SHA1 anyway.
//!
//! Persisting the secret (sealed at rest) and the last accepted step is the
//! caller's job: [`TotpSecret::verify`] refuses any step at or before it.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Bytes of a generated secret (160 bits, RFC 4226 §4).
const SECRET_LEN: usize = 20;
/// RFC 6238 §5.2: 30 seconds is the recommended time step.
const STEP_SECONDS: u64 = 30;
/// Digits of a code (RFC 4226 §5.3: at least 6).
const DIGITS: u8 = 6;
/// RFC 6238 §5.2: at most one step backward or forward for clock drift and
/// the time it takes to type the code.
const SKEW_STEPS: u16 = 1;

/// A TOTP shared secret. Its `Debug` is redacted: it is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// Why a code or a QR code was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TotpError {
    /// Not the code of the current step or of a step next to it.
    #[error("the code is not valid")]
    Invalid,
    /// The code of a step already used (RFC 6238 §5.2: a code is accepted once).
    #[error("the code was already used")]
    Replayed,
    /// The QR code could not be rendered.
    #[error("QR code: {0}")]
    Qr(String),
}

impl TotpSecret {
    /// 20 bytes from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rng().fill(&mut bytes);
        TotpSecret(bytes)
    }

    /// RFC 4648 base32 without padding, the form authenticator apps take.
    pub fn to_base32(&self) -> String {
        Secret::new_stack(self.0).to_base32()
    }

    /// Parses [`TotpSecret::to_base32`]'s output (case-insensitive; spaces
    /// and padding ignored); `None` unless it decodes to exactly 20 bytes.
    pub fn from_base32(s: &str) -> Option<Self> {
        let cleaned: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let secret = Secret::try_from_base32(cleaned).ok()?;
        let bytes: [u8; SECRET_LEN] = secret.as_bytes().try_into().ok()?;
        Some(TotpSecret(bytes))
    }

    /// The Key URI an authenticator app scans:
    /// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`.
    /// Issuer and account are percent-encoded (a `:` in either becomes `%3A`,
    /// so the label's separator stays unambiguous).
    pub fn provisioning_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            account = percent_encode(account),
            secret = self.to_base32(),
        )
    }

    /// The provisioning URI as a QR code, an inline SVG document.
    pub fn qr_svg(&self, issuer: &str, account: &str) -> Result<String, TotpError> {
        let code = qrcode::QrCode::new(self.provisioning_uri(issuer, account).as_bytes())
            .map_err(|e| TotpError::Qr(e.to_string()))?;
        Ok(code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build())
    }

    /// Accepts the code of the step at `now` or ±1 step (RFC 6238 §5.2
    /// skew); returns the matched step; a step <= `last_step` is `Replayed`
    /// (a used code cannot be replayed).
    pub fn verify(&self, code: &str, now: i64, last_step: Option<u64>) -> Result<u64, TotpError> {
        let now = u64::try_from(now).map_err(|_| TotpError::Invalid)?;
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        // `check` compares tokens in constant time and reports the matched
        // step (earliest first within the window).
        let step = self
            .totp(DIGITS)
            .check(&code, now)
            .ok_or(TotpError::Invalid)?;
        // RFC 6238 §5.2: "the verifier MUST NOT accept the second attempt of
        // the OTP after the successful validation has been issued for the
        // first OTP"; a step at or before the last accepted one is refused.
        if last_step.is_some_and(|last| step <= last) {
            return Err(TotpError::Replayed);
        }
        Ok(step)
    }

    /// The code for a time (tests, test clients).
    pub fn code_at(&self, now: i64) -> String {
        self.totp(DIGITS)
            .generate(u64::try_from(now).unwrap_or(0))
            .to_string()
    }

    fn totp(&self, digits: u8) -> Totp {
        // Noncompliant only in skipping the builder's checks, which our
        // constants already satisfy (20-byte secret, 6 digits, 30 s); it
        // cannot fail.
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(digits)
            .with_skew(SKEW_STEPS)
            .with_step_duration(STEP_SECONDS)
            .with_secret(Secret::new_stack(self.0))
            .build_noncompliant()
    }
}

/// RFC 3986 §2.3: everything but unreserved characters is percent-encoded
/// (spaces as `%20`, which authenticator apps expect in the label).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Crockford's base32 alphabet in lower case: no `i`, `l`, `o`, `u`, so
/// a code read aloud or copied by hand is not mistyped.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of a recovery code: 10 × 5 bits = 50 bits.
const RECOVERY_CHARS: usize = 10;

/// Single-use recovery codes: `n` random codes (>= 50 bits each, human-typable
/// like `abcd-efgh-jk`) and their hashes (store only the hashes).
///
/// The hash is SHA-256 of the normalised code: a code is a second factor,
/// useless without the password, single-use, and its 50 random bits are not
/// a guessable human password, so a slow hash would only slow logins.
pub fn recovery_codes(n: usize) -> (Vec<String>, Vec<String>) {
    let mut rng = rand::rng();
    let mut codes = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for _ in 0..n {
        let raw: String = (0..RECOVERY_CHARS)
            .map(|_| RECOVERY_ALPHABET[rng.random_range(0..RECOVERY_ALPHABET.len())] as char)
            .collect();
        hashes.push(recovery_hash(&raw));
        codes.push(format!("{}-{}-{}", &raw[..4], &raw[4..8], &raw[8..]));
    }
    (codes, hashes)
}

/// Index of the hash the typed code matches (normalise case, spaces and
/// dashes; constant-time compare).
pub fn recovery_code_match(code: &str, hashes: &[String]) -> Option<usize> {
    let normalised: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if normalised.len() != RECOVERY_CHARS {
        return None;
    }
    let typed = recovery_hash(&normalised);
    // Every hash is compared, whatever matched, so timing says nothing
    // about which code (or whether one) matched.
    let mut found = None;
    for (i, h) in hashes.iter().enumerate() {
        if bool::from(typed.as_bytes().ct_eq(h.as_bytes())) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

fn recovery_hash(normalised: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(normalised.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA1 seed: the ASCII "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret(*b"12345678901234567890")
    }

    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let s = rfc_secret();
        // Appendix B, 8 digits.
        for (t, code) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
        ] {
            assert_eq!(s.totp(8).generate(t).to_string(), code, "T={t}");
        }
        // The same with 6 digits: the last six.
        assert_eq!(s.code_at(59), "287082");
        assert_eq!(s.code_at(1111111109), "081804");
    }

    #[test]
    fn skew_of_one_step_is_accepted_two_are_not() {
        let s = TotpSecret::generate();
        let now = 1_700_000_015; // mid-step
        let step = (now as u64) / STEP_SECONDS;
        assert_eq!(s.verify(&s.code_at(now), now, None), Ok(step));
        assert_eq!(s.verify(&s.code_at(now - 30), now, None), Ok(step - 1));
        assert_eq!(s.verify(&s.code_at(now + 30), now, None), Ok(step + 1));
        assert_eq!(
            s.verify(&s.code_at(now - 60), now, None),
            Err(TotpError::Invalid)
        );
        assert_eq!(
            s.verify(&s.code_at(now + 60), now, None),
            Err(TotpError::Invalid)
        );
        assert_eq!(s.verify("12345", now, None), Err(TotpError::Invalid));
        assert_eq!(s.verify("abcdef", now, None), Err(TotpError::Invalid));
        assert_eq!(s.verify("", now, None), Err(TotpError::Invalid));
        assert_eq!(s.verify(&s.code_at(now), -1, None), Err(TotpError::Invalid));
    }

    #[test]
    fn used_steps_are_replays() {
        let s = TotpSecret::generate();
        let now = 1_700_000_015;
        let step = s.verify(&s.code_at(now), now, None).unwrap();
        // The same code again.
        assert_eq!(
            s.verify(&s.code_at(now), now, Some(step)),
            Err(TotpError::Replayed)
        );
        // An older code still inside the skew window.
        assert_eq!(
            s.verify(&s.code_at(now - 30), now, Some(step)),
            Err(TotpError::Replayed)
        );
        // The next step is fresh.
        assert_eq!(
            s.verify(&s.code_at(now + 30), now + 30, Some(step)),
            Ok(step + 1)
        );
    }

    #[test]
    fn base32_round_trip_and_debug_redacted() {
        let s = TotpSecret::generate();
        let b32 = s.to_base32();
        assert_eq!(b32.len(), 32);
        assert_eq!(TotpSecret::from_base32(&b32), Some(s.clone()));
        assert_eq!(
            TotpSecret::from_base32(&b32.to_lowercase()),
            Some(s.clone())
        );
        assert_eq!(TotpSecret::from_base32("MFRGG"), None, "too short");
        assert_eq!(TotpSecret::from_base32("not base32!"), None);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&b32), "{dbg}");
        assert_eq!(dbg, "TotpSecret(<redacted>)");
    }

    #[test]
    fn provisioning_uri_format() {
        let s = rfc_secret();
        assert_eq!(
            s.provisioning_uri("Auth Adapter", "alice@example.org"),
            "otpauth://totp/Auth%20Adapter:alice%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Auth%20Adapter&algorithm=SHA1&digits=6&period=30"
        );
        // A colon cannot forge the label's separator.
        assert!(s
            .provisioning_uri("a:b", "c")
            .starts_with("otpauth://totp/a%3Ab:c?"));
    }

    #[test]
    fn qr_is_svg() {
        let svg = TotpSecret::generate()
            .qr_svg("Auth Adapter", "alice")
            .unwrap();
        assert!(
            svg.starts_with("<?xml") || svg.starts_with("<svg"),
            "{}",
            &svg[..40]
        );
        assert!(svg.contains("<svg"));
    }

    #[test]
    fn recovery_codes_match_once_normalised() {
        let (codes, hashes) = recovery_codes(10);
        assert_eq!(codes.len(), 10);
        assert_eq!(hashes.len(), 10);
        for (i, c) in codes.iter().enumerate() {
            assert_eq!(c.len(), 12, "{c}");
            assert_eq!(&c[4..5], "-");
            assert_eq!(&c[9..10], "-");
            assert!(!hashes[i].contains(&c.replace('-', "")));
            assert_eq!(recovery_code_match(c, &hashes), Some(i));
        }
        let c = &codes[3];
        let typed = format!(" {} ", c.replace('-', " ").to_uppercase());
        assert_eq!(recovery_code_match(&typed, &hashes), Some(3));
        assert_eq!(recovery_code_match(&c.replace('-', ""), &hashes), Some(3));
        // Mismatches.
        assert_eq!(recovery_code_match("0000-0000-00", &hashes), None);
        assert_eq!(recovery_code_match(&c[..11], &hashes), None);
        assert_eq!(recovery_code_match("", &hashes), None);
        assert_eq!(recovery_code_match(c, &[]), None);
        // Distinct codes.
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
    }
}
