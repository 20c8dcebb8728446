//! Real containers for the container tests, made from the test image `tests/engines.sh`
//! imports (Debian minbase: no Python, nothing of ours), each named after its test and removed
//! when dropped. The engines run for the whole suite (tests/run starts and stops them).

use std::process::{Command, Stdio};

/// The image in docker and podman.
pub const IMAGE: &str = "mitogen-test:bookworm";
/// The image in LXD.
pub const LXD_IMAGE: &str = "mt-bookworm";
/// The root filesystem LXC containers are copied from.
pub const ROOTFS: &str = "/var/lib/mitogen-tests/rootfs";

/// Run a command (at most two minutes), panicking with its output if it fails; returns its
/// stdout.
pub fn sh(argv: &[&str]) -> String {
    // Bounded: an engine that hangs fails the test instead of holding it.
    let out = Command::new("timeout").arg("120").args(argv).stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("{}: {e} (run tests/provision.sh and tests/engines.sh start as root)", argv.join(" "))
    });
    assert!(
        out.status.success(),
        "{} failed ({}): {}{}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which engine runs a [`Container`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `docker run -d ... sleep infinity`.
    Docker,
    /// `podman run -d ... sleep infinity`.
    Podman,
    /// `buildah from` (a working container; nothing runs in it).
    Buildah,
    /// `lxc-start` of a copy of the root filesystem, `sleep infinity` as init.
    Lxc,
    /// `lxc launch` (LXD), privileged, `sleep infinity` as init.
    Lxd,
}

/// A running test container: its name is also its host name.
#[derive(Debug)]
pub struct Container {
    /// The engine.
    pub engine: Engine,
    /// Its name (and host name): `mt-<what>-<pid>`.
    pub name: String,
    removed: bool,
}

impl Container {
    /// Start one named after `what`.
    pub fn start(engine: Engine, what: &str) -> Container {
        let name = format!("mt-{what}-{}", std::process::id());
        let hostname = format!("--hostname={name}");
        match engine {
            Engine::Docker => {
                sh(&["docker", "run", "-d", "--network=none", "--name", &name, &hostname, IMAGE, "sleep", "infinity"]);
            }
            Engine::Podman => {
                let image = format!("localhost/{IMAGE}");
                sh(&["podman", "run", "-d", "--name", &name, &hostname, &image, "sleep", "infinity"]);
            }
            Engine::Buildah => {
                sh(&["buildah", "from", "--name", &name, &format!("localhost/{IMAGE}")]);
            }
            Engine::Lxc => {
                let dir = format!("/var/lib/lxc/{name}");
                std::fs::create_dir_all(&dir).unwrap();
                sh(&["cp", "-a", ROOTFS, &format!("{dir}/rootfs")]);
                let config = format!(
                    "lxc.include = /usr/share/lxc/config/common.conf\nlxc.arch = {}\nlxc.uts.name = {name}\n\
                     lxc.rootfs.path = dir:{dir}/rootfs\nlxc.net.0.type = empty\nlxc.init.cmd = /bin/sleep infinity\n\
                     lxc.apparmor.profile = unconfined\n",
                    std::env::consts::ARCH
                );
                std::fs::write(format!("{dir}/config"), config).unwrap();
                sh(&["lxc-start", "-n", &name]);
                sh(&["lxc-wait", "-n", &name, "-s", "RUNNING", "-t", "30"]);
            }
            Engine::Lxd => {
                sh(&[
                    "lxc",
                    "launch",
                    LXD_IMAGE,
                    &name,
                    "-c",
                    "security.privileged=true",
                    "-c",
                    "raw.lxc=lxc.init.cmd = /bin/sleep infinity",
                ]);
            }
        }
        Container { engine, name, removed: false }
    }

    /// Kill and remove it now (a container that dies).
    pub fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        let n = self.name.as_str();
        let quiet = |argv: &[&str]| {
            let _ = Command::new("timeout").arg("60").args(argv).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        match self.engine {
            Engine::Docker => quiet(&["docker", "rm", "-f", n]),
            Engine::Podman => quiet(&["podman", "rm", "-f", "-t", "0", n]),
            Engine::Buildah => quiet(&["buildah", "rm", n]),
            Engine::Lxc => {
                quiet(&["lxc-stop", "-k", "-n", n]);
                quiet(&["lxc-destroy", "-n", n]);
            }
            Engine::Lxd => quiet(&["lxc", "delete", "-f", n]),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}
