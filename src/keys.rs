//! API keys and roles (contract §2): what a key is, what each role may do, and the events a
//! key's life leaves in its organization's stream.
//!
//! A key is `cpk_` + 43 URL-safe random characters (32 bytes of entropy) and is stored only as
//! its SHA-256 (a fast hash is right for secrets with this much entropy).

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::{EventType, Namespace, NewEvent, OrganizationId, ResourceId, ResourceType};

pub const KEY_PREFIX: &str = "cpk_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Service,
    App,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Service => "service",
            Role::App => "app",
            Role::Reader => "reader",
        }
    }

    /// Whether this role may emit events of this type (contract §1's catalogue).
    pub fn may_emit(self, event_type: &EventType) -> bool {
        match event_type.namespace() {
            Namespace::Credential => false,
            Namespace::Custom => matches!(self, Role::Admin | Role::Service | Role::App),
            Namespace::Person | Namespace::Pod | Namespace::Job => {
                matches!(self, Role::Admin | Role::Service)
            }
        }
    }

    /// Whether this role may create and revoke keys of role `target`.
    pub fn may_manage(self, target: Role) -> bool {
        match self {
            Role::Admin => target != Role::Admin,
            Role::Service => matches!(target, Role::App | Role::Reader),
            Role::App | Role::Reader => false,
        }
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            "app" => Ok(Role::App),
            "reader" => Ok(Role::Reader),
            _ => Err(()),
        }
    }
}

/// A freshly generated key: the secret (shown once) and what is stored.
pub struct GeneratedKey {
    pub secret: String,
    pub hash: [u8; 32],
}

pub fn generate_key() -> GeneratedKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    GeneratedKey {
        hash: hash_secret(&secret),
        secret,
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether a configured key has the contract's shape: `cpk_` + at least 32 URL-safe characters.
pub fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() >= 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// An API key as stored (the secret only as a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub organization_id: Option<OrganizationId>,
    pub role: Role,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// A key to insert: the record and the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: KeyRecord,
    pub secret_hash: [u8; 32],
}

/// `credential.created` / `credential.revoked`: the key's name and role, never its secret.
pub fn credential_event(
    event_type: EventType,
    record: &KeyRecord,
    org: &OrganizationId,
) -> NewEvent {
    let mut payload = Map::new();
    payload.insert("name".into(), Value::String(record.name.clone()));
    payload.insert("role".into(), Value::String(record.role.as_str().into()));
    NewEvent::new(
        event_type,
        ResourceId::parse(&record.id.to_string()).expect("a UUID is a valid resource id"),
        ResourceType::parse("credential").expect("`credential` is a valid resource type"),
        org.clone(),
        None,
        &payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_contract_shape_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert!(is_well_formed(&a.secret), "{}", a.secret);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_secret(&a.secret));
        assert!(!is_well_formed("cpk_short"));
        assert!(!is_well_formed(&format!("xyz_{}", "a".repeat(40))));
    }

    #[test]
    fn roles_emit_what_the_catalogue_allows() {
        let t = |s: &str| EventType::parse(s).unwrap();
        assert!(Role::Service.may_emit(&t("pod.failed")));
        assert!(Role::Service.may_emit(&t("custom.x")));
        assert!(!Role::App.may_emit(&t("pod.failed")));
        assert!(Role::App.may_emit(&t("custom.x")));
        assert!(!Role::Reader.may_emit(&t("custom.x")));
        for role in [Role::Admin, Role::Service, Role::App, Role::Reader] {
            assert!(!role.may_emit(&t("credential.created")));
        }
    }

    #[test]
    fn services_manage_only_apps_and_readers() {
        assert!(Role::Service.may_manage(Role::App));
        assert!(Role::Service.may_manage(Role::Reader));
        assert!(!Role::Service.may_manage(Role::Service));
        assert!(Role::Admin.may_manage(Role::Service));
        assert!(!Role::App.may_manage(Role::Reader));
    }
}
