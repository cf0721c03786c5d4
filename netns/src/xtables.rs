//! A network namespace's iptables-legacy and ip6tables-legacy rules (x_tables): each table
//! read with the kernel's own socket options (`IPT_SO_GET_INFO`, `IPT_SO_GET_ENTRIES`) and
//! made again in a new namespace with `IPT_SO_SET_REPLACE`, from the same entries (no
//! `iptables` binary is run).
//!
//! The entries the kernel hands out are what a replace takes: matches and targets by their
//! user names, jumps as offsets within the table, private kernel data cut away. CRIU saves
//! `iptables-save` text in `iptables-<id>.img` (through the iptables binaries); this is saved
//! in a file of its own instead ([`to_image`]), which CRIU does not read. A replace starts
//! every counter at zero: the dumped ones (in the entries) are added back after it, so rule
//! and policy counters keep their values (CRIU's text drops them).
//!
//! The tables a namespace has are those its `/proc/net/ip_tables_names` lists: asking the
//! kernel for any other would make it in that namespace. The framing and the structure
//! layouts are pure and unit-tested; [`dump`] and [`restore`] make the socket calls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Reading or restoring x_tables failed.
#[derive(Debug, thiserror::Error)]
pub enum XtError {
    #[error("iptables-legacy table {table} ({family}): {what}")]
    Table {
        family: &'static str,
        table: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("iptables-legacy: {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("iptables-legacy image: {0}")]
    Image(String),
}

/// Which x_tables: iptables' or ip6tables'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XtFamily {
    V4,
    V6,
}

impl XtFamily {
    fn name(self) -> &'static str {
        match self {
            XtFamily::V4 => "ipv4",
            XtFamily::V6 => "ipv6",
        }
    }
    fn code(self) -> u8 {
        match self {
            XtFamily::V4 => 4,
            XtFamily::V6 => 6,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            4 => Some(XtFamily::V4),
            6 => Some(XtFamily::V6),
            _ => None,
        }
    }
    /// The `/proc/net` file listing the namespace's tables.
    fn names_file(self) -> &'static str {
        match self {
            XtFamily::V4 => "/proc/thread-self/net/ip_tables_names",
            XtFamily::V6 => "/proc/thread-self/net/ip6_tables_names",
        }
    }
    /// Where an entry's fields lie in it (`struct ipt_entry`, `struct ip6t_entry`).
    pub(crate) fn layout(self) -> Layout {
        match self {
            // struct ipt_entry: struct ipt_ip (84 bytes), nfcache, offsets, comefrom, counters.
            XtFamily::V4 => Layout {
                target_at: 88,
                next_at: 90,
                counters_at: 96,
                head: 112,
                addrs: (0, 4, 8, 12, 4),
                proto_at: 80,
                invflags_at: 83,
            },
            // struct ip6t_entry: struct ip6t_ip6 (136 bytes), then the same fields.
            XtFamily::V6 => Layout {
                target_at: 140,
                next_at: 142,
                counters_at: 152,
                head: 168,
                addrs: (0, 16, 32, 48, 16),
                proto_at: 128,
                invflags_at: 132,
            },
        }
    }
    fn socket_args(self) -> (libc::c_int, libc::c_int) {
        match self {
            XtFamily::V4 => (libc::AF_INET, libc::IPPROTO_IP),
            XtFamily::V6 => (libc::AF_INET6, libc::IPPROTO_IPV6),
        }
    }
}

/// Where an entry's fields lie, per family: `target_offset` and `next_offset` (u16), the
/// counters, the size of the entry's fixed part, and the address fields.
pub(crate) struct Layout {
    pub(crate) target_at: usize,
    pub(crate) next_at: usize,
    pub(crate) counters_at: usize,
    pub(crate) head: usize,
    /// Source, destination and their masks: offsets, and the address width.
    pub(crate) addrs: (usize, usize, usize, usize, usize),
    pub(crate) proto_at: usize,
    pub(crate) invflags_at: usize,
}

/// One entry: its offset and length in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) at: usize,
    pub(crate) len: usize,
}

/// The entries of `t`; None if they do not walk to its end.
pub(crate) fn entries(t: &XtTable) -> Option<Vec<Entry>> {
    let l = t.family.layout();
    let mut out = Vec::new();
    let mut at = 0;
    while at < t.entries.len() {
        let next = t.entries.get(at + l.next_at..at + l.next_at + 2)?;
        let len = u16::from_ne_bytes(next.try_into().ok()?) as usize;
        if len < l.head || at + len > t.entries.len() {
            return None;
        }
        out.push(Entry { at, len });
        at += len;
    }
    Some(out)
}

/// One table as the kernel handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtTable {
    pub family: XtFamily,
    pub name: String,
    pub valid_hooks: u32,
    pub hook_entry: [u32; HOOKS],
    pub underflow: [u32; HOOKS],
    pub num_entries: u32,
    /// The entries (`struct ipt_entry` or `ip6t_entry` with their matches and targets).
    pub entries: Vec<u8>,
}

/// NF_INET_NUMHOOKS.
pub const HOOKS: usize = 5;
const TABLE_NAME_LEN: usize = 32;
// Socket options: the same numbers for both families, at their own levels.
const SO_GET_INFO: libc::c_int = 64;
const SO_GET_ENTRIES: libc::c_int = 65;
const SO_SET_REPLACE: libc::c_int = 64;
const SO_SET_ADD_COUNTERS: libc::c_int = 65;
/// `struct ipt_getinfo` / `ip6t_getinfo`.
const GETINFO_LEN: usize = 84;
/// `struct ipt_get_entries` / `ip6t_get_entries` up to its entries.
const GET_ENTRIES_HEAD: usize = 40;
/// `struct ipt_replace` / `ip6t_replace` up to its entries; the counters pointer is at 88.
const REPLACE_HEAD: usize = 96;
/// A table bigger than this is refused, read or restored (the kernel's own limit is memory).
const MAX_TABLE: u32 = 64 << 20;

const IMAGE_MAGIC: &[u8; 8] = b"STXTBL01";

fn name_field(name: &str) -> Option<[u8; TABLE_NAME_LEN]> {
    let mut out = [0u8; TABLE_NAME_LEN];
    if name.is_empty() || name.len() >= TABLE_NAME_LEN || name.contains('\0') {
        return None;
    }
    out[..name.len()].copy_from_slice(name.as_bytes());
    Some(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The fields of a `getinfo` answer.
struct TableInfo {
    valid_hooks: u32,
    hook_entry: [u32; HOOKS],
    underflow: [u32; HOOKS],
    num_entries: u32,
    size: u32,
}

fn parse_getinfo(b: &[u8; GETINFO_LEN]) -> TableInfo {
    let hooks = |at: usize| std::array::from_fn(|i| u32_at(b, at + 4 * i));
    TableInfo {
        valid_hooks: u32_at(b, 32),
        hook_entry: hooks(36),
        underflow: hooks(56),
        num_entries: u32_at(b, 76),
        size: u32_at(b, 80),
    }
}

/// A `replace` request for `t` whose kernel table holds `old_entries` entries now, the old
/// counters to go to `counters` (the kernel writes them there).
fn replace_request(t: &XtTable, old_entries: u32, counters: u64) -> Option<Vec<u8>> {
    let mut b = Vec::with_capacity(REPLACE_HEAD + t.entries.len());
    b.extend_from_slice(&name_field(&t.name)?);
    b.extend_from_slice(&t.valid_hooks.to_ne_bytes());
    b.extend_from_slice(&t.num_entries.to_ne_bytes());
    b.extend_from_slice(&u32::try_from(t.entries.len()).ok()?.to_ne_bytes());
    for v in t.hook_entry.iter().chain(&t.underflow) {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(&old_entries.to_ne_bytes());
    b.extend_from_slice(&counters.to_ne_bytes());
    debug_assert_eq!(b.len(), REPLACE_HEAD);
    b.extend_from_slice(&t.entries);
    Some(b)
}

/// The counters (packets, bytes) of each entry of `t`, in order: None if the entries do not
/// walk to their end, or are not `num_entries`.
fn entry_counters(t: &XtTable) -> Option<Vec<[u8; 16]>> {
    let at = t.family.layout().counters_at;
    let out: Vec<[u8; 16]> = entries(t)?
        .iter()
        .map(|e| t.entries[e.at + at..e.at + at + 16].try_into().ok())
        .collect::<Option<_>>()?;
    (out.len() == t.num_entries as usize).then_some(out)
}

/// An `add counters` request (`struct xt_counters_info`) for table `name`.
fn add_counters_request(name: &str, counters: &[[u8; 16]]) -> Option<Vec<u8>> {
    let mut b = Vec::with_capacity(40 + 16 * counters.len());
    b.extend_from_slice(&name_field(name)?);
    b.extend_from_slice(&u32::try_from(counters.len()).ok()?.to_ne_bytes());
    b.extend_from_slice(&[0; 4]);
    for c in counters {
        b.extend_from_slice(c);
    }
    Some(b)
}

/// The image of `tables` (stasis's own file; see the module).
pub fn to_image(tables: &[XtTable]) -> Vec<u8> {
    let mut out = IMAGE_MAGIC.to_vec();
    for t in tables {
        out.push(t.family.code());
        out.push(t.name.len() as u8);
        out.extend_from_slice(t.name.as_bytes());
        out.extend_from_slice(&t.valid_hooks.to_le_bytes());
        for v in t.hook_entry.iter().chain(&t.underflow) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t.num_entries.to_le_bytes());
        out.extend_from_slice(&(t.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&t.entries);
    }
    out
}

/// The tables of an image made by [`to_image`]; a truncated or foreign one is an error.
pub fn from_image(b: &[u8]) -> Result<Vec<XtTable>, XtError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], XtError> {
        let (head, rest) = b
            .split_at_checked(n)
            .ok_or_else(|| XtError::Image("truncated table".into()))?;
        *b = rest;
        Ok(head)
    }
    let mut b = b
        .strip_prefix(IMAGE_MAGIC)
        .ok_or_else(|| XtError::Image("not a stasis iptables-legacy image".into()))?;
    let mut out = Vec::new();
    while !b.is_empty() {
        let head = take(&mut b, 2)?;
        let family = XtFamily::from_code(head[0])
            .ok_or_else(|| XtError::Image(format!("unknown family {}", head[0])))?;
        let name = String::from_utf8(take(&mut b, head[1] as usize)?.to_vec())
            .map_err(|_| XtError::Image("a table name that is not UTF-8".into()))?;
        if name_field(&name).is_none() {
            return Err(XtError::Image(format!("bad table name {name:?}")));
        }
        let mut u32s = [0u32; 2 + 2 * HOOKS + 1];
        for v in u32s.iter_mut() {
            *v = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4 bytes"));
        }
        let size = u32s[2 + 2 * HOOKS];
        if size > MAX_TABLE {
            return Err(XtError::Image(format!("table {name} claims {size} bytes")));
        }
        let entries = take(&mut b, size as usize)?.to_vec();
        out.push(XtTable {
            family,
            name,
            valid_hooks: u32s[0],
            hook_entry: std::array::from_fn(|i| u32s[1 + i]),
            underflow: std::array::from_fn(|i| u32s[1 + HOOKS + i]),
            num_entries: u32s[1 + 2 * HOOKS],
            entries,
        });
    }
    Ok(out)
}

/// A raw socket of `family` in the calling thread's network namespace.
fn raw_socket(family: XtFamily) -> io::Result<OwnedFd> {
    let (domain, _) = family.socket_args();
    // SAFETY: socket(2) takes no pointers; the fd it returns is ours alone.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// getsockopt of `opt` at `family`'s level into `buf` (whose first bytes are the request).
fn get(s: &OwnedFd, family: XtFamily, opt: libc::c_int, buf: &mut [u8]) -> io::Result<()> {
    let (_, level) = family.socket_args();
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `buf`, which is live and that long.
    let r =
        unsafe { libc::getsockopt(s.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The info of table `name`.
fn table_info(s: &OwnedFd, family: XtFamily, name: &str) -> io::Result<TableInfo> {
    let mut info = [0u8; GETINFO_LEN];
    info[..TABLE_NAME_LEN].copy_from_slice(
        &name_field(name).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?,
    );
    get(s, family, SO_GET_INFO, &mut info)?;
    Ok(parse_getinfo(&info))
}

/// The tables of the calling thread's namespace for `family`: none when it has none.
fn read_family(family: XtFamily, only: Option<&str>) -> Result<Vec<XtTable>, XtError> {
    let names = match std::fs::read_to_string(family.names_file()) {
        Ok(n) => n,
        // No x_tables of that family in the kernel: no tables.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(XtError::Io {
                what: "reading the namespace's table names",
                source,
            })
        }
    };
    let mut out = Vec::new();
    let mut sock = None;
    let wanted = |n: &&str| !n.is_empty() && only.is_none_or(|o| o == *n);
    for name in names.lines().map(str::trim).filter(wanted) {
        let err = |what, source| XtError::Table {
            family: family.name(),
            table: name.to_string(),
            what,
            source,
        };
        let s = match &sock {
            Some(s) => s,
            None => sock.insert(raw_socket(family).map_err(|e| err("socket", e))?),
        };
        let info = table_info(s, family, name).map_err(|e| err("reading its info", e))?;
        let size = info.size;
        if size > MAX_TABLE {
            return Err(err("too large", io::Error::from_raw_os_error(libc::EFBIG)));
        }
        let mut buf = vec![0u8; GET_ENTRIES_HEAD + size as usize];
        buf[..TABLE_NAME_LEN].copy_from_slice(&name_field(name).expect("checked by table_info"));
        buf[TABLE_NAME_LEN..TABLE_NAME_LEN + 4].copy_from_slice(&size.to_ne_bytes());
        // EAGAIN: the table changed between the two calls (its size no longer matches).
        get(s, family, SO_GET_ENTRIES, &mut buf).map_err(|e| err("reading its entries", e))?;
        out.push(XtTable {
            family,
            name: name.to_string(),
            valid_hooks: info.valid_hooks,
            hook_entry: info.hook_entry,
            underflow: info.underflow,
            num_entries: info.num_entries,
            entries: buf[GET_ENTRIES_HEAD..].to_vec(),
        });
    }
    Ok(out)
}

/// Every iptables-legacy and ip6tables-legacy table of network namespace `ns`.
pub fn dump(ns: BorrowedFd<'_>) -> Result<Vec<XtTable>, XtError> {
    in_ns(ns, || {
        let mut all = read_family(XtFamily::V4, None)?;
        all.extend(read_family(XtFamily::V6, None)?);
        Ok(all)
    })
}

/// Makes `tables` in network namespace `ns` (a new one: each table is replaced whole). The
/// kernel lists a namespace's tables newest first: they are made last to first, so that the
/// new namespace lists them in the same order.
pub fn restore(ns: BorrowedFd<'_>, tables: &[XtTable]) -> Result<(), XtError> {
    in_ns(ns, || tables.iter().rev().try_for_each(restore_table))
}

fn in_ns<T: Send>(
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, XtError> + Send,
) -> Result<T, XtError> {
    crate::in_netns(ns, || Ok(f())).map_err(|source| XtError::Io {
        what: "entering the network namespace",
        source,
    })?
}

fn restore_table(t: &XtTable) -> Result<(), XtError> {
    let err = |what, source| XtError::Table {
        family: t.family.name(),
        table: t.name.clone(),
        what,
        source,
    };
    let s = raw_socket(t.family).map_err(|e| err("socket", e))?;
    // Asking for its info makes the table in this namespace, with the kernel's defaults.
    let old_entries = table_info(&s, t.family, &t.name)
        .map_err(|e| err("making it", e))?
        .num_entries;
    let mut counters = vec![0u8; 16 * old_entries.max(1) as usize];
    let req = replace_request(t, old_entries, counters.as_mut_ptr() as u64)
        .ok_or_else(|| err("encoding it", io::Error::from_raw_os_error(libc::EINVAL)))?;
    // Checked before anything is replaced.
    let add = entry_counters(t)
        .and_then(|c| add_counters_request(&t.name, &c))
        .ok_or_else(|| {
            err(
                "walking its entries",
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
    // The kernel writes the old table's counters, `old_entries` of 16 bytes, into `counters`,
    // which is that long and outlives the call.
    set(&s, t.family, SO_SET_REPLACE, &req).map_err(|e| err("replacing it", e))?;
    drop(counters);
    set(&s, t.family, SO_SET_ADD_COUNTERS, &add).map_err(|e| err("setting its counters", e))
}

/// Table filter of both families in the calling thread's namespace, where it exists.
pub(crate) fn read_filter() -> Result<Vec<XtTable>, XtError> {
    let mut all = read_family(XtFamily::V4, Some("filter"))?;
    all.extend(read_family(XtFamily::V6, Some("filter"))?);
    Ok(all)
}

/// Replaces table `old` (as read, in the calling thread's namespace) with `new`, whose
/// entries are those of `old` at the indexes `kept`: each keeps the counters it had at the
/// replace (the kernel hands the old ones back), so the rest of a host's firewall loses none.
pub(crate) fn replace_keeping_counters(
    old: &XtTable,
    new: &XtTable,
    kept: &[usize],
) -> Result<(), XtError> {
    let err = |what, source| XtError::Table {
        family: old.family.name(),
        table: old.name.clone(),
        what,
        source,
    };
    let s = raw_socket(old.family).map_err(|e| err("socket", e))?;
    let mut counters = vec![0u8; 16 * old.num_entries.max(1) as usize];
    let req = replace_request(new, old.num_entries, counters.as_mut_ptr() as u64)
        .ok_or_else(|| err("encoding it", io::Error::from_raw_os_error(libc::EINVAL)))?;
    // EAGAIN if the table changed since it was read (its entry count differs): nothing done.
    // The kernel writes the replaced table's counters into `counters`, which is that long and
    // outlives the call.
    set(&s, old.family, SO_SET_REPLACE, &req).map_err(|e| err("replacing it", e))?;
    let back: Vec<[u8; 16]> = kept
        .iter()
        .filter_map(|i| counters.get(16 * i..16 * i + 16)?.try_into().ok())
        .collect();
    let add = add_counters_request(&new.name, &back).ok_or_else(|| {
        err(
            "encoding counters",
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    set(&s, old.family, SO_SET_ADD_COUNTERS, &add).map_err(|e| err("setting its counters", e))
}

/// setsockopt of `opt` at `family`'s level with `req`.
fn set(s: &OwnedFd, family: XtFamily, opt: libc::c_int, req: &[u8]) -> io::Result<()> {
    let (_, level) = family.socket_args();
    // SAFETY: setsockopt(2) reads `req`, live and of the length given. A replace request also
    // points at a counters buffer its caller keeps alive across this call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            req.as_ptr().cast(),
            req.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, family: XtFamily) -> XtTable {
        XtTable {
            family,
            name: name.into(),
            valid_hooks: 0b1110,
            hook_entry: [0, 0, 152, 304, 0],
            underflow: [0, 0, 152, 304, 0],
            num_entries: 4,
            entries: (0..=255u8).collect(),
        }
    }

    #[test]
    fn image_round_trip() {
        let tables = vec![table("filter", XtFamily::V4), table("nat", XtFamily::V6)];
        assert_eq!(from_image(&to_image(&tables)).unwrap(), tables);
        assert_eq!(from_image(&to_image(&[])).unwrap(), vec![]);
    }

    #[test]
    fn damaged_images_are_errors() {
        let img = to_image(&[table("filter", XtFamily::V4)]);
        for n in 0..img.len() {
            assert!(
                from_image(&img[..n]).is_err() || n == IMAGE_MAGIC.len(),
                "{n}"
            );
        }
        let mut foreign = img.clone();
        foreign[0] = b'X';
        assert!(from_image(&foreign).is_err());
        let mut family = img.clone();
        family[IMAGE_MAGIC.len()] = 5;
        assert!(from_image(&family).is_err());
        // A size claiming more than the limit is refused before anything is allocated.
        let mut huge = img;
        let at = IMAGE_MAGIC.len() + 2 + "filter".len() + 4 * (1 + 2 * HOOKS + 1);
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(from_image(&huge), Err(XtError::Image(m)) if m.contains("claims")));
    }

    #[test]
    fn replace_request_lays_out_ipt_replace() {
        let t = table("filter", XtFamily::V4);
        let r = replace_request(&t, 4, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(&r[..6], b"filter");
        assert_eq!(u32_at(&r, 32), 0b1110);
        assert_eq!(u32_at(&r, 36), 4);
        assert_eq!(u32_at(&r, 40), 256);
        assert_eq!(u32_at(&r, 44 + 8), 152);
        assert_eq!(u32_at(&r, 64 + 12), 304);
        assert_eq!(u32_at(&r, 84), 4);
        assert_eq!(&r[88..96], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&r[96..], &t.entries[..]);
        assert!(replace_request(
            &table("a-name-longer-than-31-bytes-xxxxx", XtFamily::V4),
            1,
            0
        )
        .is_none());
    }

    #[test]
    fn counters_are_found_entry_by_entry() {
        // Two v4 entries of 152 and 112 bytes, counters at 96 of each.
        let mut entries = vec![0u8; 264];
        entries[90..92].copy_from_slice(&152u16.to_ne_bytes());
        entries[96..112].copy_from_slice(&[1; 16]);
        entries[152 + 90..152 + 92].copy_from_slice(&112u16.to_ne_bytes());
        entries[152 + 96..152 + 112].copy_from_slice(&[2; 16]);
        let mut t = XtTable {
            num_entries: 2,
            entries,
            ..table("filter", XtFamily::V4)
        };
        assert_eq!(entry_counters(&t), Some(vec![[1; 16], [2; 16]]));
        let req = add_counters_request("filter", &[[1; 16], [2; 16]]).unwrap();
        assert_eq!(
            (req.len(), u32_at(&req, 32), req[40], req[56]),
            (72, 2, 1, 2)
        );
        t.num_entries = 3;
        assert_eq!(entry_counters(&t), None, "fewer entries than said");
        t.num_entries = 2;
        t.entries[152 + 90..152 + 92].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(entry_counters(&t), None, "an entry past the end");
        t.entries[152 + 90..152 + 92].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(entry_counters(&t), None, "an entry of no length");
    }

    #[test]
    fn getinfo_fields() {
        let mut b = [0u8; GETINFO_LEN];
        b[32..36].copy_from_slice(&14u32.to_ne_bytes());
        b[36 + 4..36 + 8].copy_from_slice(&7u32.to_ne_bytes());
        b[56 + 16..56 + 20].copy_from_slice(&9u32.to_ne_bytes());
        b[76..80].copy_from_slice(&3u32.to_ne_bytes());
        b[80..84].copy_from_slice(&500u32.to_ne_bytes());
        let i = parse_getinfo(&b);
        assert_eq!(
            (
                i.valid_hooks,
                i.hook_entry[1],
                i.underflow[4],
                i.num_entries,
                i.size
            ),
            (14, 7, 9, 3, 500)
        );
    }
}
