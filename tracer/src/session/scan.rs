//! What the session learns from `/proc` while it records: threads and
//! sockets that appear late (post-copy threads, the return path), per-thread
//! perf counters, and the uffd and socket fds the BPF maps must know.

use std::collections::{HashMap, HashSet};

use uffdscope_trace::record::Record;

use crate::bpf::BpfTracer;
use crate::discover::{self, DiscoverError};
use crate::perf::ThreadCounters;

/// Threads and sockets already in the trace, and sockets still looked for.
#[derive(Default)]
pub(super) struct ProcScan {
    known_tids: HashSet<u32>,
    counters: ThreadCounters,
    known_socks: HashSet<u64>,
    /// Socket inodes not found in the TCP tables yet, with how many scans
    /// looked for them: a socket before connect()/listen(), or not TCP at all.
    unresolved_socks: HashMap<u64, u32>,
}

impl ProcScan {
    /// The first scan: the threads (with a first perf sample), the uffd
    /// ranges and the TCP sockets of `pid`. Fails when the process is gone
    /// or unreadable.
    pub(super) fn first(
        &mut self,
        pid: u32,
        now: u64,
        out: &mut Vec<Record>,
    ) -> Result<(), DiscoverError> {
        for t in discover::threads(pid, now)? {
            self.known_tids.insert(t.tid);
            self.counters.add(t.tid);
            out.push(Record::Thread(t));
        }
        out.extend(self.counters.sample(now).into_iter().map(Record::Perf));
        out.extend(
            discover::uffd_ranges(pid, now)?
                .into_iter()
                .map(Record::UffdRange),
        );
        if let Ok(fds) = discover::scan_proc_fds(pid) {
            for s in discover::sockets(pid, &fds.sockets, now) {
                self.known_socks.insert(s.inode);
                out.push(Record::Socket(s));
            }
        }
        Ok(())
    }

    /// A later scan: new threads, a perf sample, new fds seeded into the BPF
    /// maps and new TCP sockets. A process that vanished yields nothing.
    pub(super) fn again(
        &mut self,
        pid: u32,
        now: u64,
        tracer: &mut BpfTracer,
        out: &mut Vec<Record>,
    ) {
        if let Ok(threads) = discover::threads(pid, now) {
            for t in threads {
                if self.known_tids.insert(t.tid) {
                    self.counters.add(t.tid);
                    out.push(Record::Thread(t));
                }
            }
        }
        out.extend(self.counters.sample(now).into_iter().map(Record::Perf));
        let Ok(fds) = discover::scan_proc_fds(pid) else {
            return;
        };
        for &(fd, _) in &fds.sockets {
            let _ = tracer.seed_sock_fd(pid, fd);
        }
        for &fd in &fds.uffd {
            let _ = tracer.seed_uffd_fd(pid, fd);
        }
        let lookup = self.sockets_to_look_up(&fds.sockets);
        if !lookup.is_empty() {
            for s in discover::sockets(pid, &lookup, now) {
                self.unresolved_socks.remove(&s.inode);
                if self.known_socks.insert(s.inode) {
                    out.push(Record::Socket(s));
                }
            }
        }
    }

    /// Reading `/proc/PID/net/tcp{,6}` walks the whole established hash
    /// (262144 buckets on the lab VM: ~4 ms per read, in the kernel and not
    /// preemptible under `PREEMPT_NONE`), stalling whichever target thread
    /// wakes on that CPU. So the tables are read only for sockets not
    /// resolved yet: at every scan during a socket's first 5 s, then every 5 s.
    fn sockets_to_look_up(&mut self, sockets: &[(u32, u64)]) -> Vec<(u32, u64)> {
        self.unresolved_socks
            .retain(|inode, _| sockets.iter().any(|s| s.1 == *inode));
        sockets
            .iter()
            .copied()
            .filter(|&(_, inode)| {
                if self.known_socks.contains(&inode) {
                    return false;
                }
                let tries = self.unresolved_socks.entry(inode).or_insert(0);
                *tries += 1;
                *tries <= 10 || tries.is_multiple_of(10)
            })
            .collect()
    }
}
