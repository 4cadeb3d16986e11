//! [`Uploader`]: the background sender of a backend's store. It reads what the backend stored,
//! applies it to the server in order with the [`Replayer`] (consecutive log batches several at
//! once), and retries transient failures forever with capped exponential backoff, never
//! blocking the writer. [`Watch`] waits for its progress, always up to a deadline; [`Notifier`]
//! tells it the store grew.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::queue::MAX_METRICS;
use super::replay::{Replayer, is_transient};
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::tracking::Metric;
use crate::tracking::journal::{Reader, Record, Source};
use crate::tracking::rest::client::with_attempt_timeout;
use crate::tracking::rest::settings::Settings;

/// How the [`Uploader`] retries, and how many requests it keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// First delay after a failed attempt; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Log-batch requests sent at once for consecutive batch records (at least 1). Run creations,
    /// status changes and artifacts are sent one at a time, in order.
    pub concurrency: usize,
    /// The request timeout while requests land in time; doubles per timed-out request, up to
    /// [`MAX_TIMEOUT_FACTOR`] times, and comes back down as requests land quickly again.
    pub timeout: Duration,
}

impl UploadOptions {
    /// The uploader's options from client settings.
    pub fn from_settings(s: &Settings) -> Self {
        UploadOptions {
            backoff_base: s.backoff_base,
            backoff_max: s.backoff_max,
            concurrency: s.send_concurrency.max(1),
            timeout: s.timeout,
        }
    }
}

/// Most batch requests sent in one concurrent window. Every connection waits for the slowest
/// request at a window's end, so a window holds a whole backlog (ten 1000-metric requests per
/// connection and more) and its end is rare; the acknowledged offset still advances request by
/// request.
const WINDOW: usize = 1024;

#[derive(Debug, Default)]
struct UpState {
    /// Store length the uploader may read up to.
    written: u64,
    /// Offset up to which everything landed on the server.
    acked: u64,
    /// The last attempt reached the server (or none failed yet).
    healthy: bool,
    /// The last transient error, while unhealthy.
    last_error: Option<String>,
    /// First permanent (non-retryable) error since the last [`Watch::wait`].
    first_error: Option<Error>,
    stop: bool,
    gone: bool,
    /// Requests in flight.
    in_flight: usize,
    /// Failed attempts so far (transient errors).
    failures: u64,
    /// Bumped to cut the backoff waits short (see [`Watch::wait_now`]).
    nudges: u64,
    /// Requests allowed in flight now: 1 after a transient failure, one more per request that
    /// lands, up to [`UploadOptions::concurrency`]. Timed-out requests are not cancelled on the
    /// server: it finishes them for nobody, so re-sending every one of them at once keeps a
    /// slow server busier than the timeout forever.
    limit: usize,
    /// How much longer than the first attempt's timeout every request now waits, as the number
    /// of doublings (see [`patient_timeout`]): one more per timed-out request, one less per
    /// request that lands in under a quarter of its timeout. A server slower than the timeout
    /// for a while (load, a backlog after a freeze) gets new records with a longer timeout too,
    /// instead of each first attempt timing out and coming back as a slow duplicate.
    patience: u32,
}

impl UpState {
    fn drained(&self) -> bool {
        self.acked >= self.written
    }
}

type Up = Shared<UpState>;

fn new_state(concurrency: usize) -> Arc<Up> {
    Arc::new(Shared::new(UpState {
        healthy: true,
        limit: concurrency.max(1),
        ..UpState::default()
    }))
}

/// How far the uploader is behind what was logged, in bytes of its store (the journal, or memory):
/// what landed on the server, of what is stored. Bytes, not items: the two grow together and
/// `delivered == stored` means nothing waits; for a progress display, or to tell an uploader
/// that is slow (the delivered count still grows) from one that makes no headway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes delivered (everything before this offset is on the server).
    pub delivered: u64,
    /// Bytes stored so far.
    pub stored: u64,
}

/// How a wait for delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Everything stored so far landed on the server.
    Delivered,
    /// The server does not answer; the data stays in the store and is sent when it is back.
    ServerAway,
    /// The deadline passed while the server was still taking the data.
    TimedOut,
}

/// The background sender of a store. See the [module docs](self).
#[derive(Debug)]
pub struct Uploader {
    shared: Arc<Up>,
    worker: Shared<Option<JoinHandle<()>>>,
    replayer: Arc<Replayer>,
}

impl Uploader {
    /// Starts the uploader thread for the records of `source`, sending with `replayer`.
    pub fn start(source: Source, replayer: Arc<Replayer>, opts: UploadOptions) -> Result<Self> {
        let shared = new_state(opts.concurrency);
        let s = shared.clone();
        let rep = replayer.clone();
        let worker = std::thread::Builder::new()
            .name("sapsan-uploader".into())
            .spawn(move || upload_loop(s, source, rep, opts))
            .map_err(|e| Error::Internal {
                what: "starting the uploader thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Uploader {
            shared,
            worker: Shared::new(Some(worker)),
            replayer,
        })
    }

    /// A handle that tells the uploader about new records (for the store's writer).
    pub fn notifier(&self) -> Notifier {
        Notifier(self.shared.clone())
    }

    /// A handle that waits for delivery.
    pub fn watch(&self) -> Watch {
        Watch(self.shared.clone())
    }

    /// The replayer the uploader sends with (for sending at once: run creation, held records).
    pub fn replayer(&self) -> &Arc<Replayer> {
        &self.replayer
    }

    /// Stops the thread: it ends after the requests under way (each bounded by the request
    /// timeout). Waits for that until `deadline`; a thread still in a request then is left to
    /// end by itself. Whether it ended in time.
    pub fn stop(&self, deadline: Instant) -> bool {
        self.shared.update(|g| g.stop = true);
        let gone = self.shared.wait_until(deadline, |g| g.gone).1;
        let worker = self.worker.lock().take();
        if let Some(w) = worker
            && gone
        {
            let _ = w.join();
        }
        gone
    }
}

/// How long dropping an [`Uploader`] that was not stopped waits for its thread.
const DROP_WAIT: Duration = Duration::from_secs(2);

impl Drop for Uploader {
    /// Stops the thread, waiting at most 2 s, unless [`Uploader::stop`] was called:
    /// its deadline was the owner's to set (the end of the program: its grace plus one request
    /// timeout), and a thread still in a request then ends by itself.
    fn drop(&mut self) {
        if self.shared.lock().stop {
            return;
        }
        self.stop(Instant::now() + DROP_WAIT);
    }
}

/// Waits for an [`Uploader`]'s delivery, always up to a deadline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watch(Arc<Up>);

impl Watch {
    /// Waits until everything stored so far landed, the server is found unreachable, or
    /// `deadline` passed. `retry_now`: a server found away before this call gets one more attempt
    /// at once (its backoff cut short), and only a failure of that attempt counts; otherwise a
    /// server already known to be away ends the wait at once. Returns how it ended, or the first
    /// permanent delivery error since the last call.
    pub fn wait(&self, deadline: Instant, retry_now: bool) -> Result<Delivery> {
        let failures = self.0.update(|g| {
            if retry_now {
                g.nudges += 1;
            }
            g.failures
        });
        let (mut g, _) = self.0.wait_until(deadline, |g| {
            g.drained() || g.gone || (!g.healthy && (!retry_now || g.failures != failures))
        });
        if let Some(e) = g.first_error.take() {
            return Err(e);
        }
        Ok(if g.drained() {
            Delivery::Delivered
        } else if !g.healthy || g.gone {
            Delivery::ServerAway
        } else {
            Delivery::TimedOut
        })
    }

    /// Asks the uploader to retry at once (cutting its backoff short) and waits for the outcome:
    /// until everything stored so far landed, the next attempt failed too, or `deadline`. For
    /// reads that need the server anyway; delivery errors are left for the next [`Watch::wait`].
    pub fn wait_now(&self, deadline: Instant) {
        let failures = self.0.update(|g| {
            g.nudges += 1;
            g.failures
        });
        drop(self.0.wait_until(deadline, |g| {
            g.drained() || g.gone || (!g.healthy && g.failures != failures)
        }));
    }

    /// Asks the uploader to retry at once and waits until everything stored so far landed, or
    /// `deadline` passed; whether it all landed. Delivery errors are left for [`Watch::wait`].
    pub fn wait_delivered(&self, deadline: Instant) -> bool {
        self.0.update(|g| g.nudges += 1);
        self.0.wait_until(deadline, |g| g.drained() || g.gone).1
    }

    /// For the end of a program: waits for everything stored to land, up to `grace` while the
    /// server is away (so a server that just restarted still gets everything), and never past
    /// `grace + request_timeout` in all (a request under way when the grace ends may finish).
    /// Returns the first permanent delivery error.
    pub fn wait_at_exit(&self, grace: Duration, request_timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let (g, _) = self.0.wait_until(start + grace, |g| g.drained() || g.gone);
        drop(g);
        let (mut g, _) = self.0.wait_until(start + grace + request_timeout, |g| {
            g.drained() || g.gone || (!g.healthy && g.in_flight == 0)
        });
        match g.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether everything stored so far landed on the server.
    pub fn drained(&self) -> bool {
        self.0.lock().drained()
    }

    /// Whether the last attempt reached the server.
    pub fn healthy(&self) -> bool {
        self.0.lock().healthy
    }

    /// How far delivery is: bytes of the store that landed on the server, of those stored.
    pub fn backlog(&self) -> Backlog {
        let g = self.0.lock();
        Backlog {
            delivered: g.acked,
            stored: g.written,
        }
    }

    /// The offset up to which everything landed, and the last transient error (server away).
    pub fn progress(&self) -> (u64, Option<String>) {
        let g = self.0.lock();
        (g.acked, g.last_error.clone())
    }
}

/// Tells an [`Uploader`] that the store grew. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier(Arc<Up>);

impl Notifier {
    /// The store now ends at offset `len`.
    pub fn written(&self, len: u64) {
        self.0.update(|g| {
            if len > g.written {
                g.written = len;
            }
        });
    }
}

impl Reader for Notifier {
    fn written(&self, len: u64) {
        Notifier::written(self, len);
    }

    /// Why the uploader can never read the old file at the new offsets, or the new file at the
    /// old ones:
    /// - The uploader thread reads the file only for a range `[acked, written)` it took under the
    ///   state lock with `acked < written`, and `acked` reaches the end of that range only after
    ///   every record in it was read and sent (artifact bytes are read while the request is in
    ///   flight, before it is acknowledged). So `acked == written` means no read is going on and
    ///   none starts until `written` grows.
    /// - Only the journal's writer makes `written` grow, and it calls this under its own lock,
    ///   which also covers its [`Notifier::written`] calls (so no notice of an older, longer file
    ///   can arrive after the swap), and `written == len` means the last append was announced.
    /// - `swap` runs with the state lock held, so the uploader cannot take a range while the files
    ///   change places; when it gets the lock again the offsets already describe the new file.
    fn restart_if_delivered(
        &self,
        len: u64,
        swap: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<bool> {
        let mut g = self.0.lock();
        if g.acked != g.written || g.written != len || g.in_flight > 0 {
            return Ok(false);
        }
        let p = swap()?;
        g.acked = p;
        g.written = p;
        drop(g);
        self.0.notify();
        Ok(true)
    }
}

#[cfg(test)]
impl Notifier {
    /// A notifier with no uploader thread behind it (tests play the uploader).
    pub(crate) fn detached() -> Self {
        Notifier(new_state(4))
    }

    /// Acknowledges everything up to `end`, as the uploader does.
    pub(crate) fn ack_for_test(&self, end: u64) {
        ack(&self.0, end);
    }

    /// The acknowledged and written offsets.
    pub(crate) fn offsets(&self) -> (u64, u64) {
        let g = self.0.lock();
        (g.acked, g.written)
    }
}

/// Records that everything up to `end` landed.
fn ack(shared: &Up, end: u64) {
    shared.update(|g| {
        if end > g.acked {
            g.acked = end;
        }
    });
}

/// Sends one record with `f` (given the attempt number, 0 first), retrying transient failures
/// with backoff until it lands or is refused for good (reported, skipped), keeping at most
/// [`UpState::limit`] requests in flight. Each attempt's requests get the timeout
/// [`patient_timeout`] gives for [`UpState::patience`]. `false`: the uploader was stopped first
/// (no attempt starts after that).
fn send(shared: &Up, opts: &UploadOptions, mut f: impl FnMut(u32) -> Result<()>) -> bool {
    let mut attempt = 0u32;
    loop {
        let timeout = {
            // Woken when a request ends (each has a deadline: the request timeout) or on stop.
            let g = shared.lock();
            let mut g = shared.wait_idle(g, |g| g.in_flight < g.limit.max(1) || g.stop);
            if g.stop {
                return false;
            }
            g.in_flight += 1;
            patient_timeout(opts.timeout, g.patience)
        };
        let started = Instant::now();
        let res = with_attempt_timeout(timeout, || f(attempt));
        let took = started.elapsed();
        let mut g = shared.lock();
        g.in_flight -= 1;
        shared.notify();
        if g.stop && res.is_err() {
            return false;
        }
        match res {
            Ok(()) => {
                g.healthy = true;
                g.last_error = None;
                g.limit = (g.limit + 1).min(opts.concurrency.max(1));
                if took < timeout / 4 {
                    g.patience = g.patience.saturating_sub(1);
                }
                drop(g);
                shared.notify();
                return true;
            }
            Err(e) if is_transient(&e) => {
                if took >= timeout {
                    g.patience = (g.patience + 1).min(MAX_TIMEOUT_FACTOR.ilog2());
                }
                let wait = opts
                    .backoff_base
                    .checked_mul(1u32 << attempt.min(16))
                    .unwrap_or(opts.backoff_max)
                    .min(opts.backoff_max);
                attempt += 1;
                g.limit = 1;
                g.healthy = false;
                g.last_error = Some(e.to_string());
                g.failures += 1;
                let nudges = g.nudges;
                shared.notify();
                let (g, _) = shared
                    .wait_guard_until(g, Instant::now() + wait, |g| g.stop || g.nudges != nudges);
                if g.stop {
                    return false;
                }
            }
            Err(e) => {
                // Permanent (bad request, unknown run): report it, skip the record.
                log::warn!(target: "sapsan::upload", "the server refused a record: {e}");
                g.first_error.get_or_insert(e);
                drop(g);
                shared.notify();
                return true;
            }
        }
    }
}

/// Most the request timeout grows over [`UploadOptions::timeout`].
pub const MAX_TIMEOUT_FACTOR: u32 = 8;

/// The request timeout at `patience` ([`UpState::patience`]): `timeout` doubled that many times,
/// up to [`MAX_TIMEOUT_FACTOR`] times. A request retried after a timeout meets a server that
/// was slower than the timeout, and busier still: it finishes the timed-out request for nobody,
/// and the retry is then a duplicate, which MLflow takes on its slow path (see [`deliver`]).
/// Under load the same deadline can fail forever; a longer one lets the retry land. Still a
/// deadline: the uploader's stop does not wait for requests in flight (see [`Uploader::stop`]),
/// and the end of the program waits its grace plus one (unlengthened) request timeout.
pub(crate) fn patient_timeout(timeout: Duration, patience: u32) -> Duration {
    timeout.saturating_mul(1 << patience.min(MAX_TIMEOUT_FACTOR.ilog2()))
}

/// Points in the smallest request a failed batch is split into: MLflow looks duplicate points up
/// in chunks of 100, each chunk a scan of the run's points.
const SMALLEST_PIECE: usize = 100;

/// Sends record `rec` with `apply` through [`send`]. After a failed attempt a batch goes again in
/// smaller requests (half as many points per failed attempt, down to [`SMALLEST_PIECE`]),
/// resuming after the pieces that landed. A timed-out request is not cancelled on the server: it
/// lands there for nobody, and its retry is then a duplicate, which MLflow's SQL store takes on a
/// slow path (the insert fails on the primary key, then each chunk of 100 points is looked up
/// with a scan of the run's points): measured on a one-worker server, 1000 duplicate points of a
/// run of 53,000 take 5-6 s against 0.3 s for new ones. A whole batch retried with a 2 s timeout
/// then never lands again. No piece starts once the uploader is stopped.
fn deliver(
    shared: &Up,
    opts: &UploadOptions,
    rec: &Record,
    mut apply: impl FnMut(&Record) -> Result<()>,
) -> bool {
    let mut landed = 0usize;
    send(shared, opts, |attempt| {
        deliver_attempt(shared, rec, &mut apply, &mut landed, attempt)
    })
}

/// One attempt of [`deliver`]: the whole record first, then the pieces after `landed`.
fn deliver_attempt(
    shared: &Up,
    rec: &Record,
    apply: &mut impl FnMut(&Record) -> Result<()>,
    landed: &mut usize,
    attempt: u32,
) -> Result<()> {
    let Record::Batch {
        run,
        metrics,
        params,
        tags,
    } = rec
    else {
        return apply(rec);
    };
    if attempt == 0 {
        return apply(rec);
    }
    let piece = (MAX_METRICS >> attempt.min(10)).max(SMALLEST_PIECE);
    loop {
        let end = (*landed + piece).min(metrics.len());
        let first = *landed == 0;
        apply(&Record::Batch {
            run: run.clone(),
            metrics: metrics[*landed..end].to_vec(),
            params: if first { params.clone() } else { Vec::new() },
            tags: if first { tags.clone() } else { Vec::new() },
        })?;
        *landed = end;
        if *landed >= metrics.len() {
            return Ok(());
        }
        if shared.lock().stop {
            return Err(Error::Internal {
                what: "sending a batch in pieces".into(),
                reason: "the uploader was stopped".into(),
            });
        }
    }
}

/// The end of the window of batch records starting at `i` that may be sent at once: consecutive
/// batches, at most [`WINDOW`], no tag of a run set twice (a later value must not be overtaken).
fn window_end(recs: &[(Record, u64)], i: usize) -> usize {
    let mut seen = HashSet::new();
    let mut j = i;
    while j < recs.len() && j - i < WINDOW {
        let Record::Batch { run, tags, .. } = &recs[j].0 else {
            break;
        };
        if !tags.iter().all(|(k, _)| seen.insert((run, k.as_str()))) {
            break;
        }
        j += 1;
    }
    j.max(i + 1)
}

/// Sends the batch records `recs` over `opts.concurrency` connections; the acknowledged offset
/// advances over the longest delivered prefix. `false`: the uploader was stopped first.
fn send_window(shared: &Up, rep: &Replayer, opts: &UploadOptions, recs: &[(Record, u64)]) -> bool {
    let n = recs.len();
    let next = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let done = Shared::new((vec![false; n], 0usize));
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.clamp(1, n) {
            s.spawn(|| {
                while !stopped.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((rec, _)) = recs.get(k) else { break };
                    if !deliver(shared, opts, rec, |r| rep.apply_shared(r)) {
                        stopped.store(true, Ordering::Relaxed);
                        break;
                    }
                    let mut d = done.lock();
                    d.0[k] = true;
                    let mut p = d.1;
                    while p < n && d.0[p] {
                        p += 1;
                    }
                    if p > d.1 {
                        d.1 = p;
                        ack(shared, recs[p - 1].1);
                    }
                }
            });
        }
    });
    !stopped.load(Ordering::Relaxed)
}

/// Whether `rec` is a batch of metrics only (no params, no tags), which [`coalesce`] may merge.
fn metrics_only(rec: &Record) -> bool {
    matches!(rec, Record::Batch { metrics, params, tags, .. }
        if !metrics.is_empty() && params.is_empty() && tags.is_empty())
}

/// Re-packs runs of consecutive metrics-only batch records of one run into requests of
/// [`MAX_METRICS`] metrics (the last one of a run of records may be smaller); other records pass
/// through unchanged. The log queue cuts a batch short at the end of every linger round, so a
/// backlog read from the journal holds many part-filled batches; sending each alone costs the
/// server a request apiece.
///
/// `from` is the journal offset the records start at. Each output record carries the offset up to
/// which the journal is delivered once it and everything before it landed: the end of the last
/// input record whose metrics are all in it or earlier (metrics of a record split over two
/// requests count only when both landed; replaying them is harmless, the server drops exact
/// duplicate points).
fn coalesce(recs: Vec<(Record, u64)>, from: u64) -> Vec<(Record, u64)> {
    let mut out = Vec::with_capacity(recs.len());
    let mut covered = from;
    let mut it = recs.into_iter().peekable();
    while let Some((rec, end)) = it.next() {
        if !metrics_only(&rec) {
            covered = end;
            out.push((rec, end));
            continue;
        }
        let Record::Batch { run, metrics, .. } = rec else {
            continue;
        };
        // The group: this record and the metrics-only batches of the same run right after it.
        let mut group = metrics;
        let mut ends = vec![(group.len(), end)];
        while let Some((next, _)) = it.peek() {
            let same_run = matches!(next, Record::Batch { run: r, .. } if *r == run);
            if !(same_run && metrics_only(next)) {
                break;
            }
            if let Some((Record::Batch { metrics, .. }, e)) = it.next() {
                group.extend(metrics);
                ends.push((group.len(), e));
            }
        }
        let mut sent = 0;
        let mut ends = ends.into_iter().peekable();
        let mut points = group.into_iter();
        loop {
            let chunk: Vec<Metric> = points.by_ref().take(MAX_METRICS).collect();
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len();
            while let Some((_, e)) = ends.next_if(|(n, _)| *n <= sent) {
                covered = e;
            }
            out.push((
                Record::Batch {
                    run: run.clone(),
                    metrics: chunk,
                    params: Vec::new(),
                    tags: Vec::new(),
                },
                covered,
            ));
        }
    }
    out
}

fn upload_loop(shared: Arc<Up>, source: Source, rep: Arc<Replayer>, opts: UploadOptions) {
    'outer: loop {
        let (from, upto) = {
            let g = shared.lock();
            let g = shared.wait_idle(g, |g| !g.drained() || g.stop);
            if g.drained() {
                break;
            }
            (g.acked, g.written)
        };
        let recs = match source.read_journal(from, Some(upto)) {
            Ok(r) => {
                // Skipped: waiting on a record that cannot be read would stall all after it.
                if let Some(d) = r.damaged.into_iter().next() {
                    log::warn!(target: "sapsan::upload", "skipping a damaged journal record: {d}");
                    shared.update(|g| {
                        g.first_error.get_or_insert(Error::Io {
                            action: "reading the journal (a damaged record was skipped)",
                            path: d.path.clone(),
                            source: std::io::Error::other(d.place_and_reason()),
                        });
                    });
                }
                r.records
            }
            Err(e) => {
                shared.update(|g| {
                    g.first_error.get_or_insert(e);
                });
                break;
            }
        };
        if recs.is_empty() {
            // Only damaged lines, or nothing complete (cannot happen: the writer stores whole
            // lines first). No compaction can have come between: that needs everything
            // acknowledged.
            ack(&shared, upto);
            continue;
        }
        let recs = coalesce(recs, from);
        let mut i = 0;
        while i < recs.len() {
            let j = window_end(&recs, i);
            if j > i + 1 {
                if !send_window(&shared, &rep, &opts, &recs[i..j]) {
                    break 'outer;
                }
            } else {
                let (rec, end) = &recs[i];
                if !deliver(&shared, &opts, rec, |r| rep.apply(r)) {
                    break 'outer;
                }
                ack(&shared, *end);
            }
            i = j;
        }
        // A memory store frees what landed.
        source.release(shared.lock().acked);
    }
    shared.update(|g| g.gone = true);
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::RunStatus;
    use crate::tracking::journal::{self, RunRef};
    use crate::tracking::rest::client::HttpClient;

    fn metric(key: &str, value: f64, timestamp_ms: i64, step: i64) -> Metric {
        Metric {
            key: key.into(),
            value,
            timestamp_ms,
            step,
            model_id: None,
        }
    }

    fn batch(run: &str, n: usize, first: usize) -> Record {
        Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: (first..first + n)
                .map(|i| metric("m", i as f64, 1, i as i64))
                .collect(),
            params: vec![],
            tags: vec![],
        }
    }

    fn values(rec: &Record) -> Vec<f64> {
        match rec {
            Record::Batch { metrics, .. } => metrics.iter().map(|m| m.value).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn coalesce_repacks_part_filled_batches_and_acks_whole_records_only() {
        let status = Record::Status {
            run: RunRef::Key("a".into()),
            status: RunStatus::Finished,
            end_ms: Some(1),
        };
        let with_param = Record::Batch {
            run: RunRef::Key("a".into()),
            metrics: vec![],
            params: vec![("p".into(), "1".into())],
            tags: vec![],
        };
        // Rounds of the log queue: 1000 + 400, 1000 + 300 metrics of run a; then a param batch,
        // 200 metrics of run b, 500 of run a, a status.
        let recs = vec![
            (batch("a", 1000, 0), 110),
            (batch("a", 400, 1000), 120),
            (batch("a", 1000, 1400), 130),
            (batch("a", 300, 2400), 140),
            (with_param.clone(), 150),
            (batch("b", 200, 0), 160),
            (batch("a", 500, 2700), 170),
            (status.clone(), 180),
        ];
        let out = coalesce(recs, 100);
        let sizes: Vec<usize> = out.iter().map(|(r, _)| r.items()).collect();
        assert_eq!(sizes, [1000, 1000, 700, 1, 200, 500, 1]);
        let offsets: Vec<u64> = out.iter().map(|(_, o)| *o).collect();
        // The second request holds the 400 of the second record and 600 of the third: only the
        // second record is complete after it.
        assert_eq!(offsets, [110, 120, 140, 150, 160, 170, 180]);
        // Every metric of run a once, in order.
        let a: Vec<f64> = out[..3].iter().flat_map(|(r, _)| values(r)).collect();
        assert_eq!(a, (0..2700).map(|i| i as f64).collect::<Vec<_>>());
        assert_eq!(out[3].0, with_param);
        assert_eq!(out[5].0, batch("a", 500, 2700));
        assert_eq!(out[6].0, status);
        assert!(matches!(&out[4].0, Record::Batch { run: RunRef::Key(k), .. } if k == "b"));
    }

    #[test]
    fn coalesce_keeps_a_lone_record_and_its_offset() {
        let out = coalesce(vec![(batch("a", 3, 0), 40)], 10);
        assert_eq!(out, vec![(batch("a", 3, 0), 40)]);
        assert!(coalesce(Vec::new(), 10).is_empty());
    }

    #[test]
    fn offsets_restart_only_when_everything_landed_and_nothing_is_in_flight() {
        let n = Notifier::detached();
        let called = std::cell::Cell::new(0);
        let swap = |p: u64| {
            let called = &called;
            move || {
                called.set(called.get() + 1);
                Ok(p)
            }
        };
        n.written(100);
        // Behind: not swapped.
        assert!(!n.restart_if_delivered(100, &mut swap(30)).unwrap());
        n.ack_for_test(60);
        assert!(!n.restart_if_delivered(100, &mut swap(30)).unwrap());
        n.ack_for_test(100);
        // A request in flight.
        n.0.lock().in_flight = 1;
        assert!(!n.restart_if_delivered(100, &mut swap(30)).unwrap());
        n.0.lock().in_flight = 0;
        // The file is longer than the uploader was told (an append not yet announced).
        assert!(!n.restart_if_delivered(120, &mut swap(30)).unwrap());
        assert_eq!(called.get(), 0);
        assert_eq!(n.offsets(), (100, 100));
        // A failed swap leaves the offsets alone.
        let failed = n.restart_if_delivered(100, &mut || {
            Err(Error::io(
                "compacting the journal",
                "/x",
                std::io::Error::other("disk full"),
            ))
        });
        assert!(failed.is_err());
        assert_eq!(n.offsets(), (100, 100));
        // Delivered: the compact file counts as delivered and the uploader goes on after it.
        assert!(n.restart_if_delivered(100, &mut swap(30)).unwrap());
        assert_eq!(called.get(), 1);
        assert_eq!(n.offsets(), (30, 30));
        assert!(Watch(n.0.clone()).drained());
        n.written(45);
        assert_eq!(n.offsets(), (30, 45));
        assert!(!Watch(n.0.clone()).drained());
    }

    /// Runs `wait` on another thread; how long it took, or `None` if it had not returned after 20 s.
    fn timed(wait: impl FnOnce() + Send + 'static) -> Option<Duration> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            wait();
            let _ = tx.send(t.elapsed());
        });
        rx.recv_timeout(Duration::from_secs(20)).ok()
    }

    #[test]
    fn the_exit_wait_ends_at_its_grace_whatever_the_requests_in_flight_do() {
        // Requests that never end (in flight for good), the server failing or answering: the
        // wait at the end of a program returns at its grace all the same.
        for healthy in [false, true] {
            let n = Notifier::detached();
            n.written(100);
            {
                let mut g = n.0.lock();
                g.in_flight = 3;
                g.healthy = healthy;
            }
            let w = Watch(n.0.clone());
            let took = timed(move || {
                let _ = w.wait_at_exit(Duration::from_millis(300), Duration::from_millis(200));
            });
            let took = took.unwrap_or_else(|| panic!("healthy={healthy}: no return in 20 s"));
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(3),
                "healthy={healthy}: {took:?}"
            );
        }
    }

    fn fast_opts(concurrency: usize) -> UploadOptions {
        UploadOptions {
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            concurrency,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn after_a_timeout_new_records_get_a_longer_timeout_until_requests_are_quick_again() {
        let n = Notifier::detached();
        let opts = UploadOptions {
            timeout: Duration::from_millis(200),
            ..fast_opts(1)
        };
        let in_force = || {
            crate::tracking::rest::client::attempt_timeout_in_force()
                .unwrap()
                .as_millis()
        };
        // The first request outlasts its timeout (a server slower than 200 ms); the retry lands,
        // slowly (120 ms, over a quarter of its 400 ms). Landing in under 50 ms is quick.
        let mut seen = Vec::new();
        let rec = batch("a", 10, 0);
        assert!(deliver(&n.0, &opts, &rec, |_| {
            seen.push(in_force());
            if seen.len() == 1 {
                std::thread::sleep(Duration::from_millis(210));
                return Err(Error::Connection {
                    url: "u".into(),
                    reason: "timed out".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(120));
            Ok(())
        }));
        assert_eq!(seen, [200, 400]);
        assert_eq!(n.0.lock().patience, 1);
        // The next record starts with the longer timeout; a quick landing shortens it again.
        let mut next = Vec::new();
        for _ in 0..2 {
            assert!(deliver(&n.0, &opts, &rec, |_| {
                next.push(in_force());
                Ok(())
            }));
        }
        assert_eq!(next, [400, 200]);
        assert_eq!(n.0.lock().patience, 0);
    }

    #[test]
    fn the_timeout_grows_with_patience_up_to_a_cap() {
        let t = Duration::from_secs(2);
        let got: Vec<u64> = (0..6).map(|a| patient_timeout(t, a).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 16, 16]);
        assert_eq!(
            patient_timeout(t, u32::MAX),
            t * MAX_TIMEOUT_FACTOR,
            "no overflow"
        );
    }

    #[test]
    fn no_attempt_starts_once_the_uploader_is_stopped() {
        let n = Notifier::detached();
        n.0.lock().stop = true;
        let calls = std::cell::Cell::new(0);
        let sent = send(&n.0, &fast_opts(4), |_| {
            calls.set(calls.get() + 1);
            Ok(())
        });
        assert!(!sent);
        assert_eq!(calls.get(), 0);
    }

    #[test]
    fn after_a_failure_one_request_at_a_time_until_one_lands() {
        use std::sync::atomic::AtomicU64;
        let n = Notifier::detached();
        // A server that times out every request for 300 ms, then answers.
        let start = std::time::Instant::now();
        let now_in = AtomicUsize::new(0);
        let failures = AtomicU64::new(0);
        // Most requests in flight at once after the first failure, before the server is back.
        let worst_failing = AtomicUsize::new(0);
        let landed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let ok = send(&n.0, &fast_opts(4), |_| {
                            let k = now_in.fetch_add(1, Ordering::SeqCst) + 1;
                            let failing = start.elapsed() < Duration::from_millis(300);
                            // Once 4 have failed, every request let in before the first
                            // failure has ended (a later one starts only when none is in flight).
                            if failing && failures.load(Ordering::SeqCst) >= 4 {
                                worst_failing.fetch_max(k, Ordering::SeqCst);
                            }
                            std::thread::sleep(Duration::from_millis(10));
                            now_in.fetch_sub(1, Ordering::SeqCst);
                            if failing {
                                failures.fetch_add(1, Ordering::SeqCst);
                                return Err(Error::Connection {
                                    url: "u".into(),
                                    reason: "timed out".into(),
                                });
                            }
                            landed.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        });
                        assert!(ok);
                    }
                });
            }
        });
        assert!(failures.load(Ordering::SeqCst) > 4);
        assert_eq!(landed.load(Ordering::SeqCst), 20);
        assert_eq!(
            worst_failing.load(Ordering::SeqCst),
            1,
            "after a failure, requests to a failing server go one at a time"
        );
        // Back to full concurrency once requests land again.
        assert_eq!(n.0.lock().limit, 4);
    }

    #[test]
    fn a_failed_batch_goes_again_in_smaller_pieces_resuming_after_those_that_landed() {
        let n = Notifier::detached();
        let mut rec = batch("a", 1000, 0);
        if let Record::Batch { params, .. } = &mut rec {
            params.push(("lr".into(), "0.1".into()));
        }
        // (first step, points, params) of every request; the 1st and 3rd time out.
        let mut seen: Vec<(f64, usize, usize)> = Vec::new();
        let ok = deliver(&n.0, &fast_opts(4), &rec, |r| {
            let Record::Batch {
                metrics, params, ..
            } = r
            else {
                panic!("{r:?}")
            };
            seen.push((metrics[0].value, metrics.len(), params.len()));
            if seen.len() == 1 || seen.len() == 3 {
                return Err(Error::Connection {
                    url: "u".into(),
                    reason: "timed out".into(),
                });
            }
            Ok(())
        });
        assert!(ok);
        assert_eq!(
            seen,
            [
                (0.0, 1000, 1),
                (0.0, 500, 1),
                (500.0, 500, 0),
                (500.0, 250, 0),
                (750.0, 250, 0)
            ]
        );
    }

    fn tagged(run: &str, tags: &[&str]) -> (Record, u64) {
        let rec = Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: vec![metric("m", 1.0, 0, 0)],
            params: vec![],
            tags: tags.iter().map(|t| (t.to_string(), "v".into())).collect(),
        };
        (rec, 0)
    }

    #[test]
    fn windows_hold_consecutive_batches_without_a_tag_set_twice() {
        let status = Record::Status {
            run: RunRef::Key("a".into()),
            status: RunStatus::Finished,
            end_ms: Some(1),
        };
        let recs = vec![
            tagged("a", &["t"]),
            tagged("b", &["t"]), // another run's tag: fine
            tagged("a", &[]),
            tagged("a", &["t"]), // a's tag again: a new window
            tagged("a", &[]),
            (status, 0), // alone, in order
            tagged("a", &[]),
        ];
        assert_eq!(window_end(&recs, 0), 3);
        assert_eq!(window_end(&recs, 3), 5);
        assert_eq!(window_end(&recs, 5), 6);
        assert_eq!(window_end(&recs, 6), 7);
        let many: Vec<_> = (0..WINDOW + 5).map(|_| tagged("a", &[])).collect();
        assert_eq!(window_end(&many, 0), WINDOW);
    }

    /// A loopback stand-in for MLflow that answers `{}` to every request and keeps the bodies.
    fn recording_server() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    seen.lock().unwrap().push(v);
                }
                let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                              Content-Length: 2\r\nConnection: close\r\n\r\n{}";
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        (format!("http://{addr}"), bodies)
    }

    #[test]
    fn the_uploader_skips_a_damaged_record_and_reports_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = journal::Journal::create_in(tmp.path()).unwrap();
        let batch = |step: i64| Record::Batch {
            run: RunRef::Id("r1".into()),
            metrics: vec![metric("loss", 0.5, 7, step)],
            params: vec![("p".into(), step.to_string())],
            tags: vec![],
        };
        let mut recs: Vec<Record> = (0..4).map(batch).collect();
        recs.push(Record::Status {
            run: RunRef::Id("r1".into()),
            status: RunStatus::Finished,
            end_ms: Some(9),
        });
        let len = j.append(&recs).unwrap();
        // Damage the second record on disk (a changed digit; the newline stays), and the last.
        let path = j.dir().join(journal::JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = journal::read_records(j.dir(), 0, None).unwrap()[0].1 as usize;
        let at = second
            + bytes[second..]
                .windows(7)
                .position(|w| w == b"\"step\":")
                .unwrap();
        bytes[at + 7] = b'8';
        let at = bytes.windows(8).position(|w| w == b"FINISHED").unwrap();
        bytes[at] = b'X';
        std::fs::write(&path, &bytes).unwrap();

        let (url, bodies) = recording_server();
        let http = Arc::new(HttpClient::new(&url, &Settings::default()).unwrap());
        let source = Source::Dir(j.dir().to_owned());
        let rep = Arc::new(Replayer::new(http, source.clone(), true));
        let up = Uploader::start(
            source,
            rep,
            UploadOptions::from_settings(&Settings::default()),
        )
        .unwrap();
        up.notifier().written(len);
        let soon = Instant::now() + Duration::from_secs(30);
        let err = up.watch().wait(soon, false).unwrap_err().to_string();
        assert!(
            err.contains("damaged record was skipped")
                && err.contains(&format!("at byte {second}"))
                && err.contains("run r1")
                && err.contains("checksum mismatch"),
            "{err}"
        );
        assert!(
            up.watch().drained(),
            "delivery went on past the damaged records"
        );
        let mut steps: Vec<i64> = bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["metrics"].as_array().cloned().unwrap_or_default())
            .map(|m| m["step"].as_i64().unwrap())
            .collect();
        steps.sort(); // batches go out several at once
        assert_eq!(steps, [0, 2, 3]);
        let statuses = bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.get("status").is_some())
            .count();
        assert_eq!(statuses, 0, "the status record was the damaged last one");
        assert_eq!(up.watch().progress().0, len);
        assert!(up.stop(soon));
    }
}
