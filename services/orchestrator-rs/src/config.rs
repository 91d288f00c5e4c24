//! The orchestrator's configuration: read once from flags (or `NEUTRINO_*` variables) here,
//! then passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "neutrino-orchestrator", version, about = "Neutrino task pod orchestrator")]
pub struct Config {
    /// The user app, as `module:attr` (e.g. `examples.quickstart.app:app`).
    #[arg(long, env = "NEUTRINO_APP")]
    pub app: String,

    /// Directory put first on the workers' `sys.path` to import the app from.
    #[arg(long, env = "NEUTRINO_APP_DIR", default_value = ".")]
    pub app_dir: PathBuf,

    /// Number of workers to fork.
    #[arg(long, env = "NEUTRINO_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

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

    /// Serve Prometheus metrics at http://ADDR/metrics.
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
}

/// Longest accepted duration flag (a day): long enough for any grace period, far from overflow.
const MAX_DURATION_S: f64 = 86_400.0;

impl Config {
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs_f64(self.grace_period_s.max(0.0))
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.start_timeout_s.max(0.0))
    }

    /// Checks what clap cannot: endpoint schemes, the app reference, and numeric ranges.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, secs) in [("--grace-period", self.grace_period_s), ("--start-timeout", self.start_timeout_s)] {
            if !(secs.is_finite() && (0.0..=MAX_DURATION_S).contains(&secs)) {
                return Err(format!("{flag} {secs}: use seconds between 0 and {MAX_DURATION_S}"));
            }
        }
        if self.max_message_bytes <= 0 {
            return Err(format!("--max-message-bytes {}: must be positive", self.max_message_bytes));
        }
        for f in &self.frontends {
            if !(f.starts_with("tcp://") || f.starts_with("ipc://")) {
                return Err(format!("--frontend {f:?}: use tcp://HOST:PORT or ipc://PATH"));
            }
        }
        match self.app.split_once(':') {
            Some((module, attr)) if !module.is_empty() && !attr.is_empty() => Ok(()),
            _ => Err(format!("--app {:?}: use module:attr, e.g. examples.quickstart.app:app", self.app)),
        }
    }
}
