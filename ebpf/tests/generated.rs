//! `src/generated.rs` is generated from the C headers, which are the one
//! source of every ABI fact the kernel side and userspace share: the
//! userfaultfd ioctl numbers and the record layouts of `bpf/events.h`, and
//! the tracepoint context layouts of `bpf/tracepoints.h`. This test parses
//! the headers, renders the file, and fails when the checked-in copy differs;
//! `UFFDSCOPE_REGENERATE=1 cargo test -p uffdscope-ebpf --test generated`
//! rewrites it. (A checked-in file rather than a build script: `cargo build`
//! stays a plain build, and the generated code is readable and greppable.)
//!
//! The parser only knows the C these headers use (fixed-width integer
//! fields, arrays, nested structs of the same header); it cross-checks its
//! own layouts against the headers' `_Static_assert`s.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use uffdscope_trace::record::IoctlOp;

/// A C struct: fields (name, offset, size, type), size and alignment.
#[derive(Debug, Clone)]
struct Layout {
    fields: Vec<(String, u32, u32, String)>,
    size: u32,
    align: u32,
    /// The comment line just before the struct (tracepoints.h names the
    /// tracepoints there).
    comment: String,
}

fn strip_comment(line: &str) -> &str {
    line.split("/*").next().unwrap_or("").trim()
}

/// `#define UFS_NAME value` lines: name without `UFS_`, value, comment.
fn defines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("#define UFS_")?;
            let (name, rest) = rest.split_once(char::is_whitespace)?;
            let value = strip_comment(rest).to_owned();
            let comment = rest
                .split_once("/*")
                .map(|(_, c)| c.trim_end_matches("*/").trim().to_owned())
                .unwrap_or_default();
            Some((name.to_owned(), value, comment))
        })
        .collect()
}

/// The numeric `#define`s, by name without `UFS_`.
fn values(text: &str) -> BTreeMap<String, u64> {
    defines(text)
        .into_iter()
        .filter_map(|(n, v, _)| {
            let v = v.trim_end_matches('u').to_owned();
            let p = v
                .strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok());
            p.map(|p| (n, p))
        })
        .collect()
}

fn int(value: &str, defs: &BTreeMap<String, u64>) -> u64 {
    let v = value.trim_end_matches('u');
    if let Some(hex) = v.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).expect("hex constant");
    }
    if let Ok(n) = v.parse() {
        return n;
    }
    *defs
        .get(v.strip_prefix("UFS_").unwrap_or(v))
        .unwrap_or_else(|| panic!("unknown constant {value}"))
}

fn scalar(ty: &str) -> Option<u32> {
    Some(match ty {
        "__u8" | "__s8" | "char" => 1,
        "__u16" | "__s16" => 2,
        "__u32" | "__s32" => 4,
        "__u64" | "__s64" => 8,
        _ => return None,
    })
}

fn align_up(v: u32, a: u32) -> u32 {
    v.div_ceil(a) * a
}

/// Every `struct name {` ... `};` of `text`, laid out by the C rules.
fn structs(text: &str, defs: &BTreeMap<String, u64>) -> BTreeMap<String, Layout> {
    let mut out: BTreeMap<String, Layout> = BTreeMap::new();
    let mut prev = "";
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("struct ")
            .and_then(|r| r.strip_suffix(" {"))
        else {
            prev = line;
            continue;
        };
        let comment = prev
            .trim()
            .trim_start_matches("/*")
            .trim_end_matches("*/")
            .trim()
            .to_owned();
        let mut l = Layout {
            fields: Vec::new(),
            size: 0,
            align: 1,
            comment,
        };
        for body in lines.by_ref() {
            let decl = strip_comment(body);
            if decl == "};" {
                break;
            }
            let decl = decl.trim_end_matches(';');
            let (ty, var) = decl.rsplit_once(' ').expect("a field: type name");
            let (var, count) = match var.split_once('[') {
                Some((v, n)) => (
                    v,
                    u32::try_from(int(n.trim_end_matches(']'), defs)).expect("array length"),
                ),
                None => (var, 1),
            };
            let (size, align) = match scalar(ty) {
                Some(s) => (s, s),
                None => {
                    let inner = &out[ty.strip_prefix("struct ").expect("a struct type")];
                    (inner.size, inner.align)
                }
            };
            let offset = align_up(l.size, align);
            l.fields
                .push((var.to_owned(), offset, size * count, ty.to_owned()));
            l.size = offset + size * count;
            l.align = l.align.max(align);
        }
        l.size = align_up(l.size, l.align);
        out.insert(name.to_owned(), l);
        prev = "";
    }
    out
}

/// `ufs_fault_wake` -> `FaultWake`.
fn rust_name(c: &str) -> String {
    c.trim_start_matches("ufs_")
        .split('_')
        .map(|w| {
            let mut cs = w.chars();
            cs.next()
                .map(|f| f.to_ascii_uppercase().to_string() + cs.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn hex(v: u64) -> String {
    format!("0x{:04x}_{:04x}", v >> 16, v & 0xffff)
}

fn render_ioctls(s: &mut String, events: &str, values: &BTreeMap<String, u64>) {
    s.push_str(
        "/// userfaultfd ioctl numbers, as `events.h` spells them (`UFS_*`).\npub mod ioctl {\n",
    );
    for (name, value, comment) in defines(events) {
        if name.starts_with("UFFDIO_")
            || name.starts_with("USERFAULTFD_")
            || name == "UFFD_IOCTL_TYPE"
        {
            let _ = writeln!(s, "    /// `UFS_{name}`: `{comment}`.");
            let _ = writeln!(
                s,
                "    pub const {name}: u32 = {};",
                hex(int(&value, values))
            );
        }
    }
    s.push_str("}\n");
}

fn render_tracepoints(s: &mut String, tracepoints: &str, values: &BTreeMap<String, u64>) {
    s.push_str(
        "\n/// Tracepoint context layouts (`tracepoints.h`): every field's name, offset\n\
         /// and size, as the kernel's `format` files list them.\n\
         pub mod tracepoint {\n    use crate::layout::{field, FormatField};\n",
    );
    let tps = structs(tracepoints, values);
    let common = &tps["tp_common"];
    for (name, l) in tps.iter().filter(|(n, _)| n.as_str() != "tp_common") {
        let _ = writeln!(s, "\n    /// `struct {name}`: `{}`.", l.comment);
        let _ = writeln!(
            s,
            "    pub const {}: &[FormatField] = &[",
            name.to_uppercase()
        );
        for (f, off, size, ty) in &l.fields {
            if ty == "struct tp_common" {
                for (cf, coff, csize, _) in &common.fields {
                    let _ = writeln!(s, "        field(\"{cf}\", {}, {csize}),", off + coff);
                }
            } else {
                let _ = writeln!(s, "        field(\"{f}\", {off}, {size}),");
            }
        }
        s.push_str("    ];\n");
    }
    s.push_str("}\n");
}

fn render_record_asserts(s: &mut String, events: &str, values: &BTreeMap<String, u64>) {
    s.push_str("\n// Record layouts (`events.h`): every field's offset and every struct's size.\n");
    for (name, l) in &structs(events, values) {
        let ty = format!("crate::abi::{}", rust_name(name));
        for (f, off, _, _) in &l.fields {
            let _ = writeln!(
                s,
                "const _: () = assert!(core::mem::offset_of!({ty}, {f}) == {off});"
            );
        }
        let _ = writeln!(
            s,
            "const _: () = assert!(core::mem::size_of::<{ty}>() == {});",
            l.size
        );
    }
}

fn render(events: &str, tracepoints: &str) -> String {
    let values = values(events);
    let mut s = String::from(
        "// @generated by ebpf/tests/generated.rs from bpf/events.h and bpf/tracepoints.h.\n\
         // Do not edit: change the headers, then run\n\
         //   UFFDSCOPE_REGENERATE=1 cargo test -p uffdscope-ebpf --test generated\n\
         \n\
         //! ABI facts generated from the C headers: the userfaultfd ioctl numbers,\n\
         //! the tracepoint context layouts, and compile-time checks that every field\n\
         //! of every record struct of [`crate::abi`] is where `events.h` puts it.\n\
         \n",
    );
    render_ioctls(&mut s, events, &values);
    render_tracepoints(&mut s, tracepoints, &values);
    render_record_asserts(&mut s, events, &values);
    s
}

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn generated_rs_matches_the_headers() {
    let want = render(&read("bpf/events.h"), &read("bpf/tracepoints.h"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated.rs");
    if std::env::var_os("UFFDSCOPE_REGENERATE").is_some() {
        std::fs::write(&path, &want).expect("write src/generated.rs");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "ebpf/src/generated.rs is out of date with bpf/*.h; regenerate with \
         UFFDSCOPE_REGENERATE=1 cargo test -p uffdscope-ebpf --test generated"
    );
}

/// The parser's layouts agree with the headers' own `_Static_assert`s.
#[test]
fn parser_agrees_with_the_static_asserts() {
    let events = read("bpf/events.h");
    let values = values(&events);
    let ev = structs(&events, &values);
    let mut checked = 0;
    for line in events.lines() {
        if let Some(rest) = line.strip_prefix("_Static_assert(sizeof(struct ") {
            let (name, rest) = rest.split_once(')').expect("sizeof(struct x)");
            let n = rest
                .trim_start_matches(" == ")
                .split(',')
                .next()
                .expect("size");
            assert_eq!(u64::from(ev[name].size), int(n, &values), "{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, ev.len(), "every record struct has a size assert");
    let tps_text = read("bpf/tracepoints.h");
    let tps = structs(&tps_text, &values);
    let mut offs = 0;
    for line in tps_text.lines() {
        if let Some(rest) = line.strip_prefix("TP_OFF(") {
            let parts: Vec<&str> = rest.trim_end_matches(");").split(", ").collect();
            let [t, f, o] = parts[..] else {
                panic!("TP_OFF line {line}")
            };
            let found = tps[t].fields.iter().find(|x| x.0 == f).expect("field");
            assert_eq!(u64::from(found.1), int(o, &values), "{t}.{f}");
            offs += 1;
        }
    }
    assert!(offs > 20, "only {offs} TP_OFF lines found");
}

/// The trace crate keeps its own copy of the numbers (it must not depend on
/// this crate); they must be the headers'.
#[test]
fn trace_crate_ioctl_numbers_are_the_headers() {
    use uffdscope_ebpf::generated::ioctl as h;
    for (ours, theirs) in [
        (IoctlOp::CMD_API, h::UFFDIO_API),
        (IoctlOp::CMD_REGISTER, h::UFFDIO_REGISTER),
        (IoctlOp::CMD_UNREGISTER, h::UFFDIO_UNREGISTER),
        (IoctlOp::CMD_WAKE, h::UFFDIO_WAKE),
        (IoctlOp::CMD_COPY, h::UFFDIO_COPY),
        (IoctlOp::CMD_ZEROPAGE, h::UFFDIO_ZEROPAGE),
        (IoctlOp::CMD_WRITEPROTECT, h::UFFDIO_WRITEPROTECT),
        (IoctlOp::CMD_CONTINUE, h::UFFDIO_CONTINUE),
        (IoctlOp::CMD_USERFAULTFD_IOC_NEW, h::USERFAULTFD_IOC_NEW),
    ] {
        assert_eq!(ours, theirs, "{ours:#x} vs {theirs:#x}");
    }
}

/// The bin width the kernel counts placements in is the trace format's.
#[test]
fn the_kernels_bin_width_is_the_trace_formats() {
    let values = values(&read("bpf/events.h"));
    assert_eq!(
        values["BIN_NS"],
        uffdscope_trace::record::PlacementBin::BIN_NS
    );
}
