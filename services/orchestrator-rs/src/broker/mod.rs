//! The ZeroMQ thread: the only module that touches `zmq`. It owns the frontend (clients) and
//! backend (workers) ROUTER sockets and the [`Scheduler`], and talks to the tokio side through
//! a command channel plus a wake-up socket that `zmq::poll` watches beside the ZeroMQ sockets.
//!
//! - `mod.rs`: setup, the poll loop, commands from the tokio side, sending.
//! - `clients.rs`: frontend messages (submit, cancel, ping, describe) and replies.
//! - `workers.rs`: backend messages, timeouts, liveness, recycling, killing workers.
//! - `zap.rs`: the ZAP handler thread that lets CURVE clients in by their public key.
//!
//! With CURVE on (`BrokerConfig::curve`), the tcp:// frontends are one CURVE-server socket and
//! the ipc:// ones another, plain socket; the client ids of both then carry a first byte naming
//! their socket (`TAG_*`), so that replies go back the way their request came in.

mod clients;
mod workers;
mod zap;

pub use clients::{decode_client, task_policy, BadClientMessage, ClientMessage};
pub use workers::{decode_worker, BadWorkerMessage, WorkerMessage};

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use neutrino_protocol::{encode_meta, error_kind, header, ErrorInfo, Message, TaskOptions};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::catalog::{Catalog, CatalogBytes};
use crate::curve::{z85_encode, ServerKeys};
use crate::metrics::Metrics;
use crate::scheduler::{Limits, Payload, Policy, Scheduler};

/// Most messages read from one socket before looking at the others, so neither side starves.
const MAX_BATCH: usize = 512;
/// High-water marks: generous, since a blocked broker would stall every client and worker.
const FRONTEND_HWM: i32 = 200_000;
const BACKEND_HWM: i32 = 50_000;
/// How long the frontend may keep sending the final replies after the broker stops.
const FINAL_REPLIES_LINGER_MS: i32 = 2_000;
/// How often the pool's load is reported to the supervisor (for an elastic pool).
const LOAD_REPORT_EVERY: Duration = Duration::from_millis(100);
/// First byte of a client id while there are two frontend sockets (see the module doc).
const TAG_PLAIN: u8 = 0;
const TAG_CURVE: u8 = 1;

/// Requests from the tokio side.
#[derive(Debug)]
pub enum Command {
    /// The zygote reported this worker's process gone (`how`: "exit code 1", "signal 9").
    WorkerExited { worker_id: String, how: String },
    /// The zygote died: every worker it forked is gone.
    ZygoteLost,
    /// The app's per-task defaults, from `ZygoteReady`.
    TaskOptions(HashMap<String, TaskOptions>),
    /// The app's task catalog, from `ZygoteCatalog` (served to `DescribeTasks`).
    Catalog(CatalogBytes),
    /// New recycling limits (SIGHUP).
    SetLimits(Limits),
    /// Retire this worker (the pool is shrinking, or a reload lowered its size).
    Retire { worker_id: String, reason: &'static str },
    /// The worker about to be forked under this id is a standby (see `Scheduler::promote_standby`).
    Standby { worker_id: String },
    /// Stop accepting, answer queued tasks with `shutting_down`, report `Drained` when idle.
    Drain,
    /// Answer whatever is still queued or in flight and end the thread.
    Stop,
}

/// What the broker reports to the tokio side.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    WorkerReady {
        worker_id: String,
        pid: u32,
    },
    /// The worker reached a recycling limit and gets no new tasks; `promoted` is the standby
    /// that took its place at once (fork a new standby), or `None` (fork a replacement).
    Recycled {
        worker_id: String,
        reason: &'static str,
        promoted: Option<String>,
    },
    /// The broker killed this worker (timeout, cancel, silence): its exit is expected.
    Killed {
        worker_id: String,
        reason: &'static str,
    },
    /// Pool load, every [`LOAD_REPORT_EVERY`] while it changes.
    Load(Load),
    /// Draining and nothing is left in flight.
    Drained,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Load {
    pub queue_depth: usize,
    pub ready: u32,
    pub idle: u32,
    /// The worker idle the longest and for how long.
    pub longest_idle: Option<(String, Duration)>,
}

pub struct BrokerConfig {
    pub frontends: Vec<String>,
    pub backend: String,
    pub policy: Policy,
    pub max_message_bytes: i64,
    /// How long to keep polling before blocking while latency-bound (see [`spin_poll`]).
    pub idle_spin: Duration,
    /// Workers are declared dead after this long without a message (`None`: never).
    pub liveness: Option<Duration>,
    /// CURVE keys for the tcp:// frontends (`None`: plain text).
    pub curve: Option<ServerKeys>,
}

/// The tokio side's handle: send commands, join at the end.
pub struct BrokerHandle {
    commands: mpsc::Sender<Command>,
    wake: UnixDatagram,
    thread: Option<JoinHandle<()>>,
}

impl BrokerHandle {
    pub fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_ok() {
            // A full wake-up buffer already means "look at the channel": losing this byte is fine.
            let _ = self.wake.send(&[1]);
        }
    }

    pub fn stop(mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the sockets (so address errors surface here) and starts the broker thread.
pub fn start(config: BrokerConfig, metrics: Metrics, events: UnboundedSender<Event>) -> anyhow::Result<BrokerHandle> {
    let ctx = zmq::Context::new();
    let (curve_endpoints, plain_endpoints): (Vec<&String>, Vec<&String>) = match &config.curve {
        Some(_) => config.frontends.iter().partition(|e| e.starts_with("tcp://")),
        None => (Vec::new(), config.frontends.iter().collect()),
    };
    let mut zap = None;
    let mut curve_socket = None;
    if let (Some(keys), false) = (&config.curve, curve_endpoints.is_empty()) {
        if zmq::has("curve") != Some(true) {
            anyhow::bail!(
                "--curve-secret-key: the libzmq this orchestrator is linked against ({}) was built without \
                 CURVE; install one with CURVE (Debian: libzmq5 from libzmq3-dev, built with libsodium)",
                libzmq_version()
            );
        }
        // Bound before any CURVE socket: without a handler libzmq would let every client in.
        let zap_socket = zap::bind(&ctx)?;
        let socket = frontend_socket(&ctx, config.max_message_bytes)?;
        socket.set_curve_server(true)?;
        socket.set_curve_secretkey(&keys.secret)?;
        socket.set_zap_domain(zap::ZAP_DOMAIN)?;
        let monitor = zap::monitor(&ctx, &socket)?;
        zap = Some(zap::ZapHandler::start(zap_socket, monitor, keys.clients.clone(), metrics.clone())?);
        for endpoint in &curve_endpoints {
            socket.bind(endpoint).with_context(|| format!("cannot bind frontend {endpoint}"))?;
        }
        info!(
            "CURVE on {}: server public key {}, {} client key(s) allowed",
            curve_endpoints.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", "),
            z85_encode(&keys.public),
            keys.clients.len()
        );
        curve_socket = Some(socket);
    } else if config.curve.is_some() {
        warn!("--curve-secret-key is set but no frontend is tcp://; the ipc:// frontends stay plain");
    }
    // With CURVE on and only tcp frontends, the CURVE socket is the only one.
    let (frontend, secure) = match (curve_socket, plain_endpoints.is_empty()) {
        (Some(curve), true) => (curve, None),
        (curve, _) => {
            let plain = frontend_socket(&ctx, config.max_message_bytes)?;
            for endpoint in &plain_endpoints {
                plain.bind(endpoint).with_context(|| format!("cannot bind frontend {endpoint}"))?;
            }
            (plain, curve)
        }
    };
    let backend = router(&ctx, BACKEND_HWM, config.max_message_bytes)?;
    backend.bind(&config.backend).with_context(|| format!("cannot bind backend {}", config.backend))?;

    let (wake_tx, wake_rx) = UnixDatagram::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    let broker = Broker {
        _ctx: ctx,
        frontend,
        secure,
        _zap: zap,
        backend,
        wake: wake_rx,
        commands: rx,
        sched: Scheduler::new(config.policy),
        task_options: HashMap::new(),
        catalog: Catalog::default(),
        standby_ids: HashSet::new(),
        max_payload: config.max_message_bytes as usize,
        idle_spin: config.idle_spin,
        liveness: config.liveness,
        metrics,
        events,
        drained_sent: false,
        last_load: (Instant::now(), Load::default()),
        parts: Vec::with_capacity(4),
        instance: fastrand::u64(..),
    };
    let thread = std::thread::Builder::new().name("broker".into()).spawn(move || broker.run())?;
    Ok(BrokerHandle { commands: tx, wake: wake_tx, thread: Some(thread) })
}

fn frontend_socket(ctx: &zmq::Context, max_message_bytes: i64) -> anyhow::Result<zmq::Socket> {
    let s = router(ctx, FRONTEND_HWM, max_message_bytes)?;
    // Clients keep their routing id across reconnects; let the new connection take it over.
    s.set_router_handover(true)?;
    Ok(s)
}

fn libzmq_version() -> String {
    let (major, minor, patch) = zmq::version();
    format!("libzmq {major}.{minor}.{patch}")
}

fn router(ctx: &zmq::Context, hwm: i32, max_message_bytes: i64) -> anyhow::Result<zmq::Socket> {
    let s = ctx.socket(zmq::ROUTER)?;
    s.set_router_mandatory(true)?; // else unroutable replies vanish silently
    s.set_linger(0)?;
    s.set_sndhwm(hwm)?;
    s.set_rcvhwm(hwm)?;
    // libzmq drops the connection of a peer that exceeds MAXMSGSIZE without telling it, so the
    // hard cap sits well above the limit the broker enforces with a `too_large` rejection.
    s.set_maxmsgsize(max_message_bytes.saturating_mul(4))?;
    Ok(s)
}

impl Payload for zmq::Message {
    fn duplicate(&self) -> Self {
        zmq::Message::from(&self[..])
    }
}

struct Broker {
    _ctx: zmq::Context,
    /// The frontend: every endpoint, or with CURVE on the ipc:// ones (or the tcp:// ones if
    /// there is no ipc:// frontend).
    frontend: zmq::Socket,
    /// With CURVE on and both kinds of frontends: the CURVE socket of the tcp:// ones.
    secure: Option<zmq::Socket>,
    /// Stops the ZAP handler thread when the broker ends.
    _zap: Option<zap::ZapHandler>,
    backend: zmq::Socket,
    wake: UnixDatagram,
    commands: mpsc::Receiver<Command>,
    sched: Scheduler<zmq::Message>,
    task_options: HashMap<String, TaskOptions>,
    catalog: Catalog,
    /// Ids announced as standbys, until they report ready.
    standby_ids: HashSet<String>,
    max_payload: usize,
    idle_spin: Duration,
    liveness: Option<Duration>,
    metrics: Metrics,
    events: UnboundedSender<Event>,
    drained_sent: bool,
    last_load: (Instant, Load),
    parts: Vec<zmq::Message>,
    /// Random per process, in every Pong: clients tell a restarted orchestrator from this one.
    instance: u64,
}

enum Flow {
    Continue,
    Stop,
}

#[derive(Clone, Copy)]
enum Side {
    Frontend,
    /// The CURVE frontend beside a plain one (`Broker::secure`).
    Secure,
    Backend,
}

impl Broker {
    fn run(mut self) {
        loop {
            let timeout_ms = self.poll_timeout_ms(Instant::now());
            let (front, back, wake, secure) = {
                let mut items = [
                    self.frontend.as_poll_item(zmq::POLLIN),
                    self.backend.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN),
                    self.secure.as_ref().unwrap_or(&self.frontend).as_poll_item(zmq::POLLIN),
                ];
                let items = &mut items[..if self.secure.is_some() { 4 } else { 3 }];
                let spun = self.spin_now() && spin_poll(items, self.idle_spin) > 0;
                if !spun {
                    if let Err(e) = zmq::poll(items, timeout_ms) {
                        if e == zmq::Error::EINTR {
                            continue;
                        }
                        error!("poll failed: {e}");
                        break;
                    }
                }
                let secure = items.get(3).is_some_and(|i| i.is_readable());
                (items[0].is_readable(), items[1].is_readable(), items[2].is_readable(), secure)
            };
            // Results first: each one frees a worker for the tasks that follow.
            if back {
                self.drain(Side::Backend);
            }
            if front {
                self.drain(Side::Frontend);
            }
            if secure {
                self.drain(Side::Secure);
            }
            if wake && matches!(self.handle_commands(), Flow::Stop) {
                break;
            }
            let now = Instant::now();
            self.enforce_deadlines(now);
            self.dispatch(now);
            self.after_events(now);
        }
        self.answer_queued();
        for origin in self.sched.abandon_in_flight() {
            let text = "the orchestrator stopped its worker while this task ran (grace period over)";
            self.reply_error(&origin, ErrorInfo::neutrino(error_kind::WORKER_DIED, text));
        }
        // The last replies are queued in libzmq; give them a moment to leave before the context ends.
        let _ = self.frontend.set_linger(FINAL_REPLIES_LINGER_MS);
        if let Some(secure) = &self.secure {
            let _ = secure.set_linger(FINAL_REPLIES_LINGER_MS);
        }
    }

    /// Block until the next time-based duty (retry due, timeout, silence, lifetime), or forever.
    fn poll_timeout_ms(&self, now: Instant) -> i64 {
        let mut next = self.sched.next_deadline(self.liveness);
        if self.sched.worker_counts().ready > 0 || self.sched.queue_depth() > 0 {
            // keep the load report flowing for the elastic pool (also to grow from zero workers)
            next = Some(
                next.map_or(self.last_load.0 + LOAD_REPORT_EVERY, |n| n.min(self.last_load.0 + LOAD_REPORT_EVERY)),
            );
        }
        match next {
            Some(at) => at.saturating_duration_since(now).as_millis().clamp(1, i64::MAX as u128) as i64,
            None => -1,
        }
    }

    /// Spin only while latency-bound: nothing queued and at most one task in flight per worker.
    /// Under load the CPUs never go idle, so blocking costs no wake-up latency there, and the
    /// spinning would take CPU from the workers.
    fn spin_now(&self) -> bool {
        !self.idle_spin.is_zero()
            && self.sched.queue_depth() == 0
            && self.sched.in_flight() <= self.sched.worker_counts().ready as usize
    }

    fn drain(&mut self, side: Side) {
        for _ in 0..MAX_BATCH {
            let socket = match side {
                Side::Frontend => &self.frontend,
                Side::Secure => self.secure.as_ref().expect("polled only when present"),
                Side::Backend => &self.backend,
            };
            self.parts.clear();
            match recv_parts(socket, &mut self.parts) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    error!("receive failed: {e}");
                    return;
                }
            }
            let mut parts = std::mem::take(&mut self.parts);
            match side {
                Side::Frontend | Side::Secure => {
                    if self.secure.is_some() {
                        tag_client(&mut parts, if matches!(side, Side::Secure) { TAG_CURVE } else { TAG_PLAIN });
                    }
                    self.on_client(&mut parts)
                }
                Side::Backend => self.on_worker(&mut parts),
            }
            self.parts = parts;
        }
    }

    /// Sends to a client on the socket its request came in on (see [`TAG_CURVE`]).
    fn send_frontend<M: Message>(&self, client: &[u8], msg: &M, payload: Option<zmq::Message>) -> Result<(), Unsent> {
        let (socket, to) = route(&self.frontend, self.secure.as_ref(), client);
        send(socket, to, msg, payload)
    }

    fn handle_commands(&mut self) -> Flow {
        let mut buf = [0u8; 64];
        while self.wake.recv(&mut buf).is_ok() {}
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::WorkerExited { worker_id, how } => self.on_worker_exited(&worker_id, &how),
                Command::ZygoteLost => self.on_zygote_lost(),
                Command::TaskOptions(options) => self.task_options = options,
                Command::Catalog(catalog) => self.catalog.set(catalog),
                Command::SetLimits(limits) => self.sched.set_limits(limits),
                Command::Retire { worker_id, reason } => self.retire(&worker_id, reason),
                Command::Standby { worker_id } => {
                    self.standby_ids.insert(worker_id);
                }
                Command::Drain => self.answer_queued(),
                Command::Stop => return Flow::Stop,
            }
        }
        Flow::Continue
    }

    /// Stops accepting and answers every queued task with `shutting_down` (it never ran).
    fn answer_queued(&mut self) {
        for task in self.sched.start_draining() {
            let origin = task.into_origin();
            let text = "the orchestrator shut down before this task ran; safe to retry elsewhere";
            self.reply_error(&origin, ErrorInfo::neutrino(error_kind::SHUTTING_DOWN, text));
        }
    }

    fn after_events(&mut self, now: Instant) {
        let counts = self.sched.worker_counts();
        self.metrics.set_gauges(self.sched.queue_depth(), counts.idle, counts.ready - counts.idle, counts.retiring);
        if self.sched.is_draining() && !self.drained_sent && self.sched.in_flight() == 0 {
            self.drained_sent = true;
            let _ = self.events.send(Event::Drained);
        }
        if now >= self.last_load.0 + LOAD_REPORT_EVERY {
            let load = Load {
                queue_depth: self.sched.queue_depth(),
                ready: counts.ready,
                idle: counts.idle,
                longest_idle: self
                    .sched
                    .longest_idle(now)
                    .map(|(id, d)| (String::from_utf8_lossy(&id).into_owned(), d)),
            };
            if load != self.last_load.1 || load.longest_idle.is_some() {
                let _ = self.events.send(Event::Load(load.clone()));
            }
            self.last_load = (now, load);
        }
    }
}

/// The socket a client's replies go out on, and its routing id there (see [`TAG_CURVE`]).
fn route<'a>(
    frontend: &'a zmq::Socket,
    secure: Option<&'a zmq::Socket>,
    client: &'a [u8],
) -> (&'a zmq::Socket, &'a [u8]) {
    match (secure, client.split_first()) {
        (Some(secure), Some((&TAG_CURVE, id))) => (secure, id),
        (Some(_), Some((_, id))) => (frontend, id),
        _ => (frontend, client),
    }
}

/// Prefixes the routing id (the first frame) with the socket's tag.
fn tag_client(parts: &mut [zmq::Message], tag: u8) {
    if let Some(first) = parts.first_mut() {
        let mut id = Vec::with_capacity(first.len() + 1);
        id.push(tag);
        id.extend_from_slice(first);
        *first = zmq::Message::from(id);
    }
}

/// Polls without blocking for up to `budget`, yielding the CPU between polls; returns how many
/// items became ready (0: the budget ran out). Keeps this vCPU from halting between the messages
/// of a request/reply exchange: waking a halted vCPU costs 100-200 µs on a VM, more than a whole
/// round trip through the orchestrator (measured: p50 350-390 µs without, 175-265 µs with 200 µs).
fn spin_poll(items: &mut [zmq::PollItem], budget: Duration) -> i32 {
    let start = Instant::now();
    while start.elapsed() < budget {
        match zmq::poll(items, 0) {
            Ok(0) => std::thread::yield_now(),
            Ok(n) => return n,
            Err(_) => return 0, // the blocking poll that follows reports it
        }
    }
    0
}

/// Reads one multipart message without blocking; `Ok(false)` when none is waiting.
fn recv_parts(socket: &zmq::Socket, parts: &mut Vec<zmq::Message>) -> Result<bool, zmq::Error> {
    let first = match socket.recv_msg(zmq::DONTWAIT) {
        Ok(m) => m,
        Err(zmq::Error::EAGAIN) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut more = first.get_more();
    parts.push(first);
    while more {
        let m = socket.recv_msg(0)?;
        more = m.get_more();
        parts.push(m);
    }
    Ok(true)
}

/// Sends [identity, header, meta, payload?] without blocking. If the peer cannot take it
/// (unroutable, or its pipe is full), nothing is sent and the payload is handed back.
fn send<M: Message>(socket: &zmq::Socket, to: &[u8], msg: &M, payload: Option<zmq::Message>) -> Result<(), Unsent> {
    let flags = zmq::DONTWAIT;
    if let Err(error) = socket.send(to, flags | zmq::SNDMORE) {
        return Err(Unsent { error, payload });
    }
    // Once the first frame is accepted, libzmq takes the rest of the message whole.
    let rest = || -> Result<(), zmq::Error> {
        socket.send(&header(M::TYPE)[..], flags | zmq::SNDMORE)?;
        match payload {
            Some(p) => {
                socket.send(encode_meta(msg), flags | zmq::SNDMORE)?;
                socket.send(p, flags)
            }
            None => socket.send(encode_meta(msg), flags),
        }
    };
    rest().map_err(|error| Unsent { error, payload: None })
}

/// A message `send` could not deliver; `payload` is handed back when nothing was sent.
struct Unsent {
    error: zmq::Error,
    payload: Option<zmq::Message>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_back_on_the_socket_the_request_came_in_on() {
        let ctx = zmq::Context::new();
        let plain = ctx.socket(zmq::ROUTER).unwrap();
        let curve = ctx.socket(zmq::ROUTER).unwrap();
        let same = |a: &zmq::Socket, b: &zmq::Socket| std::ptr::eq(a, b);
        // One socket: ids are used as they are.
        let (socket, id) = route(&plain, None, b"\x01abc");
        assert!(same(socket, &plain) && id == b"\x01abc");
        // Two sockets: the tag picks the socket and is stripped.
        let mut parts = vec![zmq::Message::from(&b"\x00\x6b\x8b\x45\x67"[..])];
        tag_client(&mut parts, TAG_CURVE);
        let tagged = parts[0].to_vec();
        assert_eq!(tagged, b"\x01\x00\x6b\x8b\x45\x67");
        let (socket, id) = route(&plain, Some(&curve), &tagged);
        assert!(same(socket, &curve) && id == b"\x00\x6b\x8b\x45\x67");
        tag_client(&mut parts, TAG_PLAIN);
        let (socket, id) = route(&plain, Some(&curve), &parts[0]);
        assert!(same(socket, &plain) && id == tagged, "the same routing id on the plain socket is another client");
    }
}
