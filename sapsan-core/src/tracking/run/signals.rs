//! SIGINT and SIGTERM during a run: the open runs of every live [`MlflowBackend`] (and
//! [`OfflineBackend`]) are marked KILLED with an end time, in the journal first, their queues are
//! delivered, then the process dies of the signal it got (the
//! default disposition is restored and the signal raised again, so the exit status says "killed by
//! signal", as a shell or a batch scheduler expects).
//!
//! How it works:
//! - The signal handler itself only writes the signal number into a pipe (a self-pipe: `write` is
//!   async-signal-safe). A second signal while the first is being handled kills the process at
//!   once (the handler restores the default disposition and raises it; both are async-signal-safe).
//! - A thread named `sapsan-signals` reads the pipe and, in ordinary Rust, walks the registry of
//!   live backends. The registry holds weak references only: there is no process-global run state,
//!   each backend still owns its runs, and a dropped backend simply disappears from the registry.
//! - The clean-up gets [`KILL_GRACE`] at most (a dead server must not keep a killed job alive),
//!   then the signal is raised again with the default disposition.
//!
//! The handlers are installed when the first [`MlflowBackend`] is built (unless its builder says
//! `handle_signals(false)`), and only for signals whose disposition is still the default: a program
//! that ignores SIGINT (`nohup`, background jobs) or has its own handler keeps it.
//!
//! [`MlflowBackend`]: crate::tracking::MlflowBackend
//! [`OfflineBackend`]: crate::tracking::OfflineBackend
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::shared::Shared;

/// Longest time the signal path spends delivering queues and marking runs KILLED before the
/// process dies of the signal anyway.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// Something the signal path can end: a backend's open runs.
pub(crate) trait SignalTarget: Send + Sync + std::fmt::Debug {
    /// Delivers what is queued and marks every open run KILLED with an end time. Returns a line
    /// per problem (never containing credentials), for stderr.
    fn kill_open_runs(&self) -> Vec<String>;
}

/// Live backends, as weak references.
static REGISTRY: Shared<Vec<Weak<dyn SignalTarget>>> = Shared::new(Vec::new());

/// Registers `target` with the signal path, installing the handlers on first use.
///
/// The caller keeps the only strong reference; dropping it unregisters the target.
pub(crate) fn register(target: &Arc<dyn SignalTarget>) -> Result<()> {
    imp::install()?;
    let mut reg = REGISTRY.lock();
    reg.retain(|w| w.strong_count() > 0);
    reg.push(Arc::downgrade(target));
    Ok(())
}

/// Whether the SIGINT/SIGTERM handlers of this module are installed in this process.
pub fn handlers_installed() -> bool {
    imp::installed()
}

/// Number of live backends the signal path would end.
#[cfg(test)]
fn live_backends() -> usize {
    REGISTRY
        .lock()
        .iter()
        .filter(|w| w.strong_count() > 0)
        .count()
}

/// Ends the open runs of every live backend as KILLED, within [`KILL_GRACE`].
fn kill_all(signal_name: &str) {
    let targets: Vec<Arc<dyn SignalTarget>> =
        REGISTRY.lock().iter().filter_map(Weak::upgrade).collect();
    if targets.is_empty() {
        return;
    }
    log::warn!(
        target: "sapsan::signals",
        "{signal_name} received; marking the open MLflow runs KILLED"
    );
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("sapsan-kill-runs".into())
        .spawn(move || {
            for t in targets {
                for problem in t.kill_open_runs() {
                    log::warn!(target: "sapsan::signals", "{problem}");
                }
            }
            let _ = tx.send(());
        });
    match worker {
        Ok(_) => {
            if rx.recv_timeout(KILL_GRACE).is_err() {
                crate::diag::notice(
                    "sapsan::signals",
                    &format!(
                        "the MLflow server did not answer within {} s; exiting without marking \
                         every run KILLED",
                        KILL_GRACE.as_secs()
                    ),
                );
            }
        }
        Err(e) => crate::diag::notice(
            "sapsan::signals",
            &format!("cannot end the open MLflow runs: {e}"),
        ),
    }
}

#[cfg(unix)]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

    use super::{Error, Result};

    const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

    /// Write end of the self-pipe (-1 until installed).
    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
    /// Set by the handler on the first signal; a second one kills at once.
    static HANDLING: AtomicBool = AtomicBool::new(false);
    /// Outcome of the one installation attempt.
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

    pub(super) fn installed() -> bool {
        matches!(INSTALLED.get(), Some(Ok(())))
    }

    pub(super) fn install() -> Result<()> {
        INSTALLED
            .get_or_init(install_once)
            .clone()
            .map_err(|reason| Error::Setting {
                name: "handle_signals".into(),
                value: "true".into(),
                reason: format!(
                    "cannot install the SIGINT/SIGTERM handlers ({reason}); build the backend \
                     with `handle_signals(false)` to run without them"
                ),
            })
    }

    fn os_err(what: &str) -> String {
        format!("{what}: {}", std::io::Error::last_os_error())
    }

    fn install_once() -> std::result::Result<(), String> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(os_err("pipe"));
        }
        let [read_fd, write_fd] = fds;
        for fd in fds {
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // The handler must never block: a full pipe just drops the byte (one is enough).
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(write_fd, libc::F_GETFL);
            libc::fcntl(write_fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        PIPE_WRITE.store(write_fd, Ordering::SeqCst);
        std::thread::Builder::new()
            .name("sapsan-signals".into())
            .spawn(move || reader(read_fd))
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
        for sig in SIGNALS {
            // SAFETY: plain sigaction calls with zeroed, then filled, structs.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    return Err(os_err("sigaction"));
                }
                if old.sa_sigaction != libc::SIG_DFL {
                    // Ignored (nohup) or the program's own handler: leave it alone.
                    continue;
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                new.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut new.sa_mask);
                if libc::sigaction(sig, &new, std::ptr::null_mut()) != 0 {
                    return Err(os_err("sigaction"));
                }
            }
        }
        Ok(())
    }

    /// Restores the default disposition of `sig` and raises it. Async-signal-safe.
    fn die_of(sig: libc::c_int) {
        // SAFETY: sigaction, sigemptyset, raise and pthread_sigmask are async-signal-safe.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut dfl.sa_mask);
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }

    /// The signal handler: async-signal-safe (atomics, `write`, `sigaction`, `raise` only).
    extern "C" fn on_signal(sig: libc::c_int) {
        if HANDLING.swap(true, Ordering::SeqCst) {
            die_of(sig);
            return;
        }
        let fd = PIPE_WRITE.load(Ordering::SeqCst);
        if fd < 0 {
            die_of(sig);
            return;
        }
        let byte = sig as u8;
        // SAFETY: `write` is async-signal-safe; `byte` lives across the call. errno is saved and
        // restored so the interrupted code never sees it change.
        unsafe {
            let errno = errno_location();
            let saved = *errno;
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *errno = saved;
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe fn errno_location() -> *mut libc::c_int {
        // SAFETY: always valid for the calling thread.
        unsafe { libc::__errno_location() }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    unsafe fn errno_location() -> *mut libc::c_int {
        // SAFETY: always valid for the calling thread.
        unsafe { libc::__error() }
    }

    fn reader(fd: libc::c_int) {
        loop {
            let mut byte = 0u8;
            // SAFETY: reading one byte into a valid buffer from our own descriptor.
            let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                let sig = libc::c_int::from(byte);
                let name = if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                super::kill_all(name);
                die_of(sig);
                // Still alive (the signal is blocked in a way we cannot undo): exit as a shell would.
                std::process::exit(128 + sig);
            }
            if n == 0 {
                return;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::Result;
    pub(super) fn installed() -> bool {
        false
    }
    pub(super) fn install() -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Counting(Arc<AtomicUsize>);
    impl SignalTarget for Counting {
        fn kill_open_runs(&self) -> Vec<String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            vec!["a problem line".into()]
        }
    }

    #[test]
    fn registry_holds_weak_references_and_the_signal_path_reaches_live_targets() {
        let calls = Arc::new(AtomicUsize::new(0));
        let target: Arc<dyn SignalTarget> = Arc::new(Counting(calls.clone()));
        register(&target).unwrap();
        assert!(handlers_installed());
        assert!(live_backends() >= 1);
        kill_all("SIGTERM");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Dropping the backend's strong reference takes it out of the signal path.
        drop(target);
        kill_all("SIGTERM");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn handlers_are_installed_for_sigint_and_sigterm() {
        let target: Arc<dyn SignalTarget> = Arc::new(Counting(Arc::default()));
        register(&target).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mask = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
        };
        let (caught, ignored) = (mask("SigCgt:"), mask("SigIgn:"));
        let bit = |sig: libc::c_int| 1u64 << (sig - 1);
        assert_ne!(
            caught & bit(libc::SIGTERM),
            0,
            "SIGTERM not caught: {caught:x}"
        );
        // SIGINT is caught unless the process started with it ignored (launched in the
        // background of a non-interactive shell), which it then keeps ignoring.
        let sigint_ignored = ignored & bit(libc::SIGINT) != 0;
        assert_eq!(
            caught & bit(libc::SIGINT) != 0,
            !sigint_ignored,
            "SIGINT: caught {caught:x}, ignored {ignored:x}"
        );
    }
}
