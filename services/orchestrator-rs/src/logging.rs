//! Log lines on stderr, as text (`[INFO] message key=value`) or JSON (one object per line:
//! `timestamp`, `level`, `target`, `message` and the event's fields), for `--log-format`. Level
//! from `RUST_LOG` (default `info`). A line about a task names it with the fields `task_id` and
//! `task` (and `trace_id`, where the task's trace context is known), as the Python services do.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`); the zygote and workers are told the same through
/// `NEUTRINO_LOG_FORMAT` ([`LogFormat::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[INFO] message key=value`, for a terminal.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl LogFormat {
    /// The `--log-format` / `NEUTRINO_LOG_FORMAT` value that names this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

struct Bracketed;

impl<S, N> FormatEvent<S, N> for Bracketed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "[{}] ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => lines.event_format(Bracketed).init(),
        // The event's fields at the top level beside `message`, as the Python services write them.
        LogFormat::Json => lines.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}
