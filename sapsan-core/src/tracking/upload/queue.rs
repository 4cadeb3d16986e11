//! The log queue: `enqueue` pushes onto an in-memory queue and returns at once; a background worker
//! drains it, groups the items per run into log-batch-sized [`RunBatch`]es and hands them to a
//! [`Deliver`] implementation (the HTTP sender).
//!
//! [`Deliver`] is the seam for durability: a journal that appends each round of batches to disk
//! before forwarding them (and replays what was never acknowledged) can wrap the HTTP sender without
//! touching the queue or the backend.
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::tracking::{LogItem, Metric};

/// Most metrics in one log-batch request.
pub const MAX_METRICS: usize = 1000;
/// Most params in one log-batch request.
pub const MAX_PARAMS: usize = 100;
/// Most tags in one log-batch request.
pub const MAX_TAGS: usize = 100;
/// Most metrics + params + tags in one log-batch request.
pub const MAX_ENTITIES: usize = 1000;

/// One queued item and the run it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Run id (shared between consecutive items of the same run).
    pub run: Arc<str>,
    /// The item.
    pub item: LogItem,
}

/// What one log-batch request carries for one run; within the server's limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunBatch {
    /// Run id.
    pub run_id: Arc<str>,
    /// Metric points, in the order they were logged.
    pub metrics: Vec<Metric>,
    /// Params (key, value); no key twice.
    pub params: Vec<(String, String)>,
    /// Tags (key, value); no key twice, the last value logged wins.
    pub tags: Vec<(String, String)>,
}

impl RunBatch {
    /// Number of entities (metrics + params + tags).
    pub fn len(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len()
    }
    /// Whether the batch carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where drained batches go. Implementations deliver every batch of one round (each already within
/// the server's limits, grouped per run, tags de-duplicated) and return the first error. One round
/// is delivered completely before the next one starts, so a later tag value never overtakes an
/// earlier one.
pub trait Deliver: Send + 'static {
    /// Delivers one round of batches.
    fn deliver(&mut self, batches: Vec<RunBatch>) -> Result<()>;
}

/// Groups `items` per run (runs in order of first appearance) and splits them into batches within
/// MLflow's log-batch limits. Identical params are sent once; for a tag set twice the last value wins.
/// `items` is left empty with its capacity, to be reused.
pub fn build_batches(items: &mut Vec<Queued>) -> Vec<RunBatch> {
    let mut order: Vec<Arc<str>> = Vec::new();
    let mut per_run: HashMap<Arc<str>, RunBatch> = HashMap::new();
    for Queued { run, item } in items.drain(..) {
        let b = per_run.entry(run.clone()).or_insert_with(|| {
            order.push(run.clone());
            RunBatch {
                run_id: run,
                ..RunBatch::default()
            }
        });
        match item {
            LogItem::Metric(m) => b.metrics.push(m),
            LogItem::Param { key, value } => {
                if !b.params.iter().any(|(k, _)| *k == key) {
                    b.params.push((key, value));
                }
            }
            LogItem::Tag { key, value } => match b.tags.iter_mut().find(|(k, _)| *k == key) {
                Some(t) => t.1 = value,
                None => b.tags.push((key, value)),
            },
        }
    }
    let mut out = Vec::new();
    for run in order {
        let Some(all) = per_run.remove(&run) else {
            continue;
        };
        split_into(all, &mut out);
    }
    out
}

/// Splits one run's items into batches of at most 1000 metrics, 100 params, 100 tags, 1000 entities.
fn split_into(all: RunBatch, out: &mut Vec<RunBatch>) {
    let RunBatch {
        run_id,
        metrics,
        params,
        tags,
    } = all;
    let mut metrics = metrics.into_iter().peekable();
    let mut params = params.into_iter().peekable();
    let mut tags = tags.into_iter().peekable();
    while metrics.peek().is_some() || params.peek().is_some() || tags.peek().is_some() {
        let mut b = RunBatch {
            run_id: run_id.clone(),
            ..RunBatch::default()
        };
        b.params.extend(params.by_ref().take(MAX_PARAMS));
        b.tags.extend(tags.by_ref().take(MAX_TAGS));
        let room = (MAX_ENTITIES - b.params.len() - b.tags.len()).min(MAX_METRICS);
        b.metrics.extend(metrics.by_ref().take(room));
        out.push(b);
    }
}

#[derive(Default)]
struct Inner {
    items: Vec<Queued>,
    /// Items ever pushed.
    enqueued: u64,
    /// A flush is waiting: send without lingering.
    urgent: bool,
    shutdown: bool,
    /// The run id of the last push, shared with the next push to the same run (no allocation).
    last_run: Option<Arc<str>>,
    /// The buffer of the previous round, emptied: pushes reuse its memory (no page faults).
    spare: Option<Vec<Queued>>,
    /// Items handed to [`Deliver`] and finished with (delivered or failed).
    delivered: u64,
    first_error: Option<Error>,
    worker_gone: bool,
}

/// Largest buffer kept for reuse (items); larger ones (a long outage) are freed.
const MAX_SPARE: usize = 1 << 20;

/// Most items the queue holds by default before [`LogQueue::push`] waits for the worker to take
/// them (see [`LogQueue::start`]).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// The in-memory log queue and its background worker thread.
///
/// **Bounded**: it holds at most `capacity` items. The worker takes everything queued at each
/// round and hands it to the store (the journal file, or the in-memory store), which never waits
/// on the network; so the queue only fills when the store's disk is slower than the program
/// logs. Then [`LogQueue::push`] waits for the worker to take the items: memory stays bounded,
/// nothing is dropped here, and the program waits on its own disk, never on the server.
pub struct LogQueue {
    shared: Arc<Shared<Inner>>,
    worker: Option<JoinHandle<()>>,
    capacity: usize,
}

impl std::fmt::Debug for LogQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.shared.lock();
        f.debug_struct("LogQueue")
            .field("queued", &g.items.len())
            .field("enqueued", &g.enqueued)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl LogQueue {
    /// Starts the worker. After the first item of a quiet period it waits up to `linger` for more
    /// (a full batch, [`LogQueue::flush`] or shutdown cut that short), then delivers everything
    /// queued. At most `capacity` items wait in the queue (see the type's docs).
    pub fn start(sink: impl Deliver, linger: Duration, capacity: usize) -> Result<Self> {
        let shared = Arc::new(Shared::new(Inner {
            items: Vec::with_capacity(1024),
            ..Inner::default()
        }));
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name("sapsan-log-queue".into())
            .spawn(move || worker(s, sink, linger))
            .map_err(|e| Error::Internal {
                what: "starting the log queue thread".into(),
                reason: e.to_string(),
            })?;
        Ok(LogQueue {
            shared,
            worker: Some(worker),
            capacity: capacity.max(MAX_METRICS),
        })
    }

    /// Pushes `item` for `run_id`. Never waits on the network; waits for the worker only while
    /// the queue is full (see the type's docs).
    pub fn push(&self, run_id: &str, item: LogItem) {
        let mut g = self.shared.lock();
        if g.items.len() >= self.capacity && !g.worker_gone {
            g.urgent = true;
            self.shared.notify();
            g = self
                .shared
                .wait_idle(g, |i| i.items.len() < self.capacity || i.worker_gone);
        }
        let run = match &g.last_run {
            Some(r) if **r == *run_id => r.clone(),
            _ => {
                let r: Arc<str> = Arc::from(run_id);
                g.last_run = Some(r.clone());
                r
            }
        };
        g.items.push(Queued { run, item });
        g.enqueued += 1;
        let n = g.items.len();
        drop(g);
        // Wake the worker only when it can be waiting: on the first item, or when a batch is full.
        if n == 1 || n == MAX_METRICS {
            self.shared.notify();
        }
    }

    /// Waits until every item pushed so far was handed to the store, or `deadline` passed
    /// ([`Error::Timeout`]); returns the first delivery error since the last flush.
    pub fn flush(&self, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        let target = self.shared.update(|g| {
            if !g.items.is_empty() {
                g.urgent = true;
            }
            g.enqueued
        });
        let (mut g, _) = self
            .shared
            .wait_until(deadline, |g| g.delivered >= target || g.worker_gone);
        if let Some(e) = g.first_error.take() {
            return Err(e);
        }
        if g.delivered < target {
            return Err(if g.worker_gone {
                Error::Internal {
                    what: "the log queue".into(),
                    reason: "its worker stopped before storing everything".into(),
                }
            } else {
                Error::Timeout {
                    what: "storing the logged items".into(),
                    after: started.elapsed(),
                }
            });
        }
        Ok(())
    }

    /// Items pushed so far.
    pub fn enqueued(&self) -> u64 {
        self.shared.lock().enqueued
    }
}

impl Drop for LogQueue {
    /// Hands what is queued to the store, then stops the worker.
    fn drop(&mut self) {
        self.shared.update(|g| g.shutdown = true);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker(shared: Arc<Shared<Inner>>, mut sink: impl Deliver, linger: Duration) {
    loop {
        let (mut items, upto) = {
            let g = shared.lock();
            let g = shared.wait_idle(g, |g| !g.items.is_empty() || g.shutdown);
            if g.items.is_empty() {
                break; // shut down with nothing left
            }
            let (mut g, _) = shared.wait_guard_until(g, Instant::now() + linger, |g| {
                g.urgent || g.shutdown || g.items.len() >= MAX_METRICS
            });
            g.urgent = false;
            let fresh = g.spare.take().unwrap_or_else(|| Vec::with_capacity(1024));
            (std::mem::replace(&mut g.items, fresh), g.enqueued)
        };
        // Pushers waiting for room may go on.
        shared.notify();

        let batches = build_batches(&mut items);
        if items.capacity() <= MAX_SPARE {
            let mut g = shared.lock();
            if g.spare.is_none() {
                g.spare = Some(items);
            }
        }
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.deliver(batches)))
            .unwrap_or_else(|_| {
                Err(Error::Internal {
                    what: "the log queue".into(),
                    reason: "storing a batch panicked".into(),
                })
            });
        shared.update(|g| {
            g.delivered = upto;
            if let Err(e) = res {
                g.first_error.get_or_insert(e);
            }
        });
    }
    shared.update(|g| g.worker_gone = true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(k: &str, step: i64) -> LogItem {
        LogItem::Metric(Metric {
            key: k.into(),
            value: step as f64,
            timestamp_ms: 1,
            step,
            model_id: None,
        })
    }
    fn q(run: &str, item: LogItem) -> Queued {
        Queued {
            run: Arc::from(run),
            item,
        }
    }
    fn param(k: &str, v: &str) -> LogItem {
        LogItem::Param {
            key: k.into(),
            value: v.into(),
        }
    }
    fn tag(k: &str, v: &str) -> LogItem {
        LogItem::Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn splits_at_the_server_limits() {
        let mut items: Vec<Queued> = (0..2500).map(|i| q("r", metric("m", i))).collect();
        items.extend((0..250).map(|i| q("r", param(&format!("p{i}"), "v"))));
        items.extend((0..150).map(|i| q("r", tag(&format!("t{i}"), "v"))));
        let b = build_batches(&mut items);
        for x in &b {
            assert!(x.metrics.len() <= MAX_METRICS);
            assert!(x.params.len() <= MAX_PARAMS);
            assert!(x.tags.len() <= MAX_TAGS);
            assert!(x.len() <= MAX_ENTITIES);
        }
        assert_eq!(b.iter().map(|x| x.metrics.len()).sum::<usize>(), 2500);
        assert_eq!(b.iter().map(|x| x.params.len()).sum::<usize>(), 250);
        assert_eq!(b.iter().map(|x| x.tags.len()).sum::<usize>(), 150);
        // 2900 entities fit in 3 full batches: params and tags go first, metrics fill the rest.
        assert_eq!(b.len(), 3);
        assert!(b[..2].iter().all(|x| x.len() == 1000));
        assert_eq!(
            (b[0].params.len(), b[0].tags.len(), b[0].metrics.len()),
            (100, 100, 800)
        );
        // Metric order is kept.
        let steps: Vec<i64> = b
            .iter()
            .flat_map(|x| x.metrics.iter().map(|m| m.step))
            .collect();
        assert_eq!(steps, (0..2500).collect::<Vec<_>>());
    }

    #[test]
    fn exactly_full_batches() {
        let b = build_batches(&mut (0..2000).map(|i| q("r", metric("m", i))).collect());
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|x| x.metrics.len() == 1000));
        assert!(build_batches(&mut Vec::new()).is_empty());
    }

    #[test]
    fn groups_per_run_and_dedupes() {
        let b = build_batches(&mut vec![
            q("a", param("lr", "0.1")),
            q("b", metric("loss", 1)),
            q("a", param("lr", "0.1")),
            q("a", tag("note", "x")),
            q("a", tag("note", "y")),
            q("b", metric("loss", 2)),
        ]);
        assert_eq!(b.len(), 2);
        assert_eq!(&*b[0].run_id, "a");
        assert_eq!(b[0].params, vec![("lr".to_string(), "0.1".to_string())]);
        assert_eq!(b[0].tags, vec![("note".to_string(), "y".to_string())]);
        assert_eq!(&*b[1].run_id, "b");
        assert_eq!(b[1].metrics.len(), 2);
    }

    use std::sync::Mutex;

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap()
    }
    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    struct Recorder(Arc<Mutex<Vec<RunBatch>>>, bool);
    impl Deliver for Recorder {
        fn deliver(&mut self, batches: Vec<RunBatch>) -> Result<()> {
            lock(&self.0).extend(batches);
            if self.1 {
                Err(Error::NoActiveRun)
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn flush_delivers_everything_and_coalesces() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = LogQueue::start(
            Recorder(seen.clone(), false),
            Duration::from_secs(60),
            DEFAULT_CAPACITY,
        )
        .unwrap();
        for i in 0..30 {
            queue.push("r", metric("m", i));
        }
        // A long linger: flush must cut it short, and all 30 go in one batch.
        queue.flush(soon()).unwrap();
        let got = lock(&seen).clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].metrics.len(), 30);
        assert_eq!(queue.enqueued(), 30);
        queue.flush(soon()).unwrap();
    }

    #[test]
    fn flush_returns_the_delivery_error_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = LogQueue::start(
            Recorder(seen, true),
            Duration::from_millis(1),
            DEFAULT_CAPACITY,
        )
        .unwrap();
        queue.push("r", metric("m", 0));
        assert!(matches!(queue.flush(soon()), Err(Error::NoActiveRun)));
        assert!(queue.flush(soon()).is_ok());
    }

    #[test]
    fn drop_delivers_what_is_queued() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let queue = LogQueue::start(
                Recorder(seen.clone(), false),
                Duration::from_secs(60),
                DEFAULT_CAPACITY,
            )
            .unwrap();
            queue.push("r", param("a", "1"));
        }
        assert_eq!(lock(&seen).len(), 1);
    }

    /// A store that takes its time: pushes beyond the capacity wait for it, and nothing is lost.
    struct Slow(Arc<Mutex<usize>>);
    impl Deliver for Slow {
        fn deliver(&mut self, batches: Vec<RunBatch>) -> Result<()> {
            std::thread::sleep(Duration::from_millis(5));
            *lock(&self.0) += batches.iter().map(RunBatch::len).sum::<usize>();
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_waits_for_the_store_and_loses_nothing() {
        let stored = Arc::new(Mutex::new(0));
        let queue = LogQueue::start(Slow(stored.clone()), Duration::ZERO, 1000).unwrap();
        for i in 0..20_000 {
            queue.push("r", metric("m", i));
            assert!(queue.shared.lock().items.len() <= 1000);
        }
        queue.flush(soon()).unwrap();
        assert_eq!(*lock(&stored), 20_000);
    }

    #[test]
    fn flush_ends_at_its_deadline() {
        struct Stuck;
        impl Deliver for Stuck {
            fn deliver(&mut self, _: Vec<RunBatch>) -> Result<()> {
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            }
        }
        let queue = LogQueue::start(Stuck, Duration::ZERO, DEFAULT_CAPACITY).unwrap();
        queue.push("r", metric("m", 0));
        let t = Instant::now();
        let e = queue.flush(Instant::now() + Duration::from_millis(50));
        assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
        assert!(t.elapsed() < Duration::from_millis(250));
        queue.flush(soon()).unwrap();
    }
}
