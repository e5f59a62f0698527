//! Devices: what identifies the browser a session lives in, and how the
//! user sees it. Owns the device cookie's value rules, the short label
//! derived from the User-Agent (no raw User-Agent is ever stored), the
//! opaque handle of a session in the device list, and how often a
//! session's last-seen time is written.

use crate::secret::hash;

/// Lifetime of the device cookie, seconds (one year). It outlives sessions
/// on purpose: it names the browser across logins.
pub const COOKIE_TTL_SECONDS: i64 = 365 * 24 * 3600;

/// A session's `last_seen_at` is written at most once per this many
/// seconds: a busy session costs one write a minute, not one per request.
pub const LAST_SEEN_INTERVAL_SECONDS: i64 = 60;

/// True for a device cookie value this provider could have made: 43
/// base64url characters (the form of [`crate::secret::random_token`]).
/// Anything else is replaced by a fresh value at the next login.
pub fn is_valid_id(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the store keeps of a device cookie: a hash, domain-separated from
/// the other hashed secrets.
pub fn id_hash(device_id: &str) -> String {
    hash(&format!("device:{device_id}"))
}

/// The handle of session `sid` in the device list: opaque, stable, and
/// neither the cookie (hash) nor the `sid` published in tokens.
pub fn handle(sid: &str) -> String {
    hash(&format!("device-handle:{sid}"))
}

/// Browsers, most specific token first (Edge and Opera say "Chrome" too,
/// Chrome says "Safari").
const BROWSERS: [(&str, &str); 12] = [
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
];

/// Operating systems, most specific first (Android says "Linux", iOS says
/// "like Mac OS X").
const SYSTEMS: [(&str, &str); 8] = [
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
];

/// A short label such as "Chrome on Linux" for a User-Agent header. Only
/// names from fixed tables come out, so the label is bounded and carries
/// nothing the client chose.
pub fn label(user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or_default();
    let find = |table: &[(&str, &'static str)]| {
        table
            .iter()
            .find(|(token, _)| ua.contains(token))
            .map(|(_, name)| *name)
    };
    match (find(&BROWSERS), find(&SYSTEMS)) {
        (Some(b), Some(os)) => format!("{b} on {os}"),
        (Some(b), None) => b.to_string(),
        (None, Some(os)) => format!("Browser on {os}"),
        (None, None) => "Unknown device".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_browser_and_os_from_fixed_tables() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                "Safari on iOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            ("curl/8.5.0", "curl"),
            ("", "Unknown device"),
        ];
        for (ua, expected) in cases {
            assert_eq!(label(Some(ua)), expected, "{ua}");
        }
        assert_eq!(label(None), "Unknown device");
        // Whatever the client sends, the label stays short and is ours.
        let hostile = format!("<script>{}</script> Firefox/1 Linux", "x".repeat(10_000));
        assert_eq!(label(Some(&hostile)), "Firefox on Linux");
    }

    #[test]
    fn only_random_token_shaped_values_are_device_ids() {
        assert!(is_valid_id(&crate::secret::random_token()));
        assert!(!is_valid_id("short"));
        assert!(!is_valid_id(&"a".repeat(44)));
        assert!(!is_valid_id(&format!("{}=", "a".repeat(42))));
    }

    #[test]
    fn handles_and_hashes_are_domain_separated() {
        assert_ne!(handle("x"), hash("x"));
        assert_ne!(id_hash("x"), hash("x"));
        assert_ne!(handle("x"), id_hash("x"));
        assert_eq!(handle("x"), handle("x"));
    }
}
