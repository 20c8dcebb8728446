//! Container methods against the real engines (docker, podman, buildah, LXC, LXD) and
//! namespaces (setns), on a test image with no Python and nothing of ours (`tests/containers.rs`,
//! `tests/engines.sh`). kubectl, incus and jexec cannot run here (no cluster; not packaged for
//! Debian 12; FreeBSD only): `tests/stubs/{kubectl,incus,jexec}` stand in for them, check the
//! argv the library builds, and run the boot command in a real podman container.

use std::time::Duration;

use mitogen::core::StreamErrorKind;
use mitogen::master::{
    BuildahOptions, Context, DockerOptions, JailOptions, KubectlOptions, LxcOptions, LxdOptions, Options,
    PodmanOptions, Router, SetnsKind, SetnsOptions,
};
use mitogen_tests::containers::{Container, Engine, IMAGE};
use mitogen_tests::run;

/// `(host name, uid, pid 1's command line, this process's pid, the executable it runs from)`.
fn inside() -> (String, u32, String, u32, String) {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let pid1 = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let pid1 = String::from_utf8_lossy(&pid1).replace('\0', " ").trim().to_owned();
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default();
    (hostname, uid, pid1, std::process::id(), exe)
}

mitogen::remote!(inside);

fn via(ctx: &Context) -> Options {
    Options { via: Some(ctx.clone()), ..Options::default() }
}

/// The context runs in `c`: its host name, and the container's own `sleep infinity` as pid 1.
fn runs_in(ctx: &Context, c: &Container) -> (u32, String) {
    let (hostname, uid, pid1, _, exe) = ctx.call(inside, ()).unwrap();
    assert_eq!(hostname, c.name);
    assert!(pid1.ends_with("sleep infinity"), "pid 1 of the container's PID namespace: {pid1}");
    (uid, exe)
}

fn stub(name: &str) -> std::ffi::OsString {
    format!("{}/stubs/{name}", env!("CARGO_MANIFEST_DIR")).into()
}

#[test]
fn docker_exec_runs_calls_in_the_container_as_root_and_as_another_account() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let c = Container::start(Engine::Docker, "docker");
        let router = Router::new(None).unwrap();
        let root = router.docker(DockerOptions::container(&c.name), Options::default()).unwrap();
        assert_eq!(root.name(), Some(format!("docker.{}", c.name).as_str()));
        let (uid, exe) = runs_in(&root, &c);
        assert_eq!(uid, 0);
        assert!(exe.starts_with("/root/.cache/mitogen/"), "{exe}");
        // nobody's HOME does not exist and docker mounts /dev/shm noexec: the cache falls back
        // to a private dir in /tmp.
        let nobody = DockerOptions { username: Some("nobody".into()), ..DockerOptions::container(&c.name) };
        let ctx = router.docker(nobody, Options::default()).unwrap();
        let (uid, exe) = runs_in(&ctx, &c);
        assert_eq!(uid, 65534);
        assert!(exe.starts_with("/tmp/mitogen-65534/"), "{exe}");
        router.shutdown_and_join();
    });
}

#[test]
fn docker_run_starts_a_temporary_container_from_an_image() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let ctx = router.docker(DockerOptions::image(IMAGE), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("docker.{IMAGE}").as_str()));
        // The boot command is the container's first process, and the context replaced it.
        let (_, uid, _, pid, _) = ctx.call(inside, ()).unwrap();
        assert_eq!((uid, pid), (0, 1));
        ctx.shutdown(true).unwrap();
        router.shutdown_and_join();
    });
}

#[test]
fn a_missing_or_stopped_container_is_a_clear_error_within_connect_timeout() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let options = Options { connect_timeout: Duration::from_secs(20), ..Options::default() };
        let e = router.docker(DockerOptions::container("mt-no-such-container"), options.clone()).unwrap_err();
        assert!(matches!(e.stream_kind_of(), Some(StreamErrorKind::Eof { .. })), "{e}");
        assert!(e.to_string().contains("No such container"), "{e}");
        let c = Container::start(Engine::Docker, "stopped");
        mitogen_tests::containers::sh(&["docker", "stop", "-t", "0", &c.name]);
        let e = router.docker(DockerOptions::container(&c.name), options.clone()).unwrap_err();
        assert!(e.to_string().contains("is not running"), "{e}");
        let e = router.lxc(LxcOptions::new("mt-no-such-container"), options).unwrap_err();
        assert!(e.to_string().contains("Please check the host logs (/var/log)"), "Mitogen's hint: {e}");
        router.shutdown_and_join();
    });
}

#[test]
fn callers_wake_with_an_error_when_the_container_is_killed_mid_call() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let mut c = Container::start(Engine::Docker, "killed");
        let router = Router::new(None).unwrap();
        let ctx = router.docker(DockerOptions::container(&c.name), Options::default()).unwrap();
        crate::callers_wake_with_an_error_after(&ctx, || c.remove());
        router.shutdown_and_join();
    });
}

#[test]
fn master_to_local_to_docker_to_local_chains_through_via() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let c = Container::start(Engine::Docker, "chain");
        let router = Router::new(None).unwrap();
        let local = router.local(Options::default()).unwrap();
        let docker = router.docker(DockerOptions::container(&c.name), via(&local)).unwrap();
        let child = router.local(via(&docker)).unwrap();
        assert!(child.name().unwrap().starts_with(&format!("{}.docker.{}.local.", local.name().unwrap(), c.name)));
        runs_in(&child, &c);
        let (_, _, parents) = child.call(crate::local_whoami, ()).unwrap();
        assert_eq!(parents, vec![docker.context_id(), local.context_id(), 0]);
        router.shutdown_and_join();
    });
}

#[test]
fn podman_and_buildah_run_calls_in_their_containers() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let c = Container::start(Engine::Podman, "podman");
        let router = Router::new(None).unwrap();
        let ctx = router.podman(PodmanOptions::new(&c.name), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("podman.{}", c.name).as_str()));
        assert_eq!(runs_in(&ctx, &c).0, 0);
        let nobody = PodmanOptions { username: Some("nobody".into()), ..PodmanOptions::new(&c.name) };
        assert_eq!(runs_in(&router.podman(nobody, Options::default()).unwrap(), &c).0, 65534);
        let e = router.podman(PodmanOptions::new("mt-no-such-container"), Options::default()).unwrap_err();
        assert!(e.to_string().contains("no such container"), "{e}");

        // buildah runs each command in a fresh process of the working container.
        let b = Container::start(Engine::Buildah, "buildah");
        let ctx = router.buildah(BuildahOptions::new(&b.name), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("buildah.{}", b.name).as_str()));
        assert_eq!(ctx.call(inside, ()).unwrap().1, 0);
        let nobody = BuildahOptions { username: Some("nobody".into()), ..BuildahOptions::new(&b.name) };
        assert_eq!(router.buildah(nobody, Options::default()).unwrap().call(inside, ()).unwrap().1, 65534);
        router.shutdown_and_join();
    });
}

#[test]
fn lxc_and_lxd_run_calls_in_their_containers_and_setns_enters_lxd() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let c = Container::start(Engine::Lxc, "lxc");
        let ctx = router.lxc(LxcOptions::new(&c.name), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("lxc.{}", c.name).as_str()));
        assert_eq!(runs_in(&ctx, &c).0, 0);
        let d = Container::start(Engine::Lxd, "lxd");
        let ctx = router.lxd(LxdOptions::new(&d.name), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("lxd.{}", d.name).as_str()));
        assert_eq!(runs_in(&ctx, &d).0, 0);
        // setns finds LXD's leader with `lxc info` and enters it directly.
        let ctx = router.setns(SetnsOptions::new(&d.name, SetnsKind::Lxd), Options::default()).unwrap();
        assert_eq!(runs_in(&ctx, &d).0, 0);
        router.shutdown_and_join();
    });
}

#[test]
fn setns_enters_docker_and_lxc_containers_and_plain_namespaces_directly() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let d = Container::start(Engine::Docker, "setns-docker");
        let ctx = router.setns(SetnsOptions::new(&d.name, SetnsKind::Docker), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("setns.{}", d.name).as_str()));
        let (uid, exe) = runs_in(&ctx, &d);
        assert_eq!(uid, 0);
        assert!(exe.starts_with("/root/.cache/mitogen/"), "cached inside the container's root: {exe}");
        let nobody = SetnsOptions { username: "nobody".into(), ..SetnsOptions::new(&d.name, SetnsKind::Docker) };
        assert_eq!(runs_in(&router.setns(nobody, Options::default()).unwrap(), &d).0, 65534);

        let l = Container::start(Engine::Lxc, "setns-lxc");
        let ctx = router.setns(SetnsOptions::new(&l.name, SetnsKind::Lxc), Options::default()).unwrap();
        runs_in(&ctx, &l);

        // A stopped container has no leader: a clear error.
        let e = router.setns(SetnsOptions::new("mt-no-such-container", SetnsKind::Docker), Options::default());
        assert!(e.unwrap_err().to_string().contains("mt-no-such-container"));
        router.shutdown_and_join();
    });
}

#[test]
fn the_stub_kubectl_incus_and_jexec_reach_a_real_container() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let c = Container::start(Engine::Podman, "stubs");
        let router = Router::new(None).unwrap();
        let kubectl = KubectlOptions {
            kubectl_path: stub("kubectl"),
            kubectl_args: vec!["--namespace".into(), "default".into()],
            ..KubectlOptions::new(&c.name)
        };
        let ctx = router.kubectl(kubectl, Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("kubectl.{}", c.name).as_str()));
        runs_in(&ctx, &c);
        let incus = LxdOptions { lxc_path: stub("incus"), ..LxdOptions::incus(&c.name) };
        let ctx = router.lxd(incus, Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("incus.{}", c.name).as_str()));
        runs_in(&ctx, &c);
        let jail =
            JailOptions { jexec_path: stub("jexec"), username: Some("nobody".into()), ..JailOptions::new(&c.name) };
        let ctx = router.jail(jail, Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("jail.{}", c.name).as_str()));
        assert_eq!(runs_in(&ctx, &c).0, 65534);
        router.shutdown_and_join();
    });
}

/// The first `tool` on `PATH`.
fn on_path(tool: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').map(|d| format!("{d}/{tool}")).find(|p| std::path::Path::new(p).is_file());
    found.unwrap_or_else(|| panic!("{tool} is not on PATH"))
}

#[test]
fn the_engine_paths_given_are_the_ones_run() {
    // Issue 21: every non-default engine path through a wrapper that records its use:
    // `docker_path`, `podman_path`, `buildah_path`, `lxc_attach_path`, LXD's `lxc_path`, and
    // setns's `docker_path`, `lxc_info_path`, `lxc_path` and `machinectl_path` (machinectl
    // needs systemd-machined, which does not run here: `tests/stubs/machinectl` reports the
    // leader of a podman container, as `machinectl status` would).
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let tmp = mitogen_tests::TempDir::new("engine-paths");
        let used = tmp.path().join("used");
        let wrapper =
            |tool: &str, real: &str| mitogen_tests::recording_wrapper(tmp.path(), tool, real, &used).into_os_string();
        let (docker, podman, buildah, lxc_attach, lxc, lxc_info, machinectl) = (
            wrapper("docker", &on_path("docker")),
            wrapper("podman", &on_path("podman")),
            wrapper("buildah", &on_path("buildah")),
            wrapper("lxc-attach", &on_path("lxc-attach")),
            wrapper("lxc", &on_path("lxc")),
            wrapper("lxc-info", &on_path("lxc-info")),
            wrapper("machinectl", &stub("machinectl").to_string_lossy()),
        );
        let router = Router::new(None).unwrap();
        let (d, p, b) = (
            Container::start(Engine::Docker, "paths-docker"),
            Container::start(Engine::Podman, "paths-podman"),
            Container::start(Engine::Buildah, "paths-buildah"),
        );
        let (l, x) = (Container::start(Engine::Lxc, "paths-lxc"), Container::start(Engine::Lxd, "paths-lxd"));
        let o = Options::default;
        runs_in(
            &router
                .docker(DockerOptions { docker_path: docker.clone(), ..DockerOptions::container(&d.name) }, o())
                .unwrap(),
            &d,
        );
        runs_in(&router.podman(PodmanOptions { podman_path: podman, ..PodmanOptions::new(&p.name) }, o()).unwrap(), &p);
        let ctx =
            router.buildah(BuildahOptions { buildah_path: buildah, ..BuildahOptions::new(&b.name) }, o()).unwrap();
        runs_in_buildah(&ctx, &b);
        runs_in(&router.lxc(LxcOptions { lxc_attach_path: lxc_attach, ..LxcOptions::new(&l.name) }, o()).unwrap(), &l);
        runs_in(&router.lxd(LxdOptions { lxc_path: lxc.clone(), ..LxdOptions::new(&x.name) }, o()).unwrap(), &x);
        let setns = |c: &Container, kind| {
            let setns = SetnsOptions {
                docker_path: docker.clone(),
                lxc_path: lxc.clone(),
                lxc_info_path: lxc_info.clone(),
                machinectl_path: machinectl.clone(),
                ..SetnsOptions::new(&c.name, kind)
            };
            runs_in(&router.setns(setns, o()).unwrap(), c);
        };
        setns(&d, SetnsKind::Docker);
        setns(&l, SetnsKind::Lxc);
        setns(&x, SetnsKind::Lxd);
        setns(&p, SetnsKind::Machinectl);
        let tools = mitogen_tests::recorded_tools(&used);
        let expected = ["docker", "podman", "buildah", "lxc-attach", "lxc", "docker", "lxc-info", "lxc", "machinectl"];
        assert_eq!(tools, expected, "each wrapper ran, once per connect");
        router.shutdown_and_join();
    });
}

/// The context runs in buildah's working container `c`: each `buildah run` is a fresh
/// container whose host name is the start of the working container's id.
fn runs_in_buildah(ctx: &Context, c: &Container) {
    let id = mitogen_tests::containers::sh(&["buildah", "inspect", "--format={{.ContainerID}}", &c.name]);
    let (hostname, uid, ..) = ctx.call(inside, ()).unwrap();
    assert!(hostname.len() >= 12 && id.trim().starts_with(&hostname), "{hostname} in {id}");
    assert_eq!(uid, 0);
}

/// The pid of `c`'s leader, as its engine reports it.
fn leader_of(c: &Container) -> String {
    mitogen_tests::containers::sh(&["docker", "inspect", "--format={{.State.Pid}}", &c.name]).trim().to_owned()
}

#[test]
fn setns_by_pid_enters_the_namespaces_of_that_process() {
    // Issue 21: `SetnsKind::Pid`: no engine is asked; the pid given is the leader.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let d = Container::start(Engine::Docker, "setns-pid");
        let router = Router::new(None).unwrap();
        let pid = leader_of(&d);
        let ctx = router.setns(SetnsOptions::new(&pid, SetnsKind::Pid), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("setns.{pid}").as_str()));
        assert_eq!(runs_in(&ctx, &d).0, 0);
        let nobody = SetnsOptions { username: "nobody".into(), ..SetnsOptions::new(&pid, SetnsKind::Pid) };
        assert_eq!(runs_in(&router.setns(nobody, Options::default()).unwrap(), &d).0, 65534);
        let e = router.setns(SetnsOptions::new("999999999", SetnsKind::Pid), Options::default()).unwrap_err();
        assert!(e.to_string().contains("999999999"), "{e}");
        router.shutdown_and_join();
    });
}

#[test]
fn podman_buildah_lxc_and_lxd_work_through_via() {
    // Issue 21: `via=` for podman, buildah, lxc and lxd: master -> local -> the container.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let local = router.local(Options::default()).unwrap();
        let (p, b) = (Container::start(Engine::Podman, "via-podman"), Container::start(Engine::Buildah, "via-buildah"));
        let (l, x) = (Container::start(Engine::Lxc, "via-lxc"), Container::start(Engine::Lxd, "via-lxd"));
        let parents = |ctx: &Context| ctx.call(crate::local_whoami, ()).unwrap().2;
        let through = |ctx: Context, prefix: &str| {
            assert!(
                ctx.name().unwrap().starts_with(&format!("{}.{prefix}.", local.name().unwrap())),
                "{:?}",
                ctx.name()
            );
            assert_eq!(parents(&ctx), vec![local.context_id(), 0], "its parent is the via context");
            ctx
        };
        runs_in(&through(router.podman(PodmanOptions::new(&p.name), via(&local)).unwrap(), "podman"), &p);
        runs_in_buildah(&through(router.buildah(BuildahOptions::new(&b.name), via(&local)).unwrap(), "buildah"), &b);
        runs_in(&through(router.lxc(LxcOptions::new(&l.name), via(&local)).unwrap(), "lxc"), &l);
        runs_in(&through(router.lxd(LxdOptions::new(&x.name), via(&local)).unwrap(), "lxd"), &x);
        router.shutdown_and_join();
    });
}

#[test]
fn debian_11_and_busybox_containers_get_the_static_build_or_a_clear_error() {
    // Issue 22: a Debian 11 image (glibc 2.31, older than this build needs) and one holding a
    // static busybox alone (no C library): with nothing registered, a NoExecutable error
    // naming the target; with the static build registered, it is chosen and answers there.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Engines)
        || !mitogen_tests::provisioned(mitogen_tests::Needs::StaticBuild)
    {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let images = [
            ("mitogen-test:bullseye", "Linux x86_64, glibc 2.31"),
            ("mitogen-test:busybox", "Linux x86_64, no C library"),
        ];
        // (A static build of this suite fits them itself.)
        for (image, target) in images.into_iter().filter(|_| cfg!(target_env = "gnu")) {
            let e = router.docker(DockerOptions::image(image), Options::default()).unwrap_err();
            let kind = StreamErrorKind::NoExecutable { target: target.into() };
            assert_eq!(e.stream_kind_of(), Some(&kind), "{image}: {e}");
            assert!(e.to_string().contains("cargo build --release --target x86_64-unknown-linux-musl"), "{e}");
        }
        let static_build = mitogen_tests::static_build().unwrap();
        let (_, sha) = mitogen::parent::shipped_digest(&static_build).unwrap();
        router.add_executable(&static_build).unwrap();
        let old = router.docker(DockerOptions::image("mitogen-test:bullseye"), Options::default()).unwrap();
        assert!(old.call(crate::debian_version, ()).unwrap().starts_with("11."), "runs in Debian 11");
        assert!(old.call(inside, ()).unwrap().4.ends_with(&sha), "from the static build");
        let bare = router.docker(DockerOptions::image("mitogen-test:busybox"), Options::default()).unwrap();
        assert_eq!(bare.call(crate::debian_version, ()).unwrap(), "none");
        assert!(!bare.call(crate::has_libc, ()).unwrap(), "no C library there");
        assert!(bare.call(inside, ()).unwrap().4.ends_with(&sha), "from the static build");
        router.shutdown_and_join();
    });
}
