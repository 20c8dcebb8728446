#!/usr/bin/env bash
# Container engines for the container tests: `engines.sh start` starts dockerd and the LXD
# daemon with state of their own, and imports the test image (a Debian minbase root filesystem
# made by tests/provision.sh, with nothing of ours and no Python) into docker, podman and LXD
# where it is missing; `engines.sh stop` stops the daemons. tests/run calls both around the
# suite and exports the environment printed by `engines.sh env`, so nothing keeps running.
# Settings from ../shared/design/TEST-HOSTS.md: dockerd without iptables or a bridge; podman
# and buildah with runc, cgroupfs and capped ulimits (through CONTAINERS_CONF, nothing
# system-wide); LXD with a `dir` pool and no network.
set -euo pipefail

MT=/var/lib/mitogen-tests
RUN=/run/mitogen-tests
IMAGE=mitogen-test:bookworm
export DOCKER_HOST=unix://$RUN/docker.sock
export CONTAINERS_CONF=$MT/containers.conf CONTAINERS_STORAGE_CONF=$MT/storage.conf

log() { echo "tests/engines.sh: $*" >&2; }

# Wait up to $1 seconds for the command after it to succeed.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

start() {
    mkdir -p "$RUN"
    [[ -f $MT/rootfs.tar.gz ]] || { log "no $MT/rootfs.tar.gz: run tests/provision.sh first"; exit 1; }

    if ! docker version >/dev/null 2>&1; then
        dockerd --iptables=false --ip6tables=false --bridge=none --ip-masq=false \
            --data-root /var/lib/mitogen-docker --exec-root "$RUN/docker" --pidfile "$RUN/docker.pid" \
            -H "$DOCKER_HOST" >"$RUN/dockerd.log" 2>&1 &
        wait_for 60 docker version || { log "dockerd did not start:"; tail -20 "$RUN/dockerd.log" >&2; exit 1; }
    fi
    docker image inspect "$IMAGE" >/dev/null 2>&1 || docker import "$MT/rootfs.tar.gz" "$IMAGE" >/dev/null

    podman image exists "localhost/$IMAGE" || podman import --quiet "$MT/rootfs.tar.gz" "$IMAGE" >/dev/null
    # Targets this machine's build does not fit (issue 22): Debian 11, and a static busybox alone.
    local root
    for root in bullseye busybox; do
        docker image inspect "mitogen-test:$root" >/dev/null 2>&1 ||
            docker import "$MT/$root.tar.gz" "mitogen-test:$root" >/dev/null
    done
    # The Debian 11 root where mitogen-old's ssh sessions are chrooted: a child there reads /proc.
    mountpoint -q "$MT/bullseye/proc" || mount -t proc proc "$MT/bullseye/proc"
    # The arm64 root: qemu-user runs its programs (F: the interpreter is opened now, so it
    # works inside the chroot; P: argv[0] is kept, which busybox's applets need).
    local binfmt=/proc/sys/fs/binfmt_misc
    [[ -e $binfmt/register ]] || mount -t binfmt_misc binfmt_misc "$binfmt"
    if [[ ! -e $binfmt/qemu-aarch64 ]]; then
        printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:FP' >"$binfmt/register"
        touch "$RUN/binfmt-registered"
    fi
    mountpoint -q "$MT/arm64/proc" || mount -t proc proc "$MT/arm64/proc"

    if ! lxc info >/dev/null 2>&1; then
        lxd --group root --logfile "$RUN/lxd.log" >/dev/null 2>&1 &
        echo $! >"$RUN/lxd.pid"
        lxd waitready --timeout 60 || { log "lxd did not start:"; tail -20 "$RUN/lxd.log" >&2; exit 1; }
    fi
    if ! lxc storage show default >/dev/null 2>&1; then
        lxd init --preseed <<'PRESEED'
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
PRESEED
    fi
    if ! lxc image info mt-bookworm >/dev/null 2>&1; then
        local meta
        meta=$(mktemp -d)
        printf 'architecture: %s\ncreation_date: %s\nproperties:\n  os: debian\n  release: bookworm\n' \
            "$(uname -m)" "$(date +%s)" >"$meta/metadata.yaml"
        tar -C "$meta" -czf "$meta/meta.tar.gz" metadata.yaml
        lxc image import "$meta/meta.tar.gz" "$MT/rootfs.tar.gz" --alias mt-bookworm >/dev/null
        rm -rf "$meta"
    fi
}

stop() {
    ! mountpoint -q "$MT/bullseye/proc" || umount -l "$MT/bullseye/proc"
    ! mountpoint -q "$MT/arm64/proc" || umount -l "$MT/arm64/proc"
    if [[ -f $RUN/binfmt-registered ]]; then
        echo -1 >/proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || true
        rm -f "$RUN/binfmt-registered"
    fi
    if [[ -f $RUN/lxd.pid ]]; then
        lxd shutdown --timeout 30 >/dev/null 2>&1 || kill "$(cat "$RUN/lxd.pid")" 2>/dev/null || true
        rm -f "$RUN/lxd.pid"
    fi
    if [[ -f $RUN/docker.pid ]]; then
        local pid
        pid=$(cat "$RUN/docker.pid")
        kill "$pid" 2>/dev/null || true
        wait_for 30 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env) echo "export DOCKER_HOST=$DOCKER_HOST CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF" ;;
*) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
