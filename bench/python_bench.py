"""Python half of ``bench/run``: micro-benchmarks of the original Python Mitogen.

Run with the interpreter of a virtualenv that has ``mitogen==0.3.54``::

    python python_bench.py [SCENARIO ...]

With no arguments every scenario runs; otherwise only the named ones, in the
order given. Every measure is printed to stdout as one JSON object per line::

    {"impl": "python", "measure": NAME, "median": float, "min": float,
     "max": float, "unit": UNIT, "samples": int}

Nothing else goes to stdout; diagnostics (and Mitogen's own WARNING-level
logging) go to stderr. ``bench/run`` prints the same measures for the Rust
port, so the two halves can be compared line by line.

Scenarios and the measures they print:

``bootstrap``         ``bootstrap_s``: start a local child and complete one
                      ``noop()`` call in it (20 children, one after another).
``roundtrip``         ``roundtrip_s``: latency of one ``ctx.call(noop)``
                      (5000 calls after 100 warm-up calls).
``roundtrip_pinned``  ``roundtrip_pinned_s``: the same; ``bench/run`` runs the
                      script under ``taskset -c 0`` for this one.
``pipelined``         ``pipelined_calls_per_s``: 10000 ``call_async(noop)``
                      issued back to back, then all gathered (3 runs).
``bulk``              ``bulk_{return,arg}_1mib_x64_MBps`` and
                      ``bulk_{return,arg}_64mib_MBps``: bytes moved per second
                      (MB = 1e6 bytes) returning from / passing to a call
                      (one untimed warm-up, then 5 runs each).
``fanout``            ``fanout_{10,100}_s``: start N children one after another
                      and gather one ``noop`` from each with
                      ``mitogen.select.Select.all``; then, with all N still up,
                      ``fanout_{N}_master_rss_mib`` (VmRSS of this process) and
                      ``fanout_{N}_children_pss_mib`` (sum of the children's Pss).
``via``               ``via_depth{1,3,5}_build_s``: build a chain of D contexts,
                      each started ``via`` the previous one;
                      ``via_depth{D}_roundtrip_s``: ``call(noop)`` latency to
                      the deepest context (200 calls after 20 warm-up calls).
``idle``              ``idle_child_rss_mib``, ``idle_child_pss_mib``: memory of
                      one idle child after a single call.
``ssh``               over a real sshd on loopback that ``bench/run`` starts
                      (``MITOGEN_BENCH_SSH_{PORT,KEY,KNOWN}``): ``ssh_cold_s``,
                      ``ssh_warm_s``, ``ssh_controlmaster_warm_s`` (connect and
                      one call), ``ssh_roundtrip_s``, ``ssh_pipelined_calls_per_s``,
                      ``ssh_bulk_arg_{1mib_x64,64mib}_{plain,zlib}_MBps``
                      (random bytes; ssh compression off and on).
``sudo``              ``sudo_cold_s``, ``sudo_warm_s`` (connect and one call
                      through ``sudo -u mitogen-key`` from root), ``sudo_roundtrip_s``.
``containers``        ``{docker,podman}_{cold,warm}_s`` and ``..._roundtrip_s``:
                      into the containers ``bench/run`` starts
                      (``MITOGEN_BENCH_{DOCKER,PODMAN}``; their image has python3).
``call_error``        ``call_error_s``: time for a call whose remote function
                      raises ``ValueError`` until ``mitogen.core.CallError`` is
                      caught here (1000 calls).

Every scenario uses a fresh router; all of its children are shut down, and the
router's broker is shut down and joined, before the next scenario starts. A
scenario that raises has its traceback printed to stderr; the remaining
scenarios still run and the script exits with status 1.

Mitogen ships this file to every child as its ``__main__`` module, cut off at
the ``if __name__ == "__main__":`` guard at the bottom, so that the remote
functions below can be called. Everything above the guard therefore also runs
in each child: it is kept to the remote functions and cheap imports, and the
master-only imports live in the guard block so as not to inflate the children's
start-up and memory figures.
"""

import os
import sys
import time


# ---------------------------------------------------------------------------
# Remote functions (executed in the children)
# ---------------------------------------------------------------------------

_BYTES_CACHE = {}


def noop():
    return None


def get_pid():
    return os.getpid()


def _cached_bytes(size):
    data = _BYTES_CACHE.get(size)
    if data is None:
        data = _BYTES_CACHE[size] = b"x" * size
    return data


def prepare_bytes(size):
    """Build the `size`-byte payload ahead of time; return its length."""
    return len(_cached_bytes(size))


def return_bytes(size):
    return _cached_bytes(size)


def bytes_len(data):
    return len(data)


def raise_value_error():
    raise ValueError("boom")


# ---------------------------------------------------------------------------
# Master-side helpers
# ---------------------------------------------------------------------------

MIB = 1048576
SHUTDOWN_TIMEOUT_S = 30.0


def log(msg):
    print("python_bench: %s" % (msg,), file=sys.stderr, flush=True)


def emit(measure, samples, unit):
    """Print one JSON line summarising `samples` (a number or a list)."""
    if not isinstance(samples, (list, tuple)):
        samples = [samples]
    if not samples:
        raise ValueError("no samples for %s" % (measure,))
    line = {
        "impl": "python",
        "measure": measure,
        "median": float(statistics.median(samples)),
        "min": float(min(samples)),
        "max": float(max(samples)),
        "unit": unit,
        "samples": len(samples),
    }
    print(json.dumps(line), flush=True)


def proc_kib(path, key):
    """Return the value in kB of the `key:` line of a /proc file."""
    with open(path) as fp:
        for line in fp:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError("%s not found in %s" % (key, path))


def rss_mib(pid="self"):
    return proc_kib("/proc/%s/status" % (pid,), "VmRSS") / 1024.0


def pss_mib(pid):
    return proc_kib("/proc/%s/smaps_rollup" % (pid,), "Pss") / 1024.0


def shutdown_all(contexts):
    """Ask every context to shut down (deepest first) and wait for each."""
    latches = [ctx.shutdown() for ctx in reversed(contexts)]
    for ctx, latch in zip(reversed(contexts), latches):
        try:
            latch.get(timeout=SHUTDOWN_TIMEOUT_S)
        except mitogen.core.TimeoutError:
            log("%r did not shut down within %.0fs" % (ctx, SHUTDOWN_TIMEOUT_S))


def with_router(func):
    """Run `func(router, contexts)` with a fresh router, then tear it all down.

    `func` appends every context it starts to `contexts`; they are shut down
    before the router's broker is shut down and joined.
    """
    def run():
        contexts = []

        def body(router):
            try:
                func(router, contexts)
            finally:
                shutdown_all(contexts)

        mitogen.utils.run_with_router(body)
    return run


def timed_connects(connect, measure, count, before=None):
    """Emit `measure`: `count` times connect() (which makes one call), then shut down."""
    samples = []
    for _ in range(count):
        if before:
            before()
        t0 = time.perf_counter()
        ctx = connect()
        samples.append(time.perf_counter() - t0)
        ctx.shutdown(wait=True)
    emit(measure, samples, "s")


def timed_calls(ctx, func, count, *args):
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        ctx.call(func, *args)
        samples.append(time.perf_counter() - t0)
    return samples


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

def scenario_bootstrap(router, contexts):
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        ctx = router.local()
        ctx.call(noop)
        samples.append(time.perf_counter() - t0)
        ctx.shutdown(wait=True)
    emit("bootstrap_s", samples, "s")


def scenario_command(router, contexts):
    """Counterpart of the Rust command method: local() runs the first stage and ships the
    core source every time, so cold and warm are the same measure here."""
    def connect():
        ctx = router.local()
        ctx.call(noop)
        return ctx

    timed_connects(connect, "command_cold_s", 5)
    timed_connects(connect, "command_warm_s", 20)


def _roundtrip(router, contexts, measure):
    ctx = router.local()
    contexts.append(ctx)
    timed_calls(ctx, noop, 100)
    emit(measure, timed_calls(ctx, noop, 5000), "s")


def scenario_roundtrip(router, contexts):
    _roundtrip(router, contexts, "roundtrip_s")


def scenario_roundtrip_pinned(router, contexts):
    _roundtrip(router, contexts, "roundtrip_pinned_s")


def scenario_pipelined(router, contexts):
    ctx = router.local()
    contexts.append(ctx)
    timed_calls(ctx, noop, 100)
    count = 10000
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        recvs = [ctx.call_async(noop) for _ in range(count)]
        for recv in recvs:
            recv.get().unpickle()
        rates.append(count / (time.perf_counter() - t0))
    emit("pipelined_calls_per_s", rates, "calls/s")


def scenario_bulk(router, contexts):
    ctx = router.local()
    contexts.append(ctx)
    timed_calls(ctx, noop, 10)
    small, big = MIB, 64 * MIB
    # Build the payloads outside the timed parts: here for arguments, in the
    # child's module-level cache for return values.
    small_arg, big_arg = b"x" * small, b"x" * big
    ctx.call(prepare_bytes, small)
    ctx.call(prepare_bytes, big)

    def throughput(calls, func, arg, expect):
        t0 = time.perf_counter()
        for _ in range(calls):
            result = ctx.call(func, arg)
        elapsed = time.perf_counter() - t0
        got = len(result) if isinstance(result, bytes) else result
        if got != expect:
            raise AssertionError("%s returned %r, expected %r" % (func.__name__, got, expect))
        return calls * expect / elapsed / 1e6

    cases = [
        ("bulk_return_1mib_x64_MBps", 64, return_bytes, small, small),
        ("bulk_arg_1mib_x64_MBps", 64, bytes_len, small_arg, small),
        ("bulk_return_64mib_MBps", 1, return_bytes, big, big),
        ("bulk_arg_64mib_MBps", 1, bytes_len, big_arg, big),
    ]
    for measure, calls, func, arg, expect in cases:
        throughput(calls, func, arg, expect)  # warm-up, untimed: first touch of fresh memory
        rates = [throughput(calls, func, arg, expect) for _ in range(5)]
        emit(measure, rates, "MB/s")


def scenario_fanout(router, contexts):
    for n in (10, 100):
        children = []
        t0 = time.perf_counter()
        for _ in range(n):
            ctx = router.local()
            children.append(ctx)
            contexts.append(ctx)
        mitogen.select.Select.all(c.call_async(noop) for c in children)
        elapsed = time.perf_counter() - t0
        emit("fanout_%d_s" % n, elapsed, "s")

        master_rss = rss_mib()
        pids = mitogen.select.Select.all(c.call_async(get_pid) for c in children)
        children_pss = sum(pss_mib(pid) for pid in pids)
        emit("fanout_%d_master_rss_mib" % n, master_rss, "MiB")
        emit("fanout_%d_children_pss_mib" % n, children_pss, "MiB")

        shutdown_all(children)
        del contexts[:]


def scenario_via(router, contexts):
    for depth in (1, 3, 5):
        chain = []
        t0 = time.perf_counter()
        for level in range(depth):
            if level == 0:
                ctx = router.local()
            else:
                ctx = router.local(via=chain[-1])
            chain.append(ctx)
            contexts.append(ctx)
        elapsed = time.perf_counter() - t0
        emit("via_depth%d_build_s" % depth, elapsed, "s")

        deepest = chain[-1]
        timed_calls(deepest, noop, 20)
        emit("via_depth%d_roundtrip_s" % depth, timed_calls(deepest, noop, 200), "s")

        shutdown_all(chain)
        del contexts[:]


def scenario_idle(router, contexts):
    ctx = router.local()
    contexts.append(ctx)
    pid = ctx.call(get_pid)
    emit("idle_child_rss_mib", rss_mib(pid), "MiB")
    emit("idle_child_pss_mib", pss_mib(pid), "MiB")


def scenario_call_error(router, contexts):
    ctx = router.local()
    contexts.append(ctx)
    timed_calls(ctx, noop, 10)
    samples = []
    for _ in range(1000):
        t0 = time.perf_counter()
        try:
            ctx.call(raise_value_error)
        except mitogen.core.CallError:
            samples.append(time.perf_counter() - t0)
        else:
            raise AssertionError("raise_value_error() did not raise")
    emit("call_error_s", samples, "s")


def _ssh_target():
    port = int(os.environ["MITOGEN_BENCH_SSH_PORT"])
    key = os.environ["MITOGEN_BENCH_SSH_KEY"]
    known = os.environ["MITOGEN_BENCH_SSH_KNOWN"]
    return port, key, ["-F", "/dev/null", "-o", "UserKnownHostsFile=%s" % (known,)]


def scenario_ssh(router, contexts):
    """Over the same sshd as the Rust side (bench/run starts it): Mitogen ships its core
    source on every connect (it has no cache), so cold and warm are the same measure here."""
    port, key, args = _ssh_target()
    cm_dir = "/tmp/mitogen-bench-pycm-%d" % (os.getpid(),)
    os.makedirs(cm_dir, exist_ok=True)
    cm = ["-o", "ControlMaster=auto", "-o", "ControlPath=%s/%%C" % (cm_dir,), "-o", "ControlPersist=60"]

    def connect(compression=True, extra=()):
        ctx = router.ssh(hostname="127.0.0.1", port=port, username="mitogen-key", identity_file=key,
                         compression=compression, ssh_args=args + list(extra), python_path="python3")
        ctx.call(noop)
        return ctx

    connect().shutdown(wait=True)
    timed_connects(connect, "ssh_cold_s", 5)
    timed_connects(connect, "ssh_warm_s", 20)
    timed_connects(lambda: connect(extra=cm), "ssh_controlmaster_warm_s", 20)
    for compression in (False, True):
        z = "zlib" if compression else "plain"
        ctx = connect(compression=compression)
        contexts.append(ctx)
        if not compression:
            timed_calls(ctx, noop, 100)
            emit("ssh_roundtrip_s", timed_calls(ctx, noop, 2000), "s")
            rates = []
            for _ in range(3):
                t0 = time.perf_counter()
                recvs = [ctx.call_async(noop) for _ in range(10000)]
                for recv in recvs:
                    recv.get().unpickle()
                rates.append(10000 / (time.perf_counter() - t0))
            emit("ssh_pipelined_calls_per_s", rates, "calls/s")
        one, big = os.urandom(MIB), os.urandom(64 * MIB)
        for measure, calls, arg in (("ssh_bulk_arg_1mib_x64_%s_MBps" % z, 64, one),
                                    ("ssh_bulk_arg_64mib_%s_MBps" % z, 1, big)):
            def run():
                t0 = time.perf_counter()
                for _ in range(calls):
                    got = ctx.call(bytes_len, arg)
                if got != len(arg):
                    raise AssertionError("bytes_len returned %r" % (got,))
                return calls * len(arg) / (time.perf_counter() - t0) / 1e6
            run()
            emit(measure, [run() for _ in range(3)], "MB/s")
    import subprocess
    subprocess.call(["ssh"] + args + cm + ["-O", "exit", "-p", str(port), "mitogen-key@127.0.0.1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scenario_sudo(router, contexts):
    """sudo -u mitogen-key from root (no password): Mitogen ships its core on every connect,
    so cold and warm are the same measure here."""
    def connect():
        ctx = router.sudo(username="mitogen-key", python_path="python3")
        ctx.call(noop)
        return ctx

    connect().shutdown(wait=True)
    timed_connects(connect, "sudo_cold_s", 5)
    timed_connects(connect, "sudo_warm_s", 20)
    ctx = connect()
    contexts.append(ctx)
    timed_calls(ctx, noop, 100)
    emit("sudo_roundtrip_s", timed_calls(ctx, noop, 2000), "s")


def scenario_containers(router, contexts):
    """docker() and podman() into the containers bench/run starts (their image has python3):
    Mitogen ships its core on every connect, so cold and warm are the same measure here."""
    for tool in ("docker", "podman"):
        name = os.environ["MITOGEN_BENCH_%s" % (tool.upper(),)]

        def connect():
            ctx = getattr(router, tool)(container=name, python_path="python3")
            ctx.call(noop)
            return ctx

        connect().shutdown(wait=True)
        timed_connects(connect, "%s_cold_s" % tool, 5)
        timed_connects(connect, "%s_warm_s" % tool, 20)
        ctx = connect()
        timed_calls(ctx, noop, 100)
        emit("%s_roundtrip_s" % tool, timed_calls(ctx, noop, 2000), "s")
        ctx.shutdown(wait=True)


SCENARIOS = {
    "bootstrap": scenario_bootstrap,
    "command": scenario_command,
    "roundtrip": scenario_roundtrip,
    "roundtrip_pinned": scenario_roundtrip_pinned,
    "pipelined": scenario_pipelined,
    "bulk": scenario_bulk,
    "fanout": scenario_fanout,
    "via": scenario_via,
    "idle": scenario_idle,
    "call_error": scenario_call_error,
    "ssh": scenario_ssh,
    "sudo": scenario_sudo,
    "containers": scenario_containers,
}


def main(argv):
    names = argv or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        log("unknown scenario(s): %s (known: %s)"
            % (", ".join(unknown), ", ".join(SCENARIOS)))
        return 2

    failed = []
    for name in names:
        log("running %s" % (name,))
        t0 = time.perf_counter()
        try:
            with_router(SCENARIOS[name])()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            log("scenario %s FAILED" % (name,))
            failed.append(name)
        else:
            log("%s done in %.1fs" % (name, time.perf_counter() - t0))
    if failed:
        log("failed scenarios: %s" % (", ".join(failed),))
        return 1
    return 0


# Mitogen cuts this file off here when shipping it to children, so the imports
# below happen only in the master (see the module docstring).
if __name__ == "__main__":
    import json
    import statistics
    import traceback

    import mitogen.core
    import mitogen.master
    import mitogen.select
    import mitogen.utils

    sys.exit(main(sys.argv[1:]))
