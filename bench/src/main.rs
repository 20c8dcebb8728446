//! The Rust half of `bench/run`: the same scenarios as `bench/python_bench.py`, printed as one
//! JSON object per measure on stdout, plus the floors measured on this machine in the same run.
//!
//! `mitogen-bench [SCENARIO ...]`; with no argument every scenario runs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use mitogen::core::Blob;
use mitogen::master::{Context, Options};
use mitogen::select::Select;

fn noop() {}

fn getpid() -> u32 {
    std::process::id()
}

/// Returns shared, cached bytes without copying them, as Python returns its cached object.
fn bulk_return(n: u64) -> Arc<Blob> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<Blob>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    cache.lock().unwrap().entry(n).or_insert_with(|| Arc::new(Blob(vec![b'x'; n as usize]))).clone()
}

fn bulk_arg(b: Blob) -> u64 {
    b.0.len() as u64
}

fn fails() -> Result<(), std::io::Error> {
    Err(std::io::Error::other("boom"))
}

mitogen::remote!(noop, getpid, bulk_return, bulk_arg, fails);

/// Print one measure: median, min and max of `samples`.
fn emit(measure: &str, samples: &mut [f64], unit: &str) {
    // A build other than this machine's own (bench/run runs the static one too) names its rows.
    let suffix = std::env::var("MITOGEN_BENCH_SUFFIX").unwrap_or_default();
    let measure = format!("{measure}{suffix}");
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
    println!(
        "{{\"impl\": \"rust\", \"measure\": \"{measure}\", \"median\": {median:e}, \"min\": {:e}, \"max\": {:e}, \"unit\": \"{unit}\", \"samples\": {n}}}",
        samples[0],
        samples[n - 1]
    );
    std::io::stdout().flush().unwrap();
}

fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t0 = Instant::now();
    let out = f();
    (t0.elapsed().as_secs_f64(), out)
}

/// `(VmRSS, Pss)` of `pid` in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let field = |path: String, key: &str| -> f64 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    (field(format!("/proc/{pid}/status"), "VmRSS:"), field(format!("/proc/{pid}/smaps_rollup"), "Pss:"))
}

/// `count` connects, each with one call and a shutdown; `before` runs, untimed, before each
/// (emptying a cache for a cold start). Prints `measure` and, with `bytes`, the executable
/// bytes each connect sent on average (`<bytes>_executable_bytes_sent`).
fn connects(
    measure: &str,
    bytes: bool,
    count: usize,
    mut before: impl FnMut(usize) -> R,
    connect: impl Fn(usize) -> Result<Context, mitogen::Error>,
) -> R {
    let sent = mitogen::parent::bootstrap_stats().bytes_sent;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        before(i)?;
        let (t, ctx) = timed(|| connect(i).and_then(|ctx| ctx.call(noop, ()).map(|()| ctx)));
        samples.push(t);
        ctx?.shutdown(true)?;
    }
    emit(measure, &mut samples, "s");
    if bytes {
        let per = (mitogen::parent::bootstrap_stats().bytes_sent - sent) as f64 / count as f64;
        emit(&format!("{}_executable_bytes_sent", measure.trim_end_matches("_s")), &mut [per], "bytes");
    }
    Ok(())
}

/// `calls` calls of `call`, each moving 1 MiB (64 MiB when `calls` is 1): one untimed run (the
/// first touch of fresh memory), then `runs` timed ones, as `measure` in MB/s.
fn throughput(measure: &str, calls: u32, runs: usize, call: &dyn Fn() -> R) -> R {
    const MIB: f64 = (1 << 20) as f64;
    let bytes = f64::from(calls) * if calls == 1 { 64.0 * MIB } else { MIB };
    let run = || -> Result<f64, mitogen::Error> {
        let (t, r) = timed(|| (0..calls).try_for_each(|_| call()));
        r?;
        Ok(bytes / t / 1e6)
    };
    run()?;
    let mut rates = (0..runs).map(|_| run()).collect::<Result<Vec<f64>, _>>()?;
    emit(measure, &mut rates, "MB/s");
    Ok(())
}

/// 100 untimed calls, then `count` timed `call(noop)`s: the round trip, as `measure`.
fn roundtrips(ctx: &Context, count: usize, measure: &str) -> R {
    for _ in 0..100 {
        ctx.call(noop, ())?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let (t, r) = timed(|| ctx.call(noop, ()));
        r?;
        samples.push(t);
    }
    emit(measure, &mut samples, "s");
    Ok(())
}

type R = Result<(), mitogen::Error>;

fn bootstrap() -> R {
    mitogen::utils::run_with_router(|router| {
        connects("bootstrap_s", false, 20, |_| Ok(()), |_| router.local(Options::default()))
    })
}

/// The generic command method through `sh`: with a cold cache (a fresh cache directory each
/// time: stage 1, the gzip of this executable and its transfer) and a warm one (stage 1 finds
/// the cached copy; no executable bytes cross). Python Mitogen's `local()` runs its first stage
/// and ships its core source every time, so it is the counterpart of both.
fn command() -> R {
    mitogen::utils::run_with_router(|router| {
        let root = std::env::temp_dir().join(format!("mitogen-bench-command-{}", std::process::id()));
        // `env` runs on this machine: the executable ships uncompressed, as sudo's and the
        // local container engines' do (`_gzip`: compressed, as for a command that may cross a
        // network).
        let spec = |dir: &std::path::Path, uncompressed: bool| mitogen::master::CommandSpec {
            argv: vec!["env".into(), format!("XDG_CACHE_HOME={}", dir.display()).into()],
            uncompressed,
            ..Default::default()
        };
        let connect = |dir: &std::path::Path| router.command(spec(dir, true), Options::default());
        let gzip = |dir: &std::path::Path| router.command(spec(dir, false), Options::default());
        // The first connect of a process reads (and strips) the executable, the first
        // compressed one compresses it: measured once each, then later cold connects reuse it.
        connects("command_first_cold_s", true, 1, |_| Ok(()), |_| connect(&root.join("warm-up")))?;
        connects("command_first_cold_gzip_s", true, 1, |_| Ok(()), |_| gzip(&root.join("first-gzip")))?;
        connects("command_cold_s", true, 5, |_| Ok(()), |i| connect(&root.join(format!("cold-{i}"))))?;
        connects("command_cold_gzip_s", true, 5, |_| Ok(()), |i| gzip(&root.join(format!("cold-gzip-{i}"))))?;
        connects("command_warm_s", true, 20, |_| Ok(()), |_| connect(&root.join("warm-up")))?;
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    })
}

/// Targets this machine's own build does not fit (issue 32), through `chroot` (root): the
/// Debian 11 root (glibc 2.31: the static x86_64 build ships, found in cargo's layout beside
/// this one) and the arm64 root (qemu-user: the aarch64 build), cold (a fresh cache) and warm,
/// and the round trip there; then the size of each build, raw and as shipped (gzip level 1).
fn reach() -> R {
    let roots = std::env::var("MITOGEN_BENCH_ROOTS").unwrap_or_else(|_| "/var/lib/mitogen-tests".into());
    mitogen::utils::run_with_router(|router| {
        for (name, root, cold, warm) in [("debian11", "bullseye", 5, 20), ("arm64", "arm64", 3, 5)] {
            let root = std::path::Path::new(&roots).join(root);
            if !root.join("bin").exists() {
                eprintln!("reach: no {} (tests/provision.sh makes it): skipped", root.display());
                continue;
            }
            // The cache lives inside the root, a fresh directory per cold connect.
            let spec = |cache: &str| mitogen::master::CommandSpec {
                argv: vec![
                    "chroot".into(),
                    root.clone().into(),
                    "env".into(),
                    format!("XDG_CACHE_HOME=/tmp/mitogen-bench-{}-{cache}", std::process::id()).into(),
                ],
                ..Default::default()
            };
            let connect = |cache: &str| router.command(spec(cache), Options::default());
            connects(&format!("reach_{name}_cold_s"), true, cold, |_| Ok(()), |i| connect(&format!("cold-{i}")))?;
            connect("warm")?.shutdown(true)?;
            connects(&format!("reach_{name}_warm_s"), false, warm, |_| Ok(()), |_| connect("warm"))?;
            let ctx = connect("warm")?;
            roundtrips(&ctx, if name == "arm64" { 200 } else { 2000 }, &format!("reach_{name}_roundtrip_s"))?;
            ctx.shutdown(true)?;
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("rm -rf {}/tmp/mitogen-bench-{}-*", root.display(), std::process::id())])
                .status();
        }
        Ok(())
    })?;
    // What each build weighs: this one, and those beside it in cargo's layout.
    let own = std::fs::read_link("/proc/self/exe").map_err(|e| mitogen::Error::general(e.to_string()))?;
    let (profile, target) = (own.parent().unwrap(), own.parent().and_then(|p| p.parent()).unwrap());
    let builds = [("own", own.clone())].into_iter().chain(
        ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"]
            .map(|t| (t, target.join(t).join(profile.file_name().unwrap()).join(own.file_name().unwrap()))),
    );
    for (name, path) in builds {
        let Ok(data) = std::fs::read(&path) else { continue };
        let gz = std::process::Command::new("sh")
            .args(["-c", "gzip -1 -c \"$0\" | wc -c", &path.display().to_string()])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        let name = name.replace("-unknown-linux-", "_");
        emit(&format!("build_{name}_bytes"), &mut [data.len() as f64], "bytes");
        emit(&format!("build_{name}_gzip_bytes"), &mut [gz], "bytes");
        // What a target gets: the build without its debug sections.
        if let Ok((shipped, _)) = mitogen::parent::shipped_digest(&path) {
            emit(&format!("build_{name}_shipped_bytes"), &mut [shipped as f64], "bytes");
        }
    }
    Ok(())
}

/// Remove a directory tree (the fan-out's caches, as the account that made them).
fn remove_tree(path: String) {
    let _ = std::fs::remove_dir_all(path);
}
mitogen::remote!(remove_tree);

/// The bench's sshd (started by `bench/run`): port, client key and known-hosts file.
struct SshTarget {
    port: u16,
    key: String,
    known_hosts: String,
}

impl SshTarget {
    fn from_env() -> Result<SshTarget, mitogen::Error> {
        let var = |k: &str| {
            std::env::var(k).map_err(|_| mitogen::Error::general(format!("{k} is not set (bench/run sets it)")))
        };
        let port = var("MITOGEN_BENCH_SSH_PORT")?.parse().map_err(|_| mitogen::Error::general("bad port"))?;
        Ok(SshTarget { port, key: var("MITOGEN_BENCH_SSH_KEY")?, known_hosts: var("MITOGEN_BENCH_SSH_KNOWN")? })
    }

    /// ssh's own options for this target, as the library passes them.
    fn args(&self, extra: &[String]) -> Vec<String> {
        let mut args: Vec<String> = ["-F", "/dev/null", "-o"].map(String::from).to_vec();
        args.push(format!("UserKnownHostsFile={}", self.known_hosts));
        args.extend_from_slice(extra);
        args
    }

    fn options(&self, compression: bool, extra: &[String]) -> mitogen::master::SshOptions {
        mitogen::master::SshOptions {
            username: Some("mitogen-key".into()),
            port: Some(self.port),
            identity_file: Some(self.key.clone().into()),
            compression,
            ssh_args: self.args(extra).into_iter().map(Into::into).collect(),
            ..mitogen::master::SshOptions::new("127.0.0.1")
        }
    }

    /// `ssh ... 127.0.0.1 <command>` as a user would type it.
    fn command(&self, compression: bool, extra: &[String], remote: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(self.args(extra)).args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", &self.key]);
        cmd.args(["-o", if compression { "Compression=yes" } else { "Compression=no" }]);
        cmd.args(["-p", &self.port.to_string(), "mitogen-key@127.0.0.1", remote]);
        cmd
    }
}

/// `n` bytes that do not compress (xorshift), so compression is measured at its cost.
fn incompressible(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Through the system's ssh to a real sshd on loopback (`bench/run` starts it), as Python
/// Mitogen's `ssh()` is measured over the same server: bootstrap to the first call with a
/// cold executable cache (the account's cache emptied each time), a warm one, and a warm one
/// over an open ControlMaster; round trip; pipelined calls; 1 MiB and 64 MiB arguments with
/// ssh's compression on and off. Floors: `ssh host true` (also over the ControlMaster) and a
/// raw `cat` of the same bytes over ssh.
fn ssh() -> R {
    let target = SshTarget::from_env()?;
    let home_cache = "/home/mitogen-key/.cache/mitogen";
    let cm_dir = std::env::temp_dir().join(format!("mitogen-bench-cm-{}", std::process::id()));
    std::fs::create_dir_all(&cm_dir).map_err(|e| mitogen::Error::general(e.to_string()))?;
    let cm: Vec<String> = ["ControlMaster=auto", &format!("ControlPath={}/%C", cm_dir.display()), "ControlPersist=60"]
        .iter()
        .flat_map(|o| ["-o".to_owned(), o.to_string()])
        .collect();
    let run_ssh = |extra: &[String], remote: &str| -> Result<(), mitogen::Error> {
        let status =
            target.command(true, extra, remote).status().map_err(|e| mitogen::Error::general(e.to_string()))?;
        status.success().then_some(()).ok_or_else(|| mitogen::Error::general(format!("ssh {remote}: {status}")))
    };
    // Floors.
    run_ssh(&[], "true")?;
    let mut samples = (0..20).map(|_| timed(|| run_ssh(&[], "true")).0).collect::<Vec<_>>();
    emit("floor_ssh_true_s", &mut samples, "s");
    run_ssh(&cm, "true")?; // opens the master
    let mut samples = (0..20).map(|_| timed(|| run_ssh(&cm, "true")).0).collect::<Vec<_>>();
    emit("floor_ssh_controlmaster_true_s", &mut samples, "s");
    const MIB: usize = 1 << 20;
    let big = incompressible(64 * MIB);
    for compression in [false, true] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            // Timed from the remote shell's first word, so ssh's own connect is not counted.
            let mut child = target
                .command(compression, &[], "echo ready; exec cat > /dev/null")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| mitogen::Error::general(e.to_string()))?;
            let mut ready = [0u8; 6];
            child.stdout.take().unwrap().read_exact(&mut ready).map_err(|e| mitogen::Error::general(e.to_string()))?;
            let t0 = Instant::now();
            child.stdin.take().unwrap().write_all(&big).map_err(|e| mitogen::Error::general(e.to_string()))?;
            child.wait().map_err(|e| mitogen::Error::general(e.to_string()))?;
            rates.push(big.len() as f64 / t0.elapsed().as_secs_f64() / 1e6);
        }
        let z = if compression { "zlib" } else { "plain" };
        emit(&format!("floor_ssh_cat_64mib_{z}_MBps"), &mut rates, "MB/s");
    }

    let result = mitogen::utils::run_with_router(|router| {
        let connect =
            |compression: bool, extra: &[String]| router.ssh(target.options(compression, extra), Options::default());
        connect(true, &[])?.shutdown(true)?; // compresses this executable once
        let empty_cache = |_| {
            let _ = std::fs::remove_dir_all(home_cache);
            Ok(())
        };
        connects("ssh_cold_s", true, 5, empty_cache, |_| connect(true, &[]))?;
        connects("ssh_warm_s", true, 20, |_| Ok(()), |_| connect(true, &[]))?;
        connects("ssh_controlmaster_warm_s", false, 20, |_| Ok(()), |_| connect(true, &cm))?;

        for compression in [false, true] {
            let z = if compression { "zlib" } else { "plain" };
            let ctx = connect(compression, &[])?;
            if !compression {
                roundtrips(&ctx, 2000, "ssh_roundtrip_s")?;
                let mut rates = Vec::new();
                for _ in 0..3 {
                    let (t, r) = timed(|| -> R {
                        let recvs = (0..10_000).map(|_| ctx.call_async(noop, ())).collect::<Result<Vec<_>, _>>()?;
                        recvs.into_iter().try_for_each(|r| r.get()?.unpickle::<()>())
                    });
                    r?;
                    rates.push(10_000.0 / t);
                }
                emit("ssh_pipelined_calls_per_s", &mut rates, "calls/s");
            }
            let one = (Blob(incompressible(MIB)),);
            let big = (Blob(big.clone()),);
            let cases: [(String, u32, &dyn Fn() -> R); 2] = [
                (format!("ssh_bulk_arg_1mib_x64_{z}_MBps"), 64, &|| ctx.call(bulk_arg, &one).map(drop)),
                (format!("ssh_bulk_arg_64mib_{z}_MBps"), 1, &|| ctx.call(bulk_arg, &big).map(drop)),
            ];
            for (name, calls, call) in cases {
                throughput(&name, calls, 3, call)?;
            }
            ctx.shutdown(true)?;
        }

        // A cold fan-out through one intermediate (issue 23): the ssh context, its account's
        // cache emptied, then 20 children it starts with `command`, each with an empty cache
        // of its own. The intermediate ships them its own executable: the first link carries
        // the build once, for the intermediate, and then only messages.
        empty_cache(0)?;
        let fan_root = format!("/tmp/mitogen-bench-fanout-{}", std::process::id());
        let shipped = mitogen::parent::bootstrap_stats().bytes_sent;
        let (t, fan) = timed(|| -> Result<u64, mitogen::Error> {
            let mid = connect(true, &[])?;
            let via = Options { via: Some(mid.clone()), ..Options::default() };
            for i in 0..20 {
                let spec = mitogen::master::CommandSpec {
                    argv: vec!["env".into(), format!("XDG_CACHE_HOME={fan_root}/{i}").into()],
                    uncompressed: true,
                    ..Default::default()
                };
                router.command(spec, via.clone())?.call(noop, ())?;
            }
            let stats = router.get_stats();
            let link = stats.streams.iter().find(|s| s.remote_id == Some(mid.context_id()));
            // Stage 1's bytes (the build, for the intermediate), then the stream's.
            let bytes = mitogen::parent::bootstrap_stats().bytes_sent - shipped + link.map_or(0, |s| s.stats.bytes_out);
            mid.call(remove_tree, (fan_root.clone(),))?;
            mid.shutdown(true)?;
            Ok(bytes)
        });
        emit("ssh_fanout20_cold_s", &mut [t], "s");
        emit("ssh_fanout20_first_link_bytes", &mut [fan? as f64], "bytes");
        Ok(())
    });
    let mut exit = std::process::Command::new("ssh");
    exit.args(target.args(&cm)).args(["-O", "exit", "-p", &target.port.to_string(), "mitogen-key@127.0.0.1"]);
    let _ = exit.output();
    let _ = std::fs::remove_dir_all(&cm_dir);
    result
}

/// Through `sudo -u mitogen-key` from root (no password is asked), as Python Mitogen's `sudo()`
/// is measured: bootstrap to the first call with the account's cache emptied each time (cold)
/// and kept (warm), the round trip, and the floor `sudo -u mitogen-key true`.
fn sudo() -> R {
    let home_cache = "/home/mitogen-key/.cache/mitogen";
    let sudo_true = || -> R {
        let status = std::process::Command::new("sudo")
            .args(["-u", "mitogen-key", "--", "true"])
            .status()
            .map_err(|e| mitogen::Error::general(e.to_string()))?;
        status.success().then_some(()).ok_or_else(|| mitogen::Error::general(format!("sudo true: {status}")))
    };
    sudo_true()?;
    let mut samples = (0..20).map(|_| timed(sudo_true).0).collect::<Vec<_>>();
    emit("floor_sudo_true_s", &mut samples, "s");
    mitogen::utils::run_with_router(|router| {
        let connect = |_| router.sudo(mitogen::master::SudoOptions::new("mitogen-key"), Options::default());
        connect(0)?.shutdown(true)?; // compresses this executable once
        let empty_cache = |_| {
            let _ = std::fs::remove_dir_all(home_cache);
            Ok(())
        };
        connects("sudo_cold_s", false, 5, empty_cache, connect)?;
        connects("sudo_warm_s", false, 20, |_| Ok(()), connect)?;
        roundtrips(&connect(0)?, 2000, "sudo_roundtrip_s")?;
        Ok(())
    })
}

/// Into a running docker and podman container (`bench/run` starts them from an image that also
/// has Python, for Python Mitogen's side): bootstrap to the first call with the container's
/// cache emptied each time (cold) and kept (warm), the round trip, and the floor `<tool> exec
/// <container> true`.
fn containers() -> R {
    for tool in ["docker", "podman"] {
        let var = format!("MITOGEN_BENCH_{}", tool.to_uppercase());
        let name = std::env::var(&var).map_err(|_| mitogen::Error::general(format!("{var} is not set (bench/run)")))?;
        let exec = |args: &[&str]| -> R {
            let status = std::process::Command::new(tool)
                .arg("exec")
                .arg(&name)
                .args(args)
                .status()
                .map_err(|e| mitogen::Error::general(e.to_string()))?;
            status.success().then_some(()).ok_or_else(|| mitogen::Error::general(format!("{tool} exec: {status}")))
        };
        exec(&["true"])?;
        let mut samples = (0..20).map(|_| timed(|| exec(&["true"])).0).collect::<Vec<_>>();
        emit(&format!("floor_{tool}_exec_true_s"), &mut samples, "s");
        mitogen::utils::run_with_router(|router| {
            let connect = |_| match tool {
                "docker" => router.docker(mitogen::master::DockerOptions::container(&name), Options::default()),
                _ => router.podman(mitogen::master::PodmanOptions::new(&name), Options::default()),
            };
            connect(0)?.shutdown(true)?; // compresses this executable once
            let empty_cache = |_| exec(&["rm", "-rf", "/root/.cache/mitogen"]);
            connects(&format!("{tool}_cold_s"), false, 5, empty_cache, connect)?;
            connects(&format!("{tool}_warm_s"), false, 20, |_| Ok(()), connect)?;
            roundtrips(&connect(0)?, 2000, &format!("{tool}_roundtrip_s"))?;
            Ok(())
        })?;
    }
    Ok(())
}

fn roundtrip(name: &str) -> R {
    mitogen::utils::run_with_router(|router| roundtrips(&router.local(Options::default())?, 5000, name))
}

fn pipelined() -> R {
    mitogen::utils::run_with_router(|router| {
        let ctx = router.local(Options::default())?;
        for _ in 0..100 {
            ctx.call(noop, ())?;
        }
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (t, r) = timed(|| -> R {
                let recvs = (0..10_000).map(|_| ctx.call_async(noop, ())).collect::<Result<Vec<_>, _>>()?;
                for r in recvs {
                    r.get()?.unpickle::<()>()?;
                }
                Ok(())
            });
            r?;
            rates.push(10_000.0 / t);
        }
        emit("pipelined_calls_per_s", &mut rates, "calls/s");
        Ok(())
    })
}

fn bulk() -> R {
    mitogen::utils::run_with_router(|router| {
        let ctx = router.local(Options::default())?;
        const MIB: u64 = 1 << 20;
        // Arguments are built once and passed by reference, as Python passes its bytes object.
        let one = (Blob(vec![b'y'; MIB as usize]),);
        let big = (Blob(vec![b'z'; 64 * MIB as usize]),);
        let cases: [(&str, u32, &dyn Fn() -> R); 4] = [
            ("bulk_return_1mib_x64_MBps", 64, &|| ctx.call(bulk_return, (MIB,)).map(drop)),
            ("bulk_arg_1mib_x64_MBps", 64, &|| ctx.call(bulk_arg, &one).map(drop)),
            ("bulk_return_64mib_MBps", 1, &|| ctx.call(bulk_return, (64 * MIB,)).map(drop)),
            ("bulk_arg_64mib_MBps", 1, &|| ctx.call(bulk_arg, &big).map(drop)),
        ];
        for (name, calls, call) in cases {
            throughput(name, calls, 5, call)?;
        }
        Ok(())
    })
}

fn fanout(n: usize) -> R {
    mitogen::utils::run_with_router(|router| {
        let (t, children) = timed(|| -> Result<Vec<Context>, mitogen::Error> {
            let children = (0..n).map(|_| router.local(Options::default())).collect::<Result<Vec<_>, _>>()?;
            let recvs = children.iter().map(|c| c.call_async(noop, ())).collect::<Result<Vec<_>, _>>()?;
            Select::all::<_, _, ()>(recvs)?;
            Ok(children)
        });
        let children = children?;
        emit(&format!("fanout_{n}_s"), &mut [t], "s");
        let master_rss = memory(std::process::id()).0;
        let mut pss = 0.0;
        for c in &children {
            pss += memory(c.call(getpid, ())?).1;
        }
        emit(&format!("fanout_{n}_master_rss_mib"), &mut [master_rss], "MiB");
        emit(&format!("fanout_{n}_children_pss_mib"), &mut [pss], "MiB");
        Ok(())
    })
}

fn via() -> R {
    for depth in [1, 3, 5] {
        mitogen::utils::run_with_router(|router| {
            let (t, chain) = timed(|| -> Result<Vec<Context>, mitogen::Error> {
                let mut chain: Vec<Context> = Vec::new();
                for _ in 0..depth {
                    let via = chain.last().cloned();
                    chain.push(router.local(Options { via, ..Options::default() })?);
                }
                Ok(chain)
            });
            let chain = chain?;
            emit(&format!("via_depth{depth}_build_s"), &mut [t], "s");
            let bottom = chain.last().expect("depth >= 1");
            for _ in 0..20 {
                bottom.call(noop, ())?;
            }
            let mut samples = Vec::new();
            for _ in 0..200 {
                let (t, r) = timed(|| bottom.call(noop, ()));
                r?;
                samples.push(t);
            }
            emit(&format!("via_depth{depth}_roundtrip_s"), &mut samples, "s");
            Ok(())
        })?;
    }
    Ok(())
}

fn idle() -> R {
    mitogen::utils::run_with_router(|router| {
        let ctx = router.local(Options::default())?;
        let pid = ctx.call(getpid, ())?;
        let (rss, pss) = memory(pid);
        emit("idle_child_rss_mib", &mut [rss], "MiB");
        emit("idle_child_pss_mib", &mut [pss], "MiB");
        Ok(())
    })
}

fn call_error() -> R {
    mitogen::utils::run_with_router(|router| {
        let ctx = router.local(Options::default())?;
        let mut samples = Vec::new();
        for _ in 0..1000 {
            let (t, r) = timed(|| ctx.call(fails, ()));
            assert!(r.unwrap_err().is_call());
            samples.push(t);
        }
        emit("call_error_s", &mut samples, "s");
        Ok(())
    })
}

/// Floor: a 64-byte round trip between two processes over a socketpair, no library involved.
fn floor_pingpong() -> R {
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    let echo = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--echo-fd")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(b.try_clone().expect("dup"))))
        .spawn()
        .expect("spawn echo");
    drop(b);
    let mut buf = [0u8; 64];
    let mut samples = Vec::with_capacity(5000);
    for i in 0..5100 {
        let t0 = Instant::now();
        a.write_all(&buf).unwrap();
        a.read_exact(&mut buf).unwrap();
        if i >= 100 {
            samples.push(t0.elapsed().as_secs_f64());
        }
    }
    drop(a);
    let mut echo = echo;
    echo.wait().unwrap();
    emit("floor_socketpair_pingpong_s", &mut samples, "s");
    Ok(())
}

/// Floor: bytes per second through a socketpair between two processes, with no encoding and
/// no allocation: the most any library can move on this machine.
fn floor_bulk() -> R {
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    let mut sink = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--sink-fd")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(b)))
        .spawn()
        .expect("spawn sink");
    let chunk = vec![b'x'; 1 << 20];
    let mut ack = [0u8; 1];
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        for _ in 0..64 {
            a.write_all(&chunk).unwrap();
        }
        a.read_exact(&mut ack).unwrap();
        rates.push(64.0 * (1 << 20) as f64 / t0.elapsed().as_secs_f64() / 1e6);
    }
    drop(a);
    sink.wait().unwrap();
    emit("floor_socketpair_MBps", &mut rates, "MB/s");
    Ok(())
}

/// Floor: fork, exec and wait for this very binary, which exits at once.
fn floor_spawn() -> R {
    let exe = std::env::current_exe().expect("exe");
    let mut samples = Vec::new();
    for _ in 0..20 {
        let (t, status) = timed(|| std::process::Command::new(&exe).arg("--exit-now").status());
        assert!(status.expect("spawn").success());
        samples.push(t);
    }
    emit("floor_fork_exec_wait_s", &mut samples, "s");
    Ok(())
}

fn main() {
    mitogen::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--exit-now") => return,
        Some("--sink-fd") => {
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned().expect("dup stdin");
            let mut s = UnixStream::from(fd);
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0usize;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if got >= 64 << 20 {
                    got -= 64 << 20;
                    s.write_all(b"k").unwrap();
                }
            }
        }
        Some("--echo-fd") => {
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned().expect("dup stdin");
            let mut s = UnixStream::from(fd);
            let mut buf = [0u8; 64];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf).unwrap();
            }
            return;
        }
        _ => {}
    }
    raise_nofile_limit();
    let all = [
        "floors",
        "bootstrap",
        "command",
        "roundtrip",
        "pipelined",
        "bulk",
        "fanout",
        "fanout1000",
        "via",
        "idle",
        "call_error",
        "ssh",
        "sudo",
        "containers",
        "reach",
    ];
    let chosen: Vec<&str> = if args.is_empty() { all.to_vec() } else { args.iter().map(String::as_str).collect() };
    let mut failed = false;
    for s in chosen {
        let r = match s {
            "floors" => floor_pingpong().and_then(|_| floor_spawn()).and_then(|_| floor_bulk()),
            "bootstrap" => bootstrap(),
            "command" => command(),
            "roundtrip" => roundtrip("roundtrip_s"),
            "roundtrip_pinned" => roundtrip("roundtrip_pinned_s"),
            "pipelined" => pipelined(),
            "bulk" => bulk(),
            "fanout" => fanout(10).and_then(|_| fanout(100)),
            "fanout1000" => fanout(1000),
            "via" => via(),
            "idle" => idle(),
            "call_error" => call_error(),
            "ssh" => ssh(),
            "sudo" => sudo(),
            "containers" => containers(),
            "reach" => reach(),
            other => Err(mitogen::Error::general(format!("unknown scenario {other:?}"))),
        };
        if let Err(e) = r {
            eprintln!("scenario {s} failed: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// 1000 children need a few thousand descriptors; lift the soft limit to the hard one.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
