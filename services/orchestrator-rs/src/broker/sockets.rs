//! The ZeroMQ sockets: the frontend ROUTER sockets (one plain; with CURVE on, one for the tcp://
//! endpoints beside it) and the backend one, bound with their limits; which socket a client's
//! replies go out on; and reading and writing one multipart message without blocking.

use anyhow::Context as _;
use neutrino_protocol::{encode_meta, header, Message};
use tracing::{info, warn};

use super::{zap, BrokerConfig};
use crate::curve::z85_encode;
use crate::metrics::Metrics;

/// High-water marks: generous, since a blocked broker would stall every client and worker.
const FRONTEND_HWM: i32 = 200_000;
const BACKEND_HWM: i32 = 50_000;
/// First byte of a client id while there are two frontend sockets (see the broker's module doc).
pub(super) const TAG_PLAIN: u8 = 0;
pub(super) const TAG_CURVE: u8 = 1;

/// The bound sockets, and the ZAP handler that must live as long as the CURVE one.
pub(super) struct Sockets {
    /// Every frontend endpoint, or with CURVE on the ipc:// ones (or the tcp:// ones if there is
    /// no ipc:// frontend).
    pub frontend: zmq::Socket,
    /// With CURVE on and both kinds of frontends: the CURVE socket of the tcp:// ones.
    pub secure: Option<zmq::Socket>,
    pub zap: Option<zap::ZapHandler>,
    pub backend: zmq::Socket,
}

/// Binds every socket (so address errors surface at start-up), starting the ZAP handler first
/// when CURVE is on.
pub(super) fn bind(ctx: &zmq::Context, config: &BrokerConfig, metrics: &Metrics) -> anyhow::Result<Sockets> {
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
        let zap_socket = zap::bind(ctx)?;
        let socket = frontend_socket(ctx, config.max_message_bytes)?;
        socket.set_curve_server(true)?;
        socket.set_curve_secretkey(&keys.secret)?;
        socket.set_zap_domain(zap::ZAP_DOMAIN)?;
        let monitor = zap::monitor(ctx, &socket)?;
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
            let plain = frontend_socket(ctx, config.max_message_bytes)?;
            for endpoint in &plain_endpoints {
                plain.bind(endpoint).with_context(|| format!("cannot bind frontend {endpoint}"))?;
            }
            (plain, curve)
        }
    };
    let backend = router(ctx, BACKEND_HWM, config.max_message_bytes)?;
    backend.bind(&config.backend).with_context(|| format!("cannot bind backend {}", config.backend))?;
    Ok(Sockets { frontend, secure, zap, backend })
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

/// The socket a client's replies go out on, and its routing id there (see [`TAG_CURVE`]).
pub(super) fn route<'a>(
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
pub(super) fn tag_client(parts: &mut [zmq::Message], tag: u8) {
    if let Some(first) = parts.first_mut() {
        let mut id = Vec::with_capacity(first.len() + 1);
        id.push(tag);
        id.extend_from_slice(first);
        *first = zmq::Message::from(id);
    }
}

/// Reads one multipart message without blocking; `Ok(false)` when none is waiting.
pub(super) fn recv_parts(socket: &zmq::Socket, parts: &mut Vec<zmq::Message>) -> Result<bool, zmq::Error> {
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
pub(super) fn send<M: Message>(
    socket: &zmq::Socket,
    to: &[u8],
    msg: &M,
    payload: Option<zmq::Message>,
) -> Result<(), Unsent> {
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
pub(super) struct Unsent {
    pub error: zmq::Error,
    pub payload: Option<zmq::Message>,
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
