//! Which executable fits which target: what an executable needs, read from its ELF file (its
//! machine, its `PT_INTERP` loader, the highest `GLIBC_x.y` it references), and what a target
//! has, as stage 1 reports it (`uname -sm`, `getconf GNU_LIBC_VERSION`, a musl loader).
//!
//! A static executable (no loader) fits any Linux of its machine; a glibc one fits a target
//! whose glibc is at least the highest version it references; a dynamic musl one fits a target
//! with musl's loader. Names lie (a build called "musl" may still need glibc), so only the
//! file is read.

use std::fmt;

use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
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

/// A kind of machine Linux runs on: the names `uname -m` gives it, the ELF executables that run
/// there, and the Rust target whose static build fits it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Machine {
    /// What `uname -m` says, the first name the one errors use.
    pub(crate) unames: &'static [&'static str],
    /// Its executables' ELF `e_machine`, class (`ELFCLASS32`/`64`) and byte order
    /// (`ELFDATA2LSB`/`MSB`).
    elf: (u16, u8, u8),
    /// For 32-bit ARM, the architecture version (5, 6, 7; 8 for ARMv8's 32-bit state): an ARM
    /// build runs on a machine of its version or later. 0 elsewhere.
    arm: u8,
    /// The Rust target whose build, static with musl, runs on any Linux of this machine
    /// (`rustc --print target-list` has each).
    pub(crate) triple: &'static str,
}

use elf::{ELFCLASS32 as C32, ELFCLASS64 as C64, ELFDATA2LSB as LE, ELFDATA2MSB as BE};

/// Every machine this library can name a build for, the README's *Targets* table.
pub(crate) const MACHINES: &[Machine] = &[
    Machine {
        unames: &["x86_64", "amd64"],
        elf: (elf::EM_X86_64, C64, LE),
        arm: 0,
        triple: "x86_64-unknown-linux-musl",
    },
    Machine {
        unames: &["aarch64", "arm64"],
        elf: (elf::EM_AARCH64, C64, LE),
        arm: 0,
        triple: "aarch64-unknown-linux-musl",
    },
    Machine {
        unames: &["aarch64_be"],
        elf: (elf::EM_AARCH64, C64, BE),
        arm: 0,
        triple: "aarch64_be-unknown-linux-musl",
    },
    Machine { unames: &["armv8l"], elf: (elf::EM_ARM, C32, LE), arm: 8, triple: "armv7-unknown-linux-musleabihf" },
    Machine { unames: &["armv7l"], elf: (elf::EM_ARM, C32, LE), arm: 7, triple: "armv7-unknown-linux-musleabihf" },
    Machine { unames: &["armv6l"], elf: (elf::EM_ARM, C32, LE), arm: 6, triple: "arm-unknown-linux-musleabihf" },
    Machine {
        unames: &["armv5tel", "armv5tejl", "armv5l"],
        elf: (elf::EM_ARM, C32, LE),
        arm: 5,
        triple: "armv5te-unknown-linux-musleabi",
    },
    Machine { unames: &["i686"], elf: (elf::EM_386, C32, LE), arm: 0, triple: "i686-unknown-linux-musl" },
    Machine {
        unames: &["i586", "i486", "i386"],
        elf: (elf::EM_386, C32, LE),
        arm: 0,
        triple: "i586-unknown-linux-musl",
    },
    Machine { unames: &["riscv64"], elf: (elf::EM_RISCV, C64, LE), arm: 0, triple: "riscv64gc-unknown-linux-musl" },
    Machine { unames: &["ppc64le"], elf: (elf::EM_PPC64, C64, LE), arm: 0, triple: "powerpc64le-unknown-linux-musl" },
    Machine { unames: &["ppc64"], elf: (elf::EM_PPC64, C64, BE), arm: 0, triple: "powerpc64-unknown-linux-musl" },
    Machine { unames: &["ppc", "ppcle"], elf: (elf::EM_PPC, C32, BE), arm: 0, triple: "powerpc-unknown-linux-musl" },
    Machine { unames: &["s390x"], elf: (elf::EM_S390, C64, BE), arm: 0, triple: "s390x-unknown-linux-musl" },
    Machine {
        unames: &["loongarch64"],
        elf: (elf::EM_LOONGARCH, C64, LE),
        arm: 0,
        triple: "loongarch64-unknown-linux-musl",
    },
    Machine { unames: &["mips64"], elf: (elf::EM_MIPS, C64, BE), arm: 0, triple: "mips64-unknown-linux-muslabi64" },
    Machine { unames: &["mips64el"], elf: (elf::EM_MIPS, C64, LE), arm: 0, triple: "mips64el-unknown-linux-muslabi64" },
    Machine { unames: &["mips"], elf: (elf::EM_MIPS, C32, BE), arm: 0, triple: "mips-unknown-linux-musl" },
    Machine { unames: &["mipsel"], elf: (elf::EM_MIPS, C32, LE), arm: 0, triple: "mipsel-unknown-linux-musl" },
];

impl Machine {
    /// The machine `uname -m` names, if this library knows it.
    pub(crate) fn of_uname(uname: &str) -> Option<&'static Machine> {
        MACHINES.iter().find(|m| m.unames.contains(&uname))
    }

    /// The name errors use (`uname -m`'s).
    pub(crate) fn name(&self) -> &'static str {
        self.unames[0]
    }
}

/// What an executable needs of the machine it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Needs {
    /// The machine it runs on (for 32-bit ARM, the oldest version it runs on).
    pub(crate) machine: &'static Machine,
    /// Its C library.
    pub(crate) libc: Libc,
}

impl Needs {
    /// Read them from an ELF executable's bytes, 32- or 64-bit, of either byte order.
    pub(crate) fn of_elf(data: &[u8]) -> Result<Needs, String> {
        match data.get(4) {
            Some(&C64) => Needs::read(elf::FileHeader64::<Endianness>::parse(data).map_err(unreadable)?, data),
            Some(&C32) => Needs::read(elf::FileHeader32::<Endianness>::parse(data).map_err(unreadable)?, data),
            _ => Err("not an ELF executable".into()),
        }
    }

    fn read<H: FileHeader<Endian = Endianness>>(header: &H, data: &[u8]) -> Result<Needs, String> {
        let endian = header.endian().map_err(unreadable)?;
        let order = if endian == Endianness::Little { LE } else { BE };
        let class = if header.is_class_64() { C64 } else { C32 };
        let e_machine = header.e_machine(endian);
        let arm = if e_machine == elf::EM_ARM { arm_version(header, endian, data) } else { 0 };
        let machine =
            MACHINES.iter().find(|m| m.elf == (e_machine, class, order) && m.arm == arm).ok_or_else(|| {
                format!("an ELF machine this library does not know ({e_machine}, class {class}, data {order})")
            })?;
        let mut interp = None;
        for ph in header.program_headers(endian, data).map_err(unreadable)? {
            if let Some(path) = ph.interpreter(endian, data).map_err(unreadable)? {
                interp = Some(String::from_utf8_lossy(path).into_owned());
            }
        }
        let libc = match interp {
            None => Libc::Static,
            Some(path) if path.contains("ld-musl") => Libc::Musl,
            Some(path) if path.contains("ld-linux") || path.contains("ld64.so") || path.contains("ld.so") => {
                Libc::Glibc(highest_glibc(header, endian, data).map_err(unreadable)?.unwrap_or((2, 2)))
            }
            Some(path) => Libc::Other(path),
        };
        Ok(Needs { machine, libc })
    }

    /// Whether it runs on `target`.
    pub(crate) fn fit(&self, target: &Target) -> bool {
        let Some(machine) = target.known_machine() else { return false };
        target.os == "Linux"
            && machine.elf == self.machine.elf
            && machine.arm >= self.machine.arm
            && match &self.libc {
                Libc::Static => true,
                Libc::Glibc(min) => target.glibc.is_some_and(|have| have >= *min),
                Libc::Musl => target.musl,
                Libc::Other(_) => false,
            }
    }
}

fn unreadable(e: object::read::Error) -> String {
    format!("not an executable this library can read: {e}")
}

/// The ARM architecture version a 32-bit ARM executable was built for, from its
/// `.ARM.attributes` (`Tag_CPU_arch`): 5, 6, 7 or 8; 7 when it does not say (Rust's usual ARM
/// target, and never taken to run on an older machine than it may need).
fn arm_version<H: FileHeader<Endian = Endianness>>(header: &H, endian: Endianness, data: &[u8]) -> u8 {
    let cpu_arch = header.sections(endian, data).ok().and_then(|sections| {
        let section = sections.iter().find(|s| s.sh_type(endian) == elf::SHT_ARM_ATTRIBUTES)?;
        let mut attributes = section.attributes(endian, data).ok()?.subsections().ok()?;
        while let Some(subsection) = attributes.next().ok()? {
            if subsection.vendor() != b"aeabi" {
                continue;
            }
            let mut subsubsections = subsection.subsubsections();
            while let Some(subsub) = subsubsections.next().ok()? {
                if subsub.tag() != elf::Tag_File {
                    continue;
                }
                return cpu_arch_of(subsub.attributes_data());
            }
        }
        None
    });
    match cpu_arch {
        Some(3..=5) => 5,
        Some(6..=9 | 11 | 12) => 6,
        Some(10 | 13) => 7,
        Some(14..) => 8,
        _ => 7,
    }
}

/// `Tag_CPU_arch` (6) in the attributes of an `aeabi` file sub-subsection: tags are ULEB128,
/// values ULEB128 except for the string-valued tags (4, 5, 67, and odd tags above 32; 32 is a
/// number then a string).
fn cpu_arch_of(mut bytes: &[u8]) -> Option<u64> {
    fn uleb(bytes: &mut &[u8]) -> Option<u64> {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
        }
    }
    fn string(bytes: &mut &[u8]) -> Option<()> {
        let end = bytes.iter().position(|&b| b == 0)?;
        *bytes = &bytes[end + 1..];
        Some(())
    }
    while !bytes.is_empty() {
        let tag = uleb(&mut bytes)?;
        match tag {
            6 => return uleb(&mut bytes),
            4 | 5 | 67 => string(&mut bytes)?,
            32 => {
                uleb(&mut bytes)?;
                string(&mut bytes)?;
            }
            t if t > 32 && t % 2 == 1 => string(&mut bytes)?,
            _ => {
                uleb(&mut bytes)?;
            }
        }
    }
    None
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.libc {
            Libc::Static => write!(f, "Linux {}, static", self.machine.name()),
            Libc::Glibc((a, b)) => write!(f, "Linux {}, glibc >= {a}.{b}", self.machine.name()),
            Libc::Musl => write!(f, "Linux {}, musl", self.machine.name()),
            Libc::Other(loader) => write!(f, "Linux {}, loader {loader}", self.machine.name()),
        }
    }
}

/// The highest `GLIBC_x.y` the executable's version needs (`.gnu.version_r`) name.
fn highest_glibc<H: FileHeader<Endian = Endianness>>(
    header: &H,
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

    /// What this library knows of its machine, if anything (and only for Linux, the one
    /// system contexts run on).
    pub(crate) fn known_machine(&self) -> Option<&'static Machine> {
        (self.os == "Linux").then(|| Machine::of_uname(&self.machine)).flatten()
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
        let x86_64 = Machine::of_uname("x86_64").unwrap();
        let static_x86 = Needs { machine: x86_64, libc: Libc::Static };
        let glibc_234 = Needs { machine: x86_64, libc: Libc::Glibc((2, 34)) };
        let musl = Needs { machine: x86_64, libc: Libc::Musl };
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
        assert_eq!(needs.machine.name(), std::env::consts::ARCH);
        match (cfg!(target_env = "gnu"), &needs.libc) {
            (true, Libc::Glibc(v)) => assert!(*v >= (2, 17), "{v:?}"),
            (false, Libc::Static) => {}
            other => panic!("{other:?}"),
        }
        assert!(Needs::of_elf(b"#!/bin/sh\n").is_err());
    }

    /// A minimal ELF header: `class` and `data` as in `e_ident`, and `e_machine`; no program
    /// or section headers (a static executable).
    fn elf_header(class: u8, data: u8, e_machine: u16) -> Vec<u8> {
        let big = data == BE;
        let half = |v: u16| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let word = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut h = vec![0x7f, b'E', b'L', b'F', class, data, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend(half(2)); // ET_EXEC
        h.extend(half(e_machine));
        h.extend(word(1));
        let (addr, size) = if class == C64 { (8, 64u16) } else { (4, 52u16) };
        h.extend(vec![0; 3 * addr]); // entry, phoff, shoff
        h.extend(word(0)); // flags
        h.extend(half(size));
        h.extend([0; 10]); // phentsize, phnum, shentsize, shnum, shstrndx
        h
    }

    #[test]
    fn every_machine_linux_reports_is_named_with_a_target_rustc_has() {
        let out = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["--print", "target-list"])
            .output()
            .expect("rustc runs");
        let list = String::from_utf8(out.stdout).unwrap();
        let known: Vec<&str> = list.lines().collect();
        for m in MACHINES {
            assert!(known.contains(&m.triple), "{}: {} is not in rustc --print target-list", m.name(), m.triple);
        }
        let expected = [
            ("x86_64", "x86_64-unknown-linux-musl"),
            ("aarch64", "aarch64-unknown-linux-musl"),
            ("arm64", "aarch64-unknown-linux-musl"),
            ("armv7l", "armv7-unknown-linux-musleabihf"),
            ("armv6l", "arm-unknown-linux-musleabihf"),
            ("i686", "i686-unknown-linux-musl"),
            ("i386", "i586-unknown-linux-musl"),
            ("riscv64", "riscv64gc-unknown-linux-musl"),
            ("ppc64le", "powerpc64le-unknown-linux-musl"),
            ("ppc64", "powerpc64-unknown-linux-musl"),
            ("s390x", "s390x-unknown-linux-musl"),
            ("loongarch64", "loongarch64-unknown-linux-musl"),
        ];
        for (uname, triple) in expected {
            assert_eq!(Machine::of_uname(uname).map(|m| m.triple), Some(triple), "{uname}");
        }
        assert_eq!(Machine::of_uname("sparc64"), None);
    }

    #[test]
    fn executables_of_32_bit_and_big_endian_machines_are_read_and_fit_their_machine_only() {
        let cases = [
            (C32, LE, elf::EM_386, "i686", "Linux i686 0"),
            (C64, BE, elf::EM_PPC64, "ppc64", "Linux ppc64 0"),
            (C64, LE, elf::EM_PPC64, "ppc64le", "Linux ppc64le 0"),
            (C64, BE, elf::EM_S390, "s390x", "Linux s390x 0"),
            (C32, LE, elf::EM_ARM, "armv7l", "Linux armv7l 0"),
            (C64, LE, elf::EM_RISCV, "riscv64", "Linux riscv64 0"),
        ];
        for (class, data, e_machine, name, fits) in cases {
            let needs = Needs::of_elf(&elf_header(class, data, e_machine)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((needs.machine.name(), &needs.libc), (name, &Libc::Static));
            assert!(needs.fit(&target(fits)), "{name} fits {fits}");
            assert!(!needs.fit(&target("Linux x86_64 1 glibc 2.36")), "{name} does not fit x86_64");
        }
        // An i686 build also runs where Linux says i586 (it cannot tell the two apart).
        let i686 = Needs::of_elf(&elf_header(C32, LE, elf::EM_386)).unwrap();
        assert!(i686.fit(&target("Linux i586 0")));
        // Byte order tells ppc64 from ppc64le.
        let ppc64 = Needs::of_elf(&elf_header(C64, BE, elf::EM_PPC64)).unwrap();
        assert!(!ppc64.fit(&target("Linux ppc64le 0")));
        assert!(Needs::of_elf(&elf_header(C64, LE, 0x1234)).unwrap_err().contains("does not know"));
    }

    #[test]
    fn an_arm_build_fits_machines_of_its_version_or_later() {
        // Tag_CPU_name "6KZ", then Tag_CPU_arch 7 (ARMv6KZ), then Tag_ARM_ISA_use 1.
        assert_eq!(cpu_arch_of(b"\x056KZ\0\x06\x07\x08\x01"), Some(7));
        assert_eq!(cpu_arch_of(b"\x08\x01"), None);
        let arm = |v: &str| MACHINES.iter().find(|m| m.unames[0] == v).unwrap();
        let v6 = Needs { machine: arm("armv6l"), libc: Libc::Static };
        let v7 = Needs { machine: arm("armv7l"), libc: Libc::Static };
        assert!(v6.fit(&target("Linux armv6l 0")) && v6.fit(&target("Linux armv7l 0")));
        assert!(v7.fit(&target("Linux armv8l 0")) && !v7.fit(&target("Linux armv6l 0")));
    }

    #[test]
    fn another_operating_system_is_no_machine_of_this_library() {
        let freebsd = target("FreeBSD amd64 1");
        assert_eq!(freebsd.known_machine(), None);
        let x86_64 = Needs { machine: Machine::of_uname("x86_64").unwrap(), libc: Libc::Static };
        assert!(!x86_64.fit(&freebsd) && !x86_64.fit(&target("FreeBSD x86_64 1")));
    }
}
