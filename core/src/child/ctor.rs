//! The loader constructor that turns a process started as a child into one, before `main`.

/// Called by the loader before `main`, in every process that links this crate: a process
/// started as a child (argv\[1\] is the child marker) becomes one here and never returns, so
/// test binaries built by `cargo test`, whose `main` belongs to the test harness, work as
/// children too.
///
/// The arguments come from `/proc/self/cmdline`, not from the `(argc, argv, envp)` that glibc
/// passes to `.init_array` functions: that is a glibc extension, and a static build with another
/// libc (musl), the natural thing to ship to other hosts, calls them with no arguments. Where
/// `/proc` is not mounted this does nothing, and `main` calling [`init`](crate::init) (which
/// reads std's arguments) enters child mode instead.
extern "C" fn child_ctor() {
    if is_child_cmdline(&std::fs::read("/proc/self/cmdline").unwrap_or_default()) {
        crate::child::run_exec_child();
    }
}

/// Whether this process's command line (`/proc/self/cmdline`, readable before `main` with any
/// libc) has `flag` as one of its words.
pub(crate) fn cmdline_has(flag: &str) -> bool {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    cmdline.split(|&b| b == 0).any(|w| w == flag.as_bytes())
}

/// Whether a NUL-separated command line has the child marker as its second word.
fn is_child_cmdline(cmdline: &[u8]) -> bool {
    cmdline.split(|&b| b == 0).nth(1) == Some(crate::child::CHILD_MARKER.as_bytes())
}

/// `.init_array` entries run before `main` (with any libc: ELF's own initialisation order).
#[used]
#[link_section = ".init_array"]
static CHILD_CTOR: extern "C" fn() = child_ctor;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_marker_is_read_from_the_second_word_of_the_command_line() {
        assert!(is_child_cmdline(b"/x/prog\0--mitogen-child\0"));
        assert!(!is_child_cmdline(b"/x/prog\0--other\0--mitogen-child\0"));
        assert!(!is_child_cmdline(b"/x/prog\0"));
        assert!(!is_child_cmdline(b""));
    }
}
