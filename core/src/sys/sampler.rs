//! A CPU-time sampling profiler: `setitimer(ITIMER_PROF)` raises `SIGPROF` about 99 times per
//! second of CPU time the process uses, in whichever thread is running, and the handler records
//! that thread's stack in a fixed table, counting identical stacks once.
//!
//! Why not the `pprof` crate: it keeps its state behind a spin lock a forked child can inherit
//! held (by a thread it does not have), holds a temporary file open for the life of the process,
//! and leaves `SIGPROF` ignored after it stops, which every child executed later inherits. This
//! sampler is atomics only, belongs to one pid (a forked child starts its own, and never touches
//! its parent's), and keeps its handler installed once started (a late `SIGPROF` is harmless).
//!
//! What the handler does is async-signal-safe but for one call: the stack is walked with
//! `backtrace::trace_unsynchronized`, libgcc's unwinder, as `pprof` does. With glibc 2.35 and
//! libgcc 12 or later it finds unwind tables with `_dl_find_object`, which takes no lock. The
//! unwinder is not re-entrant, though: a sample that interrupts it (a thread unwinding a panic,
//! or capturing a backtrace) would walk from inside its half-built state and crash. Such
//! samples are skipped: the handler checks the interrupted instruction against the code of
//! `libgcc_s` first (`pprof`'s "blocklist" does the same).
//! Symbols are resolved later, outside the handler, by [`crate::profiling`].

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Most frames kept per sample, from the innermost; deeper stacks are cut (and marked so).
pub const MAX_DEPTH: usize = 48;
/// Frames the handler itself adds below the interrupted one (its own, the unwinder's and the
/// signal trampoline), walked past and dropped.
const HANDLER_FRAMES: usize = 24;
/// Distinct (thread, stack) pairs one process keeps; samples of further ones are counted as
/// dropped.
const SLOTS: usize = 8192;
/// Probes per sample in the open-addressing table before it counts as full.
const PROBES: usize = 64;
/// The sampling period: about 99 Hz of CPU time (off the beat of periodic work at 100 Hz).
const PERIOD_US: i64 = 10_101;

/// One distinct stack of one thread, and how many samples found it.
struct Slot {
    /// Hash of the thread name and frames; 0 while free.
    key: AtomicU64,
    /// Set once `data` is written (after which it never changes).
    ready: AtomicBool,
    count: AtomicU64,
    data: UnsafeCell<SlotData>,
}

struct SlotData {
    thread: [u8; 16],
    depth: usize,
    truncated: bool,
    ips: [usize; MAX_DEPTH],
}

/// SAFETY: `data` is written only by the one handler that claimed the slot (its `key` went
/// from 0 to its hash by compare-and-swap), before `ready` is set with release ordering; it is
/// read only after `ready` is seen set with acquire ordering.
unsafe impl Sync for Slot {}

/// The table of the process that started sampling ([`start`]), and that process's pid: a
/// forked child sees a pid that is not its own and leaves the table alone.
static TABLE: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static OWNER: AtomicU32 = AtomicU32::new(0);
/// Samples lost because the table was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether this process installed the handler (any pid: a forked child inherits it).
static HANDLER: AtomicBool = AtomicBool::new(false);
/// Where `libgcc_s`'s code is, as `[start, end)` pairs (0, 0 unused): samples interrupting it
/// are skipped. Found once, when sampling first starts (it is loaded with the program).
static UNWINDER_CODE: [(AtomicUsize, AtomicUsize); 4] = [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 4];
/// Samples skipped because they interrupted the unwinder.
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// A sample's stack, symbolised later: the thread's name, instruction pointers from the
/// innermost frame out, and whether frames beyond [`MAX_DEPTH`] were cut.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The thread's name (`main` for the process's first thread).
    pub thread: String,
    /// Return addresses, innermost first; the first is the interrupted instruction itself.
    pub ips: Vec<usize>,
    /// Whether the stack was deeper than [`MAX_DEPTH`].
    pub truncated: bool,
    /// Samples that found this stack.
    pub count: u64,
}

/// Start sampling this process. Returns `false` if it already is.
///
/// # Errors
/// If the handler or the timer cannot be installed.
pub fn start() -> io::Result<bool> {
    let pid = std::process::id();
    if OWNER.load(Ordering::Acquire) == pid {
        return Ok(false);
    }
    // Zeroed pages stay untouched (and unbacked) until a stack lands in them.
    let layout = std::alloc::Layout::array::<Slot>(SLOTS).expect("a fixed size");
    // SAFETY: the layout is not zero-sized; all-zero bytes are a valid free `Slot` (atomics and
    // plain integers).
    let table = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Slot>();
    if table.is_null() {
        return Err(io::ErrorKind::OutOfMemory.into());
    }
    // A previous table (this process's, stopped; or its parent's, before a fork) is left as it
    // is: a handler may still be reading it.
    TABLE.store(table, Ordering::Release);
    DROPPED.store(0, Ordering::Relaxed);
    OWNER.store(pid, Ordering::Release);
    prepare();
    if !HANDLER.swap(true, Ordering::AcqRel) {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::SigAction(on_sigprof),
            nix::sys::signal::SaFlags::SA_SIGINFO | nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only reads atomics, walks the stack and writes a slot it claimed.
        if let Err(e) = unsafe { nix::sys::signal::sigaction(nix::sys::signal::SIGPROF, &action) } {
            HANDLER.store(false, Ordering::Release);
            OWNER.store(0, Ordering::Release);
            return Err(e.into());
        }
    }
    set_timer(PERIOD_US).inspect_err(|_| OWNER.store(0, Ordering::Release))?;
    Ok(true)
}

/// Whether this process is sampling.
pub fn running() -> bool {
    OWNER.load(Ordering::Acquire) == std::process::id()
}

/// How many samples this process has recorded so far in threads of the calling thread's name
/// (0 when it is not sampling). What a test that needs a thread sampled waits for: on a loaded
/// machine the timer fires less often than its CPU time says (the kernel checks it at ticks
/// that find the thread running, and one signal stands for every period that elapsed since).
pub fn samples_of_this_thread() -> u64 {
    let table = TABLE.load(Ordering::Acquire);
    if !running() || table.is_null() {
        return 0;
    }
    let mut thread = [0u8; 16];
    thread_name(&mut thread);
    // SAFETY: `start` stored a table of `SLOTS` slots, never freed.
    let slots = unsafe { std::slice::from_raw_parts(table, SLOTS) };
    slots
        .iter()
        .filter(|s| s.ready.load(Ordering::Acquire))
        // SAFETY: `ready` was set after the data was written, and it no longer changes.
        .filter(|s| unsafe { &*s.data.get() }.thread == thread)
        .map(|s| s.count.load(Ordering::Relaxed))
        .sum()
}

/// Stop sampling and return every distinct stack this process recorded, and how many samples
/// were dropped because the table was full. `None` if it was not sampling.
pub fn stop() -> Option<(Vec<Sample>, u64)> {
    let pid = std::process::id();
    if OWNER.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return None;
    }
    let _ = set_timer(0);
    let table = TABLE.load(Ordering::Acquire);
    // SAFETY: `start` stored a table of `SLOTS` slots, never freed.
    let slots = unsafe { std::slice::from_raw_parts(table, SLOTS) };
    let samples = slots
        .iter()
        .filter(|s| s.ready.load(Ordering::Acquire))
        .map(|s| {
            // SAFETY: `ready` was set after the data was written, and it no longer changes.
            let data = unsafe { &*s.data.get() };
            let len = data.thread.iter().position(|&b| b == 0).unwrap_or(data.thread.len());
            Sample {
                thread: String::from_utf8_lossy(&data.thread[..len]).into_owned(),
                ips: data.ips[..data.depth].to_vec(),
                truncated: data.truncated,
                count: s.count.load(Ordering::Relaxed),
            }
        })
        .collect();
    Some((samples, DROPPED.load(Ordering::Relaxed)))
}

/// Whether [`UNWINDER_CODE`] was filled in (by this process or the one it was forked from).
static PREPARED: AtomicBool = AtomicBool::new(false);

/// Find what the handler needs to know before it may run: where the unwinder's code is. Done
/// once per process tree; call it before `fork(2)` when the child will sample, because
/// `dl_iterate_phdr(3)` takes the loader's lock, which a forked child may inherit held.
pub fn prepare() {
    if !PREPARED.swap(true, Ordering::AcqRel) {
        find_unwinder_code();
    }
}

/// Record where `libgcc_s`'s executable segments are mapped, in [`UNWINDER_CODE`].
fn find_unwinder_code() {
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _: libc::size_t, found: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid entry, and `found` is the counter given below.
        let (info, found) = unsafe { (&*info, &mut *found.cast::<usize>()) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a non-null name is a NUL-terminated path.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
        if !name.windows(8).any(|w| w == b"libgcc_s") {
            return 0;
        }
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: the entry has `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 && *found < UNWINDER_CODE.len() {
                let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                UNWINDER_CODE[*found].0.store(start, Ordering::Relaxed);
                UNWINDER_CODE[*found].1.store(start + ph.p_memsz as usize, Ordering::Release);
                *found += 1;
            }
        }
        0
    }
    let mut found = 0usize;
    // SAFETY: the callback only reads the entries it is given and writes the counter.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut found as *mut usize).cast()) };
}

/// Whether `pc` is in `libgcc_s`'s code.
fn in_unwinder(pc: usize) -> bool {
    UNWINDER_CODE.iter().any(|(start, end)| {
        let end = end.load(Ordering::Acquire);
        end != 0 && (start.load(Ordering::Relaxed)..end).contains(&pc)
    })
}

/// Samples skipped because they interrupted the stack unwinder (a panic unwinding, a backtrace
/// being taken).
pub fn skipped() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

fn set_timer(period_us: i64) -> io::Result<()> {
    let interval = libc::timeval { tv_sec: 0, tv_usec: period_us as _ };
    let timer = libc::itimerval { it_interval: interval, it_value: interval };
    // SAFETY: setitimer(2) reads `timer`; the old value is not asked for. (libc: nix has no
    // setitimer.)
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The interrupted instruction, from the signal's saved context (0 where unknown).
fn interrupted_pc(ucontext: *mut libc::c_void) -> usize {
    if ucontext.is_null() {
        return 0;
    }
    let uc = ucontext.cast::<libc::ucontext_t>();
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    return unsafe { (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as usize };
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    // SAFETY: as above.
    return unsafe { (*uc).uc_mcontext.pc as usize };
    #[allow(unreachable_code)]
    {
        let _ = uc;
        0
    }
}

/// The calling thread's name into `out`: `main` for the process's first thread (whose name
/// is the process title), else its kernel name (`prctl(PR_GET_NAME)`, one system call).
fn thread_name(out: &mut [u8; 16]) {
    // SAFETY: gettid and getpid take no arguments.
    let (tid, pid) = unsafe { (libc::gettid(), libc::getpid()) };
    if tid == pid {
        out[..4].copy_from_slice(b"main");
        return;
    }
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL-terminated, into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, out.as_mut_ptr()) };
}

fn hash(thread: &[u8; 16], ips: &[usize]) -> u64 {
    // FNV-1a over the name and the addresses; never 0 (the free mark).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = thread.iter().copied().chain(ips.iter().flat_map(|ip| ip.to_ne_bytes()));
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

extern "C" fn on_sigprof(_: libc::c_int, _: *mut libc::siginfo_t, ucontext: *mut libc::c_void) {
    // SAFETY: errno is thread-local; it is put back before returning, as the interrupted code
    // may be between a system call and reading it.
    let errno = unsafe { *libc::__errno_location() };
    sample(ucontext);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The return addresses of the interrupted thread's stack into `out`, with whether more did not
/// fit: with glibc, libgcc's unwinder walks from the handler through the kernel's signal
/// frame, whose trampoline has unwind information; the frames above the interrupted one are
/// the handler's and are skipped by the caller.
#[cfg(not(all(target_env = "musl", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn walk(_ucontext: *mut libc::c_void, walked: &mut [usize]) -> (usize, bool) {
    let mut n = 0;
    let mut more = false;
    // SAFETY: the crate's lock only serialises unwinders that are not thread-safe (Windows'
    // dbghelp); on Linux the walk is libgcc's `_Unwind_Backtrace`, whose state is on this stack.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            if ip == 0 {
                return false; // the end of the stack
            }
            if n == walked.len() {
                more = true;
                return false;
            }
            walked[n] = ip;
            n += 1;
            true
        });
    }
    (n, more)
}

/// With musl (a static build), the signal trampoline has no unwind information, so a walk from
/// the handler stops there: LLVM's libunwind, which Rust's musl targets link, starts from the
/// interrupted registers the kernel saved instead.
#[cfg(all(target_env = "musl", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn walk(ucontext: *mut libc::c_void, walked: &mut [usize]) -> (usize, bool) {
    if ucontext.is_null() {
        return (0, false);
    }
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler; the unwinder's
    // state lives on this stack.
    unsafe { from_context::walk(ucontext.cast(), walked) }
}

#[cfg(all(target_env = "musl", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod from_context {
    /// `unw_context_t` and `unw_cursor_t`, larger than libunwind's on either machine (x86_64:
    /// 21 and 33 words; aarch64: 66 and 78).
    #[repr(C, align(16))]
    pub(super) struct Words([u64; 128]);

    extern "C" {
        fn unw_getcontext(context: *mut Words) -> libc::c_int;
        fn unw_init_local(cursor: *mut Words, context: *mut Words) -> libc::c_int;
        fn unw_set_reg(cursor: *mut Words, reg: libc::c_int, value: u64) -> libc::c_int;
        fn unw_get_reg(cursor: *mut Words, reg: libc::c_int, value: *mut u64) -> libc::c_int;
        fn unw_step(cursor: *mut Words) -> libc::c_int;
    }

    const UNW_REG_IP: libc::c_int = -1;

    /// `(libunwind register, value)` of every general register the kernel saved, the program
    /// counter last (setting it makes libunwind look up that frame).
    #[cfg(target_arch = "x86_64")]
    fn registers(uc: &libc::ucontext_t) -> impl Iterator<Item = (libc::c_int, u64)> {
        let g = uc.uc_mcontext.gregs;
        // libunwind's numbering: rax, rdx, rcx, rbx, rsi, rdi, rbp, rsp, r8 .. r15.
        let order = [
            libc::REG_RAX,
            libc::REG_RDX,
            libc::REG_RCX,
            libc::REG_RBX,
            libc::REG_RSI,
            libc::REG_RDI,
            libc::REG_RBP,
            libc::REG_RSP,
            libc::REG_R8,
            libc::REG_R9,
            libc::REG_R10,
            libc::REG_R11,
            libc::REG_R12,
            libc::REG_R13,
            libc::REG_R14,
            libc::REG_R15,
        ];
        let pc = g[libc::REG_RIP as usize] as u64;
        order
            .into_iter()
            .enumerate()
            .map(move |(n, r)| (n as libc::c_int, g[r as usize] as u64))
            .chain([(UNW_REG_IP, pc)])
    }

    /// The caller's registers by the frame pointer of the interrupted function, if it points
    /// into the stack just above the stack pointer (so it is readable): `rbp`, `rsp` and `rip`
    /// of the caller.
    #[cfg(target_arch = "x86_64")]
    fn caller_by_frame_pointer(uc: &libc::ucontext_t) -> Option<[(libc::c_int, u64); 3]> {
        let g = uc.uc_mcontext.gregs;
        let (rbp, rsp) = (g[libc::REG_RBP as usize] as u64, g[libc::REG_RSP as usize] as u64);
        if rbp < rsp || rbp - rsp > 4096 || rbp % 8 != 0 {
            return None;
        }
        // SAFETY: `rbp` lies within the page above the interrupted stack pointer, on this
        // thread's stack, 8-byte aligned: the saved frame pointer and return address.
        let (saved_rbp, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        Some([(6, saved_rbp), (7, rbp + 16), (UNW_REG_IP, ret)])
    }

    #[cfg(target_arch = "aarch64")]
    fn caller_by_frame_pointer(_: &libc::ucontext_t) -> Option<[(libc::c_int, u64); 3]> {
        None
    }

    #[cfg(target_arch = "aarch64")]
    fn registers(uc: &libc::ucontext_t) -> impl Iterator<Item = (libc::c_int, u64)> {
        let m = &uc.uc_mcontext;
        let (regs, sp, pc) = (m.regs, m.sp, m.pc);
        // libunwind's numbering: x0 .. x30, then sp as 31.
        (0..31).map(move |n| (n as libc::c_int, regs[n] as u64)).chain([(31, sp as u64), (UNW_REG_IP, pc as u64)])
    }

    /// Walk from the registers in `uc`, a signal's saved context.
    ///
    /// # Safety
    /// `uc` must point to the `ucontext_t` the kernel passed to this signal handler.
    pub(super) unsafe fn walk(uc: *const libc::ucontext_t, out: &mut [usize]) -> (usize, bool) {
        let (mut context, mut cursor) = (Words([0; 128]), Words([0; 128]));
        // SAFETY: both buffers are larger than libunwind's types and live on this stack;
        // `unw_getcontext` fills the context, `unw_init_local` the cursor from it.
        if unsafe { unw_getcontext(&mut context) != 0 || unw_init_local(&mut cursor, &mut context) != 0 } {
            return (0, false);
        }
        // SAFETY: the caller passes the kernel's saved context.
        // SAFETY: the caller passes the kernel's saved context.
        let uc = unsafe { &*uc };
        for (reg, value) in registers(uc) {
            // SAFETY: a cursor initialised above; an unknown register is refused, not written.
            unsafe { unw_set_reg(&mut cursor, reg, value) };
        }
        let mut n = 0;
        let mut retried = false;
        loop {
            let mut ip = 0u64;
            // SAFETY: as above; `ip` is a valid out-pointer.
            if unsafe { unw_get_reg(&mut cursor, UNW_REG_IP, &mut ip) } != 0 || ip == 0 {
                return (n, false);
            }
            if n == out.len() {
                return (n, true);
            }
            out[n] = ip as usize;
            n += 1;
            // SAFETY: as above; a step reads only this thread's stack through unwind tables.
            if unsafe { unw_step(&mut cursor) } <= 0 {
                // No unwind information for the interrupted code: the vDSO (`clock_gettime`),
                // which a static executable's unwinder does not see. Its functions keep a frame
                // pointer: one step by it, then the tables again.
                match (n, retried, caller_by_frame_pointer(uc)) {
                    (1, false, Some(regs)) => {
                        retried = true;
                        for (reg, value) in regs {
                            // SAFETY: as above.
                            unsafe { unw_set_reg(&mut cursor, reg, value) };
                        }
                    }
                    _ => return (n, false),
                }
            }
        }
    }
}

fn sample(ucontext: *mut libc::c_void) {
    let table = TABLE.load(Ordering::Acquire);
    // SAFETY: getpid takes no arguments (std's process::id is the same call).
    if table.is_null() || OWNER.load(Ordering::Acquire) != unsafe { libc::getpid() } as u32 {
        return;
    }
    let pc = interrupted_pc(ucontext);
    if in_unwinder(pc) {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut walked = [0usize; MAX_DEPTH + HANDLER_FRAMES];
    let (n, more) = walk(ucontext, &mut walked);
    // Start at the interrupted frame; if the walk did not find it, keep everything.
    let first = walked[..n].iter().position(|&ip| ip == pc).unwrap_or(0);
    let frames = &walked[first..n];
    let (frames, truncated) = match frames.len() > MAX_DEPTH {
        true => (&frames[..MAX_DEPTH], true),
        false => (frames, more),
    };
    let mut thread = [0u8; 16];
    thread_name(&mut thread);
    let key = hash(&thread, frames);
    // SAFETY: `start` stored a table of `SLOTS` slots, never freed.
    let slots = unsafe { std::slice::from_raw_parts(table, SLOTS) };
    for probe in 0..PROBES {
        let slot = &slots[(key as usize).wrapping_add(probe) % SLOTS];
        match slot.key.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let mut ips = [0usize; MAX_DEPTH];
                ips[..frames.len()].copy_from_slice(frames);
                // SAFETY: this handler claimed the slot; nobody reads `data` before `ready`.
                unsafe { *slot.data.get() = SlotData { thread, depth: frames.len(), truncated, ips } };
                slot.ready.store(true, Ordering::Release);
                slot.count.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(k) if k == key => {
                slot.count.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {}
        }
    }
    DROPPED.fetch_add(1, Ordering::Relaxed);
}
