//! Which executable fits which target: what an executable needs, read from its ELF file (its
//! machine, its `PT_INTERP` loader, the highest `GLIBC_x.y` it references), and what a target
//! has, as stage 1 reports it (`uname -sm`, `getconf GNU_LIBC_VERSION`, a musl loader).
//!
//! A static executable (no loader) fits any Linux of its machine; a glibc one fits a target
//! whose glibc is at least the highest version it references; a dynamic musl one fits a target
//! with musl's loader. Names lie (a build called "musl" may still need glibc), so only the
//! file is read.

use std::fmt;

use object::read::elf::{FileHeader, ProgramHeader};
use object::{elf, Endianness};

/// The C library an executable needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Libc {
    /// None: a static executable.
    Static,
    /// glibc, at least this version (`(2, 34)`).
    Glibc((u32, u32)),
    /// musl's dynamic loader.
    Musl,
    /// Another loader, by path.
    Other(String),
}

/// What an executable needs of the machine it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Needs {
    /// `uname -m` of the machines it runs on (`x86_64`, `aarch64`).
    pub(crate) machine: String,
    /// Its C library.
    pub(crate) libc: Libc,
}

impl Needs {
    /// Read them from an ELF executable's bytes.
    pub(crate) fn of_elf(data: &[u8]) -> Result<Needs, String> {
        let fail = |e: object::read::Error| format!("not an executable this library can read: {e}");
        if data.get(4) != Some(&elf::ELFCLASS64) {
            return Err("not a 64-bit ELF executable".into());
        }
        let header = elf::FileHeader64::<Endianness>::parse(data).map_err(fail)?;
        let endian = header.endian().map_err(fail)?;
        let machine = match header.e_machine(endian) {
            elf::EM_X86_64 => "x86_64",
            elf::EM_AARCH64 => "aarch64",
            elf::EM_RISCV => "riscv64",
            elf::EM_PPC64 => "ppc64le",
            elf::EM_S390 => "s390x",
            elf::EM_LOONGARCH => "loongarch64",
            other => return Err(format!("an ELF machine this library does not know ({other})")),
        }
        .to_owned();
        let mut interp = None;
        for ph in header.program_headers(endian, data).map_err(fail)? {
            if let Some(path) = ph.interpreter(endian, data).map_err(fail)? {
                interp = Some(String::from_utf8_lossy(path).into_owned());
            }
        }
        let libc = match interp {
            None => Libc::Static,
            Some(path) if path.contains("ld-musl") => Libc::Musl,
            Some(path) if path.contains("ld-linux") || path.contains("ld64.so") => {
                Libc::Glibc(highest_glibc(header, endian, data).map_err(fail)?.unwrap_or((2, 2)))
            }
            Some(path) => Libc::Other(path),
        };
        Ok(Needs { machine, libc })
    }

    /// Whether it runs on `target`.
    pub(crate) fn fit(&self, target: &Target) -> bool {
        target.os == "Linux"
            && target.machine == self.machine
            && match &self.libc {
                Libc::Static => true,
                Libc::Glibc(min) => target.glibc.is_some_and(|have| have >= *min),
                Libc::Musl => target.musl,
                Libc::Other(_) => false,
            }
    }
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.libc {
            Libc::Static => write!(f, "Linux {}, static", self.machine),
            Libc::Glibc((a, b)) => write!(f, "Linux {}, glibc >= {a}.{b}", self.machine),
            Libc::Musl => write!(f, "Linux {}, musl", self.machine),
            Libc::Other(loader) => write!(f, "Linux {}, loader {loader}", self.machine),
        }
    }
}

/// The highest `GLIBC_x.y` the executable's version needs (`.gnu.version_r`) name.
fn highest_glibc(
    header: &elf::FileHeader64<Endianness>,
    endian: Endianness,
    data: &[u8],
) -> object::read::Result<Option<(u32, u32)>> {
    let sections = header.sections(endian, data)?;
    // (With the index of the string table the section links to.)
    let Some((mut needs, strings)) = sections.gnu_verneed(endian, data)? else { return Ok(None) };
    let strings = sections.strings(endian, data, strings)?;
    let mut highest = None;
    while let Some((_, mut aux)) = needs.next()? {
        while let Some(a) = aux.next()? {
            let name = String::from_utf8_lossy(a.name(endian, strings)?).into_owned();
            if let Some(version) = name.strip_prefix("GLIBC_").and_then(parse_version) {
                highest = highest.max(Some(version));
            }
        }
    }
    Ok(highest)
}

/// `2.31` (or `2.31.1`) as `(2, 31)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    Some((parts.next()?.parse().ok()?, parts.next().unwrap_or("0").parse().ok()?))
}

/// What stage 1 found on the target: `MITO000 <os> <machine> <gzip 0|1> [glibc <x.y>] [musl]`
/// (what `getconf GNU_LIBC_VERSION` prints, and whether musl's loader is there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `uname -s`.
    pub(crate) os: String,
    /// `uname -m`.
    pub(crate) machine: String,
    /// Whether `gzip` is there.
    pub(crate) gzip: bool,
    /// The glibc version (`getconf GNU_LIBC_VERSION`).
    pub(crate) glibc: Option<(u32, u32)>,
    /// Whether musl's loader is there.
    pub(crate) musl: bool,
}

impl Target {
    /// Parse stage 1's report (the words after `MITO000`).
    pub(crate) fn parse(report: &str) -> Option<Target> {
        let mut words = report.split_whitespace();
        let (os, machine, gzip) = (words.next()?, words.next()?, words.next()?);
        let mut target = Target { os: os.into(), machine: machine.into(), gzip: gzip == "1", glibc: None, musl: false };
        while let Some(word) = words.next() {
            match word {
                "musl" => target.musl = true,
                "glibc" => target.glibc = Some(parse_version(words.next()?)?),
                _ => return None,
            }
        }
        Some(target)
    }

    /// The Rust target triple whose default build fits it: a static musl build.
    pub(crate) fn triple(&self) -> String {
        format!("{}-unknown-linux-musl", self.machine)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.os, self.machine)?;
        match (self.glibc, self.musl) {
            (Some((a, b)), true) => write!(f, ", glibc {a}.{b} and musl"),
            (Some((a, b)), false) => write!(f, ", glibc {a}.{b}"),
            (None, true) => write!(f, ", musl"),
            (None, false) => write!(f, ", no C library"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(report: &str) -> Target {
        Target::parse(report).unwrap()
    }

    #[test]
    fn reports_are_read_as_stage_1_writes_them() {
        let old = target("Linux x86_64 1 glibc 2.31");
        assert_eq!((old.glibc, old.musl, old.gzip), (Some((2, 31)), false, true));
        assert_eq!(old.to_string(), "Linux x86_64, glibc 2.31");
        let bare = target("Linux x86_64 0");
        assert_eq!((bare.glibc, bare.musl), (None, false));
        assert_eq!(bare.to_string(), "Linux x86_64, no C library");
        assert!(target("Linux aarch64 1 glibc 2.36 musl").musl);
        assert_eq!(Target::parse("Linux x86_64"), None);
        assert_eq!(Target::parse("Linux x86_64 1 glibc x"), None);
        assert_eq!(Target::parse("Linux x86_64 1 glibc"), None);
    }

    #[test]
    fn a_static_build_fits_any_libc_of_its_machine_and_a_glibc_one_only_a_new_enough_glibc() {
        let static_x86 = Needs { machine: "x86_64".into(), libc: Libc::Static };
        let glibc_234 = Needs { machine: "x86_64".into(), libc: Libc::Glibc((2, 34)) };
        let musl = Needs { machine: "x86_64".into(), libc: Libc::Musl };
        for t in ["Linux x86_64 1 glibc 2.31", "Linux x86_64 0", "Linux x86_64 1 musl"] {
            assert!(static_x86.fit(&target(t)), "{t}");
        }
        assert!(!static_x86.fit(&target("Linux aarch64 1")));
        assert!(!static_x86.fit(&target("FreeBSD x86_64 1")));
        assert!(glibc_234.fit(&target("Linux x86_64 1 glibc 2.36")));
        assert!(glibc_234.fit(&target("Linux x86_64 1 glibc 2.34")));
        assert!(!glibc_234.fit(&target("Linux x86_64 1 glibc 2.31")));
        assert!(!glibc_234.fit(&target("Linux x86_64 1 musl")));
        assert!(musl.fit(&target("Linux x86_64 1 musl")) && !musl.fit(&target("Linux x86_64 1 glibc 2.36")));
        assert_eq!(glibc_234.to_string(), "Linux x86_64, glibc >= 2.34");
    }

    #[test]
    fn this_test_binarys_own_needs_are_read_from_its_file() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let needs = Needs::of_elf(&data).unwrap();
        assert_eq!(needs.machine, std::env::consts::ARCH);
        match (cfg!(target_env = "gnu"), &needs.libc) {
            (true, Libc::Glibc(v)) => assert!(*v >= (2, 17), "{v:?}"),
            (false, Libc::Static) => {}
            other => panic!("{other:?}"),
        }
        assert!(Needs::of_elf(b"#!/bin/sh\n").is_err());
    }
}
