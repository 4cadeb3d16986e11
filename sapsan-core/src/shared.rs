//! [`Shared`]: state shared between threads, with the two things every user of it needs: a lock
//! that survives a panicking holder, and a wait for a condition that always ends at a deadline.
//!
//! Every queue, uploader and backend in this crate keeps its cross-thread state in one of these,
//! so there is exactly one place that waits on a condition variable, and no wait without a
//! deadline outside a worker's idle loop ([`Shared::wait_idle`]).
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A value behind a mutex, with a condition variable to wait for changes of it.
#[derive(Debug, Default)]
pub struct Shared<T> {
    value: Mutex<T>,
    changed: Condvar,
}

impl<T> Shared<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Shared {
            value: Mutex::new(value),
            changed: Condvar::new(),
        }
    }

    /// Locks the value. A holder that panicked cannot have left it half-changed (every change is
    /// made under the lock by code that does not panic), so the poison flag is ignored.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the value under the lock and wakes every waiter.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.notify_all();
        r
    }

    /// Wakes every waiter (after a change made through [`Shared::lock`]).
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits until `done` holds or `deadline` passes. Returns the guard and whether `done` held.
    pub fn wait_until<'a>(
        &'a self,
        deadline: Instant,
        done: impl FnMut(&T) -> bool,
    ) -> (MutexGuard<'a, T>, bool) {
        self.wait_guard_until(self.lock(), deadline, done)
    }

    /// Waits, with the lock held by `g`, until `done` holds or `deadline` passes.
    pub fn wait_guard_until<'a>(
        &'a self,
        mut g: MutexGuard<'a, T>,
        deadline: Instant,
        mut done: impl FnMut(&T) -> bool,
    ) -> (MutexGuard<'a, T>, bool) {
        loop {
            if done(&g) {
                return (g, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (g, false);
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// For a background worker waiting for work: waits until `ready` holds, with no deadline. A
    /// worker's owner ends this wait by setting a stop flag that `ready` checks; never use it for
    /// a wait a caller of the library sits in.
    pub fn wait_idle<'a>(
        &'a self,
        mut g: MutexGuard<'a, T>,
        mut ready: impl FnMut(&T) -> bool,
    ) -> MutexGuard<'a, T> {
        while !ready(&g) {
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn wait_until_sees_a_change_from_another_thread() {
        let s = Arc::new(Shared::new(0u32));
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.update(|v| *v = 7))
        };
        let (g, ok) = s.wait_until(Instant::now() + Duration::from_secs(10), |v| *v == 7);
        assert!(ok);
        assert_eq!(*g, 7);
        drop(g);
        t.join().unwrap();
    }

    #[test]
    fn wait_until_ends_at_the_deadline() {
        let s = Shared::new(false);
        let t = Instant::now();
        let ok = s
            .wait_until(Instant::now() + Duration::from_millis(50), |v| *v)
            .1;
        assert!(!ok);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_panicking_holder_does_not_poison_the_value() {
        let s = Arc::new(Shared::new(1));
        let s2 = s.clone();
        let _ = std::thread::spawn(move || {
            let _g = s2.lock();
            panic!("holder panics");
        })
        .join();
        assert_eq!(*s.lock(), 1);
        s.update(|v| *v += 1);
        assert_eq!(*s.lock(), 2);
    }
}
