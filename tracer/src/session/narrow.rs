//! Attach only what the target uses: the system call its return path sends
//! page requests with. Until that is known all four send calls (`sendmsg`,
//! `sendto`, `write`, `writev`) are traced; the first send of a thread that
//! has read a userfaultfd message (the fault thread, which sends the
//! requests) names the call, and the session then detaches the other three
//! pairs of programs, which would otherwise run for every such call of every
//! process on the host. See ARCHITECTURE.md, "Recording levels".

use uffdscope_ebpf::abi::send_syscall;
use uffdscope_ebpf::RawEvent;
use uffdscope_trace::record::Side;

use crate::bpf::{attaches_on, TRACEPOINTS};

/// Learns the return path's send call from the ring's events.
#[derive(Debug, Default)]
pub(super) struct SendNarrowing {
    /// Threads seen reading a userfaultfd (a bounded few: QEMU has one).
    readers: Vec<u32>,
    /// The call the fault thread sends with, once seen.
    learned: Option<u16>,
    /// The other calls' programs were detached.
    pub(super) done: bool,
}

/// Most uffd readers remembered (QEMU has one fault thread).
const MAX_READERS: usize = 16;

impl SendNarrowing {
    /// Takes one event of the ring.
    pub(super) fn see(&mut self, ev: &RawEvent) {
        match ev {
            RawEvent::UffdRead(r) if r.ret > 0 => {
                let tid = r.hdr.tid;
                if !self.readers.contains(&tid) && self.readers.len() < MAX_READERS {
                    self.readers.push(tid);
                }
            }
            RawEvent::Send(s) if self.learned.is_none() && self.readers.contains(&s.hdr.tid) => {
                self.learned = Some(s.syscall).filter(|&c| name(c).is_some());
            }
            _ => {}
        }
    }

    /// The call learned and not yet acted on: the programs to detach (every
    /// send call's but this one's) and the call's name.
    pub(super) fn to_detach(&self) -> Option<(Vec<&'static str>, &'static str)> {
        if self.done {
            return None;
        }
        let keep = name(self.learned?)?;
        // The destination's enter and exit programs of the other calls, as
        // the catalogue lists them.
        let other = |event: &str| {
            ALL.iter().any(|(_, n)| {
                *n != keep
                    && ["sys_enter_", "sys_exit_"]
                        .iter()
                        .any(|p| event == format!("{p}{n}"))
            })
        };
        let programs = TRACEPOINTS
            .iter()
            .filter(|tp| attaches_on(tp, Side::Destination) && tp.category == "syscalls")
            .filter(|tp| other(tp.name))
            .map(|tp| tp.program)
            .collect();
        Some((programs, keep))
    }
}

const ALL: [(u16, &str); 4] = [
    (send_syscall::SENDMSG, "sendmsg"),
    (send_syscall::SENDTO, "sendto"),
    (send_syscall::WRITE, "write"),
    (send_syscall::WRITEV, "writev"),
];

fn name(call: u16) -> Option<&'static str> {
    ALL.iter().find(|(c, _)| *c == call).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_ebpf::abi::{Hdr, Send, UffdRead};

    fn read(tid: u32) -> RawEvent {
        RawEvent::UffdRead(Box::new(UffdRead {
            hdr: Hdr {
                tid,
                ..Hdr::default()
            },
            ret: 32,
            ..UffdRead::default()
        }))
    }

    fn send(tid: u32, syscall: u16) -> RawEvent {
        RawEvent::Send(Send {
            hdr: Hdr {
                tid,
                ..Hdr::default()
            },
            syscall,
            ..Send::default()
        })
    }

    #[test]
    fn the_fault_threads_first_send_names_the_call() {
        let mut n = SendNarrowing::default();
        // A send before any uffd read, and one by another thread, say nothing.
        n.see(&send(7, send_syscall::WRITE));
        n.see(&read(5));
        n.see(&send(6, send_syscall::WRITE));
        assert!(n.to_detach().is_none());
        n.see(&send(5, send_syscall::SENDMSG));
        n.see(&send(5, send_syscall::WRITE));
        let (programs, keep) = n.to_detach().expect("learned");
        assert_eq!(keep, "sendmsg");
        assert_eq!(programs.len(), 6);
        assert!(
            programs.iter().all(|p| !p.ends_with("sendmsg")),
            "{programs:?}"
        );
        // `write` is not a suffix match for `writev`.
        assert_eq!(programs.iter().filter(|p| p.ends_with("_write")).count(), 2);
        n.done = true;
        assert!(n.to_detach().is_none());
    }

    #[test]
    fn an_unknown_call_detaches_nothing() {
        let mut n = SendNarrowing::default();
        n.see(&read(5));
        n.see(&send(5, 99));
        assert!(n.to_detach().is_none());
    }
}
