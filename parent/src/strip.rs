//! The shipped image of an executable: the file without its debug sections (`strip
//! --strip-debug`).
//!
//! The DWARF sections (`.debug_*`) are most of a Rust build (84% of a release build with line
//! tables; SHIPPING.md in the design notes) and are never loaded: a process needs them only to
//! put file names and line numbers in a backtrace. The symbol table stays, so a remote panic's
//! backtrace still names its functions. The image keeps every byte the loader maps, in place:
//! the file up to the end of its last loaded byte (headers, segments, allocated sections) is
//! copied as it is, the sections after it that are kept (`.symtab`, `.strtab`, `.shstrtab`,
//! `.comment`, ...) follow it at their alignment, then the section headers, the debug sections'
//! emptied (size 0) so no section index changes. Stripping an image again gives it back
//! unchanged, so every context of a tree names the same bytes by the same sha256.

/// `SHF_ALLOC`: the section is in memory while the program runs.
const SHF_ALLOC: u64 = 0x2;
/// `SHT_NOBITS`: the section takes no bytes of the file (`.bss`).
const SHT_NOBITS: u64 = 8;

/// One ELF file's class and byte order, and reads and writes of its fields.
struct Elf {
    is64: bool,
    big_endian: bool,
}

impl Elf {
    /// A field of `width` bytes (2, 4 or 8) at `at`, or `None` past the end of `data`.
    fn get(&self, data: &[u8], at: usize, width: usize) -> Option<u64> {
        let bytes = data.get(at..at.checked_add(width)?)?;
        let mut v = 0u64;
        for i in 0..width {
            let b = if self.big_endian { bytes[i] } else { bytes[width - 1 - i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    }

    /// Write `value` into the field of `width` bytes at `at` (inside `data`: checked by `get`).
    fn put(&self, data: &mut [u8], at: usize, width: usize, value: u64) {
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            let pos = if self.big_endian { at + width - 1 - i } else { at + i };
            data[pos] = b;
        }
    }

    /// The width of an address or offset field.
    fn word(&self) -> usize {
        if self.is64 {
            8
        } else {
            4
        }
    }
}

/// A section header: where its fields are, and their values.
struct Section {
    /// Where the header is in the file.
    header: usize,
    name: u64,
    kind: u64,
    flags: u64,
    offset: u64,
    size: u64,
    align: u64,
}

/// The shipped image of the ELF executable `data`: `data` without its debug sections, or
/// `None` when it has none (the file is shipped as it is) or is laid out in a way this does not
/// know (a debug section among the loaded bytes, a header past the end): then the whole file
/// is shipped, which always works.
pub(crate) fn without_debug_info(data: &[u8]) -> Option<Vec<u8>> {
    if data.get(..4)? != b"\x7fELF" {
        return None;
    }
    let elf = Elf { is64: *data.get(4)? == 2, big_endian: *data.get(5)? == 2 };
    let w = elf.word();
    // The file header's fields: where the program and section headers are, and their sizes.
    let (phoff, shoff) = (elf.get(data, 0x1c + w - 4, w)?, elf.get(data, 0x1c + 2 * w - 4, w)?);
    let base = 0x28 + 3 * (w - 4); // e_ehsize, then e_phentsize, e_phnum, e_shentsize, ...
    let (ehsize, phentsize, phnum) =
        (elf.get(data, base, 2)?, elf.get(data, base + 2, 2)?, elf.get(data, base + 4, 2)?);
    let (shentsize, shnum, shstrndx) =
        (elf.get(data, base + 6, 2)?, elf.get(data, base + 8, 2)?, elf.get(data, base + 10, 2)?);
    if shoff == 0 || shnum == 0 || shentsize as usize != if elf.is64 { 64 } else { 40 } {
        return None;
    }

    // Every offset and size below comes from the file: sums are checked, so a corrupt file
    // is shipped as it is instead of panicking here.
    let end = |offset: u64, size: u64| offset.checked_add(size);
    // The loaded bytes end at the last segment's file end (and the headers').
    let mut loaded = ehsize.max(end(phoff, phnum * phentsize)?);
    for i in 0..phnum {
        let at = usize::try_from(end(phoff, i * phentsize)?).ok()?;
        let (offset, filesz) = if elf.is64 {
            (elf.get(data, at + 8, 8)?, elf.get(data, at + 32, 8)?)
        } else {
            (elf.get(data, at + 4, 4)?, elf.get(data, at + 16, 4)?)
        };
        loaded = loaded.max(end(offset, filesz)?);
    }

    let mut sections = Vec::with_capacity(shnum as usize);
    for i in 0..shnum {
        let header = usize::try_from(end(shoff, i * shentsize)?).ok()?;
        // name, type (4 bytes each), then flags, addr, offset, size (words), link, info (4),
        // addralign (a word).
        let field = |n: usize| header + 8 + n * w;
        sections.push(Section {
            header,
            name: elf.get(data, header, 4)?,
            kind: elf.get(data, header + 4, 4)?,
            flags: elf.get(data, field(0), w)?,
            offset: elf.get(data, field(2), w)?,
            size: elf.get(data, field(3), w)?,
            align: elf.get(data, field(4) + 8, w)?,
        });
    }
    for s in &sections {
        if s.flags & SHF_ALLOC != 0 && s.kind != SHT_NOBITS {
            loaded = loaded.max(end(s.offset, s.size)?);
        }
    }
    let names = sections.get(shstrndx as usize)?;
    let name_of = |s: &Section| -> Option<&[u8]> {
        let start = usize::try_from(end(names.offset, s.name)?).ok()?;
        let table = data.get(start..usize::try_from(end(names.offset, names.size)?).ok()?)?;
        Some(&table[..table.iter().position(|&b| b == 0)?])
    };
    let is_debug = |s: &Section| -> Option<bool> {
        let name = name_of(s)?;
        Some(s.flags & SHF_ALLOC == 0 && (name.starts_with(b".debug") || name.starts_with(b".zdebug")))
    };

    let mut any = false;
    for s in &sections {
        if is_debug(s)? && s.size > 0 {
            if s.offset < loaded {
                return None;
            }
            any = true;
        }
    }
    if !any {
        return None;
    }

    // The loaded bytes as they are, then the kept sections after them in their order in the
    // file, each at its alignment; the headers follow.
    let loaded = usize::try_from(loaded).ok()?;
    let mut out = data.get(..loaded)?.to_vec();
    let mut after: Vec<&Section> =
        sections.iter().filter(|s| s.kind != SHT_NOBITS && s.offset as usize >= loaded && s.size > 0).collect();
    after.sort_by_key(|s| s.offset);
    let mut moved = Vec::with_capacity(sections.len());
    for s in after {
        if is_debug(s)? {
            moved.push((s.header, loaded as u64, 0));
            continue;
        }
        // Kept sections are aligned to a few bytes; a larger alignment is not one of ours.
        let align = usize::try_from(s.align.max(1)).ok().filter(|&a| a <= 1 << 16)?;
        out.resize(out.len().next_multiple_of(align), 0);
        moved.push((s.header, out.len() as u64, s.size));
        let range = usize::try_from(s.offset).ok()?..usize::try_from(end(s.offset, s.size)?).ok()?;
        out.extend_from_slice(data.get(range)?);
    }
    out.resize(out.len().next_multiple_of(w), 0);
    let new_shoff = out.len();
    out.extend_from_slice(
        data.get(usize::try_from(shoff).ok()?..usize::try_from(end(shoff, shnum * shentsize)?).ok()?)?,
    );
    for (header, offset, size) in moved {
        let at = header - shoff as usize + new_shoff;
        elf.put(&mut out, at + 8 + 2 * w, w, offset);
        elf.put(&mut out, at + 8 + 3 * w, w, size);
    }
    elf.put(&mut out, 0x1c + 2 * w - 4, w, new_shoff as u64);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::without_debug_info;

    /// This test binary (built with line tables): its image is smaller, keeps every loaded
    /// byte and the symbol table, and strips to itself.
    #[test]
    fn the_image_of_this_test_binary_drops_its_debug_sections_and_only_them() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let image = without_debug_info(&data).expect("a test binary has debug sections");
        assert!(image.len() < data.len(), "{} >= {}", image.len(), data.len());
        assert_eq!(without_debug_info(&image), None, "an image strips to itself");

        use object::{Object, ObjectSection, ObjectSymbol};
        let (before, after) = (object::File::parse(&data[..]).unwrap(), object::File::parse(&image[..]).unwrap());
        // The sections `strip --strip-debug` drops: DWARF, never loaded (`.debug_gdb_scripts`
        // is loaded, and kept).
        let dwarf = |s: &object::Section<'_, '_>| {
            let loaded = matches!(s.flags(), object::SectionFlags::Elf { sh_flags } if sh_flags & 2 != 0);
            s.name().unwrap().starts_with(".debug") && !loaded
        };
        let sections = |f: &object::File<'_>| -> Vec<(String, u64, Vec<u8>)> {
            f.sections()
                .map(|s| {
                    let bytes = if dwarf(&s) { Vec::new() } else { s.data().unwrap().to_vec() };
                    (s.name().unwrap().to_owned(), s.address(), bytes)
                })
                .collect()
        };
        assert_eq!(sections(&before), sections(&after), "every section but the debug ones, byte for byte");
        assert!(after.sections().filter(dwarf).all(|s| s.size() == 0));
        assert!(before.sections().filter(dwarf).any(|s| s.size() > 0));
        assert_eq!(before.symbols().count(), after.symbols().count(), "the symbol table is kept");
        assert!(after.symbols().any(|s| s.name().unwrap_or("").contains("without_debug_info")));
        // Every loaded byte in place; of the file header only e_shoff (bytes 0x28..0x30) moved.
        use object::ObjectSegment;
        let end = before.segments().map(|s| s.file_range().0 + s.file_range().1).max().unwrap() as usize;
        assert_eq!((&data[..0x28], &data[0x30..end]), (&image[..0x28], &image[0x30..end]));
        for (a, b) in before.segments().zip(after.segments()) {
            assert_eq!((a.address(), a.file_range()), (b.address(), b.file_range()));
        }
    }

    #[test]
    fn what_is_not_an_elf_with_debug_sections_is_shipped_as_it_is() {
        assert_eq!(without_debug_info(b""), None);
        assert_eq!(without_debug_info(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(without_debug_info(&b"\x7fELF\x02\x01\x01"[..]), None, "a truncated header");
        // This binary with corrupt offsets: no panic, no huge allocation, the file as it is.
        let data = std::fs::read("/proc/self/exe").unwrap();
        let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
        let corrupt = |at: usize, value: u64| {
            let mut d = data.clone();
            d[at..at + 8].copy_from_slice(&value.to_le_bytes());
            without_debug_info(&d)
        };
        assert_eq!(corrupt(0x20, u64::MAX - 8), None, "e_phoff past the end");
        assert_eq!(corrupt(0x28, u64::MAX - 8), None, "e_shoff past the end");
        let shnum = u16::from_le_bytes(data[0x3c..0x3e].try_into().unwrap()) as usize;
        for i in 0..shnum {
            let header = shoff + i * 64;
            // sh_offset, sh_size and sh_addralign of every section in turn.
            for (field, value) in [(24, u64::MAX - 8), (32, u64::MAX - 8), (48, 1 << 40)] {
                let image = corrupt(header + field, value);
                assert!(image.is_none() || image.unwrap().len() <= data.len(), "section {i}, field {field}");
            }
        }
    }
}
