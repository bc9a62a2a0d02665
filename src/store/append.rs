//! What every backend's append shares: the next event id along the store's order, and the
//! answer body of a batch built from the events' stored JSON.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::StoredEvent;

/// A UUIDv7 for an event stamped `timestamp_ms`, greater than `last`: from the timestamp and
/// random bits when that is greater, else `last` plus one in its random bits (the clock is clamped
/// so the timestamp never goes back, but several ids share a millisecond, and a restart with the
/// clock behind starts at the last event's millisecond).
pub(super) fn next_event_id(last: Uuid, timestamp_ms: i64) -> Uuid {
    let random: [u8; 10] = rand::random();
    let fresh =
        uuid::Builder::from_unix_timestamp_millis(timestamp_ms.max(0) as u64, &random).into_uuid();
    if fresh > last {
        return fresh;
    }
    // 48 bits of milliseconds, 4 of version, 12 random (rand_a), 2 of variant, 62 random
    // (rand_b): count up in the 74 random bits, carrying into the milliseconds.
    let bits = last.as_u128();
    let millis = bits >> 80;
    let rand_a = (bits >> 64) & 0xfff;
    let rand_b = bits & ((1u128 << 62) - 1);
    let counter = ((rand_a << 62) | rand_b) + 1;
    let (millis, counter) = if counter >> 74 == 0 {
        (millis, counter)
    } else {
        (millis + 1, 0)
    };
    let rand_a = counter >> 62;
    let rand_b = counter & ((1u128 << 62) - 1);
    Uuid::from_u128((millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)
}

/// `{"data":[…]}` from events' stored JSON, without parsing it again.
pub(super) fn batch_body(events: &[Arc<StoredEvent>]) -> Bytes {
    let size = events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 12;
    let mut body = BytesMut::with_capacity(size);
    body.put_slice(b"{\"data\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(&event.json);
    }
    body.put_slice(b"]}");
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_greater_than_the_last_even_when_the_clock_is_behind() {
        let last = next_event_id(Uuid::nil(), 1_000_000);
        let behind = next_event_id(last, 10);
        assert!(behind > last);
        assert_eq!(behind.get_version_num(), 7);
        // The random bits all set: the count carries into the milliseconds.
        let full = Uuid::from_u128(
            (1_000u128 << 80) | (0x7 << 76) | (0xfff << 64) | (0b10 << 62) | ((1 << 62) - 1),
        );
        let next = next_event_id(full, 0);
        assert!(next > full);
        assert_eq!(next.as_u128() >> 80, 1_001);
        assert_eq!(next.get_version_num(), 7);
        assert_eq!(next.get_variant(), uuid::Variant::RFC4122);
    }
}
