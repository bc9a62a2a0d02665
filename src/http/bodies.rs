//! What request bodies in flight may cost: memory committed to bodies being read is bounded
//! overall and per key ([`BodyBudget`]), and a body must arrive within a deadline (see
//! [`crate::http::read_body`]), so that clients announcing large bodies and stalling cannot hold
//! the broker's memory.
//!
//! A body commits its announced `Content-Length` (up to the endpoint's limit) before the first
//! byte is read, since that is what the reader allocates; a body without one commits as it
//! grows. Over the overall budget: 503 `unavailable`; over its key's share: 429 `rate_limited`
//! (both with `Retry-After`). Nothing waits for budget: a refusal is immediate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::error::ApiError;

/// Who a body is counted against: the key that sent it, once authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyOwner(pub Uuid);

#[derive(Debug, Default)]
struct Committed {
    total: usize,
    per_key: HashMap<BodyOwner, usize>,
}

/// The bytes committed to request bodies in flight.
#[derive(Debug)]
pub struct BodyBudget {
    total_limit: usize,
    per_key_limit: usize,
    committed: Arc<Mutex<Committed>>,
}

impl BodyBudget {
    /// A budget of `total_limit` bytes, of which one key may hold `per_key_limit`.
    pub fn new(total_limit: usize, per_key_limit: usize) -> Self {
        Self {
            total_limit,
            per_key_limit: per_key_limit.min(total_limit),
            committed: Arc::default(),
        }
    }

    /// The share of one key: an eighth of the whole, but never less than one largest body.
    pub fn per_key_share(total_limit: usize, max_body_bytes: usize) -> usize {
        (total_limit / 8).max(max_body_bytes)
    }

    /// Commits `bytes` for `owner`; the reservation gives them back when dropped.
    pub fn reserve(&self, owner: BodyOwner, bytes: usize) -> Result<Reservation, ApiError> {
        let mut reservation = Reservation {
            owner,
            bytes: 0,
            per_key_limit: self.per_key_limit,
            total_limit: self.total_limit,
            committed: self.committed.clone(),
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }
}

/// Bytes committed to one body.
#[derive(Debug)]
pub struct Reservation {
    owner: BodyOwner,
    bytes: usize,
    per_key_limit: usize,
    total_limit: usize,
    committed: Arc<Mutex<Committed>>,
}

impl Reservation {
    /// Commits `more` bytes, or refuses without committing any.
    pub fn grow(&mut self, more: usize) -> Result<(), ApiError> {
        if more == 0 {
            return Ok(());
        }
        let mut committed = self
            .committed
            .lock()
            .expect("the budget lock is not poisoned");
        let own = committed.per_key.get(&self.owner).copied().unwrap_or(0);
        if own + more > self.per_key_limit {
            metrics::counter!("cpod_body_budget_refusals_total", "scope" => "key").increment(1);
            return Err(ApiError::RateLimited {
                retry_after_secs: 1,
            });
        }
        if committed.total + more > self.total_limit {
            metrics::counter!("cpod_body_budget_refusals_total", "scope" => "total").increment(1);
            return Err(ApiError::Overloaded(
                "the broker is reading as many request bodies as it may; retry shortly".into(),
            ));
        }
        committed.total += more;
        *committed.per_key.entry(self.owner).or_insert(0) += more;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        committed.total -= self.bytes;
        if let Some(own) = committed.per_key.get_mut(&self.owner) {
            *own -= self.bytes;
            if *own == 0 {
                committed.per_key.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u128) -> BodyOwner {
        BodyOwner(Uuid::from_u128(n))
    }

    #[test]
    fn a_key_holds_at_most_its_share_and_all_keys_at_most_the_total() {
        let budget = BodyBudget::new(100, 40);
        let a = budget.reserve(owner(1), 30).unwrap();
        let mut a2 = budget.reserve(owner(1), 10).unwrap();
        assert!(matches!(a2.grow(1), Err(ApiError::RateLimited { .. })));
        let b = budget.reserve(owner(2), 40).unwrap();
        assert!(matches!(
            budget.reserve(owner(3), 21),
            Err(ApiError::Overloaded(_))
        ));
        let c = budget.reserve(owner(3), 20).unwrap();
        drop(a);
        // 70 of 100 are held: a new key gets 30, not 31.
        assert!(matches!(
            budget.reserve(owner(4), 31),
            Err(ApiError::Overloaded(_))
        ));
        drop((b, c));
        let again = budget.reserve(owner(1), 30).unwrap();
        drop((again, a2));
        let committed = budget.committed.lock().unwrap();
        assert_eq!(committed.total, 0);
        assert!(committed.per_key.is_empty());
    }

    #[test]
    fn a_key_share_is_an_eighth_but_at_least_one_largest_body() {
        assert_eq!(BodyBudget::per_key_share(256 << 20, 4 << 20), 32 << 20);
        assert_eq!(BodyBudget::per_key_share(16 << 20, 4 << 20), 4 << 20);
    }
}
