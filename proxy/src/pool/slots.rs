//! A pool's slots: a fair semaphore of `pool_size` permits that can be resized while permits
//! are out (RELOAD), and that counts the permits held (PAUSE waits for that count to reach 0).
//!
//! Shrinking forgets free permits at once; permits still out when the pool shrinks are
//! forgotten as they come back (`debt`), so the pool never has more than its new size in use
//! for longer than its busy connections take to finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct Size {
    /// The size in force.
    size: usize,
    /// Permits out that are forgotten when returned, because the pool shrank.
    debt: usize,
}

/// The slots of one pool.
#[derive(Debug)]
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    size: Mutex<Size>,
    held: AtomicUsize,
}

/// One slot taken; given back (or forgotten after a shrink) on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    /// `size` free slots.
    pub(crate) fn new(size: usize) -> Arc<Slots> {
        Arc::new(Slots {
            semaphore: Arc::new(Semaphore::new(size)),
            size: Mutex::new(Size { size, debt: 0 }),
            held: AtomicUsize::new(0),
        })
    }

    fn size_lock(&self) -> MutexGuard<'_, Size> {
        self.size.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free slot, first come first served. Cancel-safe: dropping the future
    /// takes nothing.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        match self.semaphore.clone().acquire_owned().await {
            Ok(permit) => {
                self.held.fetch_add(1, Ordering::SeqCst);
                Slot { permit: Some(permit), slots: self.clone() }
            }
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// A free slot if there is one and nobody is waiting for one (waiters keep their turn).
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        self.held.fetch_add(1, Ordering::SeqCst);
        Some(Slot { permit: Some(permit), slots: self.clone() })
    }

    /// Slots taken right now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// The size in force.
    pub(crate) fn size(&self) -> usize {
        self.size_lock().size
    }

    /// Changes the number of slots. Waiters are served at once when it grows.
    pub(crate) fn resize(&self, new_size: usize) {
        let mut size = self.size_lock();
        if new_size > size.size {
            let grow = new_size - size.size;
            let repaid = grow.min(size.debt);
            size.debt -= repaid;
            self.semaphore.add_permits(grow - repaid);
        } else {
            let shrink = size.size - new_size;
            let forgotten = self.semaphore.forget_permits(shrink);
            size.debt += shrink - forgotten;
        }
        size.size = new_size;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        self.slots.held.fetch_sub(1, Ordering::SeqCst);
        let mut size = self.slots.size_lock();
        if size.debt > 0 {
            size.debt -= 1;
            permit.forget();
        } else {
            // Back to the semaphore under the lock, so a concurrent resize counts it right.
            drop(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resizing_while_slots_are_out_converges_to_the_new_size() {
        let slots = Slots::new(3);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        assert_eq!(slots.held(), 2);
        slots.resize(1); // one free permit forgotten now, one owed
        assert_eq!(slots.semaphore.available_permits(), 0);
        drop(a); // repays the debt
        assert_eq!(slots.semaphore.available_permits(), 0);
        drop(b);
        assert_eq!((slots.semaphore.available_permits(), slots.held(), slots.size()), (1, 0, 1));

        let c = slots.acquire().await;
        slots.resize(4);
        assert_eq!(slots.semaphore.available_permits(), 3);
        slots.resize(2);
        assert_eq!(slots.semaphore.available_permits(), 1);
        drop(c);
        assert_eq!(slots.semaphore.available_permits(), 2);
    }

    #[tokio::test]
    async fn growing_pays_the_debt_first() {
        let slots = Slots::new(2);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        slots.resize(0); // both owed
        slots.resize(1); // one owed
        drop(a);
        assert_eq!(slots.semaphore.available_permits(), 0);
        drop(b);
        assert_eq!(slots.semaphore.available_permits(), 1);
    }
}
