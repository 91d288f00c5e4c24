//! Prometheus metrics: the registry, the handles the broker updates, and the HTTP server that
//! answers `/metrics` and the probes `/healthz` (the process serves) and `/readyz` (the pool
//! reached its size once and is not draining), which Kubernetes and `neutrino dev` wait on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use neutrino_protocol::RejectReason;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::scheduler::RetireReason;

type Labels = Vec<(&'static str, String)>;

/// Upper bounds of every time histogram, in seconds: 1, 2.5 and 5 per decade from 1 µs to 10 s,
/// then 25 and 60 s. The bottom resolves an in-process dispatch (microseconds), the top a
/// second-long run; the gateway and model servers use the same ladder, so their quantiles compare.
pub const TIME_BUCKETS_S: [f64; 24] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
];

/// The `reason` label of `neutrino_orchestrator_worker_exits_total`. A crash loop shows as
/// `crashed` or `start_failed` growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Retired on purpose (recycled, shrunk, stopping).
    Retired,
    /// Killed by the broker (timeout, cancel, silence).
    Killed,
    /// Died while serving.
    Crashed,
    /// Ended before it was ready.
    StartFailed,
}

impl ExitReason {
    pub const ALL: [ExitReason; 4] =
        [ExitReason::Retired, ExitReason::Killed, ExitReason::Crashed, ExitReason::StartFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Retired => "retired",
            ExitReason::Killed => "killed",
            ExitReason::Crashed => "crashed",
            ExitReason::StartFailed => "start_failed",
        }
    }
}

/// The `side` label of `neutrino_orchestrator_malformed_messages_total`: the link a malformed
/// message came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Clients.
    Frontend,
    /// Workers.
    Backend,
    /// The zygote's control link.
    Control,
}

impl Link {
    pub const ALL: [Link; 3] = [Link::Frontend, Link::Backend, Link::Control];

    pub fn as_str(self) -> &'static str {
        match self {
            Link::Frontend => "frontend",
            Link::Backend => "backend",
            Link::Control => "control",
        }
    }
}

/// Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    queue_depth: Gauge,
    idle_workers: Gauge,
    busy_workers: Gauge,
    tasks: Family<Labels, Counter>,
    /// The hot outcome, resolved once instead of per task.
    tasks_ok: Counter,
    rejected: Family<Labels, Counter>,
    /// Seconds from acceptance to assignment to a worker (the dispatch latency).
    pub queue_wait: Histogram,
    /// Seconds the task function ran, as its worker measured it (`TaskResult.run_us`).
    pub task_run: Histogram,
    pub replies_undelivered: Counter,
    worker_exits: Family<Labels, Counter>,
    pub timeouts: Counter,
    pub retries: Counter,
    retiring_workers: Gauge,
    recycles: Family<Labels, Counter>,
    worker_rss: Histogram,
    /// Messages dropped or rejected as malformed, by link ([`Link`]).
    malformed: Family<Labels, Counter>,
    /// Seconds from asking the zygote for a worker to that worker's `WorkerReady`.
    pub worker_start: Histogram,
    /// What `/readyz` answers: set when the pool first reaches its size, cleared when draining.
    ready: Arc<AtomicBool>,
    /// CURVE handshakes the ZAP handler refused (`neutrino_curve_refused_total`).
    pub curve_refused: Counter,
    /// CURVE handshakes that failed before ZAP (`neutrino_curve_failed_handshakes_total`).
    pub curve_failed_handshakes: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        // Every metric is neutrino_orchestrator_*, but for the CURVE counter (SPEC.md §2).
        let mut root = Registry::with_prefix("neutrino");
        let curve_refused = Counter::default();
        root.register(
            "curve_refused",
            "CURVE clients refused on the tcp frontends (public key not in --curve-clients)",
            curve_refused.clone(),
        );
        let curve_failed_handshakes = Counter::default();
        root.register(
            "curve_failed_handshakes",
            "Handshakes on the CURVE tcp frontends that failed before the key check (plain text, another server key)",
            curve_failed_handshakes.clone(),
        );
        let registry = root.sub_registry_with_prefix("orchestrator");
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Tasks accepted and waiting for a worker", queue_depth.clone());
        let workers = Family::<Labels, Gauge>::default();
        registry.register("workers", "Workers by state (idle, busy, retiring)", workers.clone());
        let tasks = Family::<Labels, Counter>::default();
        registry.register("tasks", "Tasks answered, by outcome (ok or the error kind)", tasks.clone());
        let rejected = Family::<Labels, Counter>::default();
        registry.register("tasks_rejected", "Submissions rejected, by reason", rejected.clone());
        let queue_wait = Histogram::new(TIME_BUCKETS_S);
        registry.register(
            "queue_wait_seconds",
            "Time from accepting a task to pushing it to a worker (the dispatch latency)",
            queue_wait.clone(),
        );
        let task_run = Histogram::new(TIME_BUCKETS_S);
        registry.register(
            "task_run_seconds",
            "Time the task function ran, as its worker measured it",
            task_run.clone(),
        );
        let replies_undelivered = Counter::default();
        registry.register(
            "replies_undelivered",
            "Replies that could not be delivered (client gone or not reading)",
            replies_undelivered.clone(),
        );
        let worker_start = Histogram::new(TIME_BUCKETS_S);
        registry.register(
            "worker_start_seconds",
            "Time from asking the zygote for a worker to the worker reporting ready",
            worker_start.clone(),
        );
        let worker_exits = Family::<Labels, Counter>::default();
        registry.register(
            "worker_exits",
            "Worker processes that exited, by reason (retired, killed, crashed, start_failed)",
            worker_exits.clone(),
        );
        let timeouts = Counter::default();
        registry.register("task_timeouts", "Attempts that overran their timeout (worker killed)", timeouts.clone());
        let retries = Counter::default();
        registry.register(
            "task_retries",
            "Attempts scheduled again after a failure or a retry request",
            retries.clone(),
        );
        let recycles = Family::<Labels, Counter>::default();
        registry.register("worker_recycles", "Workers retired, by reason", recycles.clone());
        // 16 MiB .. 16 GiB
        let worker_rss = Histogram::new(exponential_buckets(16.0 * 1024.0 * 1024.0, 2.0, 11));
        registry.register("worker_rss_bytes", "Worker resident set size, from heartbeats", worker_rss.clone());
        let malformed = Family::<Labels, Counter>::default();
        registry.register(
            "malformed_messages",
            "Messages dropped or rejected as malformed (or of an unknown type), by link",
            malformed.clone(),
        );
        let label = |k: &'static str, v: &str| vec![(k, v.to_owned())];
        for side in Link::ALL {
            let _ = malformed.get_or_create(&label("side", side.as_str()));
        }
        // Present at zero from the start, so rate() over them works before the first exit.
        for reason in ExitReason::ALL {
            let _ = worker_exits.get_or_create(&label("reason", reason.as_str()));
        }
        let idle_workers = workers.get_or_create(&label("state", "idle")).clone();
        let retiring_workers = workers.get_or_create(&label("state", "retiring")).clone();
        let busy_workers = workers.get_or_create(&label("state", "busy")).clone();
        let tasks_ok = tasks.get_or_create(&label("outcome", "ok")).clone();
        Metrics {
            registry: Arc::new(root),
            queue_depth,
            idle_workers,
            busy_workers,
            tasks,
            tasks_ok,
            rejected,
            queue_wait,
            task_run,
            replies_undelivered,
            worker_exits,
            worker_start,
            timeouts,
            retries,
            retiring_workers,
            recycles,
            worker_rss,
            malformed,
            ready: Arc::new(AtomicBool::new(false)),
            curve_refused,
            curve_failed_handshakes,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn task_finished(&self, outcome: &str) {
        if outcome == neutrino_protocol::STATUS_OK {
            self.tasks_ok.inc();
            return;
        }
        self.tasks.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
    }

    pub fn tasks_rejected(&self, reason: RejectReason) {
        self.rejected.get_or_create(&vec![("reason", reason.as_str().to_owned())]).inc();
    }

    pub fn set_gauges(&self, queue_depth: usize, idle: u32, busy: u32, retiring: u32) {
        self.queue_depth.set(queue_depth as i64);
        self.idle_workers.set(idle.into());
        self.busy_workers.set(busy.into());
        self.retiring_workers.set(retiring.into());
    }

    pub fn recycled(&self, reason: RetireReason) {
        self.recycles.get_or_create(&vec![("reason", reason.as_str().to_owned())]).inc();
    }

    /// A worker process exited.
    pub fn worker_exited(&self, reason: ExitReason) {
        self.worker_exits.get_or_create(&vec![("reason", reason.as_str().to_owned())]).inc();
    }

    pub fn observe_worker_rss(&self, rss_kb: u64) {
        self.worker_rss.observe(rss_kb as f64 * 1024.0);
    }

    /// A malformed message on `side` was dropped or rejected.
    pub fn malformed(&self, side: Link) {
        self.malformed.get_or_create(&vec![("side", side.as_str().to_owned())]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Binds the metrics address now, so a taken port fails start-up instead of going unnoticed.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    use axum::{http::header, http::StatusCode, routing::get, Router};
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let probe = metrics.clone();
    let render = move || {
        let body = metrics.render();
        async move { ([(header::CONTENT_TYPE, OPENMETRICS)], body) }
    };
    let ready = move || {
        let answer = match probe.is_ready() {
            true => (StatusCode::OK, "ready\n"),
            false => (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or draining\n"),
        };
        async move { answer }
    };
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_follow_the_vocabulary() {
        let m = Metrics::new();
        m.queue_wait.observe(3e-6);
        m.task_run.observe(1.5);
        m.worker_exited(ExitReason::Crashed);
        m.recycled(RetireReason::MaxRss);
        m.tasks_rejected(RejectReason::TooLarge);
        let text = m.render();
        // Time histograms resolve microseconds and seconds: 24 bounds and +Inf.
        assert_eq!(text.matches("neutrino_orchestrator_queue_wait_seconds_bucket{").count(), 25, "{text}");
        assert!(text.contains("neutrino_orchestrator_queue_wait_seconds_bucket{le=\"0.000005\"} 1"), "{text}");
        assert!(text.contains("neutrino_orchestrator_task_run_seconds_bucket{le=\"2.5\"} 1"), "{text}");
        // Every exit reason is there from the start; counters end in _total.
        assert!(text.contains("neutrino_orchestrator_worker_exits_total{reason=\"crashed\"} 1"), "{text}");
        for reason in ["retired", "killed", "start_failed"] {
            assert!(text.contains(&format!("neutrino_orchestrator_worker_exits_total{{reason=\"{reason}\"}} 0")));
        }
        // Label values are what docs/metrics.md and deploy/prometheus/rules.yml name.
        assert!(text.contains("neutrino_orchestrator_worker_recycles_total{reason=\"max_rss\"} 1"), "{text}");
        assert!(text.contains("neutrino_orchestrator_tasks_rejected_total{reason=\"too_large\"} 1"), "{text}");
        for side in ["frontend", "backend", "control"] {
            assert!(text.contains(&format!("neutrino_orchestrator_malformed_messages_total{{side=\"{side}\"}} 0")));
        }
    }
}
