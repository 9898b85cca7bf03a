//! Per-thread software perf counters (task clock, context switches, page
//! faults) for the target's threads, sampled into trace records.
//!
//! This VM class has no hardware PMU, so only software events are used; each
//! thread gets its own counters (`observe_pid(tid)`, any CPU), with kernel time
//! included (`exclude_kernel(false)`): a faulting vCPU spends its time there.

use std::collections::BTreeMap;

use perf_event::events::Software;
use perf_event::{Builder, Counter};
use uffdscope_trace::record::PerfSample;

/// The counters kept per thread, with the names used in [`PerfSample::counter`].
const EVENTS: [(Software, &str); 3] = [
    (Software::TASK_CLOCK, "task_clock_ns"),
    (Software::CONTEXT_SWITCHES, "context_switches"),
    (Software::PAGE_FAULTS, "page_faults"),
];

/// Open counters of every thread added so far.
#[derive(Default)]
pub struct ThreadCounters {
    threads: BTreeMap<u32, Vec<(&'static str, Counter)>>,
    /// Threads whose counters could not be opened (exited, or no permission).
    pub failed: Vec<(u32, String)>,
}

impl std::fmt::Debug for ThreadCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadCounters")
            .field("threads", &self.threads.keys().collect::<Vec<_>>())
            .field("failed", &self.failed)
            .finish()
    }
}

impl ThreadCounters {
    /// Opens and enables the counters of `tid` (once per thread).
    pub fn add(&mut self, tid: u32) {
        if self.threads.contains_key(&tid) {
            return;
        }
        let mut counters = Vec::with_capacity(EVENTS.len());
        for (event, name) in EVENTS {
            let built = Builder::new(event)
                .observe_pid(tid as i32)
                .any_cpu()
                .exclude_kernel(false)
                .exclude_hv(false)
                .build()
                .and_then(|mut c| c.enable().map(|()| c));
            match built {
                Ok(c) => counters.push((name, c)),
                Err(e) => {
                    self.failed.push((tid, format!("{name}: {e}")));
                    return;
                }
            }
        }
        self.threads.insert(tid, counters);
    }

    /// Reads every counter; threads that exited are dropped.
    pub fn sample(&mut self, ts: u64) -> Vec<PerfSample> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (&tid, counters) in &mut self.threads {
            for (name, c) in counters.iter_mut() {
                match c.read() {
                    Ok(value) => out.push(PerfSample {
                        ts,
                        tid,
                        counter: (*name).to_owned(),
                        value,
                    }),
                    Err(_) => {
                        gone.push(tid);
                        break;
                    }
                }
            }
        }
        for tid in gone {
            self.threads.remove(&tid);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_threads_task_clock() {
        let tid = nix::unistd::gettid().as_raw() as u32;
        let mut c = ThreadCounters::default();
        c.add(tid);
        if !c.failed.is_empty() {
            // perf_event_paranoid may forbid it for non-root users; that is a
            // property of the host, reported by `uffdscope check`.
            eprintln!("SKIP counts_this_threads_task_clock: {:?}", c.failed);
            assert!(
                !nix::unistd::geteuid().is_root(),
                "root must open counters: {:?}",
                c.failed
            );
            return;
        }
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let s = c.sample(1);
        let clock = s.iter().find(|s| s.counter == "task_clock_ns").unwrap();
        assert!(clock.value > 0, "{s:?}");
    }
}
