//! The safety net under a kill-safe injected syscall (pure code: gadget search and frame
//! layout; the dump's freeze module puts them to use).
//!
//! A thread runs an injected syscall with its registers pointed at a `syscall` instruction of
//! the vdso that is followed only by register clearing and `ret`, and its stack pointer at a
//! signal frame we wrote (`struct rt_sigframe`), whose first word is the address of
//! `mov $15, %rax; syscall` (rt_sigreturn) in the task's own code. While the tracer lives, the
//! thread stops at the syscall's exit and gets its registers back from us. Should the tracer
//! die at any moment of the syscall, the kernel lets the thread go: it finishes the syscall,
//! returns into rt_sigreturn, and the kernel loads the frame: its own registers (rewound into
//! any syscall it was interrupted in), its FPU/vector state and its signal mask. Nothing of
//! the injection is left in the thread.
//!
//! The frame's alternate-stack field holds an invalid `ss_flags`: rt_sigreturn ignores every
//! error of that step but a fault, so the thread's own alternate stack (which we may not have
//! read yet) is left as it is.

use crate::sys::ptrace::Regs;

/// `mov $15, %rax; syscall` (glibc's and musl's `__restore_rt`, Go's `sigreturn__sigaction`).
const SIGRETURN_MOVQ: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
/// `mov $15, %eax; syscall`.
const SIGRETURN_MOVL: [u8; 7] = [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Where `mov $15, %rax; syscall` (or its `%eax` form) starts in `bytes`.
pub fn find_sigreturn(bytes: &[u8]) -> Option<usize> {
    memchr::memmem::find(bytes, &SIGRETURN_MOVQ)
        .or_else(|| memchr::memmem::find(bytes, &SIGRETURN_MOVL))
}

/// Whether `bytes` start with one of the sigreturn sequences.
pub fn is_sigreturn(bytes: &[u8]) -> bool {
    bytes.starts_with(&SIGRETURN_MOVQ) || bytes.starts_with(&SIGRETURN_MOVL)
}

/// A `syscall` instruction (`0f 05`) followed only by register-to-register `xor`s and `ret`:
/// after the syscall the thread reaches `ret` with its stack pointer untouched. The address of
/// the `syscall`.
pub fn find_syscall_ret(bytes: &[u8], base: u64) -> Option<u64> {
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == 0x0f && bytes[i + 1] == 0x05 && ends_in_ret(&bytes[i + 2..]) {
            return Some(base + i as u64);
        }
        i += 1;
    }
    None
}

/// Register-clearing `xor`s (32- or 64-bit, any registers) up to a `ret`.
fn ends_in_ret(mut code: &[u8]) -> bool {
    for _ in 0..16 {
        match code {
            [0xc3, ..] => return true,
            // xor r32, r32 (ModRM mod 11).
            [0x31 | 0x33, m, ..] if m >> 6 == 3 => code = &code[2..],
            // With a REX prefix (0x40-0x4f): 64-bit or extended registers.
            [0x40..=0x4f, 0x31 | 0x33, m, ..] if m >> 6 == 3 => code = &code[3..],
            _ => return false,
        }
    }
    false
}

/// Layout of `struct rt_sigframe` on x86_64: pretcode, then `struct ucontext` (flags, link,
/// stack_t, sigcontext, sigmask), then `struct siginfo`; the FPU state follows, 64-byte aligned.
const UC: usize = 8;
const UC_STACK: usize = UC + 16;
const MCONTEXT: usize = UC_STACK + 24;
const SIGMASK: usize = MCONTEXT + 256;
const FPSTATE: usize = 448;

const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
/// An `ss_flags` that is neither 0, SS_ONSTACK nor SS_DISABLE: the kernel refuses it, and
/// rt_sigreturn then keeps the thread's alternate stack.
const SS_FLAGS_INVALID: u32 = 4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;

/// Bytes a frame takes for an XSAVE area of `xstate_len` bytes (a multiple of 64).
pub fn frame_len(xstate_len: usize) -> usize {
    (FPSTATE + xstate_len + 4).next_multiple_of(64)
}

/// Why a frame cannot be built from what ptrace gave.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The XSAVE area is shorter than its legacy part and header.
    NoXstateInfo,
    /// Frames must be 64-byte aligned (XRSTOR reads the FPU state in place).
    Misaligned,
}

/// The frame to write at `at` (64-byte aligned): `regs`, `mask` and `xstate` (as ptrace's
/// NT_X86_XSTATE gives it: standard format, XCR0 in the first software-reserved word) come
/// back through rt_sigreturn,
/// reached by returning to `sigreturn_at`. `regs` should already be rewound into any syscall
/// they were interrupted in: rt_sigreturn does no restart.
pub fn build_frame(
    at: u64,
    regs: &Regs,
    mask: u64,
    xstate: &[u8],
    sigreturn_at: u64,
) -> Result<Vec<u8>, FrameError> {
    if !at.is_multiple_of(64) {
        return Err(FrameError::Misaligned);
    }
    let size = xstate.len();
    if size < 576 {
        return Err(FrameError::NoXstateInfo);
    }
    let xcr0 = u64::from_le_bytes(xstate[464..472].try_into().expect("8 bytes"));
    let mut f = vec![0u8; frame_len(size)];
    let mut put = |o: usize, v: u64| f[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put(0, sigreturn_at);
    put(UC, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    // uc_stack: ss_sp, ss_flags, ss_size.
    put(UC_STACK + 8, SS_FLAGS_INVALID as u64);
    let r = regs;
    let gp = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put(MCONTEXT + i * 8, *v);
    }
    // cs, gs, fs, ss: four u16 in one word.
    let sel =
        (r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48;
    put(MCONTEXT + 18 * 8, sel);
    // err, trapno, oldmask, cr2: 0; then the FPU state's address.
    put(MCONTEXT + 23 * 8, at + FPSTATE as u64);
    put(SIGMASK, mask);
    f[FPSTATE..FPSTATE + size].copy_from_slice(xstate);
    // struct _fpx_sw_bytes, which tells rt_sigreturn the area is a whole XSAVE image: magic1,
    // extended_size, xfeatures, xstate_size, then padding (ptrace's XCR0 word replaced).
    let sw = FPSTATE + 464;
    f[sw..sw + 48].fill(0);
    f[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    f[sw + 4..sw + 8].copy_from_slice(&(size as u32 + 4).to_le_bytes());
    f[sw + 8..sw + 16].copy_from_slice(&(xcr0 | 0b11).to_le_bytes());
    f[sw + 16..sw + 20].copy_from_slice(&(size as u32).to_le_bytes());
    f[FPSTATE + size..FPSTATE + size + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    Ok(f)
}

/// Where a frame of `len` bytes goes on a stack whose pointer is `rsp`: below the 128-byte red
/// zone, 64-byte aligned, as the kernel places a signal frame. None if it would leave
/// `[lowest, rsp)`, the part of the stack that is mapped.
pub fn frame_on_stack(rsp: u64, len: usize, lowest: u64) -> Option<u64> {
    let at = rsp.checked_sub(128 + len as u64)? & !63;
    (at >= lowest).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XSAVE area as ptrace gives it: XCR0 in the first software-reserved word.
    fn xstate(size: u32) -> Vec<u8> {
        let mut x: Vec<u8> = (0..size as usize).map(|i| i as u8).collect();
        x[464..512].fill(0);
        x[464..472].copy_from_slice(&7u64.to_le_bytes());
        x
    }

    #[test]
    fn finds_the_vdso_return_gadget() {
        // syscall; xor %edx,%edx; xor %ecx,%ecx; xor %esi,%esi; xor %edi,%edi; xor %r11d,%r11d; ret
        let code = [
            0x90, 0x0f, 0x05, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, 0x45, 0x31, 0xdb,
            0xc3,
        ];
        assert_eq!(find_syscall_ret(&code, 0x1000), Some(0x1001));
        // syscall; leave; ret moves the stack pointer: not taken.
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0xc9, 0xc3], 0), None);
        // syscall; cmp ...: not taken, the next one is.
        let code = [0x0f, 0x05, 0x48, 0x83, 0xf8, 0x20, 0x0f, 0x05, 0xc3];
        assert_eq!(find_syscall_ret(&code, 0), Some(6));
        // A memory operand (ModRM mod 00) is not a register clear.
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0x31, 0x10, 0xc3], 0), None);
    }

    #[test]
    fn finds_sigreturn_code() {
        let code = [0x90, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
        assert_eq!(find_sigreturn(&code), Some(1));
        assert!(is_sigreturn(&code[1..]));
        assert_eq!(find_sigreturn(&[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05]), Some(0));
        assert_eq!(find_sigreturn(&[0xb8, 0x0e, 0, 0, 0, 0x0f, 0x05]), None);
    }

    #[test]
    fn frame_layout_is_the_kernels() {
        // SAFETY: user_regs_struct is plain old data; zeroed is a valid value.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.rip = 0x401000;
        r.rsp = 0x7ffd_0000;
        r.rax = 7;
        r.r8 = 8;
        r.eflags = 0x246;
        r.cs = 0x33;
        r.ss = 0x2b;
        let xs = xstate(832);
        let f = build_frame(0x10000, &r, 0x4000, &xs, 0x7f00_1234).expect("frame");
        let word = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        assert_eq!(f.len(), frame_len(832));
        assert_eq!(f.len() % 64, 0);
        assert_eq!(word(0), 0x7f00_1234, "pretcode");
        assert_eq!(word(8), 7, "uc_flags");
        assert_eq!(word(32), 4, "uc_stack.ss_flags");
        assert_eq!(word(48), 8, "r8 opens the sigcontext");
        assert_eq!(word(48 + 13 * 8), 7, "rax");
        assert_eq!(word(48 + 15 * 8), 0x7ffd_0000, "rsp");
        assert_eq!(word(48 + 16 * 8), 0x401000, "rip");
        assert_eq!(word(48 + 17 * 8), 0x246, "eflags");
        assert_eq!(word(48 + 18 * 8), 0x33 | 0x2b << 48, "cs and ss");
        assert_eq!(word(48 + 23 * 8), 0x10000 + 448, "fpstate");
        assert_eq!(word(304), 0x4000, "uc_sigmask");
        assert_eq!(&f[448..448 + 464], &xs[..464]);
        assert_eq!(&f[448 + 512..448 + 832], &xs[512..832]);
        let sw = |o: usize| u32::from_le_bytes(f[448 + 464 + o..448 + 468 + o].try_into().unwrap());
        assert_eq!(sw(0), FP_XSTATE_MAGIC1);
        assert_eq!(sw(4), 836, "extended size");
        assert_eq!(sw(8), 7, "xfeatures");
        assert_eq!(sw(16), 832, "xstate size");
        assert_eq!(
            u32::from_le_bytes(f[448 + 832..448 + 836].try_into().unwrap()),
            FP_XSTATE_MAGIC2
        );
    }

    #[test]
    fn frames_need_the_xstate_sizes_and_alignment() {
        // SAFETY: as above.
        let r: Regs = unsafe { std::mem::zeroed() };
        assert_eq!(
            build_frame(0x10008, &r, 0, &xstate(832), 0),
            Err(FrameError::Misaligned)
        );
        assert_eq!(
            build_frame(0x10000, &r, 0, &xstate(832)[..512], 0),
            Err(FrameError::NoXstateInfo)
        );
    }

    #[test]
    fn stack_frames_stay_in_the_mapped_stack() {
        assert_eq!(frame_on_stack(0x10000, 1344, 0x8000), Some(0xfa40));
        assert_eq!(frame_on_stack(0x10000, 1344, 0xfb00), None);
        assert_eq!(frame_on_stack(100, 1344, 0), None);
    }
}
