//! Target discovery from `/proc`: the process, its threads and their roles,
//! its sockets with their TCP endpoints, its userfaultfd ranges, and finding a
//! QEMU by its `-name`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use uffdscope_trace::record::{ProcessInfo, Role, SocketInfo, ThreadInfo, UffdRange};

/// Discovery errors; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("process {0} does not exist (has it exited? check the pid with `pgrep -a qemu`)")]
    PidGone(u32),
    #[error("cannot read {path}: {source}{}", proc_hint(source))]
    Proc { path: PathBuf, source: io::Error },
    #[error("no running QEMU has -name {0:?} (list them with `pgrep -a qemu`)")]
    NoSuchQemu(String),
    #[error("several QEMU processes have -name {name:?}: pids {pids:?}; use --pid")]
    AmbiguousQemu { name: String, pids: Vec<u32> },
}

/// What to do about a `/proc` read that failed, in the terms of what failed.
fn proc_hint(source: &io::Error) -> &'static str {
    match source.kind() {
        io::ErrorKind::PermissionDenied if nix::unistd::geteuid().is_root() => {
            " (refused even to root: the kernel's ptrace access check denies it; \
             the process may be non-dumpable, in another user namespace or container, \
             or protected by a security module)"
        }
        io::ErrorKind::PermissionDenied => " (run as root)",
        io::ErrorKind::NotFound => " (has the process exited?)",
        _ => "",
    }
}

fn read(path: PathBuf, pid: u32) -> Result<String, DiscoverError> {
    fs::read_to_string(&path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            DiscoverError::PidGone(pid)
        } else {
            DiscoverError::Proc { path, source }
        }
    })
}

/// True while the process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// The process record: comm and command line.
pub fn process(pid: u32, ts: u64) -> Result<ProcessInfo, DiscoverError> {
    let comm = read(PathBuf::from(format!("/proc/{pid}/comm")), pid)?
        .trim_end()
        .to_owned();
    let raw = fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| DiscoverError::PidGone(pid))?;
    let cmdline = raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    Ok(ProcessInfo {
        ts,
        pid,
        comm,
        cmdline,
    })
}

/// True when the process looks like QEMU.
pub fn is_qemu(p: &ProcessInfo) -> bool {
    p.comm.starts_with("qemu")
        || p.cmdline
            .first()
            .is_some_and(|a| a.rsplit('/').next().is_some_and(|b| b.starts_with("qemu")))
}

/// The `-name` of a QEMU command line (`-name foo,debug-threads=on`, `-name guest=foo`).
pub fn qemu_name(cmdline: &[String]) -> Option<String> {
    let i = cmdline.iter().position(|a| a == "-name")?;
    let value = cmdline.get(i + 1)?;
    value
        .split(',')
        .find_map(|part| match part.split_once('=') {
            Some(("guest", v)) => Some(v.to_owned()),
            Some(_) => None,
            None => Some(part.to_owned()),
        })
}

/// Finds the QEMU process whose `-name` is `name`.
pub fn find_qemu(name: &str) -> Result<u32, DiscoverError> {
    let dir = fs::read_dir("/proc").map_err(|source| DiscoverError::Proc {
        path: "/proc".into(),
        source,
    })?;
    let mut pids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            process(pid, 0)
                .ok()
                .filter(is_qemu)
                .and_then(|p| qemu_name(&p.cmdline))
                .is_some_and(|n| n == name)
        })
        .collect();
    pids.sort_unstable();
    match pids.as_slice() {
        [] => Err(DiscoverError::NoSuchQemu(name.to_owned())),
        [pid] => Ok(*pid),
        _ => Err(DiscoverError::AmbiguousQemu {
            name: name.to_owned(),
            pids,
        }),
    }
}

/// The process's threads with their names and name-based roles.
pub fn threads(pid: u32, ts: u64) -> Result<Vec<ThreadInfo>, DiscoverError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = fs::read_dir(&dir).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            DiscoverError::PidGone(pid)
        } else {
            DiscoverError::Proc { path: dir, source }
        }
    })?;
    let mut out: Vec<ThreadInfo> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            // A thread may exit during the scan.
            let name = fs::read_to_string(e.path().join("comm")).ok()?;
            let name = name.trim_end().to_owned();
            Some(ThreadInfo {
                ts,
                tid,
                role: Role::from_thread_name(&name).unwrap_or(Role::Other),
                name,
            })
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// The threads of `pid` asleep in userfaultfd at this moment: their wait
/// channel (`/proc/PID/task/TID/wchan`, root only) is `handle_userfault`.
/// `None` when the process is gone or the kernel shows no wait channels (no
/// thread has one: all would read `0`), so "none blocked" is never a guess.
pub fn blocked_in_userfaultfd(pid: u32) -> Option<Vec<u32>> {
    let mut blocked = Vec::new();
    let mut shows_wait_channels = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may exit during the scan.
        let Ok(wchan) = fs::read_to_string(entry.path().join("wchan")) else {
            continue;
        };
        let wchan = wchan.trim();
        shows_wait_channels |= !wchan.is_empty() && wchan != "0";
        if wchan == "handle_userfault" {
            blocked.push(tid);
        }
    }
    shows_wait_channels.then_some(blocked)
}

/// Parses one `/proc/net/tcp{,6}` address (`0100007F:1F90`).
fn parse_addr(s: &str) -> Option<(String, u16)> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let text = match ip.len() {
        8 => Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes()).to_string(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            format!("[{}]", Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((format!("{text}:{port}"), port))
}

/// TCP sockets of the process's network namespace by inode.
fn tcp_table(pid: u32) -> HashMap<u64, (String, u16, String, u16)> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let (Some((local, lport)), Some((remote, rport)), Ok(inode)) = (
                parse_addr(cols[1]),
                parse_addr(cols[2]),
                cols[9].parse::<u64>(),
            ) else {
                continue;
            };
            if inode != 0 {
                out.insert(inode, (local, lport, remote, rport));
            }
        }
    }
    out
}

/// TCP sockets among `fds` (fd, inode), with their endpoints.
pub fn sockets(pid: u32, fds: &[(u32, u64)], ts: u64) -> Vec<SocketInfo> {
    let table = tcp_table(pid);
    fds.iter()
        .filter_map(|&(fd, inode)| {
            let (local, local_port, remote, remote_port) = table.get(&inode)?.clone();
            Some(SocketInfo {
                ts,
                fd: i32::try_from(fd).ok()?,
                inode,
                local,
                remote,
                local_port,
                remote_port,
            })
        })
        .collect()
}

/// Userfaultfd-registered ranges from `/proc/PID/smaps` (`VmFlags` `um`/`uw`/`ui`).
pub fn uffd_ranges(pid: u32, ts: u64) -> Result<Vec<UffdRange>, DiscoverError> {
    let text = read(PathBuf::from(format!("/proc/{pid}/smaps")), pid)?;
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let mut mode = 0;
            for f in flags.split_whitespace() {
                match f {
                    "um" => mode |= 1,
                    "uw" => mode |= 2,
                    "ui" => mode |= 4,
                    _ => {}
                }
            }
            if let (Some((start, end)), true) = (current, mode != 0) {
                out.push(UffdRange {
                    ts,
                    start,
                    len: end - start,
                    mode,
                });
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    current = Some((a, b));
                }
            }
        }
    }
    Ok(out)
}

/// fds found in `/proc/PID/fd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcFds {
    /// `anon_inode:[userfaultfd]` fds.
    pub uffd: Vec<u32>,
    /// `socket:[inode]` fds, with the inode.
    pub sockets: Vec<(u32, u64)>,
    /// A KVM VM fd (`anon_inode:kvm-vm`): the target runs its guest on KVM.
    pub kvm: bool,
}

/// Lists the uffd and socket fds of a process from `/proc/PID/fd`. fds that
/// close during the scan are skipped.
pub fn scan_proc_fds(tgid: u32) -> Result<ProcFds, DiscoverError> {
    let dir = PathBuf::from(format!("/proc/{tgid}/fd"));
    let entries = fs::read_dir(&dir).map_err(|source| DiscoverError::Proc {
        path: dir.clone(),
        source,
    })?;
    let mut out = ProcFds::default();
    for entry in entries {
        let entry = entry.map_err(|source| DiscoverError::Proc {
            path: dir.clone(),
            source,
        })?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // The fd may close between readdir and readlink: not an error.
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if link == "anon_inode:[userfaultfd]" {
            out.uffd.push(fd);
        } else if link == "anon_inode:kvm-vm" {
            out.kvm = true;
        } else if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.sockets.push((fd, inode));
        }
    }
    out.uffd.sort_unstable();
    out.sockets.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_sleeping_threads_are_not_blocked_in_userfaultfd() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || rx.recv());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let blocked = blocked_in_userfaultfd(std::process::id());
        drop(tx);
        let _ = sleeper.join();
        assert_eq!(
            blocked,
            Some(Vec::new()),
            "a thread asleep on a channel shows a wait channel, and it is not handle_userfault"
        );
        assert_eq!(blocked_in_userfaultfd(u32::MAX), None, "no such process");
    }

    use super::*;

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(
            parse_addr("0100007F:1F90"),
            Some(("127.0.0.1:8080".to_owned(), 8080))
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0016"),
            Some(("[::1]:22".to_owned(), 22))
        );
        assert_eq!(parse_addr("zz"), None);
    }

    #[test]
    fn finds_qemu_names() {
        let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            qemu_name(&argv(
                "qemu-system-x86_64 -name dst,debug-threads=on -m 512"
            )),
            Some("dst".into())
        );
        assert_eq!(
            qemu_name(&argv("qemu -name guest=vm1,debug-threads=on")),
            Some("vm1".into())
        );
        assert_eq!(qemu_name(&argv("qemu -m 1")), None);
    }

    #[test]
    fn discovers_this_process() {
        let pid = std::process::id();
        let p = process(pid, 1).unwrap();
        assert!(!p.comm.is_empty());
        let t = threads(pid, 1).unwrap();
        assert!(t.iter().any(|t| t.tid == pid));
        assert!(alive(pid));
        assert!(matches!(
            process(u32::MAX - 1, 0),
            Err(DiscoverError::PidGone(_))
        ));
    }

    #[test]
    fn scans_own_fds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let fds = scan_proc_fds(std::process::id()).expect("scan /proc/self/fd");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener) as u32;
        assert!(
            fds.sockets.iter().any(|&(f, _)| f == fd),
            "socket fd {fd} not found in {fds:?}"
        );
        assert!(fds.uffd.is_empty(), "no uffd expected: {fds:?}");
    }
}
