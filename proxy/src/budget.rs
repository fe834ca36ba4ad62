//! The memory budget for client messages: what pgvane may hold of large client messages, over
//! all clients at once (`client_message_budget_bytes`).
//!
//! A message longer than [`UNRESERVED_MESSAGE_BYTES`] is read only once its whole length is
//! reserved here; until then its client is not read from (backpressure), while every other
//! client goes on. Smaller messages need no reservation: each client reads at most one read
//! chunk ahead of what it has handled, so they are bounded per client.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages up to this length are read without a reservation.
pub const UNRESERVED_MESSAGE_BYTES: usize = 64 * 1024;

/// The budget is kept in units of this many bytes (a semaphore counts at most `u32` permits
/// per request).
const UNIT: usize = 1024;

/// The budget shared by all clients.
#[derive(Debug, Clone)]
pub struct MessageBudget {
    units: Arc<Semaphore>,
    bytes: usize,
}

/// Bytes reserved from the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl MessageBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        MessageBudget { units: Arc::new(Semaphore::new(units)), bytes: units * UNIT }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes not reserved at the moment.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    /// Reserves `bytes`, waiting until they are free. `None` if they never can be: more than
    /// the whole budget.
    pub async fn reserve(&self, bytes: usize) -> Option<Reservation> {
        if bytes > self.bytes {
            return None;
        }
        let units = u32::try_from(bytes.div_ceil(UNIT)).ok()?;
        let permit = self.units.clone().acquire_many_owned(units).await.ok()?;
        Some(Reservation { permit })
    }
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits() * UNIT
    }

    /// Adds `other` to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        self.permit.merge(other.permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back_when_dropped() {
        let budget = MessageBudget::new(100 * UNIT);
        let a = budget.reserve(60 * UNIT).await.unwrap();
        assert_eq!(budget.available(), 40 * UNIT);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50 * UNIT).await.map(|r| r.bytes()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "50 of 40 free units must wait");
        drop(a);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(got, Some(50 * UNIT));
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = MessageBudget::new(10 * UNIT);
        assert!(budget.reserve(10 * UNIT + 1).await.is_none());
        let mut r = budget.reserve(4 * UNIT).await.unwrap();
        r.merge(budget.reserve(1).await.unwrap());
        assert_eq!(r.bytes(), 5 * UNIT);
        assert_eq!(budget.available(), 5 * UNIT);
    }
}
