//! uffdscope's compiled BPF object and the Rust mirror of `bpf/events.h`.
