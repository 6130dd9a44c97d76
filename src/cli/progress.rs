//! Showing a [`Progress`]: an indicatif bar on a terminal, a plain line every few
//! seconds otherwise (logs, journald), nothing with `--quiet`.

use std::sync::Arc;
use std::time::Duration;

use thinarc::progress::Progress;

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Bar,
    Lines,
}

/// A running display; stops when dropped.
pub struct Display {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<tokio::sync::Notify>,
}

impl Display {
    /// Starts showing `progress` labelled `what`.
    pub fn start(mode: Mode, what: String, progress: Arc<Progress>) -> Display {
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = match mode {
            Mode::Off => None,
            Mode::Bar => Some(tokio::spawn(bar(what, progress, stop.clone()))),
            Mode::Lines => Some(tokio::spawn(lines(what, progress, stop.clone()))),
        };
        Display { task, stop }
    }

    /// Stops the display and waits for it to clear.
    pub async fn finish(mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn bar(what: String, progress: Arc<Progress>, stop: Arc<tokio::sync::Notify>) {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what);
    loop {
        let (done, total) = progress.get();
        pb.set_length(total);
        pb.set_position(done);
        tokio::select! {
            _ = stop.notified() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    pb.finish_and_clear();
}

async fn lines(what: String, progress: Arc<Progress>, stop: Arc<tokio::sync::Notify>) {
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let (done, total) = progress.get();
        let pct = if total > 0 {
            done as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001) / (1 << 20) as f64;
        eprintln!(
            "{what}: {} of {} ({pct:.0}%, {rate:.0} MiB/s)",
            super::human(done),
            super::human(total)
        );
    }
}

/// A job's operation shows its progress through a [`Display`].
impl thinarc::nightly::Shown for Display {
    fn finish(self: Box<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(Display::finish(*self))
    }
}
