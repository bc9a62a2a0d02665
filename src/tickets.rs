//! Stream tickets (contract §2): short-lived, read-only credentials for `EventSource` and
//! browser WebSockets, which cannot send an `Authorization` header.
//!
//! A ticket is `cpt_` + base64url(key id ‖ expiry ‖ HMAC-SHA256 of both), signed with a secret
//! kept in the database. Nothing is stored per ticket: it is valid while its signature checks,
//! its expiry is in the future and its key is still active, so revoking the key kills it, and it
//! survives a broker restart for reconnects. Tickets are accepted by the stream endpoints only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

pub const TICKET_PREFIX: &str = "cpt_";
pub const DEFAULT_TTL_SECS: u64 = 3600;
pub const MAX_TTL_SECS: u64 = 86_400;

const DOMAIN: &[u8] = b"cpod-stream-ticket-v1";
const BODY_LEN: usize = 16 + 8;
const MAC_LEN: usize = 32;

type HmacSha256 = hmac::Hmac<Sha256>;

/// What a valid ticket says: whose it is and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketClaims {
    pub key_id: Uuid,
    pub expires_ms: i64,
}

/// Issues and checks tickets with one secret.
#[derive(Clone)]
pub struct TicketSigner {
    secret: [u8; 32],
}

impl TicketSigner {
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    fn mac(&self, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(DOMAIN);
        mac.update(body);
        mac
    }

    pub fn issue(&self, claims: TicketClaims) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + MAC_LEN);
        bytes.extend_from_slice(claims.key_id.as_bytes());
        bytes.extend_from_slice(&claims.expires_ms.to_be_bytes());
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        format!("{TICKET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The claims of a well-signed, unexpired ticket; `None` for anything else.
    pub fn verify(&self, ticket: &str, now_ms: i64) -> Option<TicketClaims> {
        let bytes = URL_SAFE_NO_PAD
            .decode(ticket.strip_prefix(TICKET_PREFIX)?)
            .ok()?;
        if bytes.len() != BODY_LEN + MAC_LEN {
            return None;
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        // Constant-time comparison of the tag.
        self.mac(body).verify_slice(tag).ok()?;
        let key_id = Uuid::from_slice(&body[..16]).ok()?;
        let expires_ms = i64::from_be_bytes(body[16..].try_into().ok()?);
        (expires_ms > now_ms).then_some(TicketClaims { key_id, expires_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_verifies_until_it_expires_and_only_with_its_secret() {
        let signer = TicketSigner::new([7; 32]);
        let claims = TicketClaims {
            key_id: Uuid::now_v7(),
            expires_ms: 1_000_000,
        };
        let ticket = signer.issue(claims);
        assert!(ticket.starts_with(TICKET_PREFIX));
        assert_eq!(signer.verify(&ticket, 999_999), Some(claims));
        assert_eq!(signer.verify(&ticket, 1_000_000), None, "expired");
        assert_eq!(
            TicketSigner::new([8; 32]).verify(&ticket, 0),
            None,
            "other secret"
        );
    }

    #[test]
    fn tampered_or_malformed_tickets_are_refused() {
        let signer = TicketSigner::new([7; 32]);
        let ticket = signer.issue(TicketClaims {
            key_id: Uuid::now_v7(),
            expires_ms: i64::MAX,
        });
        let mut tampered = ticket.clone().into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        for bad in [
            String::from_utf8(tampered).unwrap(),
            ticket.replacen("cpt_", "cpk_", 1),
            "cpt_".into(),
            "cpt_!!!".into(),
            ticket[..ticket.len() - 2].to_owned(),
        ] {
            assert_eq!(signer.verify(&bad, 0), None, "{bad}");
        }
    }
}
