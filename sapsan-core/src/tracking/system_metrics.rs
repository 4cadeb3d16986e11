//! System metrics, as MLflow's Python client logs them (`mlflow/system_metrics/`): on with
//! `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true` (or
//! [`crate::tracking::MlflowBackendBuilder::system_metrics`]), one sample every
//! `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` seconds (default 10), the mean of
//! `MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING` samples (default 1) logged at step 0, 1, 2, ...
//! of every open run, under `system/` or `system/<MLFLOW_SYSTEM_METRICS_NODE_ID>/`:
//!
//! | name | what |
//! |---|---|
//! | `cpu_utilization_percentage` | busy share of all CPUs since the last sample (`/proc/stat`) |
//! | `system_memory_usage_megabytes` | total minus available memory, 10^6 bytes (`/proc/meminfo`) |
//! | `system_memory_usage_percentage` | the same, in percent of the total |
//! | `disk_usage_percentage` | used share of the file system holding `/` |
//! | `disk_usage_megabytes` | its used bytes / 10^6 |
//! | `disk_available_megabytes` | its bytes available to users / 10^6 |
//! | `network_receive_megabytes` | bytes received by all interfaces since sampling began / 10^6 |
//! | `network_transmit_megabytes` | bytes sent, likewise |
//!
//! With the cargo feature `nvml` and an NVIDIA driver, each GPU `i` adds
//! `gpu_<i>_memory_usage_percentage`, `gpu_<i>_memory_usage_megabytes`,
//! `gpu_<i>_utilization_percentage`, `gpu_<i>_power_usage_watts` and
//! `gpu_<i>_power_usage_percentage` (NVML, as MLflow reads them).
//!
//! Values are rounded to one decimal, as MLflow does. Each run is sampled on its own schedule from
//! its start, as MLflow's per-run monitor does; one sampler thread per backend does the work, and
//! a training loop never waits on it (logging is an enqueue). A run stops getting samples when
//! it ends; the thread stops (at once, not at the next tick) with its backend.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::tracking::upload::pipeline::Pipeline;
use crate::tracking::{LogItem, Metric, now_ms};

/// How the sampler samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemMetricsOptions {
    /// Time between samples.
    pub interval: Duration,
    /// Samples averaged into one logged point.
    pub samples_before_logging: usize,
    /// Node name in the metric names (`system/<node>/...`), for runs spread over machines.
    pub node_id: Option<String>,
}

impl Default for SystemMetricsOptions {
    fn default() -> Self {
        SystemMetricsOptions {
            interval: Duration::from_secs(10),
            samples_before_logging: 1,
            node_id: None,
        }
    }
}

impl SystemMetricsOptions {
    /// The metric name prefix: `system/`, or `system/<node_id>/`.
    pub fn prefix(&self) -> String {
        match &self.node_id {
            Some(n) => format!("system/{n}/"),
            None => "system/".to_owned(),
        }
    }
}

/// Raw counters read from the system at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    /// (busy, total) CPU jiffies over all CPUs.
    cpu: (u64, u64),
    /// Bytes (received, sent) over all interfaces.
    net: (u64, u64),
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("reading system metrics", path, e))
}

/// (busy, total) jiffies from the `cpu` line of `/proc/stat`: total is the sum of all fields,
/// idle is `idle + iowait`.
fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (total, available) bytes from `/proc/meminfo`.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Bytes (received, sent) summed over the interfaces of `/proc/net/dev`.
fn parse_net(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*v.first()?, *v.get(8)?))
        })
        .fold((0, 0), |(r, t), (a, b)| (r + a, t + b))
}

fn counters() -> Result<Counters> {
    Ok(Counters {
        cpu: parse_cpu(&read("/proc/stat")?).unwrap_or_default(),
        net: parse_net(&read("/proc/net/dev")?),
    })
}

/// (total, used, available) bytes of the file system holding `path`, as `df` and psutil count
/// them.
fn disk(path: &str) -> Result<(u64, u64, u64)> {
    let c = std::ffi::CString::new(path).map_err(|_| Error::Internal {
        what: "reading disk usage".into(),
        reason: format!("path {path:?} has a NUL byte"),
    })?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is a plain struct the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(
            "reading disk usage",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    let f = st.f_frsize as u64;
    let used = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * f;
    let avail = st.f_bavail as u64 * f;
    Ok((used + avail, used, avail))
}

/// One sample: metric name (without prefix) -> value, between counters `before` and `now`.
fn sample(before: &Counters, now: &Counters, start: &Counters) -> Result<BTreeMap<String, f64>> {
    let mut m = BTreeMap::new();
    let busy = now.cpu.0.saturating_sub(before.cpu.0) as f64;
    let total = now.cpu.1.saturating_sub(before.cpu.1) as f64;
    m.insert(
        "cpu_utilization_percentage".into(),
        if total > 0.0 {
            100.0 * busy / total
        } else {
            0.0
        },
    );
    if let Some((total, avail)) = parse_meminfo(&read("/proc/meminfo")?) {
        let used = total.saturating_sub(avail) as f64;
        m.insert("system_memory_usage_megabytes".into(), used / 1e6);
        m.insert(
            "system_memory_usage_percentage".into(),
            100.0 * used / (total.max(1) as f64),
        );
    }
    let (dtotal, dused, davail) = disk("/")?;
    m.insert(
        "disk_usage_percentage".into(),
        100.0 * dused as f64 / (dtotal.max(1) as f64),
    );
    m.insert("disk_usage_megabytes".into(), dused as f64 / 1e6);
    m.insert("disk_available_megabytes".into(), davail as f64 / 1e6);
    m.insert(
        "network_receive_megabytes".into(),
        now.net.0.saturating_sub(start.net.0) as f64 / 1e6,
    );
    m.insert(
        "network_transmit_megabytes".into(),
        now.net.1.saturating_sub(start.net.1) as f64 / 1e6,
    );
    Ok(m)
}

/// GPUs seen through NVML (cargo feature `nvml`): MLflow's `gpu_<i>_...` metrics. Without the
/// feature, or without an NVIDIA driver, there are none.
struct Gpus {
    #[cfg(feature = "nvml")]
    nvml: Option<nvml_wrapper::Nvml>,
}

impl Gpus {
    fn open() -> Self {
        #[cfg(feature = "nvml")]
        {
            let nvml = nvml_wrapper::Nvml::init()
                .map_err(|e| {
                    log::info!(target: "sapsan::system_metrics", "no GPU metrics: NVML: {e}");
                })
                .ok();
            Gpus { nvml }
        }
        #[cfg(not(feature = "nvml"))]
        Gpus {}
    }

    /// Adds each GPU's memory, utilization and power to `m`, as MLflow names them.
    #[cfg_attr(not(feature = "nvml"), allow(clippy::unused_self, unused_variables))]
    fn sample(&self, m: &mut BTreeMap<String, f64>) {
        #[cfg(feature = "nvml")]
        if let Some(nvml) = &self.nvml {
            let n = nvml.device_count().unwrap_or(0);
            for i in 0..n {
                let Ok(d) = nvml.device_by_index(i) else {
                    continue;
                };
                if let Ok(mem) = d.memory_info() {
                    let pct = 100.0 * mem.used as f64 / (mem.total.max(1) as f64);
                    m.insert(format!("gpu_{i}_memory_usage_percentage"), pct);
                    m.insert(
                        format!("gpu_{i}_memory_usage_megabytes"),
                        mem.used as f64 / 1e6,
                    );
                }
                if let Ok(u) = d.utilization_rates() {
                    m.insert(format!("gpu_{i}_utilization_percentage"), f64::from(u.gpu));
                }
                if let (Ok(mw), Ok(cap)) = (d.power_usage(), d.enforced_power_limit()) {
                    m.insert(format!("gpu_{i}_power_usage_watts"), f64::from(mw) / 1000.0);
                    m.insert(
                        format!("gpu_{i}_power_usage_percentage"),
                        100.0 * f64::from(mw) / f64::from(cap.max(1)),
                    );
                }
            }
        }
    }
}

/// One open run's sampling: its own schedule from its start, as MLflow's per-run monitor has.
#[derive(Debug)]
struct Watched {
    run: String,
    /// Step of its next point.
    step: i64,
    /// When its next sample is due.
    next: Instant,
    /// Counters at its start (network totals count from here) and at its last sample.
    first: Counters,
    last: Counters,
    /// Samples summed towards its next point, and how many.
    sums: BTreeMap<String, f64>,
    count: usize,
}

/// What the sampler thread and the backend share.
#[derive(Debug, Default)]
struct State {
    runs: Vec<Watched>,
    /// Bumped when `runs` changes, so the thread recomputes its next wake-up.
    version: u64,
    stop: bool,
}

/// The sampler of one backend. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Sampler {
    state: Arc<Shared<State>>,
    interval: Duration,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts the sampler thread, logging through `pipeline`.
    pub(crate) fn start(pipeline: Arc<Pipeline>, opts: SystemMetricsOptions) -> Result<Self> {
        counters()?; // says at once when this system has no /proc to read
        let state = Arc::new(Shared::new(State::default()));
        let s = state.clone();
        let interval = opts.interval;
        let thread = std::thread::Builder::new()
            .name("sapsan-system-metrics".into())
            .spawn(move || run(&s, &pipeline, &opts))
            .map_err(|e| Error::Internal {
                what: "starting the system metrics thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Sampler {
            state,
            interval,
            thread: Some(thread),
        })
    }

    /// Samples go to `run_id` too, from step 0, one every interval from now.
    pub(crate) fn watch(&self, run_id: &str) {
        let now = counters().unwrap_or_default();
        self.state.update(|g| {
            if !g.runs.iter().any(|w| w.run == run_id) {
                g.runs.push(Watched {
                    run: run_id.to_owned(),
                    step: 0,
                    next: Instant::now() + self.interval,
                    first: now,
                    last: now,
                    sums: BTreeMap::new(),
                    count: 0,
                });
                g.version += 1;
            }
        });
    }

    /// No more samples for `run_id` (it ended).
    pub(crate) fn unwatch(&self, run_id: &str) {
        self.state.update(|g| {
            g.runs.retain(|w| w.run != run_id);
            g.version += 1;
        });
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.state.update(|g| g.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Longest sleep with no run to sample (woken early by a new run).
const IDLE: Duration = Duration::from_secs(3600);

fn run(state: &Shared<State>, pipeline: &Pipeline, opts: &SystemMetricsOptions) {
    let prefix = opts.prefix();
    let gpus = Gpus::open();
    let per_point = opts.samples_before_logging.max(1);
    loop {
        let mut points: Vec<(String, Metric)> = Vec::new();
        {
            let g = state.lock();
            let version = g.version;
            let due = g
                .runs
                .iter()
                .map(|w| w.next)
                .min()
                .unwrap_or_else(|| Instant::now() + IDLE);
            let (mut g, _) = state.wait_guard_until(g, due, |g| g.stop || g.version != version);
            if g.stop {
                return;
            }
            let now = Instant::now();
            if !g.runs.iter().any(|w| w.next <= now) {
                continue; // the set of runs changed: wait again
            }
            let c = match counters() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!(target: "sapsan::system_metrics", "{e}; sample skipped");
                    g.runs.iter_mut().for_each(|w| w.next += opts.interval);
                    continue;
                }
            };
            let ts = now_ms();
            for w in g.runs.iter_mut().filter(|w| w.next <= now) {
                w.next += opts.interval;
                match sample(&w.last, &c, &w.first) {
                    Ok(mut m) => {
                        gpus.sample(&mut m);
                        for (k, v) in m {
                            *w.sums.entry(k).or_default() += v;
                        }
                        w.count += 1;
                    }
                    Err(e) => log::warn!(target: "sapsan::system_metrics", "{e}; sample skipped"),
                }
                w.last = c;
                if w.count < per_point {
                    continue;
                }
                for (k, v) in std::mem::take(&mut w.sums) {
                    let mean = (v / w.count as f64 * 10.0).round() / 10.0;
                    points.push((
                        w.run.clone(),
                        Metric::new(format!("{prefix}{k}"), mean, ts, w.step),
                    ));
                }
                w.count = 0;
                w.step += 1;
            }
        }
        // Outside the lock: starting or ending a run never waits for the queue.
        for (run, m) in points {
            pipeline.push(&run, LogItem::Metric(m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_as_the_kernel_writes_them() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        // busy = total - idle - iowait = 980 - 820
        assert_eq!(parse_cpu(stat), Some((160, 980)));
        let mem = "MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(
            parse_meminfo(mem),
            Some((16_000_000 * 1024, 4_000_000 * 1024))
        );
        let net = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo: 1000 10 0 0 0 0 0 0 2000 10 0 0 0 0 0 0\n  eth0: 500 5 0 0 0 0 0 0 700 7 0 0 0 0 0 0\n";
        assert_eq!(parse_net(net), (1500, 2700));
    }

    #[test]
    fn a_sample_holds_every_name_mlflow_writes_with_sane_values() {
        let a = counters().unwrap();
        let b = Counters {
            cpu: (a.cpu.0 + 30, a.cpu.1 + 120),
            net: (a.net.0 + 2_000_000, a.net.1 + 500_000),
        };
        let m = sample(&a, &b, &a).unwrap();
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "cpu_utilization_percentage",
                "disk_available_megabytes",
                "disk_usage_megabytes",
                "disk_usage_percentage",
                "network_receive_megabytes",
                "network_transmit_megabytes",
                "system_memory_usage_megabytes",
                "system_memory_usage_percentage",
            ]
        );
        assert_eq!(m["cpu_utilization_percentage"], 25.0);
        assert_eq!(m["network_receive_megabytes"], 2.0);
        assert_eq!(m["network_transmit_megabytes"], 0.5);
        for k in ["system_memory_usage_percentage", "disk_usage_percentage"] {
            assert!((0.0..=100.0).contains(&m[k]), "{k} = {}", m[k]);
        }
        assert!(m["system_memory_usage_megabytes"] > 0.0);
        assert!(m["disk_usage_megabytes"] + m["disk_available_megabytes"] > 0.0);
    }

    #[test]
    fn the_prefix_carries_the_node_id() {
        let mut o = SystemMetricsOptions::default();
        assert_eq!(o.prefix(), "system/");
        o.node_id = Some("node_0".into());
        assert_eq!(o.prefix(), "system/node_0/");
    }
}
