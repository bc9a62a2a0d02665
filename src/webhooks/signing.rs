//! Webhook signatures (contract §6), after the Standard Webhooks specification, so that its
//! reference verifiers accept them, plus cPod's own `X-Cpod-Signature`.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the key is the base64-decoded
//! part of the secret after `whsec_`. Every active secret signs (two during a rotation).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

pub const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = hmac::Hmac<Sha256>;

/// A webhook secret: `whsec_` + standard base64 of 24 random bytes (32 characters, no padding).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The signature headers of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `webhook-signature`: `v1,<base64>` per secret, space-separated.
    pub standard: String,
    /// `X-Cpod-Signature`: `t=<timestamp>,v1=<hex>` with one `v1=` per secret.
    pub cpod: String,
}

/// Signs `body` for `message_id` at `timestamp` (Unix seconds) with every secret.
pub fn sign(secrets: &[&str], message_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
    let mut standard = Vec::with_capacity(secrets.len());
    let mut cpod = format!("t={timestamp}");
    for secret in secrets {
        let key = secret_key(secret);
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        standard.push(format!("v1,{}", STANDARD.encode(tag)));
        cpod.push_str(",v1=");
        cpod.push_str(&hex::encode(tag));
    }
    Signatures {
        standard: standard.join(" "),
        cpod,
    }
}

/// The HMAC key of a secret: the base64 after `whsec_` (a secret that is not valid base64 is
/// used as raw bytes, as the reference libraries do).
fn secret_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    #[test]
    fn the_standard_webhooks_test_vector_signs_as_published() {
        let signatures = sign(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signatures.standard,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            signatures.cpod,
            format!(
                "t=1614265330,v1={}",
                hex::encode(
                    STANDARD
                        .decode("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
                        .unwrap()
                )
            )
        );
    }

    #[test]
    fn every_active_secret_signs_during_a_rotation() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = generate_secret();
        let both = sign(&[&new, old], "id", 1, b"{}");
        let parts: Vec<&str> = both.standard.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], sign(&[old], "id", 1, b"{}").standard);
        assert_eq!(both.cpod.matches(",v1=").count(), 2);
    }

    #[test]
    fn generated_secrets_have_the_contract_shape() {
        let secret = generate_secret();
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(encoded.len(), 32);
        assert!(!encoded.contains('='));
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 24);
        assert_ne!(secret, generate_secret());
    }
}
