//! Two routers in one process, joined by a socketpair like a parent and its child, exchanging
//! messages through a `Select`.
//!
//! Run with `cargo run --release --example pingpong [ROUNDS]`.

use std::time::{Duration, Instant};

use mitogen::core::{socketpair, Broker, Identity, Message, Receiver, Router, Sender, Stream};
use mitogen::select::Select;

fn main() -> Result<(), mitogen::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let rounds: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);

    // Context 0 (the "master") and context 1 (its "child"), each with its own broker thread.
    let master = Router::with_identity(&Broker::new()?, Identity::master());
    let child = Router::with_identity(&Broker::new()?, Identity { context_id: 1, parent_ids: vec![0] });
    let (a, b) = socketpair()?;
    let to_child = Stream::message(&master, "master->child", a)?;
    let to_parent = Stream::message(&child, "child->master", b)?;
    to_parent.set_privileged(true);
    master.register(&master.context_by_id(1), &to_child);
    child.register(&child.context_by_id(0), &to_parent);

    // The child answers every ping on one handle, echoing the number back, until told to stop.
    let child_inbox = Receiver::new(&child)?;
    let inbox_handle = child_inbox.handle();
    let echo = std::thread::spawn(move || {
        for msg in &child_inbox {
            let (n, reply_to): (u32, Sender) = msg.unpickle().expect("ping decodes");
            reply_to.send(&n).expect("pong encodes");
        }
    });

    // The master waits on two receivers at once: pongs, and a side channel of progress notes.
    let pongs = Receiver::new(&master)?;
    let notes = Receiver::new(&master)?;
    let select = Select::new([&pongs, &notes], false)?;
    let child_ctx = master.context_by_id(1);
    let started = Instant::now();
    for n in 0..rounds {
        child_ctx.send(Message::pickled(&(n, pongs.to_sender()), inbox_handle)?);
        if n % (rounds / 4).max(1) == 0 {
            notes.to_sender().send(&format!("sent ping {n}"))?;
        }
    }
    let (mut got, mut sum) = (0u32, 0u64);
    while got < rounds {
        let msg = select.get_timeout(Duration::from_secs(30))?;
        if msg.receiver.as_ref() == Some(&notes) {
            println!("note: {}", msg.unpickle::<String>()?);
        } else {
            sum += u64::from(msg.unpickle::<u32>()?);
            got += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(sum, u64::from(rounds) * u64::from(rounds.saturating_sub(1)) / 2, "every pong came back once");
    println!(
        "{rounds} ping-pongs between context 0 and context 1 in {:.3} s ({:.0} round trips/s, pipelined)",
        elapsed.as_secs_f64(),
        f64::from(rounds) / elapsed.as_secs_f64()
    );

    // Close the child's inbox from the master's side: its loop sees a dead message and ends.
    Sender::new(child_ctx, inbox_handle).close();
    echo.join().expect("echo thread");
    select.close();
    for router in [&child, &master] {
        router.broker().shutdown();
        router.broker().join();
    }
    println!("both brokers shut down cleanly");
    Ok(())
}
