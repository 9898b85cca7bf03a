//! The ring buffer's consumer side: a timer-driven wait and non-blocking
//! drains that decode each record.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollEvent};
use uffdscope_ebpf::{decode, DecodeError, RawEvent};

/// Non-blocking access to the ring buffer.
///
/// Programs submit without waking the consumer until `wakeup_bytes` are
/// waiting, so the intended loop is `wait(~20 ms)` then `drain`: the wait
/// returns early only when the kernel forces a wake-up because the ring is
/// filling up. The wait is edge-triggered (epoll `EPOLLET`): a level-triggered
/// poll would report the ring readable as soon as any record is waiting and
/// turn the timer drain into a drain per event.
pub struct RingDrain {
    pub(super) ring: RingBuf<MapData>,
    pub(super) epoll: Epoll,
}

impl fmt::Debug for RingDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingDrain")
            .field("fd", &self.ring.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl RingDrain {
    /// Hands every waiting record's bytes to `f`, without blocking. Returns
    /// the number of records.
    pub fn drain_raw(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Decodes every waiting record and hands it to `f`, without blocking.
    /// Returns the number of records (decoded or not).
    pub fn drain(&mut self, mut f: impl FnMut(Result<RawEvent, DecodeError>)) -> usize {
        self.drain_raw(|bytes| f(decode(bytes)))
    }

    /// Appends every waiting record to `out`. Records that do not decode are
    /// counted in the returned [`DrainCount::bad`] and the first error is kept.
    pub fn drain_into(&mut self, out: &mut Vec<RawEvent>) -> DrainCount {
        let mut count = DrainCount::default();
        self.drain(|r| match r {
            Ok(ev) => {
                out.push(ev);
                count.good += 1;
            }
            Err(e) => {
                count.bad += 1;
                count.first_error.get_or_insert(e);
            }
        });
        count
    }

    /// Waits up to `timeout` (at most 65 s) for the kernel to signal the ring,
    /// which it does only once `wakeup_bytes` are waiting. Returns true when
    /// signalled; false on timeout or when a signal interrupted the wait.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut events = [EpollEvent::empty()];
        match self.epoll.wait(&mut events, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

impl AsFd for RingDrain {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for RingDrain {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Result of [`RingDrain::drain_into`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainCount {
    /// Records decoded.
    pub good: usize,
    /// Records that did not decode.
    pub bad: usize,
    /// The first decode error.
    pub first_error: Option<DecodeError>,
}
