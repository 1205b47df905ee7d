//! Frames written by the fan-out straight into a connection's socket (ADR 0022).
//!
//! A frame to an idle connection used to go through its outbound queue: a push, a wakeup of
//! the connection's task, the task's poll, a pop, the write. In a broadcast every connection
//! is idle, and that round trip through the scheduler, on each connection's cold memory, was
//! most of socket-push's own CPU time. Now the fan-out writes the frame itself when it can
//! go out at once and in order:
//!
//! - the connection's task has sent `ready` (and a resume's replay), and has not closed;
//! - nothing is in its queue, and nothing it took from there is unwritten: frames queued
//!   earlier go first;
//! - the connection was sent nothing for a while ([`QUIET`] by default): a connection that
//!   is sent frames one after another gets them through its queue, where frames that pile
//!   up while the task waits its turn go out together in one write;
//! - the socket takes the frame now, and nothing the connection itself writes is part way
//!   ([`web::socket::Writer`]).
//!
//! Otherwise the frame is queued, as before, and a full queue still kicks the connection
//! (4008). A frame the socket takes only in part is finished by the connection's task, which
//! the fan-out then wakes: the connection's next frame queues behind it.

use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use web::socket::{WriteOutcome, Writer};

use crate::hub::{Cursor, Outbound};

/// How long, by default, a connection must have been sent nothing for a frame to go straight
/// into its socket.
pub const QUIET: Duration = Duration::from_millis(100);

/// One connection's direct path, shared by the hub's entry and the connection's task.
pub struct Direct {
    /// None when the connection was not accepted through `web::socket::Listener`: every frame
    /// then goes through the queue.
    writer: Option<Arc<Writer>>,
    /// How long the connection must have been sent nothing for a frame to go straight in.
    quiet: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The task has sent `ready` (and a resume's replay), and has not closed.
    open: bool,
    /// Frames queued and not yet written by the task: while there are any, frames queue
    /// behind them.
    queued: usize,
    /// The newest event frame sent (a resume's replay included): one at or before it is not
    /// sent again.
    sent_up_to: Option<Cursor>,
    /// When the connection was last handed a frame straight, or the task last wrote queued
    /// ones: the heartbeat pings only a quiet link, and only a quiet connection is written
    /// straight.
    last_frame: Option<Instant>,
    /// Wakes the task to write what the socket did not take of a direct frame.
    flush: Option<Waker>,
    /// Frames written straight (whole or in part) so far.
    written_straight: u64,
}

/// A full outbound queue: the connection is too slow.
#[derive(Debug)]
pub struct Full;

impl Direct {
    pub fn new(writer: Option<Arc<Writer>>, quiet: Duration) -> Self {
        Self {
            writer,
            quiet,
            state: Mutex::new(State::default()),
        }
    }

    /// Sends `frame` to the connection: straight into its socket when it can go now and in
    /// order, through its queue otherwise.
    pub fn deliver(
        &self,
        frame: &Arc<Outbound>,
        queue: &mpsc::Sender<Arc<Outbound>>,
    ) -> Result<(), Full> {
        let Ok(mut state) = self.state.lock() else {
            return Err(Full);
        };
        // A connection with frames queued is busy: this one queues behind them, and the task
        // notes the time when it has written them ([`Direct::written`]).
        if state.queued == 0 {
            let now = Instant::now();
            let quiet = state
                .last_frame
                .is_none_or(|last| now.saturating_duration_since(last) >= self.quiet);
            state.last_frame = Some(now);
            if state.open
                && quiet
                && let Some(writer) = &self.writer
                && Self::write(&mut state, writer, frame)
            {
                return Ok(());
            }
        }
        state.queued += 1;
        if queue.try_send(frame.clone()).is_err() {
            state.queued -= 1;
            return Err(Full);
        }
        Ok(())
    }

    /// Writes `frame` straight into the socket; false when it must be queued instead.
    fn write(state: &mut State, writer: &Writer, frame: &Outbound) -> bool {
        if let (Some(cursor), Some(sent)) = (frame.cursor, state.sent_up_to)
            && cursor <= sent
        {
            // A resume's replay sent it.
            return true;
        }
        let mut header = [0; 10];
        let header = text_frame_header(frame.text.len(), &mut header);
        let outcome = writer.try_write_whole(&[header, frame.text.as_bytes()]);
        if outcome == WriteOutcome::NotWritten {
            return false;
        }
        if frame.cursor.is_some() {
            state.sent_up_to = frame.cursor;
        }
        state.written_straight += 1;
        if outcome == WriteOutcome::Pending
            && let Some(flush) = &state.flush
        {
            flush.wake_by_ref();
        }
        true
    }

    /// The task has sent `ready` (and a replay up to `sent_up_to`): frames may go straight to
    /// the socket from now on. `flush` wakes the task to finish a frame the socket took in
    /// part.
    pub fn open(&self, sent_up_to: Cursor, flush: Waker) {
        if let Ok(mut state) = self.state.lock() {
            state.sent_up_to = state.sent_up_to.max(Some(sent_up_to));
            state.flush = Some(flush);
            state.open = true;
        }
    }

    /// No more direct frames: the task is closing the connection.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.open = false;
        }
    }

    /// The newest event frame sent, for the task about to write queued frames. While it
    /// holds frames taken from the queue, the fan-out writes nothing straight (they count as
    /// queued until [`Direct::written`]), so the task keeps this cursor alone meanwhile.
    pub fn sent_up_to(&self) -> Option<Cursor> {
        self.state.lock().ok().and_then(|state| state.sent_up_to)
    }

    /// The task has written `count` frames it took from the queue (or dropped them as sent),
    /// the newest event frame among them at `sent_up_to`.
    pub fn written(&self, count: usize, sent_up_to: Option<Cursor>) {
        if let Ok(mut state) = self.state.lock() {
            state.queued = state.queued.saturating_sub(count);
            state.sent_up_to = state.sent_up_to.max(sent_up_to);
            state.last_frame = Some(Instant::now());
        }
    }

    /// When the connection was last handed a frame straight, or last had queued ones
    /// written.
    pub fn last_frame(&self) -> Option<Instant> {
        self.state.lock().ok().and_then(|state| state.last_frame)
    }

    /// How many frames the fan-out wrote straight into the socket (counted into
    /// `chat_ws_frames_written_straight_total` when the connection ends).
    pub fn written_straight(&self) -> u64 {
        self.state
            .lock()
            .map(|state| state.written_straight)
            .unwrap_or(0)
    }
}

/// The header of an unmasked, final text frame of `length` bytes (RFC 6455, 5.2).
pub fn text_frame_header(length: usize, buffer: &mut [u8; 10]) -> &[u8] {
    buffer[0] = 0x81;
    if length < 126 {
        buffer[1] = length as u8;
        &buffer[..2]
    } else if let Ok(short) = u16::try_from(length) {
        buffer[1] = 126;
        buffer[2..4].copy_from_slice(&short.to_be_bytes());
        &buffer[..4]
    } else {
        buffer[1] = 127;
        buffer[2..10].copy_from_slice(&(length as u64).to_be_bytes());
        &buffer[..10]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut buffer = [0; 10];
        assert_eq!(text_frame_header(5, &mut buffer), [0x81, 5]);
        assert_eq!(text_frame_header(125, &mut buffer), [0x81, 125]);
        assert_eq!(text_frame_header(126, &mut buffer), [0x81, 126, 0, 126]);
        assert_eq!(
            text_frame_header(65_535, &mut buffer),
            [0x81, 126, 0xFF, 0xFF]
        );
        assert_eq!(
            text_frame_header(65_536, &mut buffer),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn without_a_writer_every_frame_is_queued_and_counted_until_written() {
        let direct = Direct::new(None, QUIET);
        direct.open(Cursor(5, 0), Waker::noop().clone());
        let (sender, mut receiver) = mpsc::channel(2);
        let frame = Arc::new(Outbound {
            cursor: Some(Cursor(6, 0)),
            text: "{}".into(),
        });
        assert!(direct.deliver(&frame, &sender).is_ok());
        assert!(direct.deliver(&frame, &sender).is_ok());
        assert!(
            direct.deliver(&frame, &sender).is_err(),
            "the queue is full"
        );
        assert!(receiver.try_recv().is_ok());
        assert_eq!(direct.sent_up_to(), Some(Cursor(5, 0)));
        direct.written(2, Some(Cursor(6, 0)));
        assert_eq!(direct.state.lock().map(|state| state.queued).ok(), Some(0));
        assert_eq!(direct.sent_up_to(), Some(Cursor(6, 0)));
        direct.written(0, Some(Cursor(4, 0)));
        assert_eq!(direct.sent_up_to(), Some(Cursor(6, 0)), "never goes back");
    }
}
