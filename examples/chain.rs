//! A chain of contexts: a child, a grandchild created *by the child* (via=), and a call at the
//! bottom that travels through the middle.
//!
//! Run with `cargo run --release --example chain [-- DEPTH]` (default 2).

use mitogen::master::{Context, Options};

/// Runs at the bottom: where am I in the tree?
fn whereami() -> (u32, Vec<u32>, u32) {
    (mitogen::context_id(), mitogen::parent_ids(), std::process::id())
}

mitogen::remote!(whereami);

fn main() -> Result<(), mitogen::Error> {
    mitogen::init();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let depth: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2).max(1);
    mitogen::main(|router| {
        let mut chain: Vec<Context> = Vec::new();
        for level in 0..depth {
            // Each level after the first is started by the one above it, from its own copy of
            // the executable; the master only learns the route (ADD_ROUTE).
            let via = chain.last().cloned();
            let ctx = router.local(Options { name: Some(format!("level{level}")), via, ..Options::default() })?;
            println!("started {:?} (context {})", ctx.name().unwrap_or("?"), ctx.context_id());
            chain.push(ctx);
        }
        let bottom = chain.last().expect("depth >= 1");
        let (id, parents, pid) = bottom.call(whereami, ())?;
        println!("the bottom answers: context {id}, pid {pid}, parents {parents:?} (nearest first)");
        Ok(())
    })?;
    println!("the whole chain shut down");
    Ok(())
}
