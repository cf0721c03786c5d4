//! Pure parsers for the `/proc` files the dump reads. No I/O here, so every parser is unit-tested
//! against real lines captured on this kernel.

use std::collections::HashMap;

/// A `/proc` text that did not have the shape we expect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: cannot parse {what}")]
pub struct ParseError {
    /// Which proc file (e.g. `stat`, `maps`).
    pub file: &'static str,
    /// What was malformed.
    pub what: String,
}

fn perr(file: &'static str, what: impl Into<String>) -> ParseError {
    ParseError {
        file,
        what: what.into(),
    }
}

/// The fields of `/proc/<pid>/stat` that the dump uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// The controlling terminal's device (kernel encoding: major in bits 8-15, minor in bits
    /// 0-7 and 20-31), 0 if none.
    pub tty_nr: u32,
    /// The foreground process group of the controlling terminal, -1 if none.
    pub tpgid: i64,
    pub flags: u32,
    pub nice: i64,
    pub num_threads: u32,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub exit_signal: u32,
    pub rt_priority: u32,
    pub policy: u32,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

/// Parses `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`).
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let open = text.find('(').ok_or_else(|| perr("stat", "no '('"))?;
    let close = text.rfind(')').ok_or_else(|| perr("stat", "no ')'"))?;
    if close < open {
        return Err(perr("stat", "')' before '('"));
    }
    let pid = text[..open]
        .trim()
        .parse()
        .map_err(|_| perr("stat", "pid"))?;
    let comm = text[open + 1..close].to_string();
    // After the comm, field 3 (state) is index 0.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    if rest.len() < 50 {
        return Err(perr(
            "stat",
            format!("only {} fields after comm", rest.len()),
        ));
    }
    let f = |n: usize| -> Result<u64, ParseError> {
        rest[n - 3]
            .parse::<u64>()
            .map_err(|_| perr("stat", format!("field {n}")))
    };
    let fi = |n: usize| -> Result<i64, ParseError> {
        rest[n - 3]
            .parse::<i64>()
            .map_err(|_| perr("stat", format!("field {n}")))
    };
    Ok(Stat {
        pid,
        comm,
        state: rest[0].chars().next().unwrap_or('?'),
        ppid: f(4)? as u32,
        pgid: f(5)? as u32,
        sid: f(6)? as u32,
        tty_nr: fi(7)? as u32,
        tpgid: fi(8)?,
        flags: f(9)? as u32,
        nice: fi(19)?,
        num_threads: f(20)? as u32,
        start_code: f(26)?,
        end_code: f(27)?,
        start_stack: f(28)?,
        exit_signal: fi(38)?.max(0) as u32,
        rt_priority: f(40)? as u32,
        policy: f(41)? as u32,
        start_data: f(45)?,
        end_data: f(46)?,
        start_brk: f(47)?,
        arg_start: f(48)?,
        arg_end: f(49)?,
        env_start: f(50)?,
        env_end: f(51)?,
        exit_code: fi(52)? as i32,
    })
}

/// (major, minor) of a device number in the kernel's `tty_nr` encoding.
pub fn tty_nr_major_minor(tty_nr: u32) -> (u32, u32) {
    (
        (tty_nr >> 8) & 0xfff,
        (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00),
    )
}

/// One mapping from `/proc/<pid>/smaps` (or `maps`, without `vm_flags`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path column as the kernel prints it (`[heap]`, `/usr/bin/x`, `/memfd:a (deleted)`, empty).
    pub path: String,
    /// Two-letter `VmFlags` of smaps (`rd wr mr ...`); empty when read from `maps`.
    pub vm_flags: Vec<String>,
    /// smaps' `KernelPageSize` in kB (a hugetlb area's huge page size); 0 from `maps`.
    pub kernel_page_kb: u64,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

fn parse_map_line(line: &str) -> Result<Mapping, ParseError> {
    let mut it = line.splitn(6, ' ');
    let range = it.next().ok_or_else(|| perr("maps", line))?;
    let perms = it.next().ok_or_else(|| perr("maps", line))?;
    let offset = it.next().ok_or_else(|| perr("maps", line))?;
    let dev = it.next().ok_or_else(|| perr("maps", line))?;
    let inode = it.next().ok_or_else(|| perr("maps", line))?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or_else(|| perr("maps", line))?;
    let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|_| perr("maps", line));
    let (maj, min) = dev.split_once(':').ok_or_else(|| perr("maps", line))?;
    let p = perms.as_bytes();
    if p.len() < 4 {
        return Err(perr("maps", line));
    }
    Ok(Mapping {
        start: hex(s)?,
        end: hex(e)?,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        shared: p[3] == b's',
        offset: hex(offset)?,
        dev_major: u32::from_str_radix(maj, 16).map_err(|_| perr("maps", line))?,
        dev_minor: u32::from_str_radix(min, 16).map_err(|_| perr("maps", line))?,
        inode: inode.parse().map_err(|_| perr("maps", line))?,
        path,
        vm_flags: Vec::new(),
        kernel_page_kb: 0,
    })
}

fn is_map_header(line: &str) -> bool {
    // A mapping line starts with "hex-hex "; smaps attribute lines start with "Name:".
    match line.split_once(' ') {
        Some((range, _)) => {
            range.contains('-') && range.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }
        None => false,
    }
}

/// Parses `/proc/<pid>/maps` or `/proc/<pid>/smaps` (VmFlags are kept when present).
pub fn parse_maps(text: &str) -> Result<Vec<Mapping>, ParseError> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if is_map_header(line) {
            out.push(parse_map_line(line)?);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(m) = out.last_mut() {
                m.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            }
        } else if let Some(size) = line.strip_prefix("KernelPageSize:") {
            if let Some(m) = out.last_mut() {
                m.kernel_page_kb = size
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(out)
}

/// What `/proc/<pid>/status` says about credentials and signals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub umask: u32,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u32,
    pub sig_blk: u64,
    pub sig_ign: u64,
    /// SigCgt: signals with a handler.
    pub sig_cgt: u64,
    pub shd_pnd: u64,
    pub sig_pnd: u64,
    pub nspid: Vec<u32>,
    /// The process group and session ids at each pid namespace level, ours first.
    pub nspgid: Vec<u32>,
    pub nssid: Vec<u32>,
}

/// Parses `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Result<Status, ParseError> {
    let mut st = Status::default();
    let mut seen_uid = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|_| perr("status", k.to_string()));
        let four = |v: &str| -> Result<[u32; 4], ParseError> {
            let n: Vec<u32> = v
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            n.try_into().map_err(|_| perr("status", k.to_string()))
        };
        match k {
            "Umask" => st.umask = u32::from_str_radix(v, 8).map_err(|_| perr("status", "Umask"))?,
            "Uid" => {
                st.uids = four(v)?;
                seen_uid = true;
            }
            "Gid" => st.gids = four(v)?,
            "Groups" => {
                st.groups = v
                    .split_whitespace()
                    .map(|x| x.parse().map_err(|_| perr("status", "Groups")))
                    .collect::<Result<_, _>>()?
            }
            "CapInh" => st.cap_inh = hex(v)?,
            "CapPrm" => st.cap_prm = hex(v)?,
            "CapEff" => st.cap_eff = hex(v)?,
            "CapBnd" => st.cap_bnd = hex(v)?,
            "CapAmb" => st.cap_amb = hex(v)?,
            "NoNewPrivs" => st.no_new_privs = v == "1",
            "Seccomp" => st.seccomp = v.parse().map_err(|_| perr("status", "Seccomp"))?,
            "SigBlk" => st.sig_blk = hex(v)?,
            "SigIgn" => st.sig_ign = hex(v)?,
            "SigCgt" => st.sig_cgt = hex(v)?,
            "ShdPnd" => st.shd_pnd = hex(v)?,
            "SigPnd" => st.sig_pnd = hex(v)?,
            "NSpid" | "NSpgid" | "NSsid" => {
                let ids = v
                    .split_whitespace()
                    .map(|x| x.parse().map_err(|_| perr("status", k.to_string())))
                    .collect::<Result<_, _>>()?;
                match k {
                    "NSpid" => st.nspid = ids,
                    "NSpgid" => st.nspgid = ids,
                    _ => st.nssid = ids,
                }
            }
            _ => {}
        }
    }
    if !seen_uid {
        return Err(perr("status", "no Uid line"));
    }
    Ok(st)
}

/// Resource names of `/proc/<pid>/limits` in RLIMIT_* order (0..=15).
pub const LIMIT_NAMES: [&str; 16] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

/// Parses `/proc/<pid>/limits` into (soft, hard) per RLIMIT_* index; `u64::MAX` is unlimited.
/// Readable for any task, unlike prlimit(2) on another user's task without CAP_SYS_RESOURCE.
pub fn parse_limits(text: &str) -> Result<Vec<(u64, u64)>, ParseError> {
    let mut out = vec![(u64::MAX, u64::MAX); LIMIT_NAMES.len()];
    let mut found = 0;
    for line in text.lines().skip(1) {
        let Some(idx) = LIMIT_NAMES.iter().position(|n| line.starts_with(n)) else {
            continue;
        };
        let rest = &line[LIMIT_NAMES[idx].len()..];
        let cols: Vec<&str> = rest.split_whitespace().collect();
        if cols.len() < 2 {
            return Err(perr("limits", line));
        }
        let val = |s: &str| -> Result<u64, ParseError> {
            if s == "unlimited" {
                Ok(u64::MAX)
            } else {
                s.parse().map_err(|_| perr("limits", line))
            }
        };
        out[idx] = (val(cols[0])?, val(cols[1])?);
        found += 1;
    }
    if found == 0 {
        return Err(perr("limits", "no limit rows"));
    }
    Ok(out)
}

/// The common lines of `/proc/<pid>/fdinfo/<fd>` plus every other `key: value` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u32,
    pub ino: u64,
    pub extra: HashMap<String, String>,
    /// The whole text, for kinds with repeated keys (epoll's `tfd:` lines).
    pub raw: String,
}

/// Parses `/proc/<pid>/fdinfo/<fd>`.
pub fn parse_fdinfo(text: &str) -> Result<FdInfo, ParseError> {
    let mut fi = FdInfo {
        raw: text.to_string(),
        ..Default::default()
    };
    let mut seen_flags = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => fi.pos = v.parse().map_err(|_| perr("fdinfo", "pos"))?,
            "flags" => {
                fi.flags = u32::from_str_radix(v, 8).map_err(|_| perr("fdinfo", "flags"))?;
                seen_flags = true;
            }
            "mnt_id" => fi.mnt_id = v.parse().map_err(|_| perr("fdinfo", "mnt_id"))?,
            "ino" => fi.ino = v.parse().map_err(|_| perr("fdinfo", "ino"))?,
            _ => {
                fi.extra.insert(k.to_string(), v.to_string());
            }
        }
    }
    if !seen_flags {
        return Err(perr("fdinfo", "no flags line"));
    }
    Ok(fi)
}

/// Parses the pid list of `/proc/<pid>/task/<tid>/children`.
pub fn parse_children(text: &str) -> Result<Vec<u32>, ParseError> {
    text.split_whitespace()
        .map(|x| x.parse().map_err(|_| perr("children", x)))
        .collect()
}

/// Splits `/proc/<pid>/auxv` bytes into native-endian u64 words.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact(8)")))
        .collect();
    // The pairs before AT_NULL, as CRIU saves them: CRIU 4.2 refuses a saved auxv longer than
    // its AT_VECTOR_SIZE (44 words), and the kernel's 22 pairs plus AT_NULL would be 46.
    // PR_SET_MM_MAP zero-fills the rest, so AT_NULL comes back at restore.
    let pairs = words
        .chunks_exact(2)
        .take_while(|p| p[0] != libc::AT_NULL)
        .count();
    words[..pairs * 2].to_vec()
}

/// One System V shared memory segment of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShmSegment {
    pub key: i32,
    pub shmid: u32,
    /// Permission bits and SHM_DEST (01000) / SHM_LOCKED flags, as printed (octal).
    pub perms: u32,
    pub size: u64,
    pub nattch: u64,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
}

/// Parses `/proc/sysvipc/shm` (the header line is skipped; bad lines too: see
/// [`crate::ipc::sysv::shm_segments`] for the reading that refuses them).
pub fn parse_sysvipc_shm(text: &str) -> Vec<ShmSegment> {
    text.lines()
        .skip(1)
        .filter_map(parse_sysvipc_shm_row)
        .collect()
}

/// One row of `/proc/sysvipc/shm`; None if it does not have the expected columns.
pub fn parse_sysvipc_shm_row(l: &str) -> Option<ShmSegment> {
    let f: Vec<&str> = l.split_whitespace().collect();
    if f.len() < 11 {
        return None;
    }
    Some(ShmSegment {
        key: f[0].parse().ok()?,
        shmid: f[1].parse().ok()?,
        perms: u32::from_str_radix(f[2], 8).ok()?,
        size: f[3].parse().ok()?,
        nattch: f[6].parse().ok()?,
        uid: f[7].parse().ok()?,
        gid: f[8].parse().ok()?,
        cuid: f[9].parse().ok()?,
        cgid: f[10].parse().ok()?,
    })
}

/// One POSIX timer of `/proc/<pid>/timers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: u32,
    pub signo: u32,
    pub sival_ptr: u64,
    /// SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD 2, ORed with SIGEV_THREAD_ID 4.
    pub notify: u32,
    pub notify_tid: Option<u32>,
    pub clock_id: u32,
}

/// Parses `/proc/<pid>/timers`. A field that does not parse is an error: the timer would
/// otherwise be dumped with a wrong id, signal or clock (or lost).
pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, ParseError> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let bad = || perr("timers", line.to_string());
        match k {
            "ID" => out.push(PosixTimer {
                id: v.parse().map_err(|_| bad())?,
                ..Default::default()
            }),
            "signal" => {
                let t = out.last_mut().ok_or_else(bad)?;
                let (sig, ptr) = v.split_once('/').ok_or_else(bad)?;
                t.signo = sig.parse().map_err(|_| bad())?;
                t.sival_ptr = u64::from_str_radix(ptr, 16).map_err(|_| bad())?;
            }
            "notify" => {
                // "signal/pid.N", "none/pid.N", or "<how>/tid.N" for SIGEV_THREAD_ID.
                let t = out.last_mut().ok_or_else(bad)?;
                let (how, who) = v.split_once('/').ok_or_else(bad)?;
                let base = match how {
                    "none" => 1,
                    "thread" => 2,
                    _ => 0,
                };
                let to_thread = who.starts_with("tid");
                t.notify = base | if to_thread { 4 } else { 0 };
                if to_thread {
                    let (_, n) = who.split_once('.').ok_or_else(bad)?;
                    t.notify_tid = Some(n.parse().map_err(|_| bad())?);
                }
            }
            "ClockID" => {
                let t = out.last_mut().ok_or_else(bad)?;
                t.clock_id = v.parse().map_err(|_| bad())?;
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_shm_table() {
        let t = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
 305441741          3  1600                 65536 32020 32020      2     0     0     0     0 1795796638          0 1795796638                     0                     0\n";
        let s = parse_sysvipc_shm(t);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].key, s[0].shmid, s[0].perms, s[0].size, s[0].nattch),
            (305441741, 3, 0o1600, 65536, 2)
        );
    }

    #[test]
    fn timers_file() {
        let t = parse_timers(
            "ID: 0\nsignal: 14/00000000deadbeef\nnotify: signal/pid.77\nClockID: 1\n\
ID: 1\nsignal: 10/0000000000000000\nnotify: signal/tid.78\nClockID: 0\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (
                t[0].id,
                t[0].signo,
                t[0].sival_ptr,
                t[0].notify,
                t[0].clock_id
            ),
            (0, 14, 0xdeadbeef, 0, 1)
        );
        assert_eq!((t[1].notify, t[1].notify_tid), (4, Some(78)));
        assert!(parse_timers("ID: 0\nsignal: x/0\n").is_err());
    }

    const STAT: &str = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 110 0 0 0 0 0 0 0 20 0 1 0 \
        12345 2547712 244 18446744073709551615 94371523489792 94371523491809 140730000000000 0 0 0 0 \
        0 0 0 0 0 17 1 0 0 0 0 0 94371523500000 94371523501000 94371550000000 140730000001000 \
        140730000001020 140730000001020 140730000002000 0\n";

    #[test]
    fn stat_with_parens_in_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgid, s.sid), (1, 4242, 4242));
        assert_eq!(s.start_code, 94371523489792);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.start_brk, 94371550000000);
        assert_eq!(s.env_end, 140730000002000);
        assert_eq!(s.exit_code, 0);
        assert_eq!((s.tty_nr, s.tpgid), (0, -1));
    }

    #[test]
    fn tty_nr_decodes_large_minors() {
        assert_eq!(tty_nr_major_minor(136 << 8 | 3), (136, 3));
        // pts/300: the minor's high bits sit above the major.
        let nr = (300 & 0xff) | (136 << 8) | ((300 & !0xff) << 12);
        assert_eq!(tty_nr_major_minor(nr), (136, 300));
    }

    #[test]
    fn stat_truncated_is_error() {
        assert!(parse_stat("1 (x) S 0 1").is_err());
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn smaps_with_flags() {
        let text =
            "55d0c8a00000-55d0c8a21000 rw-p 00000000 00:00 0                          [heap]\n\
Size:                132 kB\n\
VmFlags: rd wr mr mw me ac sd \n\
7f1c2a000000-7f1c2a200000 r--s 00001000 fe:01 1234  /usr/lib/x86_64-linux-gnu/libc.so.6\n\
VmFlags: rd mr mw me sd dd\n\
7ffd1a9fe000-7ffd1aa02000 r--p 00000000 00:00 0                          [vvar]\n";
        let m = parse_maps(text).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "[heap]");
        assert!(m[0].write && !m[0].shared);
        assert!(m[0].has_flag("ac"));
        assert!(m[1].shared && m[1].has_flag("dd"));
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(
            (m[1].dev_major, m[1].dev_minor, m[1].inode),
            (0xfe, 1, 1234)
        );
        assert_eq!(m[2].path, "[vvar]");
        assert!(m[2].vm_flags.is_empty());
    }

    #[test]
    fn maps_path_with_spaces() {
        let m = parse_maps("7f00-8f00 rw-s 00000000 00:01 99   /dev/zero (deleted)\n").unwrap();
        assert_eq!(m[0].path, "/dev/zero (deleted)");
        assert_eq!(m[0].len(), 0x1000);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tcat\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1002\t1003\n\
Gid:\t65534\t65534\t65534\t65534\nGroups:\t4 24 27 \nNSpid:\t77\nNSpgid:\t70\t6\nNSsid:\t60\t1\nSigPnd:\t0000000000000000\n\
ShdPnd:\t0000000000000200\nSigBlk:\t0000000000010000\nCapInh:\t0000000000000000\n\
CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n\
CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t0\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.umask, 0o022);
        assert_eq!(s.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gids, [65534; 4]);
        assert_eq!(s.groups, vec![4, 24, 27]);
        assert_eq!(s.cap_eff, 0x1fffeffffff);
        assert!(s.no_new_privs);
        assert_eq!(s.shd_pnd, 0x200);
        assert_eq!(s.sig_blk, 0x10000);
        assert_eq!(s.nspid, vec![77]);
        assert_eq!(
            (s.nspgid.clone(), s.nssid.clone()),
            (vec![70, 6], vec![60, 1])
        );
        assert!(parse_status("Name: x\n").is_err());
    }

    #[test]
    fn limits_table() {
        let text =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max stack size            8388608              unlimited            bytes     \n\
Max open files            1024                 20000                files     \n\
Max realtime timeout      unlimited            unlimited            us        \n";
        let l = parse_limits(text).unwrap();
        assert_eq!(l[0], (u64::MAX, u64::MAX));
        assert_eq!(l[3], (8388608, u64::MAX));
        assert_eq!(l[7], (1024, 20000));
        assert!(parse_limits("Limit x\n").is_err());
    }

    #[test]
    fn fdinfo_fields() {
        let f = parse_fdinfo(
            "pos:\t4096\nflags:\t02102001\nmnt_id:\t25\nino:\t1234\neventfd-count: 5\n",
        )
        .unwrap();
        assert_eq!(f.pos, 4096);
        assert_eq!(f.flags, 0o2102001);
        assert_eq!(f.mnt_id, 25);
        assert_eq!(f.extra.get("eventfd-count").map(String::as_str), Some("5"));
        assert!(parse_fdinfo("pos: 1\n").is_err());
    }

    #[test]
    fn children_and_auxv() {
        assert_eq!(parse_children("12 13 99 ").unwrap(), vec![12, 13, 99]);
        assert!(parse_children("12 x").is_err());
        let mut b = Vec::new();
        b.extend_from_slice(&6u64.to_ne_bytes());
        b.extend_from_slice(&4096u64.to_ne_bytes());
        assert_eq!(parse_auxv(&b), vec![6, 4096]);
    }

    #[test]
    fn auxv_is_saved_without_its_terminator() {
        let words: Vec<u8> = [6u64, 4096, 25, 0x7ffe_0000, 0, 0, 99, 99]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        assert_eq!(parse_auxv(&words), vec![6, 4096, 25, 0x7ffe_0000]);
    }
}
