//! JSON log lines on stderr; level from `RUST_LOG` (default `info`).
//!
//! While the gateway serves, lines are written by a thread of their own: a proxy thread
//! formats its line and hands it over without waiting, so a slow or stalled stderr (a full
//! pipe to a log shipper that stopped reading) never stalls traffic. Past `AUTHGATE_LOG_QUEUE`
//! lines waiting (default 8192), lines are dropped and counted in
//! `authgate_log_lines_dropped_total`. Before serving starts (and for `check`) lines are
//! written directly, so a start-up failure is always printed.

use prometheus::IntCounter;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Lines waiting at most, unless `AUTHGATE_LOG_QUEUE` says otherwise.
const QUEUE_LINES: usize = 8192;

/// One write to stderr carries at most about this much (many lines at once under load).
const BATCH_BYTES: usize = 64 * 1024;

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line sent before it is written.
    Flush(SyncSender<()>),
}

struct Queue {
    tx: SyncSender<Msg>,
    dropped: IntCounter,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(|| Handoff)
        .with_env_filter(filter)
        .try_init();
}

/// Starts the writer thread: from now on no log line is written by the thread that made it.
pub fn start_writer(dropped: IntCounter) -> Result<(), String> {
    let lines = std::env::var("AUTHGATE_LOG_QUEUE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(QUEUE_LINES);
    let (tx, rx) = sync_channel(lines);
    std::thread::Builder::new()
        .name("authgate-log".into())
        .spawn(move || write_lines(rx, lines, std::io::stderr()))
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    let _ = QUEUE.set(Queue { tx, dropped });
    Ok(())
}

/// Hands one complete line (ending in `\n`) to the writer, or writes it directly before the
/// writer runs. Never waits for stderr once the writer runs.
pub fn write_line(line: Vec<u8>) {
    match QUEUE.get() {
        Some(q) => match q.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => q.dropped.inc(),
        },
        // One write per line, so lines from different threads never interleave.
        None => {
            let _ = std::io::stderr().lock().write_all(&line);
        }
    }
}

/// Waits up to `timeout` for the lines handed over so far to be written (before the process
/// exits); a stalled stderr makes it give up, not hang.
pub fn flush(timeout: Duration) {
    let Some(q) = QUEUE.get() else {
        return;
    };
    let (done_tx, done_rx) = sync_channel(1);
    let deadline = std::time::Instant::now() + timeout;
    let mut msg = Msg::Flush(done_tx);
    // The queue may be full: retry until the deadline rather than block on it.
    loop {
        match q.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let _ = done_rx.recv_timeout(left);
}

/// How long the writer sleeps between looks at the queue while lines come, and at most
/// while none do. Each look is a wake-up of the writer thread, and on a proxy's core that is
/// two context switches: at 1 ms they cost the everything-on target about 0.5 µs per request
/// (bench/ANALYSIS.md). At 10 ms a line waits at most that long, as with nginx's buffered
/// `access_log ... flush=`, and the queue's 8192 lines still cover 800,000 lines a second.
const POLL_BUSY: Duration = Duration::from_millis(10);
const POLL_IDLE: Duration = Duration::from_millis(50);

/// The writer thread: each look writes every waiting line, in writes of about
/// [`BATCH_BYTES`]. It polls rather than blocks on the queue: a sender then never has a
/// sleeping receiver to wake, so handing a line over costs a proxy thread no system call (a
/// blocking `recv` made every line a futex wake, which doubled the everything-on target's CPU
/// per request). Idle, it backs off to [`POLL_IDLE`].
fn write_lines(rx: Receiver<Msg>, capacity: usize, mut out: impl Write) {
    use std::sync::mpsc::TryRecvError;
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut waiting: Vec<SyncSender<()>> = Vec::new();
    let mut pause = POLL_BUSY;
    let mut write = |batch: &mut Vec<u8>| {
        let _ = out.write_all(batch);
        batch.clear();
    };
    loop {
        let mut busy = false;
        // At most a queue's worth per look, so a flood cannot keep a flush from its answer.
        // `None` after the loop: a full look, and more may be waiting.
        let mut stopped = None;
        for _ in 0..capacity {
            match rx.try_recv() {
                Ok(Msg::Line(l)) => {
                    busy = true;
                    batch.extend_from_slice(&l);
                    if batch.len() >= BATCH_BYTES {
                        write(&mut batch);
                    }
                }
                Ok(Msg::Flush(done)) => waiting.push(done),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        if !batch.is_empty() {
            write(&mut batch);
        }
        for done in waiting.drain(..) {
            let _ = done.try_send(());
        }
        match stopped {
            Some(TryRecvError::Disconnected) => return,
            None => continue,
            Some(TryRecvError::Empty) => {}
        }
        pause = if busy {
            POLL_BUSY
        } else {
            (pause * 2).min(POLL_IDLE)
        };
        std::thread::sleep(pause);
    }
}

/// tracing's writer: each event is formatted into one buffer and written with one call, which
/// becomes one line handed to the writer thread.
struct Handoff;

impl Write for Handoff {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_line(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs a writer with a queue of `queue` lines, sends `lines` and a flush, and returns what
    /// it had written when the flush was answered.
    fn write_through(queue: usize, lines: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
        let (tx, rx) = sync_channel(queue);
        let sink = Sink::default();
        let out = sink.clone();
        let writer = std::thread::spawn(move || write_lines(rx, queue, out));
        for line in lines {
            tx.send(Msg::Line(line)).expect("send");
        }
        let (done_tx, done_rx) = sync_channel(1);
        tx.send(Msg::Flush(done_tx)).expect("send");
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("flush answered after the lines");
        let written = sink.0.lock().expect("sink").clone();
        drop(tx);
        writer.join().expect("writer ends with its queue");
        written
    }

    #[test]
    fn a_flush_is_answered_after_every_line_sent_before_it_is_written() {
        assert_eq!(write_through(4, [b"{}\n".to_vec()]), b"{}\n");
    }

    #[test]
    fn lines_past_one_batch_and_one_look_are_all_written_in_order() {
        // A queue of 8 lines per look and lines of 1 KiB: 200 of them span three batches and
        // many looks, sent from a thread that blocks whenever the queue is full.
        let line = |i: usize| format!("{i:01023}\n").into_bytes();
        let want: Vec<u8> = (0..200).flat_map(line).collect();
        assert!(
            write_through(8, (0..200).map(line)) == want,
            "every line, in order"
        );
    }
}
