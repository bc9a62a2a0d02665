//! A hashed timing wheel: the one clock of a worker's streams (heartbeats, ticket expiry), in
//! place of a timer per connection.
//!
//! Time is cut into ticks; slot `n % slots` holds what is due at tick `n`. An entry due further
//! away than one turn of the wheel sits in the last slot it can reach and is simply scheduled
//! again when that slot comes round (its owner looks at the real due time then), so entries are
//! never moved when their due time changes: a stream that writes resets nothing here, it is
//! looked at once per heartbeat at most.

use std::time::Duration;

use tokio::time::Instant;

pub struct Wheel<T> {
    tick: Duration,
    /// `slots[i]`: what is due at the ticks `i`, `i + slots.len()`, …
    slots: Vec<Vec<T>>,
    /// The tick whose slot was taken last.
    now_tick: u64,
    origin: Instant,
}

impl<T> Wheel<T> {
    /// A wheel of `tick`s that reaches `horizon` ahead in one turn.
    pub fn new(tick: Duration, horizon: Duration, origin: Instant) -> Self {
        let slots = (horizon.as_nanos() / tick.as_nanos().max(1)) as usize + 2;
        Self {
            tick,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            now_tick: 0,
            origin,
        }
    }

    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Puts `entry` in the slot of the tick at or after `due` (at least the next tick, at most
    /// one turn ahead).
    pub fn schedule(&mut self, entry: T, due: Instant) {
        let due_tick = due
            .saturating_duration_since(self.origin)
            .as_nanos()
            .div_ceil(self.tick.as_nanos().max(1)) as u64;
        let turn = self.slots.len() as u64 - 1;
        let ahead = due_tick.saturating_sub(self.now_tick).clamp(1, turn);
        let slot = ((self.now_tick + ahead) % self.slots.len() as u64) as usize;
        self.slots[slot].push(entry);
    }

    /// Moves to the next tick, answering what was scheduled for it (the caller schedules again
    /// whatever is not done).
    pub fn advance(&mut self) -> Vec<T> {
        self.now_tick += 1;
        let slot = (self.now_tick % self.slots.len() as u64) as usize;
        std::mem::take(&mut self.slots[slot])
    }

    /// When the tick after the current one is due.
    pub fn next_tick_at(&self) -> Instant {
        self.origin + self.tick * u32::try_from(self.now_tick + 1).unwrap_or(u32::MAX)
    }

    /// Every entry still on the wheel.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_at_their_tick_and_far_ones_come_round_again() {
        let origin = Instant::now();
        let tick = Duration::from_millis(100);
        let mut wheel = Wheel::new(tick, Duration::from_millis(1000), origin);
        wheel.schedule("soon", origin + Duration::from_millis(250));
        wheel.schedule("now", origin);
        wheel.schedule("far", origin + Duration::from_secs(60));
        assert_eq!(wheel.len(), 3);
        assert_eq!(
            wheel.advance(),
            vec!["now"],
            "a due time passed goes to the next tick"
        );
        assert!(wheel.advance().is_empty());
        assert_eq!(
            wheel.advance(),
            vec!["soon"],
            "250 ms is reached at the third tick"
        );
        let mut far_seen_at = None;
        for tick in 4..20 {
            if wheel.advance().contains(&"far") {
                far_seen_at = Some(tick);
                break;
            }
        }
        // One turn is 11 slots; from tick 0, the furthest reachable tick is 11.
        assert_eq!(far_seen_at, Some(11));
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_tick_at(), origin + tick * 12);
    }
}
