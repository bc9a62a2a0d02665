//! What the fuzz targets share: the principals a request is parsed for, a reference glob matcher
//! to hold the broker's to, and the checks of a WebSocket client frame.

use cpod_events::auth::Principal;
use cpod_events::event::OrganizationId;
use cpod_events::filter::OrgScope;
use cpod_events::http::ws::{
    api_error_frame, parse_client_frame, parse_subscription, parse_subscription_id,
};
use cpod_events::keys::Role;
use serde_json::Value;
use uuid::Uuid;

/// An admin key (every organization) and a reader of one organization: parsing differs by who
/// asks (`organizationId`, `*`).
pub fn principals() -> [Principal; 2] {
    [
        Principal {
            key_id: Uuid::from_u128(1),
            role: Role::Admin,
            organization_id: None,
        },
        Principal {
            key_id: Uuid::from_u128(2),
            role: Role::Reader,
            organization_id: Some(OrganizationId::parse("org-fuzz").expect("a valid organization")),
        },
    ]
}

/// The contract's glob (§1) as a table, independent of the broker's backtracking matcher: `*`
/// matches any run of characters, anything else itself. `reach[j]`: the first `i` pattern bytes
/// match the first `j` text bytes. Time `pattern.len() × text.len()`.
pub fn reference_glob(pattern: &[u8], text: &[u8]) -> bool {
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for &c in pattern {
        if c == b'*' {
            for j in 1..=text.len() {
                reach[j] = reach[j] || reach[j - 1];
            }
        } else {
            for j in (1..=text.len()).rev() {
                reach[j] = reach[j - 1] && text[j - 1] == c;
            }
            reach[0] = false;
        }
    }
    reach[text.len()]
}

/// A client's text frame through everything the socket parses before it touches the store: the
/// frame, then a subscribe's id, filter and start, for each principal. Every error answer is a
/// JSON `error` frame, and a reader's subscription never reaches another organization.
pub fn check_client_frame(text: &str) {
    let frame = match parse_client_frame(text) {
        Ok(frame) => frame,
        Err(error) => return assert_error_frame(&error),
    };
    assert!(frame.request.is_object());
    if frame.op != "subscribe" {
        return;
    }
    if let Err(e) = parse_subscription_id(&frame.request) {
        assert_error_frame(&api_error_frame(frame.id.clone(), &e));
    }
    for principal in principals() {
        match parse_subscription(&principal, &frame.request) {
            Ok((filter, _resume)) => {
                if let Some(own) = &principal.organization_id {
                    assert_eq!(filter.organization, OrgScope::One(own.clone()));
                }
            }
            Err(e) => assert_error_frame(&api_error_frame(frame.id.clone(), &e)),
        }
    }
}

/// An `error` frame: JSON with a string code and message.
pub fn assert_error_frame(frame: &str) {
    let value: Value = serde_json::from_str(frame).expect("an error frame is JSON");
    assert_eq!(value["op"], "error");
    assert!(value["code"].is_string() && value["message"].is_string());
}
