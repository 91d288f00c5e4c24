//! Prometheus metrics: the registry, the handles the broker updates, and the HTTP server that
//! answers `/metrics` and the probes `/healthz` (the process serves) and `/readyz` (the pool
//! reached its size once and is not draining), which Kubernetes and `neutrino dev` wait on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = Vec<(&'static str, String)>;

/// `side` labels of `neutrino_orchestrator_malformed_messages_total`: the link a malformed
/// message came in on (clients, workers, the zygote's control link).
pub const MALFORMED_FRONTEND: &str = "frontend";
pub const MALFORMED_BACKEND: &str = "backend";
pub const MALFORMED_CONTROL: &str = "control";

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
    /// Seconds from acceptance to assignment to a worker.
    pub dispatch_latency: Histogram,
    pub replies_undelivered: Counter,
    pub worker_exits: Counter,
    pub timeouts: Counter,
    pub retries: Counter,
    retiring_workers: Gauge,
    recycles: Family<Labels, Counter>,
    worker_rss: Histogram,
    /// Messages dropped or rejected as malformed, by link (`MALFORMED_*`).
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
        // 10 µs .. ~5 s
        let dispatch_latency = Histogram::new(exponential_buckets(1e-5, 2.5, 15));
        registry.register(
            "dispatch_latency_seconds",
            "Time from accepting a task to pushing it to a worker",
            dispatch_latency.clone(),
        );
        let replies_undelivered = Counter::default();
        registry.register(
            "replies_undelivered",
            "Replies that could not be delivered (client gone or not reading)",
            replies_undelivered.clone(),
        );
        // 0.5 ms .. ~4 s
        let worker_start = Histogram::new(exponential_buckets(5e-4, 2.0, 14));
        registry.register(
            "worker_start_seconds",
            "Time from asking the zygote for a worker to the worker reporting ready",
            worker_start.clone(),
        );
        let worker_exits = Counter::default();
        registry.register("worker_exits", "Worker processes that exited", worker_exits.clone());
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
        for side in [MALFORMED_FRONTEND, MALFORMED_BACKEND, MALFORMED_CONTROL] {
            let _ = malformed.get_or_create(&label("side", side));
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
            dispatch_latency,
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

    pub fn tasks_rejected(&self, reason: &str) {
        self.rejected.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    pub fn set_gauges(&self, queue_depth: usize, idle: u32, busy: u32, retiring: u32) {
        self.queue_depth.set(queue_depth as i64);
        self.idle_workers.set(idle.into());
        self.busy_workers.set(busy.into());
        self.retiring_workers.set(retiring.into());
    }

    pub fn recycled(&self, reason: &str) {
        self.recycles.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    pub fn observe_worker_rss(&self, rss_kb: u64) {
        self.worker_rss.observe(rss_kb as f64 * 1024.0);
    }

    /// A malformed message on `side` (one of the `MALFORMED_*` labels) was dropped or rejected.
    pub fn malformed(&self, side: &'static str) {
        self.malformed.get_or_create(&vec![("side", side.to_owned())]).inc();
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
