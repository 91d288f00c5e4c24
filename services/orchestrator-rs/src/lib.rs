//! Neutrino's task pod orchestrator: pre-forks Python workers through a zygote and schedules
//! tasks from clients onto them, push-on-idle / pull-on-busy, over ZeroMQ.
//!
//! # Layout
//!
//! - [`config`]: command-line flags and environment, read once.
//! - [`curve`]: CURVE key files (the pod's certificate, the client allowlist) for tcp frontends.
//! - [`supervisor`]: `run(config, shutdown)`: start-up, the drain order, carrying out the pool's actions.
//! - [`pool`]: the worker pool as plain state: replacements, crash backoff, elastic sizing, zygote restarts.
//! - [`broker`]: the ZeroMQ thread (the only code touching `zmq`): the poll loop and commands
//!   (`mod.rs`), binding, routing and sending (`sockets.rs`), client messages (`clients.rs`),
//!   worker messages and deadlines (`workers.rs`), the CURVE key check (`zap.rs`).
//! - [`scheduler`]: queue, workers and in-flight tasks as plain data (SPEC.md §6): the
//!   scheduler (`mod.rs`), a task at each stage (`task.rs`), waiting tasks and retry delays
//!   (`queue.rs`), choosing a worker (`dispatch.rs`), failed attempts (`retry.rs`), one worker
//!   (`worker.rs`), task policy, recycling limits and retirement reasons (`policy.rs`).
//! - [`catalog`]: the task catalog from the zygote, served to clients as bytes.
//! - [`zygote`]: the zygote process and its control link.
//! - [`rundir`]: the private directory for ipc sockets.
//! - [`metrics`]: Prometheus metrics, their label enums, and the `/metrics` endpoint.
//! - [`logging`]: the `[LEVEL] message` log format.
//!
//! The wire format is `libs/protocol/SPEC.md`.

pub mod broker;
pub mod catalog;
pub mod config;
pub mod curve;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod rundir;
pub mod scheduler;
pub mod supervisor;
pub mod zygote;

pub use config::Config;
pub use supervisor::run;
