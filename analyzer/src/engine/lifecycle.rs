//! The fault-lifecycle engine: joins records into faults with their stages
//! (ARCHITECTURE.md, "The fault model and its stages") in one streaming pass.
//!
//! A fault is a [`Sleep`] record (a thread blocked and was woken from inside a
//! uffd ioctl). Reads of uffd messages, page requests and placements are kept
//! in address indexes for a bounded window of trace time; a sleep is resolved
//! once the stream has moved [`SETTLE_NS`] past it, so the records it needs
//! (emitted later by other threads) have arrived. Memory is proportional to the
//! faults still open plus the window, not to the trace.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use crate::inputs::rp::{ReturnPath, RpMessage};
use uffdscope_trace::record::{IoctlOp, Record, Role, Sleep, UffdIoctl, UffdMsg};

/// How long past a sleep's last timestamp the engine waits for related records.
pub const SETTLE_NS: u64 = 500_000_000;
/// How long reads, requests and placements stay searchable.
pub const RETAIN_NS: u64 = 5_000_000_000;
const PAGE: u64 = 4096;

/// How a fault's page arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Placed with UFFDIO_COPY after a request for the page was sent.
    Requested,
    /// Placed with UFFDIO_COPY with no request: the background stream got there.
    Background,
    /// Placed with UFFDIO_ZEROPAGE.
    ZeroPage,
    /// Woken by UFFDIO_WAKE without a copy.
    WakeOnly,
    /// Resolved with UFFDIO_CONTINUE (minor faults).
    Continue,
    /// Woken from some other uffd ioctl.
    Unknown,
    /// Placed with UFFDIO_COPY where requests were not recorded
    /// (`record --detail minimal`): requested or background cannot be told.
    Placed,
}

impl Resolution {
    pub const ALL: [Resolution; 7] = [
        Resolution::Requested,
        Resolution::Background,
        Resolution::ZeroPage,
        Resolution::WakeOnly,
        Resolution::Continue,
        Resolution::Unknown,
        Resolution::Placed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Requested => "requested",
            Resolution::Background => "background",
            Resolution::ZeroPage => "zero_page",
            Resolution::WakeOnly => "wake_only",
            Resolution::Continue => "continue",
            Resolution::Unknown => "unknown",
            Resolution::Placed => "placed",
        }
    }
}

/// The five stages of ARCHITECTURE.md, "The fault model and its stages".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Queue,
    Request,
    Network,
    Place,
    Wake,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Queue,
        Stage::Request,
        Stage::Network,
        Stage::Place,
        Stage::Wake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Request => "request",
            Stage::Network => "network",
            Stage::Place => "place",
            Stage::Wake => "wake",
        }
    }

    /// The stage's place in [`Stage::ALL`] (for per-stage arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stages from fault entry to the wake: they add up to the service
    /// latency, and the report gives each one's share of it.
    pub const SERVICE: [Stage; 4] = [Stage::Queue, Stage::Request, Stage::Network, Stage::Place];
}

/// One resolved fault. Every `Option` is `None` when the trace does not show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub tid: u32,
    /// Page-aligned address of the faulting page (host virtual).
    pub page: u64,
    pub resolution: Resolution,
    pub entry_ts: Option<u64>,
    pub blocked_ts: u64,
    /// When the handler read this fault's uffd message.
    pub read_ts: Option<u64>,
    /// The thread that read it.
    pub reader_tid: Option<u32>,
    /// When this fault's own request for the page was sent.
    pub request_ts: Option<u64>,
    /// The thread that sent that request.
    pub requester_tid: Option<u32>,
    /// A request for the page existed before this fault (another thread asked).
    pub already_requested: bool,
    /// Entry of the placing ioctl.
    pub place_ts: Option<u64>,
    /// Exit of the placing ioctl.
    pub place_end_ts: Option<u64>,
    pub woken_ts: u64,
    /// Switch-in after the wake.
    pub run_ts: Option<u64>,
    /// The first return to user or guest mode after the switch-in (format 3,
    /// threads with rseq): the `wake` stage ends here when it is known.
    pub resume_ts: Option<u64>,
    pub waker_tid: u32,
    /// Length of the placement (4096, or a huge page).
    pub place_len: u64,
}

impl Fault {
    fn span(from: Option<u64>, to: Option<u64>) -> Option<u64> {
        match (from, to) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        }
    }

    /// ns in the given stage, or `None` when unknown or not applicable.
    pub fn stage_ns(&self, stage: Stage) -> Option<u64> {
        match stage {
            Stage::Queue => Self::span(self.entry_ts, self.read_ts.or(self.place_ts)),
            Stage::Request => Self::span(self.read_ts, self.request_ts),
            Stage::Network => Self::span(self.request_ts.or(self.read_ts), self.place_ts),
            // A fault taken while its page was already being placed waits only
            // from its own entry.
            Stage::Place => Self::span(
                self.place_ts.map(|p| self.entry_ts.map_or(p, |e| p.max(e))),
                Some(self.woken_ts),
            ),
            Stage::Wake => Self::span(Some(self.woken_ts), self.resumed_ts()),
        }
    }

    /// When the thread ran its own code again: its resume in user mode when
    /// the trace has it, else its switch-in.
    pub fn resumed_ts(&self) -> Option<u64> {
        self.resume_ts.or(self.run_ts)
    }

    /// Fault entry → woken.
    pub fn service_ns(&self) -> Option<u64> {
        Self::span(self.entry_ts, Some(self.woken_ts))
    }

    /// Switch-out → switch-in.
    pub fn blocked_ns(&self) -> Option<u64> {
        Self::span(Some(self.blocked_ts), self.run_ts)
    }

    /// The fault thread read this fault's message: QEMU's blocktime sees it.
    pub fn qemu_counted(&self) -> bool {
        self.read_ts.is_some()
    }
}

/// An entry in an [`AddrIndex`].
#[derive(Debug, Clone, Copy)]
struct Entry<T> {
    start: u64,
    ts: u64,
    len: u64,
    seq: u64,
    value: T,
}

/// Maps keyed by page addresses and thread ids hash with foldhash, seeded
/// at random per process: fast, and a crafted trace cannot aim thousands of
/// keys at one bucket to make every lookup a scan (traces are untrusted).
type FastState = foldhash::fast::RandomState;

type PageMap<V> = HashMap<u64, V, FastState>;
/// A map keyed by thread id, with the fast hasher.
pub(crate) type TidMap<V> = HashMap<u32, V, FastState>;
/// A set of thread ids, with the fast hasher.
pub(crate) type TidSet = std::collections::HashSet<u32, FastState>;

/// Single-page entries are bucketed by this many address bits: 16 pages
/// (64 KiB). Placements, reads and requests of neighbouring pages come in
/// runs (the background stream places pages in address order), so
/// consecutive inserts and prunes touch one bucket that is already in cache,
/// where a map keyed by page would miss the cache on almost every record.
const BUCKET_SHIFT: u32 = 16;

/// Address-keyed index of ranges with age-based pruning in O(removed).
///
/// Single-page entries (the common case: one 4 KiB page read, requested or
/// placed) live in buckets of neighbouring pages, each in insertion order;
/// longer ranges (huge pages, multi-page requests) in ordered maps, one per
/// power-of-two length class, so that finding the ranges covering an address
/// scans only ranges of similar length that start near it (one huge range
/// does not make every lookup scan all the others). A FIFO
/// in insertion order, which is close to time order, drives pruning: a
/// pruned page entry is always at the front of its bucket.
#[derive(Debug)]
struct AddrIndex<T> {
    buckets: PageMap<VecDeque<Entry<T>>>,
    /// Ranges longer than a page by length class (`len <= 1 << class`),
    /// keyed by (start, seq).
    big: [BTreeMap<(u64, u64), Entry<T>>; 65],
    /// Classes that hold ranges, one bit each.
    big_classes: u128,
    fifo: VecDeque<(u64, u64, u64)>,
    seq: u64,
}

impl<T: Copy> AddrIndex<T> {
    fn new() -> Self {
        Self {
            buckets: PageMap::default(),
            big: std::array::from_fn(|_| BTreeMap::new()),
            big_classes: 0,
            fifo: VecDeque::new(),
            seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.fifo.len()
    }

    fn is_page(start: u64, len: u64) -> bool {
        len <= PAGE && start.is_multiple_of(PAGE)
    }

    fn insert(&mut self, start: u64, len: u64, ts: u64, value: T) {
        let len = len.max(1);
        self.seq += 1;
        let e = Entry {
            start,
            ts,
            len,
            seq: self.seq,
            value,
        };
        if Self::is_page(start, len) {
            self.buckets
                .entry(start >> BUCKET_SHIFT)
                .or_default()
                .push_back(e);
        } else {
            let class = Self::class(len);
            self.big[class].insert((start, self.seq), e);
            self.big_classes |= 1 << class;
        }
        self.fifo.push_back((ts, start, self.seq));
    }

    /// Entries whose range contains `addr`, with their start.
    fn covering(&self, addr: u64) -> impl Iterator<Item = (u64, &Entry<T>)> {
        let page = addr & !(PAGE - 1);
        let small = self
            .buckets
            .get(&(page >> BUCKET_SHIFT))
            .into_iter()
            .flat_map(move |v| {
                v.iter()
                    .filter(move |e| e.start == page)
                    .map(move |e| (page, e))
            });
        small.chain(self.big_covering(addr))
    }

    /// The length class of a range: the smallest `c` with `len <= 1 << c`.
    fn class(len: u64) -> usize {
        (64 - (len - 1).leading_zeros()) as usize
    }

    /// Long ranges containing `addr`, in (start, insertion) order.
    fn big_covering(&self, addr: u64) -> Vec<(u64, &Entry<T>)> {
        if self.big_classes == 0 {
            return Vec::new();
        }
        let mut found: Vec<(u64, &Entry<T>)> = Vec::new();
        for class in (0..65).filter(|c| self.big_classes & (1 << c) != 0) {
            let reach = 1u64.checked_shl(class as u32).map_or(u64::MAX, |r| r - 1);
            let lo = addr.saturating_sub(reach);
            found.extend(
                self.big[class]
                    .range((lo, 0)..=(addr, u64::MAX))
                    .filter(|((start, _), e)| start.saturating_add(e.len) > addr)
                    .map(|((start, _), e)| (*start, e)),
            );
        }
        found.sort_unstable_by_key(|(start, e)| (*start, e.seq));
        found
    }

    /// Single-page entries starting in `[lo, hi)`, with their start, in no
    /// particular order. Visits the buckets the range spans, or every bucket
    /// when there are fewer: O(what is indexed) however long the range.
    fn starting_in(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, &Entry<T>)> {
        let in_range = move |e: &&Entry<T>| e.start >= lo && e.start < hi;
        let (first, last) = (lo >> BUCKET_SHIFT, hi.saturating_sub(1) >> BUCKET_SHIFT);
        let spanned = if hi > lo { last - first + 1 } else { 0 };
        let by_range = (spanned <= self.buckets.len() as u64)
            .then(|| (first..first + spanned).filter_map(|b| self.buckets.get(&b)));
        let by_bucket = (spanned > self.buckets.len() as u64).then(|| self.buckets.values());
        by_range
            .into_iter()
            .flatten()
            .chain(by_bucket.into_iter().flatten())
            .flat_map(move |v| v.iter().filter(in_range).map(|e| (e.start, e)))
    }

    fn remove_big(&mut self, start: u64, seq: u64) {
        for class in 0..65 {
            if self.big_classes & (1 << class) != 0
                && self.big[class].remove(&(start, seq)).is_some()
            {
                if self.big[class].is_empty() {
                    self.big_classes &= !(1 << class);
                }
                return;
            }
        }
    }

    fn prune(&mut self, cutoff: u64) {
        while let Some(&(ts, start, seq)) = self.fifo.front() {
            if ts >= cutoff {
                break;
            }
            self.fifo.pop_front();
            let key = start >> BUCKET_SHIFT;
            match self.buckets.get_mut(&key) {
                Some(v) if v.front().is_some_and(|e| e.seq == seq) => {
                    v.pop_front();
                    if v.is_empty() {
                        self.buckets.remove(&key);
                    }
                }
                _ => self.remove_big(start, seq),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ReadMsg {
    ptid: u32,
    /// The reading thread.
    tid: u32,
}

#[derive(Debug, Clone, Copy)]
struct Placement {
    tid: u32,
    enter_ts: u64,
    exit_ts: u64,
    op: IoctlOp,
}

/// Per-thread facts the engine learns while streaming.
#[derive(Debug, Clone, Default)]
pub struct ThreadFacts {
    pub name: Option<String>,
    pub named_role: Option<Role>,
    pub uffd_reads: u64,
    pub placements: u64,
    pub requests_sent: u64,
    pub sleeps: u64,
    /// Blocking in uffd waits does not make this thread a vCPU: it is the
    /// process's main thread (which faults while loading device state), or
    /// the vCPUs are known by name and this is not one of them.
    pub not_vcpu: bool,
    /// Changed since the last [`Engine::take_role_changes`].
    changed: bool,
}

impl ThreadFacts {
    /// The role by name, else by behaviour (ARCHITECTURE.md, "How each moment of a fault is observed").
    pub fn role(&self) -> Role {
        if let Some(r) = self.named_role {
            return r;
        }
        if self.uffd_reads > 0 || self.requests_sent > 0 {
            Role::Fault
        } else if self.placements > 0 {
            Role::Listen
        } else if self.sleeps > 0 && !self.not_vcpu {
            Role::Vcpu
        } else {
            Role::Other
        }
    }
}

/// A page request parsed from a return-path send, waiting for its block base.
#[derive(Debug, Clone)]
struct PendingRequest {
    ts: u64,
    /// The sending thread.
    tid: u32,
    block: String,
    start: u64,
    len: u64,
}

/// Streaming join of records into [`Fault`]s.
#[derive(Debug)]
pub struct Engine {
    /// The trace recorded page requests (not `record --detail minimal`):
    /// a copy with none was the background stream's.
    requests_recorded: bool,
    reads: AddrIndex<ReadMsg>,
    /// Page requests by host address; the value is the sending thread.
    requests: AddrIndex<u32>,
    placements: AddrIndex<Placement>,
    pending: VecDeque<Sleep>,
    /// Reads sends for [`Engine::push`] (a driver that reads them itself
    /// calls [`Engine::push_parsed`]).
    return_path: ReturnPath,
    /// Learned host base address of each RAMBlock.
    block_base: HashMap<String, u64>,
    /// Votes for block bases: (block, candidate base) → count.
    base_votes: HashMap<(String, u64), u32>,
    /// Requests of blocks whose base is not known yet.
    unplaced_requests: Vec<PendingRequest>,
    /// Registered uffd ranges (start, len): RAMBlocks start at one.
    ranges: Vec<(u64, u64)>,
    /// The last uffd message each reader thread read (for base learning).
    last_read: TidMap<(u64, u64)>,
    pub threads: BTreeMap<u32, ThreadFacts>,
    /// Threads whose facts changed since the last role hand-over.
    changed: Vec<u32>,
    /// The traced process (its main thread is never a vCPU).
    pid: Option<u32>,
    /// Some thread is named as a vCPU: behaviour no longer makes vCPUs.
    named_vcpus: bool,
    watermark: u64,
    last_prune: u64,
    pub uffd_reads: u64,
    pub eagain_reads: u64,
    pub messages_read: u64,
    pub requests_sent: u64,
    /// Placing ioctls by kind: copy, zeropage, wake, continue.
    placements_by_op: [u64; 4],
    pub late_reads: u64,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Self {
            requests_recorded: true,
            reads: AddrIndex::new(),
            requests: AddrIndex::new(),
            placements: AddrIndex::new(),
            pending: VecDeque::new(),
            return_path: ReturnPath::default(),
            block_base: HashMap::new(),
            base_votes: HashMap::new(),
            unplaced_requests: Vec::new(),
            last_read: TidMap::default(),
            ranges: Vec::new(),
            threads: BTreeMap::new(),
            changed: Vec::new(),
            pid: None,
            named_vcpus: false,
            watermark: 0,
            last_prune: 0,
            uffd_reads: 0,
            eagain_reads: 0,
            messages_read: 0,
            requests_sent: 0,
            placements_by_op: [0; 4],
            late_reads: 0,
        }
    }

    /// An engine for a trace that did not record page requests (or did):
    /// copies are then resolved [`Resolution::Placed`].
    pub fn for_trace(meta: &uffdscope_trace::TraceMeta) -> Self {
        Self {
            requests_recorded: meta.records_syscalls(),
            ..Self::new()
        }
    }

    /// Faults still waiting for their related records.
    pub fn open_faults(&self) -> usize {
        self.pending.len()
    }

    /// Placing ioctls seen, by kind (kinds never seen are left out).
    pub fn placements_by_op(&self) -> BTreeMap<String, u64> {
        OP_NAMES
            .iter()
            .zip(self.placements_by_op)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| ((*k).to_owned(), n))
            .collect()
    }

    /// Whether a placement covering `addr` had returned by `ts` (within the
    /// engine's retention window): QEMU's received bitmap.
    pub fn placed_by(&self, addr: u64, ts: u64) -> bool {
        self.placements
            .covering(addr)
            .any(|(_, e)| e.value.op.places_pages() && e.value.exit_ts <= ts)
    }

    /// Learned RAMBlock bases (block name → host address).
    pub fn block_bases(&self) -> &HashMap<String, u64> {
        &self.block_base
    }

    /// The facts of `tid`, created with what is already known about it, and
    /// marked as changed.
    fn facts(&mut self, tid: u32) -> &mut ThreadFacts {
        let not_vcpu = self.named_vcpus || self.pid == Some(tid);
        let facts = self.threads.entry(tid).or_insert_with(|| ThreadFacts {
            not_vcpu,
            ..ThreadFacts::default()
        });
        if !facts.changed {
            facts.changed = true;
            self.changed.push(tid);
        }
        facts
    }

    /// Hands `f` the current role of every thread whose facts changed since
    /// the last call: keeps a caller's view of the roles (the vCPU set)
    /// current in O(changes) instead of O(threads).
    pub fn take_role_changes(&mut self, mut f: impl FnMut(u32, Role)) {
        for tid in self.changed.drain(..) {
            if let Some(facts) = self.threads.get_mut(&tid) {
                facts.changed = false;
                f(tid, facts.role());
            }
        }
    }

    /// Feeds one record; resolved faults go to `sink`.
    pub fn push(&mut self, rec: &Record, sink: &mut impl FnMut(Fault)) {
        let return_path = match rec {
            Record::SockIo(s) => self.return_path.read(s),
            _ => Vec::new(),
        };
        self.push_parsed(rec, &return_path, sink);
    }

    /// Feeds one record with the return-path messages of a send already read
    /// ([`ReturnPath::read`]); resolved faults go to `sink`.
    pub fn push_parsed(
        &mut self,
        rec: &Record,
        return_path: &[RpMessage],
        sink: &mut impl FnMut(Fault),
    ) {
        match rec {
            Record::Process(p) => {
                self.pid = Some(p.pid);
                if self.threads.contains_key(&p.pid) {
                    self.facts(p.pid).not_vcpu = true;
                }
            }
            Record::Thread(t) => {
                let facts = self.facts(t.tid);
                facts.name = Some(t.name.clone());
                facts.named_role = Role::from_thread_name(&t.name).or(match t.role {
                    Role::Other => None,
                    r => Some(r),
                });
                if facts.named_role == Some(Role::Vcpu) && !self.named_vcpus {
                    // Once per trace: every thread's role may change.
                    self.named_vcpus = true;
                    for (&tid, f) in &mut self.threads {
                        f.not_vcpu = f.named_role != Some(Role::Vcpu);
                        if !f.changed {
                            f.changed = true;
                            self.changed.push(tid);
                        }
                    }
                }
            }
            Record::Sleep(s) => {
                self.facts(s.tid).sleeps += 1;
                self.pending.push_back(s.clone());
            }
            Record::UffdRead(r) => {
                self.uffd_reads += 1;
                if r.ret < 0 {
                    self.eagain_reads += 1;
                }
                self.facts(r.tid).uffd_reads += 1;
                for m in &r.msgs {
                    if m.event == UffdMsg::EVENT_PAGEFAULT {
                        self.messages_read += 1;
                        let page = m.address & !(PAGE - 1);
                        self.reads.insert(
                            page,
                            PAGE,
                            r.exit_ts,
                            ReadMsg {
                                ptid: m.ptid,
                                tid: r.tid,
                            },
                        );
                        self.last_read.insert(r.tid, (r.exit_ts, page));
                    }
                }
            }
            Record::UffdIoctl(io) if io.op == IoctlOp::Register && io.ret >= 0 => {
                self.ranges.push((io.start, io.len));
            }
            Record::UffdRange(r) => self.ranges.push((r.start, r.len)),
            Record::UffdIoctl(io) => self.push_ioctl(io),
            Record::PlacementBin(bin) => {
                // Counted placements never join a fault (they woke nobody and
                // covered no page being resolved); they only count.
                self.placements_by_op[op_index(bin.op)] += bin.count;
                self.facts(bin.tid).placements += bin.count;
            }
            Record::SockIo(s) => {
                for msg in return_path {
                    if let RpMessage::ReqPages { block, start, len } = msg {
                        self.requests_sent += 1;
                        self.facts(s.tid).requests_sent += 1;
                        self.add_request(
                            s.tid,
                            PendingRequest {
                                ts: s.exit_ts,
                                tid: s.tid,
                                block: block.clone().unwrap_or_default(),
                                start: *start,
                                len: u64::from(*len),
                            },
                        );
                    }
                }
            }
            _ => {}
        }
        let ts = rec.ts();
        if ts > self.watermark {
            self.watermark = ts;
        }
        self.settle(sink, false);
        if self.watermark > self.last_prune.saturating_add(RETAIN_NS / 64) {
            let cutoff = self.watermark.saturating_sub(RETAIN_NS);
            self.reads.prune(cutoff);
            self.requests.prune(cutoff);
            self.placements.prune(cutoff);
            self.unplaced_requests.retain(|r| r.ts >= cutoff);
            self.last_prune = self.watermark;
        }
    }

    fn push_ioctl(&mut self, io: &UffdIoctl) {
        if !(io.op.places_pages() || io.op == IoctlOp::Wake) {
            return;
        }
        self.placements_by_op[op_index(io.op)] += 1;
        if io.op.places_pages() {
            self.facts(io.tid).placements += 1;
        }
        self.placements.insert(
            io.start,
            io.len,
            io.exit_ts,
            Placement {
                tid: io.tid,
                enter_ts: io.enter_ts,
                exit_ts: io.exit_ts,
                op: io.op,
            },
        );
    }

    /// Maps a request to host addresses, learning block bases from the read
    /// that preceded it on the same thread (QEMU requests the page it just read).
    fn add_request(&mut self, tid: u32, req: PendingRequest) {
        if !self.block_base.contains_key(&req.block) {
            if let Some(&(read_ts, page)) = self.last_read.get(&tid) {
                // A huge-page request covers the whole (aligned) huge page the
                // read address falls in.
                let align = req.len.max(PAGE).next_power_of_two();
                let page = page & !(align - 1);
                if req.ts >= read_ts && req.ts - read_ts < 50_000_000 && page >= req.start {
                    let base = page - (req.start & !(PAGE - 1));
                    let votes = self
                        .base_votes
                        .entry((req.block.clone(), base))
                        .or_default();
                    *votes += 1;
                    // A base at the start of a registered range is trusted at
                    // once; otherwise two agreeing read→request pairs are needed.
                    let at_range_start = self.ranges.iter().any(|&(start, _)| start == base);
                    if *votes >= 2 || at_range_start {
                        self.block_base.insert(req.block.clone(), base);
                        let block = req.block.clone();
                        let waiting: Vec<_> = self
                            .unplaced_requests
                            .iter()
                            .filter(|r| r.block == block)
                            .cloned()
                            .collect();
                        self.unplaced_requests.retain(|r| r.block != block);
                        for r in waiting {
                            self.requests.insert(base + r.start, r.len, r.ts, r.tid);
                        }
                    }
                }
            }
        }
        match self.block_base.get(&req.block) {
            Some(&base) => self
                .requests
                .insert(base + req.start, req.len, req.ts, req.tid),
            None => self.unplaced_requests.push(req),
        }
    }

    fn settle(&mut self, sink: &mut impl FnMut(Fault), all: bool) {
        while let Some(front) = self.pending.front() {
            let last = front.run_ts.unwrap_or(front.woken_ts);
            if !all && last.saturating_add(SETTLE_NS) > self.watermark {
                break;
            }
            let sleep = self.pending.pop_front().expect("front exists");
            sink(self.resolve(&sleep));
        }
    }

    /// Resolves every open fault (end of trace).
    pub fn finish(&mut self, sink: &mut impl FnMut(Fault)) {
        if std::env::var_os("UFFDSCOPE_DEBUG_SIZES").is_some() {
            eprintln!(
                "engine: pending {} reads {} requests {} placements {} unplaced {} keys {}/{}/{}",
                self.pending.len(),
                self.reads.len(),
                self.requests.len(),
                self.placements.len(),
                self.unplaced_requests.len(),
                self.reads.buckets.len(),
                self.requests.buckets.len(),
                self.placements.buckets.len()
            );
        }
        self.settle(sink, true);
    }

    fn resolve(&mut self, s: &Sleep) -> Fault {
        let wake_range = (s.wake_start, s.wake_start.saturating_add(s.wake_len.max(1)));
        // The fault entry belongs to this sleep only if it is for the page the
        // waker placed (a KVM entry has a guest-physical address: trust its time).
        let entry = s.fault.filter(|f| {
            f.ts <= s.blocked_ts
                && (!f.source.is_host_address()
                    || (f.addr >= wake_range.0 && f.addr < wake_range.1)
                    || s.wake_len == 0)
        });
        let page = match entry {
            Some(f) if f.source.is_host_address() => f.addr & !(PAGE - 1),
            _ => s.wake_start & !(PAGE - 1),
        };
        let placement = self
            .placements
            .covering(page)
            .filter(|(_, e)| {
                e.value.tid == s.waker_tid
                    && e.value.enter_ts <= s.woken_ts
                    && e.value.exit_ts >= s.woken_ts
            })
            .min_by_key(|(_, e)| e.value.enter_ts)
            .map(|(start, e)| (start, e.value, e.len));
        let window_start = entry.map_or(s.blocked_ts, |f| f.ts);
        let place_range = placement.map_or((page, page.saturating_add(PAGE)), |(start, _, len)| {
            (start, start.saturating_add(len.max(PAGE)))
        });
        let place_ts = placement.map(|(_, p, _)| p.enter_ts);
        let read = self
            .reads
            .starting_in(place_range.0, place_range.1)
            .filter(|(_, e)| e.ts >= window_start && e.ts <= s.woken_ts)
            .filter(|(_, e)| e.value.ptid == 0 || e.value.ptid == s.tid)
            .map(|(_, e)| (e.ts, e.value.tid))
            .min();
        // A message read after its page was already being placed did not drive
        // the placement: the fault is resolved as if never read.
        let read = match (read, place_ts) {
            (Some((r, _)), Some(p)) if r > p => {
                self.late_reads += 1;
                None
            }
            (r, _) => r,
        };
        let read_ts = read.map(|(ts, _)| ts);
        let limit = place_ts.unwrap_or(s.woken_ts);
        let (mut requested, mut already_requested, mut request) = (false, false, None);
        for (ts, tid) in self
            .requests
            .covering(page)
            .map(|(_, e)| (e.ts, e.value))
            .filter(|&(ts, _)| ts <= limit)
        {
            requested = true;
            already_requested |= ts < window_start;
            if read_ts.is_some_and(|r| ts >= r) && request.is_none_or(|m| (ts, tid) < m) {
                request = Some((ts, tid));
            }
        }
        let resolution = match placement.map_or(s.wake_op, |(_, p, _)| p.op) {
            IoctlOp::ZeroPage => Resolution::ZeroPage,
            IoctlOp::Wake => Resolution::WakeOnly,
            IoctlOp::Continue => Resolution::Continue,
            IoctlOp::Copy if requested => Resolution::Requested,
            IoctlOp::Copy if !self.requests_recorded => Resolution::Placed,
            IoctlOp::Copy => Resolution::Background,
            _ => Resolution::Unknown,
        };
        Fault {
            tid: s.tid,
            page,
            resolution,
            entry_ts: entry.map(|f| f.ts),
            blocked_ts: s.blocked_ts,
            read_ts,
            reader_tid: read.map(|(_, tid)| tid),
            request_ts: request.map(|(ts, _)| ts),
            requester_tid: request.map(|(_, tid)| tid),
            already_requested,
            place_ts,
            place_end_ts: placement.map(|(_, p, _)| p.exit_ts),
            woken_ts: s.woken_ts,
            run_ts: s.run_ts,
            resume_ts: s.resume_ts,
            waker_tid: s.waker_tid,
            place_len: placement.map_or(s.wake_len, |(_, _, len)| len),
        }
    }
}

const OP_NAMES: [&str; 4] = ["copy", "zeropage", "wake", "continue"];

fn op_index(op: IoctlOp) -> usize {
    match op {
        IoctlOp::Copy => 0,
        IoctlOp::ZeroPage => 1,
        IoctlOp::Wake => 2,
        _ => 3,
    }
}
