//! Root tier: the tracepoint context layouts of `ebpf/bpf/tracepoints.h`
//! (through `uffdscope_ebpf::generated::tracepoint` and the catalogue) are
//! the ones this host's kernel publishes in
//! `/sys/kernel/tracing/events/<category>/<name>/format`: every field of
//! every layout (padding aside) at its offset with its size, for every
//! tracepoint of the catalogue this kernel has.
#![cfg(target_os = "linux")]

use uffdscope_fixtures::tier;
use uffdscope_tracer::bpf::{
    compare_format, find_or_mount_tracefs, parse_format, Layout, TRACEPOINTS,
};

#[test]
fn layouts_match_this_hosts_format_files() {
    if !tier::root_bpf("layouts_match_this_hosts_format_files") {
        return;
    }
    let (tracefs, _) = find_or_mount_tracefs().expect("tracefs");
    let mut problems = Vec::new();
    let mut compared = 0;
    for tp in TRACEPOINTS {
        let path = tracefs
            .join("events")
            .join(tp.category)
            .join(tp.name)
            .join("format");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("{tp}: not on this kernel, not compared");
            continue;
        };
        let parsed = parse_format(&text);
        // Every field the program reads, then the rest of its layout.
        let mut expected = tp.fields();
        if let Layout::Struct(layout) = tp.layout {
            expected.extend(
                layout
                    .iter()
                    .filter(|f| !f.name.starts_with("pad"))
                    .copied(),
            );
        }
        compared += expected.len();
        problems.extend(
            compare_format(&expected, &parsed)
                .into_iter()
                .map(|p| format!("{tp}: {p}")),
        );
    }
    assert!(compared > 50, "only {compared} fields compared");
    assert!(
        problems.is_empty(),
        "ebpf/bpf/tracepoints.h disagrees with this kernel:\n{}",
        problems.join("\n")
    );
}
