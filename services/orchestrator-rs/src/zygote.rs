//! The zygote process and its control link: start it, read its length-prefixed messages,
//! ask it to fork workers, stop it (SPEC.md §4.4).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use neutrino_protocol::{
    control_payload_follows, decode_control, decode_meta, encode_control, ErrorInfo, Message, MessageType, Shutdown,
    ZygoteFailed, ZygoteReady, CONTROL_MAX_BYTES, CONTROL_MAX_PAYLOAD_BYTES,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::rundir::RunDir;

/// How long the zygote gets to stop its workers after `Shutdown` before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the zygote did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the app failed to import: {}: {}", .0.ename, .0.evalue)]
    AppImport(ErrorInfo),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// One message from the zygote: its type code, meta bytes, and the payload record that follows
/// it for the types that carry one (SPEC.md §3; only `ZygoteCatalog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMessage {
    pub code: u8,
    pub meta: Vec<u8>,
    pub payload: Option<Vec<u8>>,
}

pub struct Zygote {
    child: Child,
    pub pid: u32,
    writer: OwnedWriteHalf,
    /// Messages read by a dedicated task: `recv()` stays cancel-safe inside `select!`, which a
    /// length-then-body read on the stream itself would not be.
    messages: mpsc::Receiver<anyhow::Result<ControlMessage>>,
}

impl Zygote {
    /// Starts the zygote and waits for the app to import, within `--start-timeout`.
    pub async fn start(config: &Config, run_dir: &RunDir) -> Result<(Zygote, ZygoteReady), StartError> {
        let timeout = config.start_timeout();
        match tokio::time::timeout(timeout, Zygote::spawn(config, run_dir)).await {
            Ok(Ok((zygote, ready))) => {
                info!(
                    "Zygote ready (pid={}, {} tasks, app imported in {:.1} ms)",
                    ready.pid,
                    ready.tasks.len(),
                    ready.import_ms
                );
                Ok((zygote, ready))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!("the zygote did not import the app within {timeout:?} (--start-timeout)").into()),
        }
    }

    /// Spawns the zygote and waits until it imported the app (`ZygoteReady`).
    async fn spawn(config: &Config, run_dir: &RunDir) -> Result<(Zygote, ZygoteReady), StartError> {
        let control_path = run_dir.socket("control.sock");
        let _ = std::fs::remove_file(&control_path);
        let listener = UnixListener::bind(&control_path).context("cannot bind the control socket")?;
        let mut child = Command::new(&config.python)
            .args(["-m", "neutrino_worker.zygote", "--app", &config.app])
            .arg("--app-dir")
            .arg(&config.app_dir)
            .arg("--control")
            .arg(&control_path)
            .args(["--backend", &run_dir.backend_endpoint(), "--credits", &config.window.to_string()])
            // Workers refuse a result over the frame limit themselves (kind `result_too_large`):
            // sent, it would be over the backend socket's cap and dropped with the connection.
            .env("NEUTRINO_MAX_RESULT_BYTES", config.max_message_bytes.to_string())
            .env("NEUTRINO_LOG_FORMAT", config.log_format.as_str())
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches only the orchestrator, which
            // then stops workers in order; and killpg() can sweep up every worker at the end.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} (set --python)", config.python.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("zygote exited at once"))?;

        let stream = tokio::select! {
            accepted = listener.accept() => accepted.context("control socket accept failed")?.0,
            status = child.wait() => {
                let status = status.context("waiting for the zygote")?;
                let hint = format!("is neutrino-worker installed for {}?", config.python.display());
                return Err(anyhow!("the zygote exited before connecting ({status}); {hint}").into());
            }
        };
        let (reader, writer) = stream.into_split();
        let (tx, messages) = mpsc::channel(64);
        // Buffered: a message is a length and a body, two reads unbuffered; one read takes both,
        // and whatever else the zygote wrote meanwhile.
        tokio::spawn(read_messages(BufReader::new(reader), tx));
        let mut zygote = Zygote { child, pid, writer, messages };
        let ControlMessage { code, meta, .. } =
            zygote.recv().await?.ok_or_else(|| anyhow!("the zygote closed the control link at start"))?;
        match MessageType::from_code(code) {
            Some(MessageType::ZygoteReady) => {
                Ok((zygote, decode_meta::<ZygoteReady>(&meta).map_err(anyhow::Error::from)?))
            }
            Some(MessageType::ZygoteFailed) => {
                let failed: ZygoteFailed = decode_meta(&meta).map_err(anyhow::Error::from)?;
                let _ = zygote.child.wait().await;
                Err(StartError::AppImport(failed.error))
            }
            _ => Err(anyhow!("unexpected first control message 0x{code:02x}").into()),
        }
    }

    pub async fn send<M: Message>(&mut self, msg: &M) -> anyhow::Result<()> {
        self.writer.write_all(&encode_control(msg)).await.context("control link write")
    }

    /// Next message; `None` when the zygote closed the link. Cancel-safe.
    pub async fn recv(&mut self) -> anyhow::Result<Option<ControlMessage>> {
        self.messages.recv().await.transpose()
    }

    /// Asks the zygote to stop its workers and exit; kills the whole process group if it does
    /// not within `STOP_TIMEOUT`. Returns the zygote's exit code, if it exited by itself.
    pub async fn stop(mut self) -> Option<i32> {
        if let Err(e) = self.send(&Shutdown { graceful: true }).await {
            warn!("could not ask the zygote to stop: {e}");
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                warn!("the zygote did not stop in time; killing it and its workers");
                None
            }
        };
        kill_group(self.pid);
        let _ = self.child.wait().await;
        status
    }
}

impl Zygote {
    /// Collects a zygote that already died (and anything left in its process group).
    pub async fn reap(mut self) {
        kill_group(self.pid);
        let _ = self.child.wait().await;
    }
}

/// Reads length-prefixed control messages until EOF or an error (which it forwards).
async fn read_messages<R: AsyncRead + Unpin>(mut reader: R, tx: mpsc::Sender<anyhow::Result<ControlMessage>>) {
    loop {
        let message = async {
            let len = match reader.read_u32().await {
                Ok(n) => n as usize,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if len > CONTROL_MAX_BYTES {
                bail!("control message of {len} bytes exceeds {CONTROL_MAX_BYTES}");
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).await?;
            let (code, meta) = decode_control(&body)?;
            let payload = if control_payload_follows(code) {
                let len = reader.read_u32().await? as usize;
                if len > CONTROL_MAX_PAYLOAD_BYTES {
                    bail!("control payload of {len} bytes exceeds {CONTROL_MAX_PAYLOAD_BYTES}");
                }
                let mut payload = vec![0; len];
                reader.read_exact(&mut payload).await?;
                Some(payload)
            } else {
                None
            };
            Ok(Some(ControlMessage { code, meta: meta.to_vec(), payload }))
        };
        let item = match message.await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => return, // EOF: dropping `tx` ends the receiver's stream
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// SIGKILLs the zygote's process group, which its workers inherit: nothing outlives us.
pub fn kill_group(pgid: u32) {
    // SAFETY: killpg has no memory-safety preconditions; ESRCH (already gone) is fine.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use neutrino_protocol::{encode_control_with_payload, Forked, ZygoteCatalog};
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_payload_record_arrives_with_its_message_byte_for_byte() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(read_messages(ours, tx));
        let catalog = ZygoteCatalog { tasks: vec!["add".into()], build_ms: 1.5 };
        let payload = b"\x81\xa3add\x80";
        let mut stream = encode_control_with_payload(&catalog, payload);
        stream.extend(encode_control(&Forked { worker_id: "w-1".into(), pid: 7 }));
        // Written in pieces: the reader must wait for the whole payload record.
        for chunk in stream.chunks(5) {
            theirs.write_all(chunk).await.unwrap();
        }
        drop(theirs);

        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(first.code, MessageType::ZygoteCatalog as u8);
        assert_eq!(decode_meta::<ZygoteCatalog>(&first.meta).unwrap(), catalog);
        assert_eq!(first.payload.as_deref(), Some(&payload[..]));
        let second = rx.recv().await.unwrap().unwrap();
        assert_eq!((second.code, second.payload), (MessageType::Forked as u8, None));
        assert!(rx.recv().await.is_none(), "EOF ends the stream");
    }

    #[tokio::test]
    async fn an_oversized_payload_record_is_an_error() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(read_messages(ours, tx));
        let mut stream = encode_control(&ZygoteCatalog { tasks: vec![], build_ms: 0.0 });
        stream.extend(((CONTROL_MAX_PAYLOAD_BYTES + 1) as u32).to_be_bytes());
        theirs.write_all(&stream).await.unwrap();
        let err = rx.recv().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
