//! x86_64 register state: conversion between the kernel's XSAVE area (what ptrace's
//! NT_X86_XSTATE regset carries) and CRIU's `user_x86_fpregs_entry`, and between
//! `user_regs_struct` and `user_x86_regs_entry`.

use crate::images::pb;
use crate::sys::ptrace::Regs;

/// Offset and size of an XSAVE component in the standard (non-compacted) format.
fn xsave_component(index: u32) -> (usize, usize) {
    // SAFETY: CPUID is available on every x86_64 CPU; leaf 0xD reports XSAVE layout.
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid_count(0xd, index) };
    (r.ebx as usize, r.eax as usize)
}

fn words32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}
fn words64(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}
fn put32(dst: &mut [u8], words: &[u32]) {
    for (c, w) in dst.chunks_exact_mut(4).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
}
fn put64(dst: &mut [u8], words: &[u64]) {
    for (c, w) in dst.chunks_exact_mut(8).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
}
fn u16_at(b: &[u8], o: usize) -> u32 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u32
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

const YMM: u32 = 2;
const BNDREGS: u32 = 3;
const BNDCSR: u32 = 4;
const OPMASK: u32 = 5;
const ZMM_HI256: u32 = 6;
const HI16_ZMM: u32 = 7;
const PKRU: u32 = 9;

fn component(xs: &[u8], index: u32) -> Option<&[u8]> {
    let (off, size) = xsave_component(index);
    (size > 0 && off + size <= xs.len()).then(|| &xs[off..off + size])
}

/// Splits an XSAVE area into CRIU's fpregs message.
pub fn fpregs_from_xstate(xs: &[u8]) -> pb::UserX86FpregsEntry {
    let mut xs = xs.to_vec();
    xs.resize(xs.len().max(576), 0);
    let xsave = pb::UserX86XsaveEntry {
        xstate_bv: u64_at(&xs, 512),
        ymmh_space: component(&xs, YMM).map(words32).unwrap_or_default(),
        bndreg_state: component(&xs, BNDREGS).map(words64).unwrap_or_default(),
        bndcsr_state: component(&xs, BNDCSR).map(words64).unwrap_or_default(),
        opmask_reg: component(&xs, OPMASK).map(words64).unwrap_or_default(),
        zmm_upper: component(&xs, ZMM_HI256).map(words64).unwrap_or_default(),
        hi16_zmm: component(&xs, HI16_ZMM).map(words64).unwrap_or_default(),
        pkru: component(&xs, PKRU)
            .map(|b| words32(&b[..4]))
            .unwrap_or_default(),
        cet: None,
    };
    pb::UserX86FpregsEntry {
        cwd: u16_at(&xs, 0),
        swd: u16_at(&xs, 2),
        twd: u16_at(&xs, 4),
        fop: u16_at(&xs, 6),
        rip: u64_at(&xs, 8),
        rdp: u64_at(&xs, 16),
        mxcsr: u32_at(&xs, 24),
        mxcsr_mask: u32_at(&xs, 28),
        st_space: words32(&xs[32..160]),
        xmm_space: words32(&xs[160..416]),
        padding: words32(&xs[416..512]),
        xsave: Some(xsave),
    }
}

/// Writes CRIU's fpregs message into `template`, an XSAVE area of the restoring thread (so its
/// size and software-reserved bytes are the running kernel's).
pub fn xstate_from_fpregs(fp: &pb::UserX86FpregsEntry, template: &[u8]) -> Vec<u8> {
    let mut xs = template.to_vec();
    xs.resize(xs.len().max(576), 0);
    xs[0..2].copy_from_slice(&(fp.cwd as u16).to_le_bytes());
    xs[2..4].copy_from_slice(&(fp.swd as u16).to_le_bytes());
    xs[4..6].copy_from_slice(&(fp.twd as u16).to_le_bytes());
    xs[6..8].copy_from_slice(&(fp.fop as u16).to_le_bytes());
    xs[8..16].copy_from_slice(&fp.rip.to_le_bytes());
    xs[16..24].copy_from_slice(&fp.rdp.to_le_bytes());
    xs[24..28].copy_from_slice(&fp.mxcsr.to_le_bytes());
    xs[28..32].copy_from_slice(&fp.mxcsr_mask.to_le_bytes());
    put32(&mut xs[32..160], &fp.st_space);
    put32(&mut xs[160..416], &fp.xmm_space);
    // Bytes 416..512 keep the template's software-reserved area (the kernel validates it).
    if let Some(x) = &fp.xsave {
        // Only components this CPU has can be restored; the header says which are valid.
        let mut bv = x.xstate_bv & 0b11;
        let mut fill64 = |idx: u32, bit: u64, words: &[u64], xs: &mut Vec<u8>| {
            let (off, size) = xsave_component(idx);
            if !words.is_empty() && size > 0 && off + size <= xs.len() {
                put64(&mut xs[off..off + size], words);
                bv |= x.xstate_bv & bit;
            }
        };
        fill64(BNDREGS, 1 << 3, &x.bndreg_state, &mut xs);
        fill64(BNDCSR, 1 << 4, &x.bndcsr_state, &mut xs);
        fill64(OPMASK, 1 << 5, &x.opmask_reg, &mut xs);
        fill64(ZMM_HI256, 1 << 6, &x.zmm_upper, &mut xs);
        fill64(HI16_ZMM, 1 << 7, &x.hi16_zmm, &mut xs);
        let (off, size) = xsave_component(YMM);
        if !x.ymmh_space.is_empty() && size > 0 && off + size <= xs.len() {
            put32(&mut xs[off..off + size], &x.ymmh_space);
            bv |= x.xstate_bv & (1 << 2);
        }
        let (off, size) = xsave_component(PKRU);
        if !x.pkru.is_empty() && size > 0 && off + size <= xs.len() {
            put32(&mut xs[off..off + 4], &x.pkru[..1]);
            bv |= x.xstate_bv & (1 << 9);
        }
        xs[512..520].copy_from_slice(&bv.to_le_bytes());
        xs[520..528].copy_from_slice(&0u64.to_le_bytes()); // xcomp_bv: standard format
    }
    xs
}

/// The XSAVE components this CPU's kernel has enabled (XCR0).
pub fn host_xfeatures() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0b11;
    }
    // SAFETY: XGETBV(0) is valid once CPUID reports XSAVE (checked above); the kernel sets
    // CR4.OSXSAVE whenever XSAVE is in use, which is what `is_x86_feature_detected` also checks.
    unsafe { xgetbv0() }
}

#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

/// The XSAVE components an image's register state needs here: those in use (its header's
/// xstate_bv), and the vector ones it carries at all (the CPU it was dumped on had AVX or
/// AVX-512, so its programs may have picked code for them). PKRU counts only when protection
/// keys were used (a value other than the kernel's default).
pub fn image_xfeatures(fp: &pb::UserX86FpregsEntry) -> u64 {
    let Some(x) = &fp.xsave else {
        return 0b11;
    };
    let mut f = (x.xstate_bv & !(1 << PKRU)) | 0b11;
    let mut has = |bit: u32, present: bool| {
        if present {
            f |= 1 << bit;
        }
    };
    has(YMM, !x.ymmh_space.is_empty());
    has(OPMASK, !x.opmask_reg.is_empty());
    has(ZMM_HI256, !x.zmm_upper.is_empty());
    has(HI16_ZMM, !x.hi16_zmm.is_empty());
    has(
        PKRU,
        x.pkru.first().is_some_and(|&v| v != 0 && v != 0x5555_5554),
    );
    f
}

/// Names of the XSAVE components in `bits`, for an error a user reads.
pub fn xfeature_names(bits: u64) -> String {
    const NAMES: [(u32, &str); 8] = [
        (0, "x87"),
        (1, "SSE"),
        (YMM, "AVX"),
        (BNDREGS, "MPX bounds"),
        (BNDCSR, "MPX CSR"),
        (OPMASK, "AVX-512 opmask"),
        (ZMM_HI256, "AVX-512 ZMM_Hi256"),
        (HI16_ZMM, "AVX-512 Hi16_ZMM"),
    ];
    let mut out: Vec<String> = Vec::new();
    for bit in 0..64u32 {
        if bits & (1 << bit) == 0 {
            continue;
        }
        match NAMES.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => out.push((*n).to_string()),
            None if bit == PKRU => out.push("PKRU".into()),
            None => out.push(format!("component {bit}")),
        }
    }
    out.join(", ")
}

pub fn regs_to_pb(r: &Regs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

/// Registers from the image, laid over `base` (the restoring thread's own, for fields the image
/// does not carry).
pub fn regs_from_pb(g: &pb::UserX86RegsEntry, base: &Regs) -> Regs {
    let mut r = *base;
    r.r15 = g.r15;
    r.r14 = g.r14;
    r.r13 = g.r13;
    r.r12 = g.r12;
    r.rbp = g.bp;
    r.rbx = g.bx;
    r.r11 = g.r11;
    r.r10 = g.r10;
    r.r9 = g.r9;
    r.r8 = g.r8;
    r.rax = g.ax;
    r.rcx = g.cx;
    r.rdx = g.dx;
    r.rsi = g.si;
    r.rdi = g.di;
    r.orig_rax = g.orig_ax;
    r.rip = g.ip;
    r.cs = g.cs;
    r.eflags = g.flags;
    r.rsp = g.sp;
    r.ss = g.ss;
    r.fs_base = g.fs_base;
    r.gs_base = g.gs_base;
    r.ds = g.ds;
    r.es = g.es;
    r.fs = g.fs;
    r.gs = g.gs;
    r
}

/// Kernel return codes that mean "interrupted, restart the syscall".
const ERESTARTSYS: i64 = -512;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// The registers as the image holds them: rewound as by [`rewind_interrupted_syscall`], as
/// CRIU writes them (CRIU's restorer expects a syscall interrupted at dump to be rewound
/// already; without it a program sees ERESTARTNOHAND, errno 514). The live thread keeps its own.
pub fn rewound(r: &Regs) -> Regs {
    let mut r = *r;
    rewind_interrupted_syscall(&mut r);
    r
}

/// A thread dumped inside a syscall is rewound so the call runs again after restore, instead of
/// leaving the kernel to interpret restart codes against a restart block that no longer exists.
pub fn rewind_interrupted_syscall(r: &mut Regs) {
    let ax = r.rax as i64;
    if (r.orig_rax as i64) >= 0 && (ERESTART_RESTARTBLOCK..=ERESTARTSYS).contains(&ax) {
        // Also for ERESTART_RESTARTBLOCK: restart_syscall(2) would need the kernel's restart
        // block, which did not survive, so the original call runs again.
        r.rax = r.orig_rax;
        r.rip -= 2;
    }
    r.orig_rax = u64::MAX;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xstate_roundtrip() {
        let (off, size) = xsave_component(YMM);
        let len = (off + size).max(2688);
        let mut xs: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // A clean header: xcomp_bv 0, reserved 0.
        xs[512..520].copy_from_slice(&0b111u64.to_le_bytes());
        for b in &mut xs[520..576] {
            *b = 0;
        }
        let fp = fpregs_from_xstate(&xs);
        let back = xstate_from_fpregs(&fp, &xs);
        assert_eq!(&back[..416], &xs[..416]);
        assert_eq!(&back[512..520], &xs[512..520]);
        if size > 0 {
            assert_eq!(&back[off..off + size], &xs[off..off + size]);
        }
    }

    #[test]
    fn image_features_count_data_as_well_as_the_header() {
        let mut fp = pb::UserX86FpregsEntry::default();
        assert_eq!(image_xfeatures(&fp), 0b11);
        fp.xsave = Some(pb::UserX86XsaveEntry {
            xstate_bv: 0b10,
            hi16_zmm: vec![0; 128],
            ..Default::default()
        });
        assert_eq!(image_xfeatures(&fp), 0b11 | 1 << HI16_ZMM);
        assert_eq!(
            xfeature_names(1 << OPMASK | 1 << HI16_ZMM),
            "AVX-512 opmask, AVX-512 Hi16_ZMM"
        );
        assert_eq!(xfeature_names(1 << 11), "component 11");
    }

    #[test]
    fn rewinds_restartable_syscalls() {
        // SAFETY: user_regs_struct is plain old data; zeroed is a valid value.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = 0; // read
        r.rax = (-512i64) as u64;
        r.rip = 0x1002;
        rewind_interrupted_syscall(&mut r);
        assert_eq!((r.rax, r.rip, r.orig_rax), (0, 0x1000, u64::MAX));
        r.orig_rax = 230;
        r.rax = (-516i64) as u64;
        r.rip = 0x2002;
        rewind_interrupted_syscall(&mut r);
        assert_eq!((r.rax, r.rip), (230, 0x2000));
        r.orig_rax = 1;
        r.rax = 5;
        r.rip = 0x3000;
        rewind_interrupted_syscall(&mut r);
        assert_eq!((r.rax, r.rip), (5, 0x3000));
    }
}
