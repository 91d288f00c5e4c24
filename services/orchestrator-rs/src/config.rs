//! The orchestrator's configuration: read once here, from flags, a TOML file (`--config`) and
//! `NEUTRINO_*` variables (flags win over the file, the file over variables), then passed down.
//! SIGHUP reads the file again ([`Config::reload`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::curve::ServerKeys;
use crate::logging::LogFormat;
use crate::scheduler::Limits;

#[derive(Debug, Clone, Parser)]
#[command(name = "neutrino-orchestrator", version, about = "Neutrino task pod orchestrator", args_override_self = true)]
pub struct Config {
    /// TOML file with any of these settings (keys are the flag names, `_` or `-`); flags on
    /// the command line win. SIGHUP re-reads it for pool sizes and recycling limits.
    #[arg(long, env = "NEUTRINO_CONFIG")]
    pub config: Option<PathBuf>,

    /// The user app, as `module:attr` (e.g. `examples.quickstart.app:app`).
    #[arg(long, env = "NEUTRINO_APP")]
    pub app: String,

    /// Directory put first on the workers' `sys.path` to import the app from.
    #[arg(long, env = "NEUTRINO_APP_DIR", default_value = ".")]
    pub app_dir: PathBuf,

    /// Number of workers to fork at start.
    #[arg(long, env = "NEUTRINO_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Fewest workers an elastic pool shrinks to (default: --workers).
    #[arg(long, env = "NEUTRINO_MIN_WORKERS", value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub min_workers: Option<u32>,

    /// Most workers an elastic pool grows to while tasks wait (default: --workers).
    #[arg(long, env = "NEUTRINO_MAX_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_workers: Option<u32>,

    /// Seconds a worker may stay idle before an elastic pool above its minimum retires it.
    #[arg(long = "worker-idle-timeout", env = "NEUTRINO_WORKER_IDLE_TIMEOUT_S", default_value_t = 60.0)]
    pub worker_idle_timeout_s: f64,

    /// Recycle a worker after this many tasks (0: never).
    #[arg(long, env = "NEUTRINO_MAX_TASKS_PER_WORKER", default_value_t = 0)]
    pub max_tasks_per_worker: u64,

    /// Recycle a worker whose resident memory passes this many MiB (0: never).
    #[arg(long = "max-worker-rss-mb", env = "NEUTRINO_MAX_WORKER_RSS_MB", default_value_t = 0)]
    pub max_worker_rss_mb: u64,

    /// Recycle a worker after this many seconds, ±10% jitter (0: never).
    #[arg(long = "max-worker-lifetime", env = "NEUTRINO_MAX_WORKER_LIFETIME_S", default_value_t = 0.0)]
    pub max_worker_lifetime_s: f64,

    /// Milliseconds between worker heartbeats; a worker silent for 3 intervals is killed (0: off).
    /// Keep 3 intervals above the longest time a task's C code holds the GIL.
    #[arg(long = "heartbeat-interval-ms", env = "NEUTRINO_HEARTBEAT_INTERVAL_MS", default_value_t = 2000)]
    pub heartbeat_interval_ms: u32,

    /// Client endpoint(s) to bind (`tcp://HOST:PORT` or `ipc://PATH`); repeatable.
    #[arg(long = "frontend", env = "NEUTRINO_FRONTEND", value_delimiter = ',', default_value = "tcp://127.0.0.1:5555")]
    pub frontends: Vec<String>,

    /// Private directory (mode 0700) for the workers' ipc socket and the zygote's control socket.
    /// Default: a new directory under $XDG_RUNTIME_DIR or the system temp dir, removed on exit.
    #[arg(long, env = "NEUTRINO_RUN_DIR")]
    pub run_dir: Option<PathBuf>,

    /// Most tasks waiting for a worker; beyond it submissions are rejected as busy.
    #[arg(long, env = "NEUTRINO_QUEUE_LIMIT", default_value_t = 65_536)]
    pub queue_limit: usize,

    /// Python interpreter that runs the zygote and workers.
    #[arg(long, env = "NEUTRINO_PYTHON", default_value = "python3")]
    pub python: PathBuf,

    /// Log lines as `text` or `json` (one object per line); the zygote and workers write the same.
    /// The level is `RUST_LOG` (default `info`).
    #[arg(long, env = "NEUTRINO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at http://ADDR/metrics, and the probes /healthz and /readyz.
    #[arg(long, env = "NEUTRINO_METRICS")]
    pub metrics: Option<SocketAddr>,

    /// Most assignments in flight per worker (its window); 1 disables pipelining.
    #[arg(long, env = "NEUTRINO_WINDOW", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub window: u32,

    /// Tasks whose average run time is under this many microseconds may be pipelined.
    #[arg(long, env = "NEUTRINO_PIPELINE_MAX_US", default_value_t = 1000)]
    pub pipeline_max_us: u64,

    /// While few tasks are in flight, poll this many microseconds before blocking: a VM's
    /// idle CPUs take longer to wake than a round trip takes. 0 always blocks.
    #[arg(long, env = "NEUTRINO_IDLE_SPIN_US", default_value_t = 200)]
    pub idle_spin_us: u64,

    /// Largest accepted message frame, in bytes.
    #[arg(long, env = "NEUTRINO_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: i64,

    /// Seconds that running tasks get to finish after SIGTERM.
    #[arg(long = "grace-period", env = "NEUTRINO_GRACE_PERIOD_S", default_value_t = 30.0)]
    pub grace_period_s: f64,

    /// Seconds to wait for the zygote to import the app and report ready.
    #[arg(long = "start-timeout", env = "NEUTRINO_START_TIMEOUT_S", default_value_t = 120.0)]
    pub start_timeout_s: f64,

    /// This pod's CURVE certificate (`NAME.key_secret`, from `neutrino keygen NAME`): every
    /// tcp:// frontend becomes a CURVE server that only lets in the keys of --curve-clients.
    /// ipc:// frontends stay plain. Unset: no encryption (SPEC.md §2).
    #[arg(long, env = "NEUTRINO_CURVE_SECRET_KEY")]
    pub curve_secret_key: Option<PathBuf>,

    /// Client public keys let in over CURVE: a directory of `*.key` files, or one `.key` file.
    /// Read at start-up. Needs --curve-secret-key.
    #[arg(long, env = "NEUTRINO_CURVE_CLIENTS")]
    pub curve_clients: Option<PathBuf>,
}

/// Longest accepted duration flag (a day): long enough for any grace period, far from overflow.
const MAX_DURATION_S: f64 = 86_400.0;

/// Why the configuration could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// Bad flags, or `--help`/`--version`: `clap::Error::exit` prints it and picks the exit code.
    Args(clap::Error),
    File(String),
}

/// A worker silent for this many heartbeat intervals is dead (the zguide's liveness of 3:
/// one lost heartbeat is noise, three in a row is a hang).
const HEARTBEAT_LIVENESS: u32 = 3;

impl Config {
    /// Flags, then the `--config` file under them.
    pub fn load() -> Result<Config, ConfigError> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let first = Config::try_parse_from(&args).map_err(ConfigError::Args)?;
        match &first.config {
            Some(path) => Config::with_file(path, &args),
            None => Ok(first),
        }
    }

    /// The same command line again over the file's current content (SIGHUP).
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let args: Vec<OsString> = std::env::args_os().collect();
        match &self.config {
            Some(path) => Config::with_file(path, &args),
            None => Ok(self.clone()),
        }
    }

    /// The file's settings become flags placed before the real ones, so the real ones win.
    fn with_file(path: &Path, args: &[OsString]) -> Result<Config, ConfigError> {
        let fail = |e: &dyn std::fmt::Display| ConfigError::File(format!("--config {}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
        let table: toml::Table = text.parse().map_err(|e| fail(&e))?;
        let mut merged: Vec<OsString> = args.iter().take(1).cloned().collect();
        for (key, value) in table {
            let flag = format!("--{}", key.replace('_', "-"));
            let values = match value {
                toml::Value::Array(items) => items,
                other => vec![other],
            };
            for v in values {
                let text = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                merged.push(flag.clone().into());
                merged.push(text.into());
            }
        }
        merged.extend(args.iter().skip(1).cloned());
        Config::try_parse_from(merged).map_err(|e| fail(&e))
    }

    pub fn min_workers(&self) -> u32 {
        self.min_workers.unwrap_or(self.workers)
    }

    pub fn max_workers(&self) -> u32 {
        self.max_workers.unwrap_or(self.workers).max(self.workers)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_tasks: self.max_tasks_per_worker,
            max_rss_kb: self.max_worker_rss_mb * 1024,
            max_lifetime: (self.max_worker_lifetime_s > 0.0)
                .then(|| Duration::from_secs_f64(self.max_worker_lifetime_s)),
        }
    }

    pub fn heartbeat_interval(&self) -> Option<Duration> {
        (self.heartbeat_interval_ms > 0).then(|| Duration::from_millis(self.heartbeat_interval_ms.into()))
    }

    pub fn liveness(&self) -> Option<Duration> {
        self.heartbeat_interval().map(|i| i * HEARTBEAT_LIVENESS)
    }

    pub fn worker_idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.worker_idle_timeout_s)
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_secs_f64(self.grace_period_s.max(0.0))
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.start_timeout_s.max(0.0))
    }

    /// The CURVE keys of the tcp:// frontends, read from their files; `None` when CURVE is off.
    pub fn curve_keys(&self) -> Result<Option<ServerKeys>, String> {
        match (&self.curve_secret_key, &self.curve_clients) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err("--curve-clients needs --curve-secret-key (the pod's own NAME.key_secret)".into()),
            (Some(_), None) => Err("--curve-secret-key needs --curve-clients (a directory of the clients' *.key \
                                    files): without an allowlist every client would be refused"
                .into()),
            (Some(secret), Some(clients)) => ServerKeys::load(secret, clients).map(Some),
        }
    }

    /// Checks what clap cannot: endpoint schemes, the app reference, and numeric ranges.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, secs) in [
            ("--grace-period", self.grace_period_s),
            ("--start-timeout", self.start_timeout_s),
            ("--max-worker-lifetime", self.max_worker_lifetime_s),
            ("--worker-idle-timeout", self.worker_idle_timeout_s),
        ] {
            if !(secs.is_finite() && (0.0..=MAX_DURATION_S).contains(&secs)) {
                return Err(format!("{flag} {secs}: use seconds between 0 and {MAX_DURATION_S}"));
            }
        }
        if self.min_workers() > self.workers || self.max_workers() < self.workers {
            return Err(format!(
                "--min-workers {} / --workers {} / --max-workers {}: need min <= workers <= max",
                self.min_workers(),
                self.workers,
                self.max_workers()
            ));
        }
        if self.max_message_bytes <= 0 {
            return Err(format!("--max-message-bytes {}: must be positive", self.max_message_bytes));
        }
        for f in &self.frontends {
            if !(f.starts_with("tcp://") || f.starts_with("ipc://")) {
                return Err(format!("--frontend {f:?}: use tcp://HOST:PORT or ipc://PATH"));
            }
        }
        self.curve_keys()?;
        match self.app.split_once(':') {
            Some((module, attr)) if !module.is_empty() && !attr.is_empty() => Ok(()),
            _ => Err(format!("--app {:?}: use module:attr, e.g. examples.quickstart.app:app", self.app)),
        }
    }
}
