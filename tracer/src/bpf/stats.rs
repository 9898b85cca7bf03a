//! Per-program run statistics straight from the kernel
//! (`BPF_OBJ_GET_INFO_BY_FD`), which aya keeps private.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Run statistics of one attached program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    /// Program name in the object.
    pub program: &'static str,
    /// Kernel program id (as `bpftool prog show` lists it).
    pub id: u32,
    /// Runs (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_cnt: u64,
    /// Total run time in ns (counted while `kernel.bpf_stats_enabled` is 1).
    pub run_time_ns: u64,
    /// Runs skipped because another BPF program was running on that CPU.
    pub recursion_misses: u64,
}

impl ProgramStats {
    /// Asks the kernel for the statistics of `program`, loaded as `fd`.
    pub(super) fn read(program: &'static str, fd: BorrowedFd<'_>) -> io::Result<ProgramStats> {
        let info = prog_info(fd)?;
        Ok(ProgramStats {
            program,
            id: info.id,
            run_cnt: info.run_cnt,
            run_time_ns: info.run_time_ns,
            recursion_misses: info.recursion_misses,
        })
    }

    /// Mean ns per run, 0 before the first counted run.
    pub fn mean_ns(&self) -> u64 {
        self.run_time_ns.checked_div(self.run_cnt).unwrap_or(0)
    }
}

/// The leading fields of the kernel's `struct bpf_prog_info` up to
/// `recursion_misses` (UAPI, append-only); the kernel fills as much of the
/// struct as it is told is there.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

const _: () = assert!(std::mem::offset_of!(ProgInfoHead, run_time_ns) == 192);
const _: () = assert!(std::mem::size_of::<ProgInfoHead>() == 216);

/// `BPF_OBJ_GET_INFO_BY_FD` on a program fd. aya 0.14 keeps the run
/// statistics of `bpf_prog_info` private, so this asks the kernel directly.
fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfoHead> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: attr points at a live InfoAttr whose `info` points at a live,
    // writable ProgInfoHead of `info_len` bytes; the kernel writes at most
    // that many bytes and reads nothing else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
