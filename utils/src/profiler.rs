//! Reading and merging the profiles a tree writes (Mitogen `mitogen.profiler`).
//!
//! A profiled process writes one folded-stacks file per thread,
//! `mitogen.stats.<pid>.<thread>.<unix time>.folded` (see [`mitogen_core::profiling`]). This
//! module merges any number of them into one, each stack under its thread's name so a flame
//! graph keeps the broker apart from the main thread, and summarises them by function. The
//! `mitogen-profiler` program is its command line:
//!
//! ```text
//! mitogen-profiler merge [-o OUT] [FILE|DIR]...   # one folded file (stdout by default)
//! mitogen-profiler report [-n N] [FILE|DIR]...    # the N functions with most samples
//! ```
//!
//! A directory stands for the profile files in it; no argument means `$TMPDIR`. Render a flame
//! graph with `inferno-flamegraph < merged.folded > tree.svg`.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

/// Folded stacks: each stack (frames outermost first, joined by `;`) and its sample count.
pub type Folded = BTreeMap<String, u64>;

/// The profile files in `dir`: `mitogen.stats.*.folded`, sorted by name.
///
/// # Errors
/// If the directory cannot be read.
pub fn profile_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("mitogen.stats.") && name.ends_with(&format!(".{}", mitogen_core::profiling::EXTENSION))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The thread a profile file is of, from its name `mitogen.stats.<pid>.<thread>.<time>.folded`.
pub fn thread_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("mitogen.stats.")?;
    let rest = rest.strip_suffix(&format!(".{}", mitogen_core::profiling::EXTENSION))?;
    let (_pid, rest) = rest.split_once('.')?;
    let (thread, _time) = rest.rsplit_once('.')?;
    Some(thread.to_owned())
}

/// Read one folded-stacks file.
///
/// # Errors
/// If it cannot be read, or a line is not `stack count`.
pub fn read_folded(path: &Path) -> io::Result<Folded> {
    let mut folded = Folded::new();
    for (n, line) in io::BufReader::new(std::fs::File::open(path)?).lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let bad =
            || io::Error::new(io::ErrorKind::InvalidData, format!("{}:{}: not `stack count`", path.display(), n + 1));
        let (stack, count) = line.rsplit_once(' ').ok_or_else(bad)?;
        *folded.entry(stack.to_owned()).or_default() += count.parse::<u64>().map_err(|_| bad())?;
    }
    Ok(folded)
}

/// Merge profile files (and the profile files in directories) into one, each stack under its
/// thread's name (as [`thread_of`] reads it from the file name), counts of equal stacks added.
///
/// # Errors
/// If a file or directory cannot be read, or a file is not folded stacks.
pub fn merge<P: AsRef<Path>>(paths: &[P]) -> io::Result<Folded> {
    let mut merged = Folded::new();
    for path in paths {
        let path = path.as_ref();
        let files = if path.is_dir() { profile_files(path)? } else { vec![path.to_owned()] };
        for file in files {
            let thread = thread_of(&file);
            for (stack, count) in read_folded(&file)? {
                let stack = match &thread {
                    Some(t) => format!("{t};{stack}"),
                    None => stack,
                };
                *merged.entry(stack).or_default() += count;
            }
        }
    }
    Ok(merged)
}

/// Write folded stacks, one `stack count` line each.
///
/// # Errors
/// If writing fails.
pub fn write_folded(folded: &Folded, mut out: impl Write) -> io::Result<()> {
    for (stack, count) in folded {
        writeln!(out, "{stack} {count}")?;
    }
    out.flush()
}

/// One function's share of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionStats {
    /// The frame's name.
    pub name: String,
    /// Samples in which it was the innermost frame (Mitogen's `tottime`).
    pub own: u64,
    /// Samples in which it was anywhere on the stack (`cumtime`).
    pub total: u64,
}

/// The functions of a profile, most samples on the stack first (then by name).
pub fn by_function(folded: &Folded) -> Vec<FunctionStats> {
    let mut stats: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (stack, &count) in folded {
        let frames: Vec<&str> = stack.split(';').collect();
        let mut seen = std::collections::HashSet::new();
        for frame in &frames {
            if seen.insert(*frame) {
                stats.entry(frame).or_default().1 += count;
            }
        }
        if let Some(leaf) = frames.last() {
            stats.entry(leaf).or_default().0 += count;
        }
    }
    let mut out: Vec<FunctionStats> =
        stats.into_iter().map(|(name, (own, total))| FunctionStats { name: name.to_owned(), own, total }).collect();
    out.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_equal_stacks_under_their_threads_and_reports_by_function() {
        let dir = std::env::temp_dir().join(format!("mitogen-profiler-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mitogen.stats.10.main.1700000000.folded"), "a;b 2\na;c 1\n").unwrap();
        std::fs::write(dir.join("mitogen.stats.11.main.1700000001.folded"), "a;b 3\n").unwrap();
        std::fs::write(dir.join("mitogen.stats.11.mitogen-broker.1700000001.folded"), "poll 4\n").unwrap();
        std::fs::write(dir.join("unrelated.txt"), "not a profile").unwrap();
        assert_eq!(
            thread_of(&dir.join("mitogen.stats.11.mitogen-broker.1700000001.folded")).unwrap(),
            "mitogen-broker"
        );
        let merged = merge(&[&dir]).unwrap();
        let want: Folded = [("main;a;b", 5), ("main;a;c", 1), ("mitogen-broker;poll", 4)]
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect();
        assert_eq!(merged, want);
        let mut text = Vec::new();
        write_folded(&merged, &mut text).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), "main;a;b 5\nmain;a;c 1\nmitogen-broker;poll 4\n");
        let top = by_function(&merged);
        assert_eq!(top[0], FunctionStats { name: "a".into(), own: 0, total: 6 });
        assert_eq!(top.iter().find(|f| f.name == "b").unwrap(), &FunctionStats { name: "b".into(), own: 5, total: 5 });
        std::fs::write(dir.join("mitogen.stats.12.main.1700000002.folded"), "no count here\n").unwrap();
        let err = merge(&[&dir]).unwrap_err();
        assert!(err.to_string().contains("mitogen.stats.12.main.1700000002.folded:1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
