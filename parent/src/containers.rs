//! Container methods (Mitogen `mitogen.docker`, `podman`, `buildah`, `lxc`, `lxd`, `incus`,
//! `jail`, `kubectl`): a context inside a container, started through the engine's own tool.
//! Each is an argv builder over the generic method with stdio merged onto one socket: with a
//! terminal on any descriptor, these tools put a proxy PTY of their own in between, which
//! buffers and mangles the protocol. The executable ships itself into the container and is
//! cached there per account, as on any target.

use std::ffi::OsString;

use mitogen_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::command::{Bootstrapped, Launch};
use crate::connect::Deadline;
use crate::transport::Transport;

/// Mitogen's hint on an LXC or LXD tool's early end: they report a failed start poorly.
const LXC_HINT: &str = "Note: many versions of LXC do not report program execution failure meaningfully. \
     Please check the host logs (/var/log) for more information.";

/// `argv` and the boot command on merged stdio, named `name`, shipping the executable
/// compressed (a client that may reach another machine: kubectl, lxd, incus).
fn tool(argv: Vec<OsString>, name: String) -> Launch<'static> {
    Launch { name: Some(name), ..Launch::new(argv, Transport::Merged) }
}

/// [`tool`] for an engine on this machine (lxc-attach, jexec; docker and podman
/// unless `host_env`, the variable that points their client at an engine, names one that is
/// not a local socket: `tcp://`, `ssh://`): the executable ships uncompressed.
fn local_tool(argv: Vec<OsString>, name: String, host_env: Option<&str>) -> Launch<'static> {
    let remote = host_env.and_then(std::env::var_os).is_some_and(|host| names_remote_engine(&host));
    Launch { compress: remote, ..tool(argv, name) }
}

/// Whether `DOCKER_HOST` or `CONTAINER_HOST` set to `host` points the client at an engine
/// elsewhere (`tcp://`, `ssh://`), not at a local socket (`unix://`) or the default (empty).
fn names_remote_engine(host: &std::ffi::OsStr) -> bool {
    !host.is_empty() && !host.to_string_lossy().starts_with("unix://")
}

fn words<const N: usize>(w: [&str; N]) -> Vec<OsString> {
    w.iter().map(OsString::from).collect()
}

/// `docker()` (Mitogen `Router.docker()`): in a running container (`docker exec`), or in a new
/// one from an image, removed when the context ends (`docker run --rm`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerOptions {
    /// An existing, running container.
    pub container: Option<String>,
    /// An image to start a temporary container from (when `container` is `None`).
    pub image: Option<String>,
    /// The docker program; default `docker`.
    pub docker_path: OsString,
    /// The account inside the container (`--user`); default: the image's.
    pub username: Option<String>,
}

impl DockerOptions {
    /// Options for the running `container`.
    pub fn container(container: impl Into<String>) -> DockerOptions {
        DockerOptions { container: Some(container.into()), image: None, docker_path: "docker".into(), username: None }
    }

    /// Options for a temporary container from `image`.
    pub fn image(image: impl Into<String>) -> DockerOptions {
        DockerOptions { image: Some(image.into()), container: None, docker_path: "docker".into(), username: None }
    }

    /// `docker.<container or image>`.
    pub fn default_name(&self) -> String {
        format!("docker.{}", self.container.as_deref().or(self.image.as_deref()).unwrap_or_default())
    }

    /// `docker exec --interactive [--user=U] <container>` or `docker run --interactive
    /// [--user=U] --rm <image>`; the boot command follows.
    ///
    /// # Errors
    /// A `StreamError` unless exactly one of `container` and `image` is given.
    pub fn argv(&self) -> Result<Vec<OsString>> {
        let mut argv = vec![self.docker_path.clone()];
        let mut common = words(["--interactive"]);
        if let Some(u) = &self.username {
            common.push(format!("--user={u}").into());
        }
        match (&self.container, &self.image) {
            (Some(c), None) => {
                argv.push("exec".into());
                argv.extend(common);
                argv.push(c.into());
            }
            (None, Some(i)) => {
                argv.push("run".into());
                argv.extend(common);
                argv.extend(words(["--rm", i]));
            }
            _ => return Err(Error::stream("docker: give exactly one of container and image")),
        }
        Ok(argv)
    }
}

impl Bootstrapped for DockerOptions {
    /// A `StreamError` for conflicting options; an `Eof` one with what docker printed (`No such
    /// container`, ...).
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(local_tool(self.argv()?, self.default_name(), Some("DOCKER_HOST")))
    }
}

/// `podman()` (current Mitogen's `Router.podman()`): in a running container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodmanOptions {
    /// The container.
    pub container: String,
    /// The podman program; default `podman`.
    pub podman_path: OsString,
    /// The account inside the container (`--user`).
    pub username: Option<String>,
}

impl PodmanOptions {
    /// Options for `container`.
    pub fn new(container: impl Into<String>) -> PodmanOptions {
        PodmanOptions { container: container.into(), podman_path: "podman".into(), username: None }
    }

    /// `podman exec [--user=U] --interactive -- <container>`; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.podman_path.clone(), "exec".into()];
        if let Some(u) = &self.username {
            argv.push(format!("--user={u}").into());
        }
        argv.extend(words(["--interactive", "--", &self.container]));
        argv
    }
}

impl Bootstrapped for PodmanOptions {
    /// In a running container.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(local_tool(self.argv(), format!("podman.{}", self.container), Some("CONTAINER_HOST")))
    }
}

/// `buildah()` (current Mitogen's `Router.buildah()`): in a working container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildahOptions {
    /// The working container.
    pub container: String,
    /// The buildah program; default `buildah`.
    pub buildah_path: OsString,
    /// The account inside the container (`--user`).
    pub username: Option<String>,
}

impl BuildahOptions {
    /// Options for `container`.
    pub fn new(container: impl Into<String>) -> BuildahOptions {
        BuildahOptions { container: container.into(), buildah_path: "buildah".into(), username: None }
    }

    /// `buildah run [--user=U] -- <container>`; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.buildah_path.clone(), "run".into()];
        if let Some(u) = &self.username {
            argv.push(format!("--user={u}").into());
        }
        argv.extend(words(["--", &self.container]));
        argv
    }
}

impl Bootstrapped for BuildahOptions {
    /// In a fresh process of the working container.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        // Compressed, though on this machine: once the container's reader lags, `buildah run`
        // buffers its stdin and drains it into the container's pipe one pipe-full per 100 ms
        // poll timeout (about 640 KB/s; measured: 21 MB through a socket in 11.6 s, 35 s with
        // a slow reader), so the fewest bytes win over skipping `gzip -d`.
        Ok(tool(self.argv(), format!("buildah.{}", self.container)))
    }
}

/// `lxc()` (Mitogen `Router.lxc()`): in a running LXC container, through `lxc-attach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LxcOptions {
    /// The container.
    pub container: String,
    /// The lxc-attach program; default `lxc-attach`.
    pub lxc_attach_path: OsString,
}

impl LxcOptions {
    /// Options for `container`.
    pub fn new(container: impl Into<String>) -> LxcOptions {
        LxcOptions { container: container.into(), lxc_attach_path: "lxc-attach".into() }
    }

    /// `lxc-attach --clear-env --name <container> --`; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.lxc_attach_path.clone()];
        argv.extend(words(["--clear-env", "--name", &self.container, "--"]));
        argv
    }
}

impl Bootstrapped for LxcOptions {
    /// An early end carries Mitogen's hint to look in the host's logs.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(Launch { eof_hint: Some(LXC_HINT), ..local_tool(self.argv(), format!("lxc.{}", self.container), None) })
    }
}

/// `lxd()` (Mitogen `Router.lxd()`), and `incus()` with [`LxdOptions::incus`]: in a running
/// LXD (or Incus) instance, through its client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LxdOptions {
    /// The instance.
    pub container: String,
    /// The client program; default `lxc` (LXD's client), `incus` for Incus.
    pub lxc_path: OsString,
    /// Incus spells the mode `non-interactive`; LXD `noninteractive`.
    pub incus: bool,
}

impl LxdOptions {
    /// Options for the LXD instance `container`.
    pub fn new(container: impl Into<String>) -> LxdOptions {
        LxdOptions { container: container.into(), lxc_path: "lxc".into(), incus: false }
    }

    /// Options for the Incus instance `container` (current Mitogen's `Router.incus()`).
    pub fn incus(container: impl Into<String>) -> LxdOptions {
        LxdOptions { container: container.into(), lxc_path: "incus".into(), incus: true }
    }

    /// `lxc exec --mode=noninteractive <container> --` (`incus exec --mode=non-interactive`);
    /// the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mode = if self.incus { "--mode=non-interactive" } else { "--mode=noninteractive" };
        let mut argv = vec![self.lxc_path.clone()];
        argv.extend(words(["exec", mode, &self.container, "--"]));
        argv
    }
}

impl Bootstrapped for LxdOptions {
    /// An early end carries Mitogen's hint to look in the host's logs.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        let name = format!("{}.{}", if self.incus { "incus" } else { "lxd" }, self.container);
        Ok(Launch { eof_hint: Some(LXC_HINT), ..tool(self.argv(), name) })
    }
}

/// `jail()` (Mitogen `Router.jail()`): in a FreeBSD jail, through `jexec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailOptions {
    /// The jail.
    pub container: String,
    /// The jexec program; default `/usr/sbin/jexec`.
    pub jexec_path: OsString,
    /// The account inside the jail (`-U`).
    pub username: Option<String>,
}

impl JailOptions {
    /// Options for `container`.
    pub fn new(container: impl Into<String>) -> JailOptions {
        JailOptions { container: container.into(), jexec_path: "/usr/sbin/jexec".into(), username: None }
    }

    /// `jexec [-U <user>] <jail>`; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.jexec_path.clone()];
        if let Some(u) = &self.username {
            argv.extend(words(["-U", u]));
        }
        argv.push(self.container.clone().into());
        argv
    }
}

impl Bootstrapped for JailOptions {
    /// In a FreeBSD jail.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(local_tool(self.argv(), format!("jail.{}", self.container), None))
    }
}

/// `kubectl()` (Mitogen `Router.kubectl()`): in a Kubernetes pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubectlOptions {
    /// The pod.
    pub pod: String,
    /// The kubectl program; default `kubectl`.
    pub kubectl_path: OsString,
    /// Words before `exec`: `--context`, `--namespace`, `--container`, ...
    pub kubectl_args: Vec<OsString>,
}

impl KubectlOptions {
    /// Options for `pod`.
    pub fn new(pod: impl Into<String>) -> KubectlOptions {
        KubectlOptions { pod: pod.into(), kubectl_path: "kubectl".into(), kubectl_args: Vec::new() }
    }

    /// `kubectl <kubectl_args> exec -it <pod> --`; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.kubectl_path.clone()];
        argv.extend(self.kubectl_args.iter().cloned());
        argv.extend(words(["exec", "-it", &self.pod, "--"]));
        argv
    }
}

impl Bootstrapped for KubectlOptions {
    /// In a Kubernetes pod.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(tool(self.argv(), format!("kubectl.{}", self.pod)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(argv: Vec<OsString>) -> String {
        argv.iter().map(|w| w.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn an_engine_behind_a_local_socket_is_local_and_one_over_tcp_or_ssh_is_not() {
        for (host, remote) in [
            ("", false),
            ("unix:///run/mitogen-tests/docker.sock", false),
            ("tcp://10.0.0.2:2376", true),
            ("ssh://user@host", true),
        ] {
            assert_eq!(names_remote_engine(host.as_ref()), remote, "{host:?}");
        }
    }

    #[test]
    fn every_tools_argv_is_mitogens() {
        let user = |mut o: DockerOptions| {
            o.username = Some("u".into());
            o
        };
        assert_eq!(shown(DockerOptions::container("c").argv().unwrap()), "docker exec --interactive c");
        assert_eq!(shown(user(DockerOptions::container("c")).argv().unwrap()), "docker exec --interactive --user=u c");
        assert_eq!(shown(user(DockerOptions::image("i")).argv().unwrap()), "docker run --interactive --user=u --rm i");
        assert!(DockerOptions { image: Some("i".into()), ..DockerOptions::container("c") }.argv().is_err());
        assert_eq!(DockerOptions::image("i").default_name(), "docker.i");
        let podman = PodmanOptions { username: Some("u".into()), ..PodmanOptions::new("c") };
        assert_eq!(shown(podman.argv()), "podman exec --user=u --interactive -- c");
        let buildah = BuildahOptions { username: Some("u".into()), ..BuildahOptions::new("c") };
        assert_eq!(shown(buildah.argv()), "buildah run --user=u -- c");
        assert_eq!(shown(LxcOptions::new("c").argv()), "lxc-attach --clear-env --name c --");
        assert_eq!(shown(LxdOptions::new("c").argv()), "lxc exec --mode=noninteractive c --");
        assert_eq!(shown(LxdOptions::incus("c").argv()), "incus exec --mode=non-interactive c --");
        let jail = JailOptions { username: Some("u".into()), ..JailOptions::new("j") };
        assert_eq!(shown(jail.argv()), "/usr/sbin/jexec -U u j");
        let kubectl = KubectlOptions { kubectl_args: vec!["-n".into(), "ns".into()], ..KubectlOptions::new("p") };
        assert_eq!(shown(kubectl.argv()), "kubectl -n ns exec -it p --");
    }
}
