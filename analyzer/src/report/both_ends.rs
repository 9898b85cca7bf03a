//! The report's sections about the source end (`uffdscope report DEST
//! --source SRC`): the clock alignment (`clock`), what the source trace
//! showed and how it was matched (`source`), and the network stage's three
//! sub-stages (`faults.stages_us.to_source|at_source|from_source`). All
//! `null` without a source trace. Assembled from the merge's outcome
//! ([`crate::engine::both_ends::merge`]).

use serde::Serialize;

use crate::engine::both_ends::merge::MergeOutcome;
use crate::engine::both_ends::source::SourceIndex;
use crate::report::StagePercentiles;

/// The source clock against the destination's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClockSection {
    /// Source clock minus destination clock at `at_s`, µs.
    pub source_offset_us: f64,
    /// When the offset holds: seconds since the destination trace's start
    /// (the middle of the samples' span, where an estimate is tightest; 0
    /// for an offset given by hand). Elsewhere add `drift_ppm` µs per second.
    pub at_s: f64,
    /// The offset is within ± this of the truth, µs; `null` when given by hand.
    pub bound_us: Option<f64>,
    /// How fast the offset changes, ppm (µs per second); `null` when not measured.
    pub drift_ppm: Option<f64>,
    pub samples: ClockSamples,
    /// `messages` (estimated from the samples) or `override` (`--source-offset-us`).
    pub from: &'static str,
    /// When no offset and drift make every one-way delay non-negative: by
    /// how much the samples contradict each other, µs; `null` otherwise.
    pub contradiction_us: Option<f64>,
}

/// One-way samples the clock rests on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClockSamples {
    /// Destination → source: requests matched to the receive that delivered them.
    pub requests: u64,
    /// Source → destination: pages matched to their placement.
    pub pages: u64,
}

/// What the source trace showed.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSection {
    pub path: String,
    pub pid: Option<u32>,
    pub events: u64,
    pub threads: Vec<SourceThreadRow>,
    pub channels: Vec<SourceChannel>,
    pub matched: SourceMatches,
    /// Each sub-stage's share of the split faults' summed network time.
    pub share: SubStageShare,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceThreadRow {
    pub tid: u32,
    pub name: Option<String>,
    /// Return-path receives (page requests arriving).
    pub receives: u64,
    /// Sends with guest pages, and the pages in them.
    pub page_sends: u64,
    pub pages: u64,
}

/// One source socket.
#[derive(Debug, Clone, Serialize)]
pub struct SourceChannel {
    pub fd: i32,
    pub local: String,
    pub remote: String,
    pub receives: u64,
    pub page_sends: u64,
    pub pages: u64,
    /// The destination fd whose return-path sends these receives carry.
    pub dest_fd: Option<i32>,
    /// Receives whose content agreed with that match, and disagreed.
    pub anchor_votes: Option<u64>,
    pub anchor_against: Option<u64>,
    /// `tcp_probe` samples with the send sequence state.
    pub window_samples: u64,
    /// Of those, the share whose bytes in flight filled the peer's
    /// advertised window; `null` without samples.
    pub window_full_share: Option<f64>,
}

/// How much of the destination was matched in the source trace.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SourceMatches {
    /// Requested faults with their own request and placement.
    pub requested_faults: u64,
    /// Their requests matched to a source receive.
    pub requests: u64,
    /// Their pages matched to a source send.
    pub pages: u64,
    /// Of those, pages the source had sent before it read the request (the
    /// page was already on its way; `at_source` is 0): no clock sample.
    pub pages_sent_before: u64,
    /// Faults with all three sub-stages.
    pub split: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SubStageShare {
    pub to_source: Option<f64>,
    pub at_source: Option<f64>,
    pub from_source: Option<f64>,
    /// The summed network time the shares are of, ms.
    pub of_ms: f64,
}

fn us(ns: f64) -> f64 {
    (ns / 10.0).round() / 100.0
}

/// The clock section, when the clocks were aligned.
pub fn clock_section(m: &MergeOutcome, t0: u64) -> Option<ClockSection> {
    let c = m.clock?;
    Some(ClockSection {
        source_offset_us: us(c.offset_ns),
        at_s: (c.origin.saturating_sub(t0) as f64 / 1e6).round() / 1e3,
        bound_us: c.bound_ns.map(us),
        drift_ppm: c.drift_ppm.map(|p| (p * 100.0).round() / 100.0),
        samples: ClockSamples {
            requests: c.requests,
            pages: c.pages,
        },
        from: if c.overridden { "override" } else { "messages" },
        contradiction_us: c.contradiction_ns.map(us),
    })
}

/// The three sub-stages' percentiles (`null` when no fault was split).
pub fn sub_stages(m: &MergeOutcome) -> [Option<StagePercentiles>; 3] {
    [&m.to_source, &m.at_source, &m.from_source].map(|h| Some(h.percentiles().into()))
}

/// The source section.
pub fn source_section(m: &MergeOutcome, index: &SourceIndex, path: &str) -> SourceSection {
    let split = m.to_source.count();
    let share = |i: usize| {
        (m.network_sum > 0)
            .then(|| (m.sums[i] as f64 / m.network_sum as f64 * 1000.0).round() / 1000.0)
    };
    SourceSection {
        path: path.to_owned(),
        pid: index.pid,
        events: index.records,
        threads: index
            .threads
            .iter()
            .map(|(&tid, t)| SourceThreadRow {
                tid,
                name: t.name.clone(),
                receives: t.receives,
                page_sends: t.page_sends,
                pages: t.pages,
            })
            .collect(),
        channels: channels(m, index),
        matched: SourceMatches {
            requested_faults: m.faults,
            requests: m.requests_matched,
            pages: m.pages_matched,
            pages_sent_before: m.pages_sent_before,
            split,
        },
        share: SubStageShare {
            to_source: share(0),
            at_source: share(1),
            from_source: share(2),
            of_ms: (m.network_sum as f64 / 1e3).round() / 1e3,
        },
    }
}

fn channels(m: &MergeOutcome, index: &SourceIndex) -> Vec<SourceChannel> {
    index
        .sockets
        .iter()
        .map(|s| {
            let counts = index.per_fd.get(&s.fd).copied().unwrap_or_default();
            let matched = m.channels.iter().find(|c| c.source_fd == s.fd);
            let window = index
                .windows
                .get(&s.local_port)
                .copied()
                .unwrap_or_default();
            SourceChannel {
                fd: s.fd,
                local: s.local.clone(),
                remote: s.remote.clone(),
                receives: counts.receives,
                page_sends: counts.page_sends,
                pages: counts.pages,
                dest_fd: matched.map(|c| c.dest_fd),
                anchor_votes: matched.map(|c| c.anchor.votes),
                anchor_against: matched.map(|c| c.anchor.against),
                window_samples: window.samples,
                window_full_share: (window.samples > 0).then(|| {
                    (window.full as f64 / window.samples as f64 * 1000.0).round() / 1000.0
                }),
            }
        })
        .collect()
}
