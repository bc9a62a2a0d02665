//! Webhook signatures (contract §6), after the Standard Webhooks specification so that its
//! reference verifiers accept them, plus cPod's own `X-Cpod-Signature`; and the check a receiver
//! makes of a delivery ([`verify`]).
//!
//! A delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64>`,
//! one per active secret, space-separated: two during a rotation). The signature is HMAC-SHA256
//! over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the
//! secret after `whsec_`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a delivery's timestamp may be from now, either way.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// How many entries of `webhook-signature` are looked at; those after are ignored (the broker
/// sends one per active secret, so a handful at most).
///
/// ```
/// assert_eq!(cpod_proto::signing::MAX_SIGNATURES, 32);
/// ```
pub const MAX_SIGNATURES: usize = 32;

/// The signature headers of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `webhook-signature`: `v1,<base64>` per secret, space-separated.
    pub standard: String,
    /// `X-Cpod-Signature`: `t=<timestamp>,v1=<hex>` with one `v1=` per secret.
    pub cpod: String,
}

/// Signs `body` for `message_id` at `timestamp` (Unix seconds) with every secret.
///
/// ```
/// // The Standard Webhooks specification's published example.
/// let signatures = cpod_proto::signing::sign(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
///     "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
/// assert_eq!(signatures.standard, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// ```
pub fn sign(secrets: &[&str], message_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
    let timestamp_text = timestamp.to_string();
    let mut standard = Vec::with_capacity(secrets.len());
    let mut cpod = format!("t={timestamp}");
    for secret in secrets {
        // A secret that is not base64 signs with its raw bytes, as the reference libraries do;
        // the broker only makes base64 ones.
        let key = secret_key(secret).unwrap_or_else(|| {
            let raw = secret.trim();
            raw.strip_prefix(SECRET_PREFIX)
                .unwrap_or(raw)
                .as_bytes()
                .to_vec()
        });
        let tag = mac(&key, message_id, &timestamp_text, body)
            .finalize()
            .into_bytes();
        standard.push(format!("v1,{}", STANDARD.encode(tag)));
        cpod.push_str(",v1=");
        cpod.push_str(&hex::encode(tag));
    }
    Signatures {
        standard: standard.join(" "),
        cpod,
    }
}

/// Why a delivery was refused.
///
/// ```
/// let error = cpod_proto::signing::VerifyError::MissingHeader("webhook-id");
/// assert_eq!(error.to_string(), "the webhook-id header is missing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    /// A required header is absent.
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds")]
    /// `webhook-timestamp` is not an integer.
    BadTimestamp,
    #[error("the delivery's timestamp is more than 5 minutes old")]
    /// Sent more than 5 minutes before now (a replay, or a clock far off).
    TooOld,
    #[error("the delivery's timestamp is more than 5 minutes in the future")]
    /// Sent more than 5 minutes after now.
    TooNew,
    #[error("no secret given, or a secret that is not `whsec_` + base64")]
    /// No usable secret was given.
    BadSecret,
    #[error("no signature matches")]
    /// No signature was made with any of the secrets over this body.
    NoMatch,
}

/// Headers, however the web framework at hand keeps them: implemented for `http`'s `HeaderMap`
/// (reqwest, axum, hyper), a `HashMap<String, String>` and a slice of pairs. Names compare
/// case-insensitively.
///
/// ```
/// use cpod_proto::signing::Headers;
/// let pairs = [("Webhook-Id", "msg_1")];
/// assert_eq!(pairs[..].header("webhook-id"), Some("msg_1"));
/// ```
pub trait Headers {
    /// The value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<S: std::hash::BuildHasher> Headers for HashMap<String, String, S> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// Checks a delivery: its timestamp is within 5 minutes of now and one of its signatures was
/// made with one of `secrets` (pass the old and the new secret during a rotation). Compare the
/// raw body bytes, before any JSON parsing.
///
/// ```
/// use cpod_proto::signing::{verify, VerifyError};
/// let headers = [
///     ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
///     ("webhook-timestamp", "1614265330"),
///     ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
/// ];
/// let body = br#"{"test": 2432232314}"#;
/// // That delivery is from 2021: correctly signed, but far too old today.
/// assert_eq!(verify(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], &headers[..], body), Err(VerifyError::TooOld));
/// ```
pub fn verify<H: Headers + ?Sized>(
    secrets: &[&str],
    headers: &H,
    body: &[u8],
) -> Result<(), VerifyError> {
    verify_at(secrets, headers, body, SystemTime::now())
}

/// [`verify`] as if the time were `now` (for tests and replays of recorded deliveries).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let headers = [
///     ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
///     ("webhook-timestamp", "1614265330"),
///     ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
/// ];
/// let now = UNIX_EPOCH + Duration::from_secs(1614265330);
/// cpod_proto::signing::verify_at(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], &headers[..],
///     br#"{"test": 2432232314}"#, now)?;
/// # Ok::<(), cpod_proto::signing::VerifyError>(())
/// ```
pub fn verify_at<H: Headers + ?Sized>(
    secrets: &[&str],
    headers: &H,
    body: &[u8],
    now: SystemTime,
) -> Result<(), VerifyError> {
    let id = headers
        .header("webhook-id")
        .ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let timestamp = headers
        .header("webhook-timestamp")
        .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = headers
        .header("webhook-signature")
        .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let tolerance = TOLERANCE.as_secs() as i64;
    if now.saturating_sub(sent) > tolerance {
        return Err(VerifyError::TooOld);
    }
    if sent.saturating_sub(now) > tolerance {
        return Err(VerifyError::TooNew);
    }
    let keys = secrets
        .iter()
        .map(|s| secret_key(s))
        .collect::<Option<Vec<_>>>()
        .filter(|k| !k.is_empty())
        .ok_or(VerifyError::BadSecret)?;
    // Only well-formed `v1,<base64>` entries count: a bare `v1,` or another version never matches.
    // At most MAX_SIGNATURES entries are read, so a forged header cannot buy unbounded work.
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter(|entry| !entry.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, sig)| *version == "v1" && !sig.is_empty())
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::NoMatch);
    }
    for key in &keys {
        // The body is hashed once per secret; each candidate only finishes a copy of the state.
        let mac = mac(key, id, timestamp, body);
        for candidate in &candidates {
            // `verify_slice` compares in constant time.
            if mac.clone().verify_slice(candidate).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

/// The HMAC key of a `whsec_` secret; `None` when it is not base64 or empty.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// The MAC state after `{id}.{timestamp}.{body}`.
fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SENT: u64 = 1614265330;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn headers(signature: &str) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", ID.to_owned()),
            ("webhook-timestamp", SENT.to_string()),
            ("webhook-signature", signature.to_owned()),
        ]
    }

    /// The Standard Webhooks specification's published example, both ways.
    #[test]
    fn the_published_test_vector_signs_and_verifies() {
        let signatures = sign(&[SECRET], ID, SENT as i64, BODY);
        assert_eq!(signatures.standard, SIGNATURE);
        assert_eq!(
            signatures.cpod,
            format!(
                "t={SENT},v1={}",
                hex::encode(STANDARD.decode(&SIGNATURE[3..]).unwrap())
            )
        );
        assert_eq!(
            verify_at(&[SECRET], &headers(SIGNATURE)[..], BODY, at(SENT)),
            Ok(())
        );
    }

    #[test]
    fn every_secret_signs_and_any_of_them_verifies() {
        let new = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let both = sign(&[new, SECRET], ID, SENT as i64, BODY);
        let parts: Vec<&str> = both.standard.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&[new], ID, SENT as i64, BODY).standard);
        assert_eq!(parts[1], SIGNATURE);
        assert_eq!(both.cpod.matches(",v1=").count(), 2);
        assert_eq!(
            verify_at(&[SECRET], &headers(&both.standard)[..], BODY, at(SENT)),
            Ok(())
        );
        assert_eq!(
            verify_at(&[new, SECRET], &headers(SIGNATURE)[..], BODY, at(SENT)),
            Ok(())
        );
        assert_eq!(
            verify_at(&[new], &headers(SIGNATURE)[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        let rotated = format!("v1,bm90IGEgc2lnbmF0dXJl {SIGNATURE} v2,xyz");
        assert_eq!(
            verify_at(&[SECRET], &headers(&rotated)[..], BODY, at(SENT)),
            Ok(())
        );
    }

    #[test]
    fn many_signatures_are_read_only_up_to_the_cap() {
        let junk = "v1,bm90IGEgc2lnbmF0dXJlIGF0IGFsbCwgYnV0IDMyIGJ5dGVzIQ==";
        let with_valid_at = |position: usize| {
            let mut entries = vec![junk; position];
            entries.push(SIGNATURE);
            entries.join(" ")
        };
        let secrets = [
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            SECRET,
        ];
        // The last entry the cap allows still matches, with any of several secrets.
        let last = with_valid_at(MAX_SIGNATURES - 1);
        assert_eq!(
            verify_at(&secrets, &headers(&last)[..], BODY, at(SENT)),
            Ok(())
        );
        // Past the cap, entries are not even decoded: a header of thousands costs no more.
        let past = with_valid_at(MAX_SIGNATURES);
        assert_eq!(
            verify_at(&secrets, &headers(&past)[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        let flood = with_valid_at(10_000);
        assert_eq!(
            verify_at(&secrets, &headers(&flood)[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        // Extra spaces between entries are not entries.
        let spaced = format!("{}  {SIGNATURE}", [junk; 10].join("   "));
        assert_eq!(
            verify_at(&[SECRET], &headers(&spaced)[..], BODY, at(SENT)),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_id_or_timestamp_fails() {
        assert_eq!(
            verify_at(
                &[SECRET],
                &headers(SIGNATURE)[..],
                br#"{"test": 2432232315}"#,
                at(SENT)
            ),
            Err(VerifyError::NoMatch)
        );
        let mut changed = headers(SIGNATURE);
        changed[0].1 = "msg_other".into();
        assert_eq!(
            verify_at(&[SECRET], &changed[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        let mut later = headers(SIGNATURE);
        later[1].1 = (SENT + 1).to_string();
        assert_eq!(
            verify_at(&[SECRET], &later[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_bare_or_foreign_signature_never_matches() {
        for signature in [
            "v1,",
            "v1",
            "",
            "v1,,",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,g0hM9SsE",
        ] {
            assert_eq!(
                verify_at(&[SECRET], &headers(signature)[..], BODY, at(SENT)),
                Err(VerifyError::NoMatch),
                "{signature:?}"
            );
        }
    }

    #[test]
    fn the_timestamp_must_be_within_five_minutes() {
        let h = headers(SIGNATURE);
        assert_eq!(verify_at(&[SECRET], &h[..], BODY, at(SENT + 300)), Ok(()));
        assert_eq!(verify_at(&[SECRET], &h[..], BODY, at(SENT - 300)), Ok(()));
        assert_eq!(
            verify_at(&[SECRET], &h[..], BODY, at(SENT + 301)),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            verify_at(&[SECRET], &h[..], BODY, at(SENT - 301)),
            Err(VerifyError::TooNew)
        );
        let mut bad = headers(SIGNATURE);
        bad[1].1 = "soon".into();
        assert_eq!(
            verify_at(&[SECRET], &bad[..], BODY, at(SENT)),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        let h = headers(SIGNATURE);
        assert_eq!(
            verify_at(&[SECRET], &h[1..], BODY, at(SENT)),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify_at(&[], &h[..], BODY, at(SENT)),
            Err(VerifyError::BadSecret)
        );
        assert_eq!(
            verify_at(&["whsec_!!!"], &h[..], BODY, at(SENT)),
            Err(VerifyError::BadSecret)
        );
    }

    #[test]
    fn header_maps_of_every_kind_are_read_case_insensitively() {
        let mut map = http::HeaderMap::new();
        map.insert("Webhook-Id", ID.parse().unwrap());
        assert_eq!(map.header("webhook-id"), Some(ID));
        let hash: HashMap<String, String> = [("WEBHOOK-ID".to_owned(), ID.to_owned())].into();
        assert_eq!(hash.header("webhook-id"), Some(ID));
    }
}
