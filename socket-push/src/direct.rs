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
//! - the socket takes the frame now, and nothing the connection itself writes is part way
//!   ([`web::socket::Writer`]).
//!
//! Otherwise the frame is queued, as before, and a full queue still kicks the connection
//! (4008). A frame the socket takes only in part is finished by the connection's task, which
//! the fan-out then wakes: the connection's next frame queues behind it.

use std::sync::{Arc, Mutex};
use std::task::Waker;
use tokio::sync::mpsc;
use tokio::time::Instant;
use web::socket::{WriteOutcome, Writer};

use crate::hub::{Cursor, Outbound};

/// One connection's direct path, shared by the hub's entry and the connection's task.
pub struct Direct {
    /// None when the connection was not accepted through `web::socket::Listener`: every frame
    /// then goes through the queue.
    writer: Option<Arc<Writer>>,
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
    /// When a frame last went out directly: the heartbeat pings only a quiet link.
    last_direct: Option<Instant>,
    /// Wakes the task to write what the socket did not take of a direct frame.
    flush: Option<Waker>,
}

/// A full outbound queue: the connection is too slow.
#[derive(Debug)]
pub struct Full;

impl Direct {
    pub fn new(writer: Option<Arc<Writer>>) -> Self {
        Self {
            writer,
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
        if state.open
            && state.queued == 0
            && let Some(writer) = &self.writer
        {
            if let (Some(cursor), Some(sent)) = (frame.cursor, state.sent_up_to)
                && cursor <= sent
            {
                // A resume's replay sent it.
                return Ok(());
            }
            let mut header = [0; 10];
            let header = text_frame_header(frame.text.len(), &mut header);
            match writer.try_write_whole(&[header, frame.text.as_bytes()]) {
                WriteOutcome::Written => {
                    state.sent(frame.cursor);
                    return Ok(());
                }
                WriteOutcome::Pending => {
                    state.sent(frame.cursor);
                    if let Some(flush) = &state.flush {
                        flush.wake_by_ref();
                    }
                    return Ok(());
                }
                WriteOutcome::NotWritten => {}
            }
        }
        state.queued += 1;
        if queue.try_send(frame.clone()).is_err() {
            state.queued -= 1;
            return Err(Full);
        }
        Ok(())
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

    /// Whether the task should send a frame it took from the queue: false for an event frame
    /// at or before the newest one sent. Notes it as the newest when it is one.
    pub fn take_fresh(&self, cursor: Option<Cursor>) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        match (cursor, state.sent_up_to) {
            (Some(cursor), Some(sent)) if cursor <= sent => false,
            (Some(_), _) => {
                state.sent_up_to = cursor;
                true
            }
            (None, _) => true,
        }
    }

    /// The task has written `count` frames it took from the queue (or dropped them as sent).
    pub fn written(&self, count: usize) {
        if let Ok(mut state) = self.state.lock() {
            state.queued = state.queued.saturating_sub(count);
        }
    }

    /// When a frame last went straight to the socket.
    pub fn last_direct(&self) -> Option<Instant> {
        self.state.lock().ok().and_then(|state| state.last_direct)
    }
}

impl State {
    fn sent(&mut self, cursor: Option<Cursor>) {
        if cursor.is_some() {
            self.sent_up_to = cursor;
        }
        self.last_direct = Some(Instant::now());
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
        let direct = Direct::new(None);
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
        assert!(direct.take_fresh(Some(Cursor(6, 0))));
        assert!(!direct.take_fresh(Some(Cursor(6, 0))), "sent already");
        assert!(!direct.take_fresh(Some(Cursor(4, 0))), "the replay sent it");
        direct.written(2);
        assert_eq!(direct.state.lock().map(|state| state.queued).ok(), Some(0));
    }
}
