//! Logs: `tracing` events on stderr.
//!
//! - On a terminal: `WARN message key=value`, colored; the command's result goes to
//!   stdout as before, so the default level there is `warn`.
//! - Under systemd (stderr connected to the journal, `JOURNAL_STREAM` set): each line
//!   starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//!   debug), which journald turns into the entry's priority, and has no timestamp
//!   (journald adds its own). Default level `info`, so the journal records what each
//!   run did.
//! - Otherwise (cron, pipes, files): RFC 3339 timestamp, level, message; default `info`.
//!
//! `-v` raises the level by one step per use, `-q` lowers it to `warn`.
//!
//! Ground floor. Imports nothing of the crate; only the binary sets it up.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Where stderr goes, which decides the log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A terminal.
    Terminal,
    /// The systemd journal.
    Journal,
    /// A pipe or file.
    Plain,
}

impl Sink {
    /// Detects where stderr goes.
    pub fn detect() -> Sink {
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            Sink::Journal
        } else if std::io::stderr().is_terminal() {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }

    /// The prefix of an error line for this sink (`<3>` for the journal).
    pub fn error_prefix(self) -> &'static str {
        match self {
            Sink::Journal => "<3>",
            _ => "",
        }
    }
}

/// The level for `verbose` uses of `-v` (negative: `-q`).
fn level(sink: Sink, verbose: i8) -> Level {
    const LEVELS: [Level; 5] = [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ];
    let base: i8 = if sink == Sink::Terminal { 1 } else { 2 };
    let i = if verbose < 0 { 1 } else { base + verbose };
    LEVELS[usize::try_from(i).unwrap_or(0).min(LEVELS.len() - 1)]
}

/// Installs the global subscriber. Call once, early.
pub fn init(sink: Sink, verbose: i8) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level(sink, verbose))
        .with_target(false);
    let _ = match sink {
        Sink::Journal => builder
            .with_ansi(false)
            .event_format(JournalFormat)
            .try_init(),
        Sink::Terminal => builder.without_time().try_init(),
        Sink::Plain => builder.with_ansi(false).try_init(),
    };
}

/// `<priority>message fields`: the format journald parses from a service's stderr
/// (sd-daemon(3) log-level prefixes).
struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(Sink::Terminal, 0), Level::WARN);
        assert_eq!(level(Sink::Plain, 0), Level::INFO);
        assert_eq!(level(Sink::Journal, 0), Level::INFO);
        assert_eq!(level(Sink::Terminal, 1), Level::INFO);
        assert_eq!(level(Sink::Plain, 1), Level::DEBUG);
        assert_eq!(level(Sink::Plain, 9), Level::TRACE);
        assert_eq!(level(Sink::Plain, -1), Level::WARN);
    }
}
