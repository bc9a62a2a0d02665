//! Webhook secrets and signatures (contract §6). Signing itself — Standard Webhooks signatures
//! and cPod's own `X-Cpod-Signature` — is the wire crate's ([`cpod_proto::signing`]), beside the
//! check a receiver makes, so that what the broker signs and what the SDK verifies cannot
//! disagree; making secrets is the broker's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub use cpod_proto::signing::{SECRET_PREFIX, Signatures, sign};

/// A webhook secret: `whsec_` + standard base64 of 24 random bytes (32 characters, no padding).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_contract_shape() {
        let secret = generate_secret();
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(encoded.len(), 32);
        assert!(!encoded.contains('='));
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 24);
        assert_ne!(secret, generate_secret());
    }

    #[test]
    fn what_the_broker_signs_with_a_new_secret_verifies() {
        let secret = generate_secret();
        let signatures = sign(&[&secret], "msg_1", 1_777_636_800, b"{}");
        let headers = [
            ("webhook-id", "msg_1".to_owned()),
            ("webhook-timestamp", "1777636800".to_owned()),
            ("webhook-signature", signatures.standard),
        ];
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_636_800);
        assert_eq!(
            cpod_proto::signing::verify_at(&[&secret], &headers[..], b"{}", now),
            Ok(())
        );
    }
}
