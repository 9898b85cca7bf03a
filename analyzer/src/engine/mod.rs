//! The analysis engine: fault lifecycles joined from records, their
//! statistics, vCPU blocktime and QEMU's accounting replayed, the network
//! channels, the waits KVM moved to kworkers, and the guest's timeline
//! correlated with all of it.

pub mod blocktime;
pub mod both_ends;
pub mod guest;
pub mod kvm_async;
pub mod lifecycle;
pub mod network;
pub mod network_split;
pub mod qemu_latency;
pub mod queue;
pub mod stats;
