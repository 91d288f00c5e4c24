//! The ZAP handler (ZeroMQ RFC 27) of the CURVE frontends: a thread with a REP socket on
//! `inproc://zeromq.zap.01` in the broker's context. libzmq asks it about every CURVE handshake
//! on a socket with [`ZAP_DOMAIN`]; it lets in the client keys of the allowlist (status 200,
//! user id: the key file's name) and refuses the rest (400), counting each refusal in
//! `neutrino_curve_refused_total` and logging each refused key at most once a minute.
//!
//! The same thread reads the CURVE socket's monitor: handshakes that fail before ZAP is asked
//! (a plain-text client, one that expects another server key, bytes that are not ZMTP) are
//! counted in `neutrino_curve_failed_handshakes_total` and logged at most once a minute per kind.
//!
//! The ZAP socket is bound ([`bind`]) before any CURVE socket binds (libzmq lets every client in
//! when no handler is bound), then moved to the thread: a socket is used by one thread at a time.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::{debug, error, warn};

use crate::curve::{z85_encode, Key};
use crate::metrics::Metrics;

/// The ZAP domain of the CURVE frontends.
pub const ZAP_DOMAIN: &str = "neutrino";
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
const MONITOR_ENDPOINT: &str = "inproc://neutrino.curve.monitor";
/// libzmq's `ZMQ_PROTOCOL_ERROR_ZMTP_*` values of a `HANDSHAKE_FAILED_PROTOCOL` event.
const ZMTP_CRYPTOGRAPHIC: u32 = 0x1100_0001;
const ZMTP_MECHANISM_MISMATCH: u32 = 0x1100_0002;
/// A refused key is logged again after this long (it is counted every time).
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(60);
/// Refused keys remembered for the rate limit; past this the memory is cleared (a client making
/// up new keys cannot grow it without bound).
const MAX_REMEMBERED: usize = 4096;

/// The running handler; dropping it stops and joins the thread.
pub struct ZapHandler {
    stop: UnixDatagram,
    thread: Option<JoinHandle<()>>,
}

/// The ZAP socket, bound: call before the first CURVE socket binds.
pub fn bind(ctx: &zmq::Context) -> anyhow::Result<zmq::Socket> {
    let socket = ctx.socket(zmq::REP)?;
    socket.set_linger(0)?;
    socket.bind(ZAP_ENDPOINT).with_context(|| format!("cannot bind the ZAP handler on {ZAP_ENDPOINT}"))?;
    Ok(socket)
}

/// A socket that receives `curve`'s failed handshakes (call before `curve` binds).
pub fn monitor(ctx: &zmq::Context, curve: &zmq::Socket) -> anyhow::Result<zmq::Socket> {
    curve.monitor(MONITOR_ENDPOINT, zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32)?;
    let socket = ctx.socket(zmq::PAIR)?;
    socket.set_linger(0)?;
    socket.connect(MONITOR_ENDPOINT)?;
    Ok(socket)
}

impl ZapHandler {
    /// Serves `zap` (from [`bind`]) and reads `monitor` (from [`monitor`]) on a thread.
    pub fn start(
        zap: zmq::Socket,
        monitor: zmq::Socket,
        clients: HashMap<Key, String>,
        metrics: Metrics,
    ) -> anyhow::Result<ZapHandler> {
        let (stop, stop_rx) = UnixDatagram::pair()?;
        let mut policy = Allowlist::new(clients);
        let thread = std::thread::Builder::new().name("zap".into()).spawn(move || {
            serve(&zap, &monitor, &stop_rx, &mut policy, &metrics);
        })?;
        Ok(ZapHandler { stop, thread: Some(thread) })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        let _ = self.stop.send(&[1]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &zmq::Socket, monitor: &zmq::Socket, stop: &UnixDatagram, policy: &mut Allowlist, metrics: &Metrics) {
    let mut failures = FailureLog::default();
    loop {
        let mut items = [
            socket.as_poll_item(zmq::POLLIN),
            zmq::PollItem::from_fd(stop.as_raw_fd(), zmq::POLLIN),
            monitor.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, -1) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return fail_closed(stop, "poll", e),
        }
        if items[1].is_readable() {
            return;
        }
        if items[2].is_readable() {
            while let Ok(event) = monitor.recv_multipart(zmq::DONTWAIT) {
                if let Some(code) = failed_handshake(&event) {
                    metrics.curve_failed_handshakes.inc();
                    failures.note(
                        code,
                        event.get(1).map_or("", |e| std::str::from_utf8(e).unwrap_or("")),
                        Instant::now(),
                    );
                }
            }
        }
        if !items[0].is_readable() {
            continue;
        }
        let request = match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => frames,
            Err(zmq::Error::EAGAIN) => continue,
            Err(e) => return fail_closed(stop, "receive", e),
        };
        let reply = policy.decide(&request, Instant::now());
        if reply.status == STATUS_REFUSED {
            metrics.curve_refused.inc();
        }
        if let Err(e) = socket.send_multipart(reply.frames(&request), 0) {
            return fail_closed(stop, "send", e);
        }
    }
}

/// After an error the handler answers no more, but keeps its socket bound until the broker ends:
/// with no handler bound, libzmq would let every CURVE client in.
fn fail_closed(stop: &UnixDatagram, what: &str, e: zmq::Error) {
    error!("ZAP handler: {what} failed: {e}; no CURVE client can connect from now on");
    let _ = stop.recv(&mut [0u8; 1]);
}

/// The protocol error code of a monitor event `[event u16 LE + value u32 LE, endpoint]` that
/// reports a failed handshake.
fn failed_handshake(event: &[Vec<u8>]) -> Option<u32> {
    let head: &[u8; 6] = event.first()?.as_slice().try_into().ok()?;
    let kind = u16::from_le_bytes([head[0], head[1]]);
    let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
    (kind as i32 == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32).then_some(value)
}

/// Failed handshakes logged at most once a minute per kind (libzmq's codes are a short list).
#[derive(Default)]
struct FailureLog {
    logged: HashMap<u32, Instant>,
}

impl FailureLog {
    /// Whether this failure was logged (not within the last minute for the same code).
    fn note(&mut self, code: u32, endpoint: &str, now: Instant) -> bool {
        if self.logged.get(&code).is_some_and(|at| now.duration_since(*at) < LOG_AGAIN_AFTER) {
            return false;
        }
        self.logged.insert(code, now);
        let why = match code {
            ZMTP_MECHANISM_MISMATCH => "the client does not use CURVE (plain text?)".to_owned(),
            ZMTP_CRYPTOGRAPHIC => "the client expects another server public key (or sent corrupt data)".to_owned(),
            other => format!("not a ZeroMQ CURVE handshake (protocol error {other:#x})"),
        };
        warn!(
            "A client of {endpoint} failed the CURVE handshake: {why} (counted in \
             neutrino_curve_failed_handshakes_total; this kind is logged again after {}s at the earliest)",
            LOG_AGAIN_AFTER.as_secs()
        );
        true
    }
}

const STATUS_OK: &str = "200";
const STATUS_REFUSED: &str = "400";
const STATUS_ERROR: &str = "500";

#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: &'static str,
    text: &'static str,
    user_id: String,
}

impl Reply {
    /// RFC 27's reply: version, request id, status code, status text, user id, metadata.
    fn frames(&self, request: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let request_id = request.get(1).cloned().unwrap_or_default();
        vec![
            b"1.0".to_vec(),
            request_id,
            self.status.as_bytes().to_vec(),
            self.text.as_bytes().to_vec(),
            self.user_id.as_bytes().to_vec(),
            Vec::new(),
        ]
    }

    fn refused(text: &'static str) -> Reply {
        Reply { status: STATUS_REFUSED, text, user_id: String::new() }
    }
}

struct Allowlist {
    clients: HashMap<Key, String>,
    /// When each refused key was last logged.
    logged: HashMap<Key, Instant>,
}

impl Allowlist {
    fn new(clients: HashMap<Key, String>) -> Self {
        Allowlist { clients, logged: HashMap::new() }
    }

    /// RFC 27's request: version, request id, domain, address, routing id, mechanism, credentials.
    fn decide(&mut self, request: &[Vec<u8>], now: Instant) -> Reply {
        if request.len() < 6 || request[0] != b"1.0" {
            warn!(frames = request.len(), "ZAP handler: malformed request");
            return Reply { status: STATUS_ERROR, text: "malformed ZAP request", user_id: String::new() };
        }
        let (domain, address, mechanism) = (&request[2], &request[3], &request[5]);
        if domain != ZAP_DOMAIN.as_bytes() || mechanism != b"CURVE" {
            warn!(
                domain = %String::from_utf8_lossy(domain),
                mechanism = %String::from_utf8_lossy(mechanism),
                "ZAP handler: refusing a handshake that is not CURVE on the frontend's domain"
            );
            return Reply::refused("only CURVE clients are let in");
        }
        let Some(key) = request.get(6).and_then(|k| Key::try_from(k.as_slice()).ok()) else {
            return Reply::refused("no CURVE public key");
        };
        if let Some(name) = self.clients.get(&key) {
            debug!(client = %name, "ZAP handler: CURVE client let in");
            return Reply { status: STATUS_OK, text: "OK", user_id: name.clone() };
        }
        if self.logged.get(&key).is_none_or(|at| now.duration_since(*at) >= LOG_AGAIN_AFTER) {
            if self.logged.len() >= MAX_REMEMBERED {
                self.logged.clear();
            }
            self.logged.insert(key, now);
            warn!(
                "Refused a CURVE client from {}: its public key {} is not in --curve-clients \
                 (counted in neutrino_curve_refused_total; this key is logged again after {}s at the earliest)",
                String::from_utf8_lossy(address),
                z85_encode(&key),
                LOG_AGAIN_AFTER.as_secs()
            );
        }
        Reply::refused("client key not allowed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(domain: &str, mechanism: &str, key: &[u8]) -> Vec<Vec<u8>> {
        let mut r = vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            domain.as_bytes().to_vec(),
            b"10.0.0.9".to_vec(),
            Vec::new(),
            mechanism.as_bytes().to_vec(),
        ];
        if !key.is_empty() {
            r.push(key.to_vec());
        }
        r
    }

    fn allowlist() -> Allowlist {
        Allowlist::new(HashMap::from([([1u8; 32], "gateway".to_owned())]))
    }

    #[test]
    fn listed_keys_are_let_in_with_their_name() {
        let reply = allowlist().decide(&request(ZAP_DOMAIN, "CURVE", &[1; 32]), Instant::now());
        assert_eq!(reply, Reply { status: "200", text: "OK", user_id: "gateway".into() });
        let frames = reply.frames(&request(ZAP_DOMAIN, "CURVE", &[1; 32]));
        let expected: Vec<&[u8]> = vec![b"1.0", b"7", b"200", b"OK", b"gateway", b""];
        assert_eq!(frames, expected);
    }

    #[test]
    fn others_are_refused() {
        let mut list = allowlist();
        let now = Instant::now();
        assert_eq!(list.decide(&request(ZAP_DOMAIN, "CURVE", &[2; 32]), now).status, "400", "unknown key");
        assert_eq!(list.decide(&request(ZAP_DOMAIN, "CURVE", &[1; 31]), now).status, "400", "short key");
        assert_eq!(list.decide(&request(ZAP_DOMAIN, "CURVE", b""), now).status, "400", "no key");
        assert_eq!(list.decide(&request(ZAP_DOMAIN, "NULL", b""), now).status, "400", "plain text");
        assert_eq!(list.decide(&request(ZAP_DOMAIN, "PLAIN", b"user"), now).status, "400");
        assert_eq!(list.decide(&request("other", "CURVE", &[1; 32]), now).status, "400", "another domain");
        let mut malformed = request(ZAP_DOMAIN, "CURVE", &[1; 32]);
        malformed[0] = b"2.0".to_vec();
        assert_eq!(list.decide(&malformed, now).status, "500");
        assert_eq!(list.decide(&[b"1.0".to_vec()], now).status, "500");
    }

    #[test]
    fn failed_handshakes_are_read_from_monitor_events_and_logged_once_a_minute() {
        let event = |kind: u16, value: u32| {
            let mut head = kind.to_le_bytes().to_vec();
            head.extend_from_slice(&value.to_le_bytes());
            vec![head, b"tcp://0.0.0.0:5555".to_vec()]
        };
        let failed = zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16;
        assert_eq!(failed_handshake(&event(failed, ZMTP_MECHANISM_MISMATCH)), Some(ZMTP_MECHANISM_MISMATCH));
        assert_eq!(failed_handshake(&event(zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16, 400)), None);
        assert_eq!(failed_handshake(&[vec![1, 2, 3]]), None, "short event frame");
        assert_eq!(failed_handshake(&[]), None);
        let mut log = FailureLog::default();
        let start = Instant::now();
        assert!(log.note(ZMTP_MECHANISM_MISMATCH, "tcp://x", start));
        assert!(!log.note(ZMTP_MECHANISM_MISMATCH, "tcp://x", start + Duration::from_secs(59)));
        assert!(log.note(ZMTP_CRYPTOGRAPHIC, "tcp://x", start), "another kind is logged on its own");
        assert!(log.note(ZMTP_MECHANISM_MISMATCH, "tcp://x", start + LOG_AGAIN_AFTER));
    }

    #[test]
    fn refused_keys_are_logged_at_most_once_a_minute() {
        let mut list = allowlist();
        let start = Instant::now();
        list.decide(&request(ZAP_DOMAIN, "CURVE", &[2; 32]), start);
        list.decide(&request(ZAP_DOMAIN, "CURVE", &[2; 32]), start + Duration::from_secs(30));
        assert_eq!(list.logged[&[2; 32]], start, "not logged again within the minute");
        list.decide(&request(ZAP_DOMAIN, "CURVE", &[2; 32]), start + LOG_AGAIN_AFTER);
        assert_eq!(list.logged[&[2; 32]], start + LOG_AGAIN_AFTER);
        for i in 0..MAX_REMEMBERED + 10 {
            let mut key = [3u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            list.decide(&request(ZAP_DOMAIN, "CURVE", &key), start);
        }
        assert!(list.logged.len() <= MAX_REMEMBERED, "the memory of refused keys is bounded");
    }
}
