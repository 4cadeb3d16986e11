//! How the library tells what it does: every diagnostic goes through the [`log`] facade, under
//! targets named `sapsan::<module>` (`sapsan::journal`, `sapsan::upload`, `sapsan::server`,
//! `sapsan::signals`, `sapsan::run`, ...). The library never writes to stderr by itself, with
//! one exception: a *notice* that logged data was kept on disk (and the command that sends it) must
//! reach the user even in a program that installed no logger, so [`notice`] falls back to stderr
//! when no logger is set.
//!
//! Programs that have no logger of their own can install [`init_logger`], which prints
//! `sapsan: <message>` lines on stderr (what the examples and the `sapsan` binary do):
//!
//! ```
//! sapsan_core::diag::init_logger();
//! log::info!(target: "sapsan::example", "shown on stderr as `sapsan: ...`");
//! ```
//!
//! The level is `info` unless `SAPSAN_LOG` says otherwise (`error`, `warn`, `info`, `debug`,
//! `trace`, `off`).
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Environment variable with the level of [`init_logger`]'s logger.
pub const LOG_ENV: &str = "SAPSAN_LOG";

/// Says `message` as a warning under `target`; on stderr when no logger is installed. For the few
/// messages a user must see whatever the program set up: data kept on disk and how to send it,
/// data that could not be kept.
pub fn notice(target: &str, message: &str) {
    if log::max_level() == LevelFilter::Off {
        // No logger installed (the facade's level is still its initial `Off`): nobody else would
        // see this, and the data it speaks of waits for the user.
        let _ = writeln!(std::io::stderr().lock(), "sapsan: {message}");
    } else {
        log::warn!(target: target, "{message}");
    }
}

/// The logger of [`init_logger`]: one line per message on stderr, `sapsan: <message>` for the
/// library's targets, `<target>: <message>` for others.
#[derive(Debug)]
struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level && (m.target().starts_with("sapsan") || m.level() <= Level::Warn)
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let prefix = if r.target().starts_with("sapsan") {
            "sapsan"
        } else {
            r.target()
        };
        let _ = writeln!(std::io::stderr().lock(), "{prefix}: {}", r.args());
    }

    fn flush(&self) {}
}

/// The level named by `SAPSAN_LOG` (default `info`).
fn level_from(value: Option<&str>) -> LevelFilter {
    value
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs a logger that prints the library's messages on stderr (`sapsan: ...`) at the level
/// `SAPSAN_LOG` names (default `info`), and other crates' warnings and errors. Does nothing when
/// the program already installed a logger.
pub fn init_logger() {
    let level = level_from(std::env::var(LOG_ENV).ok().as_deref());
    let logger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_comes_from_the_environment_value() {
        assert_eq!(level_from(None), LevelFilter::Info);
        assert_eq!(level_from(Some("debug")), LevelFilter::Debug);
        assert_eq!(level_from(Some("OFF")), LevelFilter::Off);
        assert_eq!(level_from(Some("nonsense")), LevelFilter::Info);
    }

    #[test]
    fn library_targets_pass_at_info_others_only_when_warning() {
        let l = StderrLogger {
            level: LevelFilter::Info,
        };
        let m = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(l.enabled(&m("sapsan::journal", Level::Info)));
        assert!(!l.enabled(&m("sapsan::journal", Level::Debug)));
        assert!(!l.enabled(&m("reqwest::connect", Level::Info)));
        assert!(l.enabled(&m("reqwest::connect", Level::Warn)));
    }
}
