//! Which of a connection's sources woke its task. A connection's task waits on its outbound
//! queue, its socket, its heartbeat and its kick. Polled together at every wakeup, the three
//! quiet ones were polled once per frame sent: the socket's read path alone (zeroing the read
//! buffer, checking readiness, registering wakers) cost more than taking the frame from the
//! queue. Each quiet source gets its own waker here, which marks the source and wakes the
//! task; a source is polled again only once it has woken (or when the task asks for it).

use futures::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Wake, Waker};

/// A source that is rarely ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Kick = 0,
    Heartbeat = 1,
    Socket = 2,
    /// The fan-out left part of a frame in the socket's writer ([`crate::direct`]).
    Flush = 3,
}

const SOURCES: usize = 4;

/// The sources' marks and the task to wake.
#[derive(Default)]
struct Shared {
    woken: AtomicU8,
    task: AtomicWaker,
}

struct SourceWaker {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for SourceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.woken.fetch_or(self.bit, Ordering::AcqRel);
        self.shared.task.wake();
    }
}

/// One connection's wake sources. Every source starts marked: each is polled once, which
/// registers its waker.
pub struct Wakes {
    shared: Arc<Shared>,
    wakers: [Waker; SOURCES],
}

impl Default for Wakes {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicU8::new((1 << SOURCES) - 1),
            task: AtomicWaker::new(),
        });
        let waker = |source: Source| {
            Waker::from(Arc::new(SourceWaker {
                shared: shared.clone(),
                bit: 1 << source as u8,
            }))
        };
        let wakers = [
            waker(Source::Kick),
            waker(Source::Heartbeat),
            waker(Source::Socket),
            waker(Source::Flush),
        ];
        Self { shared, wakers }
    }
}

/// The sources marked when the task was polled.
#[derive(Clone, Copy, Debug)]
pub struct Woken(u8);

impl Woken {
    pub fn contains(self, source: Source) -> bool {
        self.0 & (1 << source as u8) != 0
    }

    /// These marks but `source`'s.
    pub fn without(self, source: Source) -> Self {
        Self(self.0 & !(1 << source as u8))
    }
}

impl Wakes {
    /// Registers the task's waker and takes the marks: the sources to poll now. Registered
    /// first, so a source that wakes after the marks are taken wakes the task again.
    pub fn take(&self, context: &Context<'_>) -> Woken {
        self.shared.task.register(context.waker());
        Woken(self.shared.woken.swap(0, Ordering::AcqRel))
    }

    /// Marks `source` to be polled at the next wakeup: after it was ready (so that it
    /// registers again), or after it was polled with another waker than its own.
    pub fn mark(&self, source: Source) {
        self.shared
            .woken
            .fetch_or(1 << source as u8, Ordering::AcqRel);
    }

    /// Keeps the marks taken in `woken`, to be polled at the next wakeup.
    pub fn keep(&self, woken: Woken) {
        self.shared.woken.fetch_or(woken.0, Ordering::AcqRel);
    }

    /// The context to poll `source` with: its waker marks it.
    pub fn context(&self, source: Source) -> Context<'_> {
        Context::from_waker(&self.wakers[source as usize])
    }

    /// `source`'s waker, for a source outside the task to wake it with.
    pub fn waker(&self, source: Source) -> Waker {
        self.wakers[source as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_source_is_polled_again_only_once_it_has_woken() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let context = Context::from_waker(&task);
        let wakes = Wakes::default();
        let first = wakes.take(&context);
        assert!(first.contains(Source::Kick) && first.contains(Source::Socket));
        let none = wakes.take(&context);
        assert!(!none.contains(Source::Socket) && !none.contains(Source::Heartbeat));

        wakes.context(Source::Socket).waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        let woken = wakes.take(&context);
        assert!(woken.contains(Source::Socket));
        assert!(!woken.contains(Source::Kick) && !woken.contains(Source::Heartbeat));

        wakes.mark(Source::Heartbeat);
        assert!(wakes.take(&context).contains(Source::Heartbeat));
    }
}
