//! A real OpenSSH server for the ssh tests: `sshd -D` on a free loopback port with a config of
//! its own, against the keys and accounts `tests/provision.sh` makes. Stopped, with every
//! session process it started, when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mitogen::master::SshOptions;

use crate::TempDir;

/// Where `tests/provision.sh` keeps the test keys.
pub const KEYS: &str = "/var/lib/mitogen-tests/ssh";

/// The client's private key, authorized for the key accounts.
pub fn client_key() -> PathBuf {
    Path::new(KEYS).join("client_ed25519")
}

/// A running `sshd -D` on 127.0.0.1.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    dir: TempDir,
    /// The thread copying sshd's stderr into its log, and its end of file.
    copier: Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>)>,
}

impl Sshd {
    /// Start one with the suite's config.
    pub fn start(what: &str) -> Sshd {
        Sshd::with_config(what, "")
    }

    /// Start one with `extra` lines appended to the suite's config. Ready when sshd says
    /// `Server listening on` on its stderr (`-e`), which a thread of this fixture copies into
    /// [`log`](Sshd::log) for the whole life of the server.
    pub fn with_config(what: &str, extra: &str) -> Sshd {
        let dir = TempDir::new(&format!("sshd-{what}"));
        // A port another test may take between our probe and sshd's bind: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, sshd_config(port, extra)).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sshd (run tests/provision.sh as root)");
            let (ready_tx, ready) = std::sync::mpsc::channel();
            let (done_tx, done) = std::sync::mpsc::channel();
            let (stderr, log) = (child.stderr.take().unwrap(), dir.path().join("sshd.log"));
            let copier = std::thread::spawn(move || {
                let mut out = std::fs::File::create(&log).unwrap();
                for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                    let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
                    if line.starts_with("Server listening on") {
                        let _ = ready_tx.send(());
                    }
                }
                let _ = done_tx.send(());
            });
            // Ready, or the copier ended (sshd exited: the port was taken), or 10 s passed.
            if ready.recv_timeout(Duration::from_secs(10)).is_ok() {
                return Sshd { child, port, dir, copier: Some((copier, done)) };
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = done.recv_timeout(Duration::from_secs(10));
            let _ = copier.join();
            eprintln!(
                "sshd on port {port} did not start: {}",
                std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
            );
        }
        panic!("sshd did not start on any of 5 ports");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `known_hosts` naming this server's key (for `CheckHostKeys::Enforce`).
    pub fn known_hosts(&self) -> PathBuf {
        let path = self.dir.path().join("known_hosts");
        let key = std::fs::read_to_string(Path::new(KEYS).join("host_ed25519.pub")).unwrap();
        let mut words = key.split_whitespace();
        let (kind, blob) = (words.next().unwrap(), words.next().unwrap());
        std::fs::write(&path, format!("[127.0.0.1]:{} {kind} {blob}\n", self.port)).unwrap();
        path
    }

    /// An empty `known_hosts` of this test's own (the key is unknown).
    pub fn empty_known_hosts(&self) -> PathBuf {
        let path = self.dir.path().join("known_hosts.empty");
        std::fs::write(&path, "").unwrap();
        path
    }

    /// Options logging in as `user` with the client key, checking the host key against
    /// [`known_hosts`](Sshd::known_hosts), ignoring root's own ssh config.
    pub fn ssh(&self, user: &str) -> SshOptions {
        SshOptions {
            username: Some(user.into()),
            port: Some(self.port),
            identity_file: Some(client_key()),
            ssh_args: ssh_args(&self.known_hosts()),
            ..SshOptions::new("127.0.0.1")
        }
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Stop (`SIGSTOP`) every session process sshd started, leaving the connections open: a
    /// host that stops answering without closing anything. [`kill`](Sshd::kill) ends them.
    pub fn stop_sessions(&self) {
        for pid in descendants(self.child.id() as i32) {
            // SAFETY: kill has no memory-safety preconditions; the pids were just read.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    }

    /// Kill sshd and every session process it started, at once (a host that dies).
    pub fn kill(&mut self) {
        let tree = descendants(self.child.id() as i32);
        // SAFETY: kill has no memory-safety preconditions; the pids were just read.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        for pid in tree {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        // Every holder of sshd's stderr is gone: the copier reads its end.
        if let Some((copier, done)) = self.copier.take() {
            done.recv_timeout(Duration::from_secs(10)).expect("sshd's stderr closes once its processes are gone");
            let _ = copier.join();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `-F /dev/null` (root's own config does not apply) and the known-hosts file to use.
pub fn ssh_args(known_hosts: &Path) -> Vec<std::ffi::OsString> {
    let known = format!("UserKnownHostsFile={}", known_hosts.display());
    ["-F", "/dev/null", "-o", &known].iter().map(Into::into).collect()
}

fn sshd_config(port: u16, extra: &str) -> String {
    let template = include_str!("sshd_config.in");
    template.replace("@PORT@", &port.to_string()).replace("@KEYS@", KEYS).replace("@EXTRA@", extra)
}

/// Every process below `pid`, read from `/proc`.
fn descendants(pid: i32) -> Vec<i32> {
    let parents = crate::process_parents();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|&&(_, pp)| pp == parent).map(|&(p, _)| p));
        i += 1;
    }
    found.remove(0);
    found
}
