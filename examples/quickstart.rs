//! Start N local children (copies of this program), call a function in each, and print the
//! answers as they arrive.
//!
//! Run with `cargo run --release --example quickstart [-- -n N]`.

use std::time::Instant;

use mitogen::master::Options;
use mitogen::select::Select;

/// Runs in each child: who and where am I?
fn describe() -> (u32, u32, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (mitogen::context_id(), std::process::id(), host.trim().to_owned())
}

mitogen::remote!(describe);

fn main() -> Result<(), mitogen::Error> {
    // In a child this never returns: the child serves calls instead of running main.
    mitogen::init();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().collect();
    let n: usize =
        args.iter().position(|a| a == "-n").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(4);

    mitogen::main(|router| {
        let t0 = Instant::now();
        let children = (0..n).map(|_| router.local(Options::default())).collect::<Result<Vec<_>, _>>()?;
        println!("started {n} children in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);

        let t1 = Instant::now();
        let receivers = children.iter().map(|c| c.call_async(describe, ())).collect::<Result<Vec<_>, _>>()?;
        let select = Select::new(&receivers, true)?;
        for msg in &select {
            let (id, pid, host) = msg?.unpickle::<(u32, u32, String)>()?;
            println!("context {id:>3}: pid {pid} on {host}");
        }
        println!(
            "{n} calls answered in {:.1} ms (master pid {})",
            t1.elapsed().as_secs_f64() * 1e3,
            std::process::id()
        );

        for child in &children {
            child.shutdown(false)?;
        }
        Ok(())
    })?;
    println!("all children shut down; broker joined");
    Ok(())
}
