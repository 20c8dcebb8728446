//! `mitogen-profiler`: merge and summarise the profiles a tree of contexts wrote (Mitogen's
//! `python -m mitogen.profiler`). See [`mitogen::profiler`].

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  mitogen-profiler merge [-o OUT] [FILE|DIR]...   merge into one folded-stacks file
  mitogen-profiler report [-n N] [FILE|DIR]...    the N functions with most samples (default 20)
A directory stands for its mitogen.stats.*.folded files; none given means $TMPDIR.";

fn main() -> ExitCode {
    mitogen::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mitogen-profiler: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or(USAGE)?;
    let mut output: Option<PathBuf> = None;
    let mut top = 20usize;
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-o" if command == "merge" => output = Some(rest.next().ok_or(USAGE)?.into()),
            "-n" if command == "report" => top = rest.next().and_then(|n| n.parse().ok()).ok_or(USAGE)?,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => inputs.push(arg.into()),
        }
    }
    if inputs.is_empty() {
        inputs.push(mitogen::core::sys::temp_dir());
    }
    let merged = mitogen::profiler::merge(&inputs).map_err(|e| e.to_string())?;
    if merged.is_empty() {
        return Err(format!("no samples in {inputs:?}"));
    }
    match command.as_str() {
        "merge" => {
            let result = match output {
                Some(path) => std::fs::File::create(&path).and_then(|f| mitogen::profiler::write_folded(&merged, f)),
                None => mitogen::profiler::write_folded(&merged, std::io::stdout().lock()),
            };
            result.map_err(|e| e.to_string())
        }
        "report" => {
            let total: u64 = merged.values().sum();
            println!("{total} samples\n{:>8} {:>8}  function", "total", "own");
            for f in mitogen::profiler::by_function(&merged).iter().take(top) {
                println!("{:>7.1}% {:>7.1}%  {}", pct(f.total, total), pct(f.own, total), f.name);
            }
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

fn pct(n: u64, total: u64) -> f64 {
    100.0 * n as f64 / total.max(1) as f64
}
