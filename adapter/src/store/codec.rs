//! Versioned JSON payloads of stored records.
//!
//! A payload is `{"v": <format>, "d": <record>}`. Within one format version
//! changes are additive: new fields carry `#[serde(default)]` and unknown
//! fields are ignored, so during a rolling upgrade the old release reads what
//! the new one wrote and the other way round. A breaking change bumps
//! [`PAYLOAD_VERSION`]; a release then refuses payloads newer than it reads
//! ([`StoreError::NewerPayload`]) instead of misreading them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;

/// The payload format this release writes and the newest it reads.
pub const PAYLOAD_VERSION: u32 = 1;

#[derive(Serialize)]
struct Out<'a, T> {
    v: u32,
    d: &'a T,
}

#[derive(Deserialize)]
struct In {
    v: u32,
    d: Value,
}

/// Encodes a record for storage.
pub fn encode<T: Serialize>(record: &T) -> Result<String, StoreError> {
    Ok(serde_json::to_string(&Out {
        v: PAYLOAD_VERSION,
        d: record,
    })?)
}

/// Decodes a stored record.
pub fn decode<T: DeserializeOwned>(data: &str) -> Result<T, StoreError> {
    let envelope: In = serde_json::from_str(data)?;
    if envelope.v > PAYLOAD_VERSION {
        return Err(StoreError::NewerPayload(envelope.v));
    }
    Ok(serde_json::from_value(envelope.d)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Old {
        a: String,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct New {
        a: String,
        #[serde(default)]
        b: Option<i64>,
    }

    #[test]
    fn releases_read_each_others_payloads() {
        let from_new = encode(&New {
            a: "x".into(),
            b: Some(1),
        })
        .unwrap();
        assert_eq!(decode::<Old>(&from_new).unwrap(), Old { a: "x".into() });
        let from_old = encode(&Old { a: "y".into() }).unwrap();
        assert_eq!(
            decode::<New>(&from_old).unwrap(),
            New {
                a: "y".into(),
                b: None
            }
        );
    }

    #[test]
    fn newer_format_is_refused() {
        let err = decode::<Old>(r#"{"v":2,"d":{"a":"x"}}"#).unwrap_err();
        assert!(matches!(err, StoreError::NewerPayload(2)), "{err}");
        assert!(matches!(
            decode::<Old>(r#"{"a":"x"}"#).unwrap_err(),
            StoreError::Corrupt(_)
        ));
    }
}
