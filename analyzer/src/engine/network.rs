//! Per-channel network figures: which of the target's sockets carry what, their
//! smoothed RTT (`tcp:tcp_probe`), retransmits and bytes.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::engine::stats::Hist;
use crate::inputs::rp::RpMessage;
use uffdscope_trace::record::{Direction, Record, Role};

#[derive(Debug, Default)]
struct Channel {
    fd: Option<i32>,
    local: String,
    remote: String,
    srtt: Hist,
    retransmits: u64,
    bytes_rx: u64,
    bytes_tx: u64,
    requests: u64,
    recv_tids: BTreeMap<u32, u64>,
}

/// Accumulates network records; channels are keyed by (local port, remote port).
#[derive(Debug, Default)]
pub struct Network {
    channels: BTreeMap<(u16, u16), Channel>,
    by_fd: HashMap<i32, (u16, u16)>,
    by_sk: HashMap<u64, (u16, u16)>,
    /// Byte counts of sockets not yet tied to ports.
    unbound_sk: HashMap<u64, (u64, u64, BTreeMap<u32, u64>)>,
}

/// One channel in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelReport {
    pub role: ChannelRole,
    pub local: String,
    pub remote: String,
    pub fd: Option<i32>,
    pub srtt_us: SrttReport,
    pub retransmits: u64,
    pub bytes_rx: u64,
    pub bytes_tx: u64,
    pub page_requests: u64,
}

/// What a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelRole {
    /// Page requests to the source.
    ReturnPath,
    /// The main migration stream.
    Main,
    /// The postcopy-preempt channel.
    Preempt,
    /// Read mostly by a vCPU thread.
    Vcpu,
    /// Read mostly by the fault thread.
    Fault,
    /// Nothing says.
    Other,
}

impl ChannelRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelRole::ReturnPath => "return_path",
            ChannelRole::Main => "main",
            ChannelRole::Preempt => "preempt",
            ChannelRole::Vcpu => "vcpu",
            ChannelRole::Fault => "fault",
            ChannelRole::Other => "other",
        }
    }

    /// The channel a thread of `role` reads most from.
    fn read_by(role: Role) -> Self {
        match role {
            Role::Listen => ChannelRole::Main,
            Role::Preempt => ChannelRole::Preempt,
            Role::Vcpu => ChannelRole::Vcpu,
            Role::Fault => ChannelRole::Fault,
            Role::Other | Role::MigSource | Role::ReturnPath => ChannelRole::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SrttReport {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub samples: u64,
}

impl Network {
    /// Takes one record; `return_path` holds a send's messages, read once
    /// by the pass ([`crate::inputs::rp::ReturnPath`]).
    pub fn push(&mut self, rec: &Record, return_path: &[RpMessage]) {
        match rec {
            Record::Socket(s) => {
                let key = (s.local_port, s.remote_port);
                let ch = self.channels.entry(key).or_default();
                ch.fd = Some(s.fd);
                ch.local.clone_from(&s.local);
                ch.remote.clone_from(&s.remote);
                self.by_fd.insert(s.fd, key);
            }
            Record::TcpProbe(p) => {
                let key = (p.sport, p.dport);
                if let Some(ch) = self.channels.get_mut(&key) {
                    ch.srtt.record(u64::from(p.srtt_us) * 1000);
                    self.by_sk.insert(p.sk, key);
                    if let Some((rx, tx, tids)) = self.unbound_sk.remove(&p.sk) {
                        ch.bytes_rx += rx;
                        ch.bytes_tx += tx;
                        for (tid, n) in tids {
                            *ch.recv_tids.entry(tid).or_default() += n;
                        }
                    }
                }
            }
            Record::TcpRetransmit(r) => {
                if let Some(ch) = self.channels.get_mut(&(r.sport, r.dport)) {
                    ch.retransmits += 1;
                    self.by_sk.insert(r.sk, (r.sport, r.dport));
                }
            }
            Record::SockLen(l) if l.len > 0 => {
                let n = l.len as u64;
                match self.by_sk.get(&l.sk).and_then(|k| self.channels.get_mut(k)) {
                    Some(ch) => match l.dir {
                        Direction::Recv => {
                            ch.bytes_rx += n;
                            *ch.recv_tids.entry(l.tid).or_default() += n;
                        }
                        Direction::Send => ch.bytes_tx += n,
                    },
                    None => {
                        let e = self.unbound_sk.entry(l.sk).or_default();
                        match l.dir {
                            Direction::Recv => {
                                e.0 += n;
                                *e.2.entry(l.tid).or_default() += n;
                            }
                            Direction::Send => e.1 += n,
                        }
                    }
                }
            }
            Record::SockIo(s) => {
                let reqs = return_path
                    .iter()
                    .filter(|m| matches!(m, RpMessage::ReqPages { .. }))
                    .count() as u64;
                if reqs > 0 {
                    let key = *self.by_fd.entry(s.fd).or_insert((0, 0));
                    let ch = self.channels.entry(key).or_default();
                    ch.fd.get_or_insert(s.fd);
                    ch.requests += reqs;
                }
            }
            _ => {}
        }
    }

    /// Channels with a role each: the one carrying page requests is the return
    /// path; among the rest, the one receiving most is the main stream, and a
    /// second receiving channel is the preempt channel.
    pub fn report(&self, thread_role: impl Fn(u32) -> Option<Role>) -> Vec<ChannelReport> {
        let mut out: Vec<ChannelReport> = Vec::new();
        let mut receivers: Vec<(u64, usize)> = Vec::new();
        // A listening socket (remote port 0) carries no migration data.
        for ch in self
            .channels
            .iter()
            .filter(|((_, remote_port), _)| *remote_port != 0)
            .map(|(_, ch)| ch)
        {
            let p = ch.srtt.percentiles();
            let idx = out.len();
            let top_reader = ch
                .recv_tids
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(t, _)| *t);
            let role = if ch.requests > 0 {
                ChannelRole::ReturnPath
            } else if let Some(role) = top_reader.and_then(&thread_role) {
                ChannelRole::read_by(role)
            } else {
                receivers.push((ch.bytes_rx, idx));
                ChannelRole::Other
            };
            out.push(ChannelReport {
                role,
                local: ch.local.clone(),
                remote: ch.remote.clone(),
                fd: ch.fd,
                srtt_us: SrttReport {
                    p50: p.p50,
                    p99: p.p99,
                    samples: p.count,
                },
                retransmits: ch.retransmits,
                bytes_rx: ch.bytes_rx,
                bytes_tx: ch.bytes_tx,
                page_requests: ch.requests,
            });
        }
        if !out.iter().any(|c| c.role == ChannelRole::Main) {
            receivers.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&(rx, i)) = receivers.first() {
                if rx > 0 {
                    out[i].role = ChannelRole::Main;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uffdscope_trace::record::SocketInfo;

    fn socket(fd: i32, local_port: u16, remote_port: u16) -> Record {
        Record::Socket(SocketInfo {
            ts: 0,
            fd,
            inode: u64::from(local_port),
            local: format!("127.0.0.1:{local_port}"),
            remote: format!("127.0.0.1:{remote_port}"),
            local_port,
            remote_port,
        })
    }

    #[test]
    fn listening_sockets_are_not_channels() {
        let mut n = Network::default();
        n.push(&socket(3, 4444, 0), &[]);
        n.push(&socket(4, 4444, 50000), &[]);
        let channels = n.report(|_| None);
        assert_eq!(channels.len(), 1);
        assert_eq!(channels[0].fd, Some(4));
    }
}
