//! A program for the cargo-layout test (issue 32): it starts one child through the command its
//! arguments give (`router.command`) and prints the sha256 of the executable that child runs.
//! Built for this machine by cargo and for `x86_64-unknown-linux-musl` by `tests/builds.sh`,
//! so a target this machine's build does not fit gets the static one, found beside it.

use mitogen::master::{CommandSpec, Options};

/// In the child: the sha256 of the executable it runs.
fn shipped() -> String {
    mitogen::parent::shipped_digest(std::path::Path::new("/proc/self/exe")).map(|(_, sha)| sha).unwrap_or_default()
}
mitogen::remote!(shipped);

fn main() -> Result<(), mitogen::Error> {
    mitogen::init();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    mitogen::main(|router| {
        let child = router.command(CommandSpec { argv, ..Default::default() }, Options::default())?;
        println!("{}", child.call(shipped, ())?);
        Ok(())
    })
}
