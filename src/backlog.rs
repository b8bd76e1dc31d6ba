//! The node's backlog: datagrams that arrive while every in-flight slot is taken.
//!
//! At normal load it stays empty: each datagram gets a slot as it arrives. Under overload (a
//! storm of clients after a power cut, a node left with its peers' share) the order of service
//! decides how many leases complete, so the backlog is not one first-come queue:
//! - what finishes an exchange (REQUEST, DECLINE, RELEASE) goes first, in arrival order: a
//!   REQUEST follows an offer the hive already made, and answering it completes a lease;
//! - what starts one (DISCOVER, INFORM, BOOTP) goes after, in arrival order while the oldest of
//!   them has waited less than [`CONGESTED`]: after a stall or a burst that the node drains in
//!   time, everyone is answered, first come first served. Past that the node is behind its load,
//!   not catching up with a burst, and the newest goes first (adaptive LIFO) until the backlog
//!   has emptied: its client is still waiting, whereas an answer to the oldest would arrive when
//!   its client has given up (load generators wait 1 s) or is about to retransmit. When the
//!   backlog is full, the oldest of the class is dropped to make room.
//!
//! A first-come queue under the same load answers every DISCOVER late, and REQUESTs wait behind
//! them: the work is done and the leases do not complete.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The wait of the oldest starting datagram past which the newest is served first. Shorter
/// stalls of a node (a busy core, a Redis fsync, a VM paused) are drained in arrival order.
pub const CONGESTED: Duration = Duration::from_secs(1);

/// How urgent a datagram is (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Finishes an exchange: served first, oldest first.
    Finishing,
    /// Starts one: served after, oldest first unless congested.
    Starting,
}

/// Two bounded queues of datagrams waiting for a slot, each with the moment it was queued.
#[derive(Debug)]
pub struct Backlog<T> {
    finishing: VecDeque<(Instant, T)>,
    starting: VecDeque<(Instant, T)>,
    capacity: usize,
    /// Newest first: set when the oldest starting datagram waited [`CONGESTED`], cleared when
    /// the backlog is empty (shedding the oldest must not turn it back to arrival order while
    /// the node is still behind).
    newest_first: bool,
}

impl<T> Backlog<T> {
    /// A backlog holding at most `capacity` datagrams of each class.
    pub fn new(capacity: usize) -> Self {
        Self {
            finishing: VecDeque::new(),
            starting: VecDeque::new(),
            capacity: capacity.max(1),
            newest_first: false,
        }
    }

    /// Queues `item` at `now`; gives back the one that no longer fits (the oldest of its
    /// class), if any.
    pub fn push(&mut self, item: T, class: Class, now: Instant) -> Option<T> {
        let queue = match class {
            Class::Finishing => &mut self.finishing,
            Class::Starting => &mut self.starting,
        };
        let shed = if queue.len() >= self.capacity {
            queue.pop_front().map(|(_, t)| t)
        } else {
            None
        };
        queue.push_back((now, item));
        shed
    }

    /// The next datagram to serve at `now` (see the module's doc).
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        if let Some((_, t)) = self.finishing.pop_front() {
            return Some(t);
        }
        let Some((oldest, _)) = self.starting.front() else {
            self.newest_first = false;
            return None;
        };
        if now.saturating_duration_since(*oldest) >= CONGESTED {
            self.newest_first = true;
        }
        let next = if self.newest_first {
            self.starting.pop_back()
        } else {
            self.starting.pop_front()
        };
        if self.starting.is_empty() {
            self.newest_first = false;
        }
        next.map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.finishing.len() + self.starting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Backlog, CONGESTED, Class};

    fn drain<T>(b: &mut Backlog<T>, now: Instant) -> Vec<T> {
        std::iter::from_fn(|| b.pop(now)).collect()
    }

    #[test]
    fn finishing_goes_first_then_starting_in_order_while_it_keeps_up() {
        let t0 = Instant::now();
        let mut b = Backlog::new(8);
        for (item, class) in [
            ("d1", Class::Starting),
            ("r1", Class::Finishing),
            ("d2", Class::Starting),
            ("r2", Class::Finishing),
            ("d3", Class::Starting),
        ] {
            assert!(b.push(item, class, t0).is_none());
        }
        assert_eq!(b.len(), 5);
        assert_eq!(drain(&mut b, t0), ["r1", "r2", "d1", "d2", "d3"]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_congested_backlog_serves_the_newest_start_first() {
        let t0 = Instant::now();
        let mut b = Backlog::new(8);
        b.push("d1", Class::Starting, t0);
        b.push("d2", Class::Starting, t0 + Duration::from_millis(10));
        b.push("r1", Class::Finishing, t0);
        b.push("d3", Class::Starting, t0 + CONGESTED);
        let now = t0 + CONGESTED;
        assert_eq!(b.pop(now), Some("r1"));
        assert_eq!(b.pop(now), Some("d3"));
        assert_eq!(b.pop(now), Some("d2"));
        // The one that waited longest goes last.
        let mut b = Backlog::new(8);
        b.push("old", Class::Starting, t0);
        b.push("new1", Class::Starting, now);
        b.push("new2", Class::Starting, now);
        assert_eq!(b.pop(now), Some("new2"));
        assert_eq!(b.pop(now), Some("new1"));
        assert_eq!(b.pop(now), Some("old"));
    }

    #[test]
    fn newest_first_lasts_until_the_backlog_empties() {
        let t0 = Instant::now();
        let late = t0 + CONGESTED;
        let mut b = Backlog::new(2);
        b.push("d1", Class::Starting, t0);
        b.push("d2", Class::Starting, late);
        assert_eq!(b.pop(late), Some("d2"));
        // Shedding the late one leaves only fresh ones: still newest first.
        b.push("d3", Class::Starting, late);
        assert_eq!(b.push("d4", Class::Starting, late), Some("d1"));
        assert_eq!(b.pop(late), Some("d4"));
        assert_eq!(b.pop(late), Some("d3"));
        assert_eq!(b.pop(late), None);
        // Emptied: arrival order again.
        b.push("d5", Class::Starting, late);
        b.push("d6", Class::Starting, late);
        assert_eq!(b.pop(late), Some("d5"));
    }

    #[test]
    fn a_full_class_sheds_its_oldest_and_leaves_the_other_alone() {
        let t0 = Instant::now();
        let mut b = Backlog::new(2);
        assert_eq!(b.push("r1", Class::Finishing, t0), None);
        assert_eq!(b.push("d1", Class::Starting, t0), None);
        assert_eq!(b.push("d2", Class::Starting, t0), None);
        assert_eq!(b.push("d3", Class::Starting, t0), Some("d1"));
        assert_eq!(b.push("r2", Class::Finishing, t0), None);
        assert_eq!(b.push("r3", Class::Finishing, t0), Some("r1"));
        assert_eq!(b.len(), 4);
        assert_eq!(drain(&mut b, t0), ["r2", "r3", "d2", "d3"]);
    }
}
