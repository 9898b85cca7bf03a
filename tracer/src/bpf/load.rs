//! Loading and attaching: patching the read-only globals (targets, wake-up
//! threshold), loading `uffdscope_ebpf::OBJECT` with aya, attaching every
//! program of the catalogue, seeding the uffd and socket fd maps, reading
//! the drop and statistics counters and taking the placement bins.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, TracePoint};
use aya::{Ebpf, EbpfLoader};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use uffdscope_ebpf::abi::{self, BinKey, BinVal, Kind, MAX_TARGETS};
use uffdscope_ebpf::{decode_bin, names, OBJECT};
use uffdscope_trace::record::{Detail, Side};

const BIN_KEY: usize = std::mem::size_of::<BinKey>();
const BIN_VAL: usize = std::mem::size_of::<BinVal>();

use super::catalogue::{attaches_on, Need, Tracepoint, TRACEPOINTS};
use super::formats::{check_format, event_dir, find_tracefs, FormatCheck};
use super::ring::RingDrain;
use super::stats::ProgramStats;
use super::{kernel_btf_present, map_err, BpfError};
use crate::discover::{scan_proc_fds, ProcFds};

/// Settings fixed at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfConfig {
    /// Target processes (tgids), 1 to 8.
    pub targets: Vec<u32>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Wake the consumer only when this many bytes wait in the ring; below it
    /// records are submitted without a wake-up and the consumer drains on its
    /// timer.
    pub wakeup_bytes: u64,
    /// Minimum gap between two `tcp_probe` records of one socket.
    pub tcp_probe_interval: Duration,
    /// Which tracepoints are attached ([`Tracepoint::detail`]) and whether
    /// background placements are counted in bins instead of recorded each
    /// ([`Detail::counts_placements`]; the bins are then taken with
    /// [`BpfTracer::take_bins`]).
    pub detail: Detail,
    /// Which end of the migration is recorded: the programs attached and
    /// the loader's `ufs_source` flag follow it ([`super::catalogue::attaches_on`]).
    pub side: Side,
    /// Attach the `kvm:*` tracepoints. They fire for every KVM guest on the
    /// host, so a target that does not run on KVM goes without them.
    pub kvm: bool,
}

/// Default ring size: 16 MiB.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;
/// Smallest ring: one page.
pub const MIN_RING_BYTES: u32 = 4096;
/// Largest ring: 1 GiB.
pub const MAX_RING_BYTES: u32 = 1 << 30;

impl BpfConfig {
    /// Defaults for the given targets: 16 MiB ring, wake-up at a quarter full,
    /// one `tcp_probe` per socket per millisecond.
    pub fn new(targets: Vec<u32>) -> Self {
        BpfConfig {
            targets,
            ring_bytes: DEFAULT_RING_BYTES,
            wakeup_bytes: u64::from(DEFAULT_RING_BYTES / 4),
            tcp_probe_interval: Duration::from_millis(1),
            detail: Detail::Full,
            side: Side::Destination,
            kvm: true,
        }
    }

    /// `bytes` as a ring size: a power of two from [`MIN_RING_BYTES`] to
    /// [`MAX_RING_BYTES`] (`--ring-mb` 1 to 1024).
    pub fn ring_size(bytes: u64) -> Result<u32, BpfError> {
        match u32::try_from(bytes) {
            Ok(b) if b.is_power_of_two() && (MIN_RING_BYTES..=MAX_RING_BYTES).contains(&b) => Ok(b),
            _ => Err(BpfError::Config(format!(
                "ring buffer size {bytes} bytes ({} MiB) is not a power of two from 4 KiB to 1 GiB (--ring-mb 1 to 1024)",
                bytes >> 20
            ))),
        }
    }

    /// Checks the limits the kernel and the object impose.
    pub fn validate(&self) -> Result<(), BpfError> {
        if self.targets.is_empty() {
            return Err(BpfError::Config("no target process given".into()));
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(BpfError::Config(format!(
                "{} targets given, at most {MAX_TARGETS} are supported",
                self.targets.len()
            )));
        }
        if let Some(t) = self.targets.iter().find(|&&t| t == 0) {
            return Err(BpfError::Config(format!("target pid {t} is not a process")));
        }
        Self::ring_size(u64::from(self.ring_bytes))?;
        if self.wakeup_bytes > u64::from(self.ring_bytes) {
            return Err(BpfError::Config(format!(
                "wake-up threshold {} is larger than the ring ({} bytes)",
                self.wakeup_bytes, self.ring_bytes
            )));
        }
        Ok(())
    }
}

/// What happened to one tracepoint at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Loaded and attached.
    Attached,
    /// The tracepoint does not exist on this kernel (optional only).
    Missing,
    /// The layout differs from what the program reads; not attached (optional only).
    FormatMismatch(String),
    /// Loading or attaching failed (optional only).
    Failed(String),
    /// Attached, then detached because the target does not use it
    /// ([`BpfTracer::detach`]).
    Detached,
}

/// Load/attach result of one tracepoint.
#[derive(Debug, Clone)]
pub struct AttachStatus {
    /// The tracepoint.
    pub tracepoint: &'static Tracepoint,
    /// The outcome.
    pub outcome: AttachOutcome,
}

/// Drop and statistics counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Ring reservations that failed, per record kind.
    pub drops_by_kind: Vec<(Kind, u64)>,
    /// Sum of `drops_by_kind`.
    pub drops: u64,
    /// `read()` on uffd fds returning `-EAGAIN` (not emitted as records).
    pub read_eagain: u64,
    /// Per-thread/per-fd map updates that failed because a map was full.
    pub map_full: u64,
    /// `sock_*_length` with `-EAGAIN` (not emitted).
    pub sock_eagain: u64,
    /// Tracked sleeps that ended without a uffd-ioctl wake.
    pub sleep_other: u64,
    /// Tracked sleeps whose switch-in was never traced; those a uffd ioctl
    /// ended come out with `fault_flags::RUN_UNSEEN` and no `run_ts`.
    pub run_unseen: u64,
    /// Interrupt wakes that arrived while a target was inside a uffd ioctl.
    pub wake_in_interrupt: u64,
    /// Wakes by a uffd ioctl of a thread whose pending fault lay elsewhere.
    pub wake_out_of_range: u64,
}

/// A loaded and attached tracer. Dropping it detaches every program.
pub struct BpfTracer {
    ebpf: Ebpf,
    status: Vec<AttachStatus>,
    targets: Vec<u32>,
}

impl fmt::Debug for BpfTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpfTracer")
            .field("targets", &self.targets)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl BpfTracer {
    /// Loads the object for `cfg`, attaches every tracepoint (required ones
    /// must attach; optional ones are reported in [`Self::attach_status`]),
    /// and seeds the fd maps from `/proc` of every target.
    pub fn load(cfg: &BpfConfig) -> Result<BpfTracer, BpfError> {
        cfg.validate()?;
        let tracefs = find_tracefs().ok_or(BpfError::NoTracefs)?;
        if !kernel_btf_present() {
            return Err(BpfError::NoKernelBtf);
        }
        let mut targets = [0u32; MAX_TARGETS];
        targets[..cfg.targets.len()].copy_from_slice(&cfg.targets);
        let n_targets = cfg.targets.len() as u32;
        let probe_ns = u64::try_from(cfg.tcp_probe_interval.as_nanos()).unwrap_or(u64::MAX);
        let lean = u32::from(cfg.detail.counts_placements());
        let minimal = u32::from(cfg.detail == Detail::Minimal);
        let source = u32::from(cfg.side == Side::Source);

        let mut ebpf = EbpfLoader::new()
            // aya 0.14 has no type for task storage (ufs_task) but creates
            // it all the same; userspace never touches it.
            .allow_unsupported_maps()
            .override_global(names::TARGETS_GLOBAL, &targets, true)
            .override_global(names::N_TARGETS_GLOBAL, &n_targets, true)
            .override_global(names::WAKEUP_BYTES_GLOBAL, &cfg.wakeup_bytes, true)
            .override_global(names::TCP_PROBE_INTERVAL_GLOBAL, &probe_ns, true)
            .override_global(names::LEAN_GLOBAL, &lean, true)
            .override_global(names::MINIMAL_GLOBAL, &minimal, true)
            .override_global(names::SOURCE_GLOBAL, &source, true)
            .map_max_entries(names::EVENTS_MAP, cfg.ring_bytes)
            .load(OBJECT)
            .map_err(|e| BpfError::Object(Box::new(e)))?;

        let mut status = Vec::with_capacity(TRACEPOINTS.len());
        let attached = TRACEPOINTS
            .iter()
            .filter(|tp| attaches_on(tp, cfg.side) && tp.detail() <= cfg.detail)
            .filter(|tp| cfg.kvm || tp.category != "kvm");
        for tp in attached {
            let outcome = attach_one(&mut ebpf, &tracefs, tp)?;
            status.push(AttachStatus {
                tracepoint: tp,
                outcome,
            });
        }
        let mut tracer = BpfTracer {
            ebpf,
            status,
            targets: cfg.targets.clone(),
        };
        // Scan after attaching: an fd created before the scan is found by it,
        // one created after is learned in the kernel.
        for tgid in cfg.targets.clone() {
            tracer.seed_from_proc(tgid)?;
        }
        Ok(tracer)
    }

    /// Detaches and unloads the named programs that are attached; returns
    /// how many were.
    pub fn detach(&mut self, programs: &[&'static str]) -> Result<usize, BpfError> {
        let mut n = 0;
        for st in &mut self.status {
            let name = st.tracepoint.program;
            if st.outcome != AttachOutcome::Attached || !programs.contains(&name) {
                continue;
            }
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(BpfError::ProgramNotInObject(name))?
                .try_into()
                .map_err(|e| BpfError::Program {
                    action: "detaching",
                    program: name,
                    tracepoint: st.tracepoint.to_string(),
                    source: Box::new(e),
                })?;
            program.unload().map_err(|e| BpfError::Program {
                action: "detaching",
                program: name,
                tracepoint: st.tracepoint.to_string(),
                source: Box::new(e),
            })?;
            st.outcome = AttachOutcome::Detached;
            n += 1;
        }
        Ok(n)
    }

    /// Load/attach outcome of every tracepoint, in [`TRACEPOINTS`] order.
    pub fn attach_status(&self) -> &[AttachStatus] {
        &self.status
    }

    /// The target tgids.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// Cumulative run counts and times of every attached program, as the
    /// kernel keeps them (`bpf_prog_info`). Times and counts only grow while
    /// `kernel.bpf_stats_enabled` is 1; recursion misses always count.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, BpfError> {
        let mut out = Vec::new();
        for st in &self.status {
            if st.outcome != AttachOutcome::Attached {
                continue;
            }
            let name = st.tracepoint.program;
            let prog = self
                .ebpf
                .program(name)
                .ok_or(BpfError::ProgramNotInObject(name))?;
            let fd = prog.fd().map_err(|e| BpfError::Stats {
                program: name,
                source: io::Error::other(e.to_string()),
            })?;
            let stats = ProgramStats::read(name, fd.as_fd()).map_err(|source| BpfError::Stats {
                program: name,
                source,
            })?;
            out.push(stats);
        }
        Ok(out)
    }

    fn fd_map(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, u64, u32>, BpfError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(BpfError::MapNotInObject(name))?;
        BpfHashMap::try_from(map).map_err(map_err(name))
    }

    /// Marks `fd` of `tgid` as a userfaultfd.
    pub fn seed_uffd_fd(&mut self, tgid: u32, fd: u32) -> Result<(), BpfError> {
        self.fd_map(names::UFFD_FDS_MAP)?
            .insert(abi::fd_key(tgid, fd), 1, 0)
            .map_err(map_err(names::UFFD_FDS_MAP))
    }

    /// Marks `fd` of `tgid` as a socket whose sends are captured.
    pub fn seed_sock_fd(&mut self, tgid: u32, fd: u32) -> Result<(), BpfError> {
        self.fd_map(names::SOCK_FDS_MAP)?
            .insert(abi::fd_key(tgid, fd), 1, 0)
            .map_err(map_err(names::SOCK_FDS_MAP))
    }

    /// Scans `/proc/PID/fd` and seeds both fd maps. Safe to repeat (QEMU
    /// creates its uffd and return-path socket late).
    pub fn seed_from_proc(&mut self, tgid: u32) -> Result<ProcFds, BpfError> {
        let fds = scan_proc_fds(tgid)?;
        for &fd in &fds.uffd {
            self.seed_uffd_fd(tgid, fd)?;
        }
        for &(fd, _) in &fds.sockets {
            self.seed_sock_fd(tgid, fd)?;
        }
        Ok(fds)
    }

    /// The (tgid, fd) pairs currently known as uffds, sorted.
    pub fn uffd_fds(&self) -> Result<Vec<(u32, u32)>, BpfError> {
        let name = names::UFFD_FDS_MAP;
        let map = self.ebpf.map(name).ok_or(BpfError::MapNotInObject(name))?;
        let map: BpfHashMap<&MapData, u64, u32> =
            BpfHashMap::try_from(map).map_err(map_err(name))?;
        let mut out = map
            .keys()
            .map(|k| k.map(|k| ((k >> 32) as u32, k as u32)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(name))?;
        out.sort_unstable();
        Ok(out)
    }

    fn per_cpu_sums(&self, name: &'static str, len: u32) -> Result<Vec<u64>, BpfError> {
        let map = self.ebpf.map(name).ok_or(BpfError::MapNotInObject(name))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(name))?;
        (0..len)
            .map(|i| {
                array
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .map_err(map_err(name))
            })
            .collect()
    }

    /// Total ring reservations that failed, summed over CPUs and kinds.
    pub fn drops(&self) -> Result<u64, BpfError> {
        Ok(self
            .per_cpu_sums(names::DROPS_MAP, Kind::COUNT)?
            .iter()
            .sum())
    }

    /// Drop counters per kind and the other statistics.
    pub fn counters(&self) -> Result<Counters, BpfError> {
        let drops = self.per_cpu_sums(names::DROPS_MAP, Kind::COUNT)?;
        let stats = self.per_cpu_sums(names::STATS_MAP, abi::stat::COUNT)?;
        let stat = |i: u32| stats.get(i as usize).copied().unwrap_or(0);
        let drops_by_kind: Vec<(Kind, u64)> = Kind::ALL
            .iter()
            .map(|&k| (k, drops.get(k as usize).copied().unwrap_or(0)))
            .collect();
        Ok(Counters {
            drops: drops.iter().sum(),
            drops_by_kind,
            read_eagain: stat(abi::stat::READ_EAGAIN),
            map_full: stat(abi::stat::MAP_FULL),
            sock_eagain: stat(abi::stat::SOCK_EAGAIN),
            sleep_other: stat(abi::stat::SLEEP_OTHER),
            run_unseen: stat(abi::stat::RUN_UNSEEN),
            wake_in_interrupt: stat(abi::stat::WAKE_IN_INTERRUPT),
            wake_out_of_range: stat(abi::stat::WAKE_OUT_OF_RANGE),
        })
    }

    /// Takes the bins of background placements whose bin index is below
    /// `before` (`u64::MAX`: every bin, at stop) out of the kernel, sorted by
    /// key. A bin is closed once the clock is a whole bin past it: its
    /// thread's later placements fall in later bins, so nothing is lost
    /// between the read and the delete.
    pub fn take_bins(&mut self, before: u64) -> Result<Vec<(BinKey, BinVal)>, BpfError> {
        let name = names::BINS_MAP;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(BpfError::MapNotInObject(name))?;
        let mut bins: BpfHashMap<&mut MapData, [u8; BIN_KEY], [u8; BIN_VAL]> =
            BpfHashMap::try_from(map).map_err(map_err(name))?;
        let mut out = Vec::new();
        for entry in &bins {
            let (key, val) = entry.map_err(map_err(name))?;
            let bin = decode_bin(&key, &val);
            if bin.0.bin < before {
                out.push((key, bin));
            }
        }
        for (key, _) in &out {
            bins.remove(key).map_err(map_err(name))?;
        }
        let mut out: Vec<(BinKey, BinVal)> = out.into_iter().map(|(_, b)| b).collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Takes the ring buffer out of the tracer. Call once; the tracer must
    /// stay alive (its programs attached) while the drain is used.
    pub fn take_ring(&mut self) -> Result<RingDrain, BpfError> {
        let name = names::EVENTS_MAP;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(BpfError::MapNotInObject(name))?;
        let ring = RingBuf::try_from(map).map_err(map_err(name))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .and_then(|ep| {
                ep.add(
                    ring.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
                )?;
                Ok(ep)
            })
            .map_err(|e| BpfError::Epoll(io::Error::from(e)))?;
        Ok(RingDrain { ring, epoll })
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    tp: &'static Tracepoint,
) -> Result<AttachOutcome, BpfError> {
    let required = tp.need == Need::Required;
    match check_format(tracefs, tp) {
        FormatCheck::Matches => {}
        FormatCheck::Absent => {
            if required {
                return Err(BpfError::MissingTracepoint {
                    tracepoint: tp.to_string(),
                    path: event_dir(tracefs, tp).join("id"),
                    purpose: tp.purpose,
                });
            }
            return Ok(AttachOutcome::Missing);
        }
        FormatCheck::Differs(details) => {
            let details = details.join("; ");
            if required {
                return Err(BpfError::FormatMismatch {
                    tracepoint: tp.to_string(),
                    details,
                });
            }
            return Ok(AttachOutcome::FormatMismatch(details));
        }
    }
    let program: &mut TracePoint = ebpf
        .program_mut(tp.program)
        .ok_or(BpfError::ProgramNotInObject(tp.program))?
        .try_into()
        .map_err(|e| BpfError::Program {
            action: "loading",
            program: tp.program,
            tracepoint: tp.to_string(),
            source: Box::new(e),
        })?;
    let fail = |action: &'static str, e: ProgramError| {
        if required {
            Err(BpfError::Program {
                action,
                program: tp.program,
                tracepoint: tp.to_string(),
                source: Box::new(e),
            })
        } else {
            log::warn!(
                "{action} optional program {} for {tp} failed: {e}",
                tp.program
            );
            Ok(AttachOutcome::Failed(format!("{action} failed: {e}")))
        }
    };
    if let Err(e) = program.load() {
        return fail("loading", e);
    }
    if let Err(e) = program.attach(tp.category, tp.name) {
        return fail("attaching", e);
    }
    Ok(AttachOutcome::Attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let ok = BpfConfig::new(vec![1]);
        assert!(ok.validate().is_ok());
        for bad in [
            BpfConfig::new(vec![]),
            BpfConfig::new((1..=9).collect()),
            BpfConfig::new(vec![0]),
            BpfConfig {
                ring_bytes: 3 << 20,
                ..ok.clone()
            },
            BpfConfig {
                wakeup_bytes: u64::from(DEFAULT_RING_BYTES) + 1,
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(BpfError::Config(_))),
                "{bad:?} should be rejected"
            );
        }
    }
}
