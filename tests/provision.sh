#!/usr/bin/env bash
# Provision what the suite needs on this machine (root, Debian; idempotent): the shells and
# tools the bootstrap is tested with, and a test account. Run by tests/run; nothing is started,
# so nothing is left running.
set -euo pipefail

need=()
command -v busybox >/dev/null || need+=(busybox)
command -v dash >/dev/null || need+=(dash)
command -v setpriv >/dev/null || need+=(util-linux)
command -v unshare >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    echo "tests/provision.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

# Room for pids. Threads take pids too, and the fork tests start and end thousands of threads a
# second: with the default 32768 (a 2-CPU machine) the pid counter wraps every few seconds, and
# tests running beside them that know a process by its pid (a child that must exit, a profile
# file per pid) would meet another process under it. 4194304 is the kernel's limit.
if [[ $(cat /proc/sys/kernel/pid_max) -lt 4194304 ]]; then
    echo 4194304 > /proc/sys/kernel/pid_max || echo "tests/provision.sh: cannot raise kernel.pid_max" >&2
fi

# An unprivileged account the bootstrap runs as (through setpriv), with a home of its own.
if ! id mitogen-user >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh mitogen-user
fi

# --- ssh (issue 11): the server, keys and accounts the ssh tests log in to. The tests start
# their own `sshd -D` on loopback ports with configs of their own, and stop them.
command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || {
    echo "tests/provision.sh: installing openssh-server" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server openssh-client >/dev/null
}
install -d -m 755 /run/sshd                      # sshd's privilege separation directory
MT=/var/lib/mitogen-tests
install -d -m 755 "$MT" "$MT/ssh" "$MT/ssh/authorized_keys"
[[ -f $MT/ssh/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C mitogen-test-host -f "$MT/ssh/host_ed25519"
[[ -f $MT/ssh/client_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C mitogen-test-client -f "$MT/ssh/client_ed25519"

# A login shell whose start-up talks on both streams, as a chatty profile does: a banner on
# stdout, and a shell's "Permission denied" on stderr that is not an authentication failure.
cat > "$MT/noisy-shell" <<'SH'
#!/bin/sh
echo "Welcome to mitogen-noisy. Have a nice day."
echo "noisy-profile: /etc/mitogen-secret: Permission denied" >&2
exec /bin/sh "$@"
SH
chmod 755 "$MT/noisy-shell"

account() { # name shell
    id "$1" >/dev/null 2>&1 || useradd --create-home --shell "$2" "$1"
    [[ $(getent passwd "$1" | cut -d: -f7) == "$2" ]] || usermod --shell "$2" "$1"
}
account mitogen-user /bin/sh        # password login (also the bootstrap's other account)
account mitogen-key /bin/bash       # key login; its password stays locked
account mitogen-noisy "$MT/noisy-shell"
account mitogen-rohome /bin/sh      # a HOME it cannot write: the cache falls back
echo 'mitogen-user:userpw' | chpasswd
chown root:root /home/mitogen-rohome && chmod 755 /home/mitogen-rohome
for u in mitogen-key mitogen-noisy mitogen-rohome; do
    install -m 644 "$MT/ssh/client_ed25519.pub" "$MT/ssh/authorized_keys/$u"
done
# mitogen-key logs in onward (ssh -> ssh chains) with its own copy of the client key.
install -d -m 700 -o mitogen-key -g mitogen-key /home/mitogen-key/.ssh
install -m 600 -o mitogen-key -g mitogen-key "$MT/ssh/client_ed25519" /home/mitogen-key/.ssh/id_ed25519

# --- sudo, su, doas (issue 12): accounts with passwords and the rules the tests use. The tests
# run as root, where sudo and su never ask: they first drop to mitogen-user (setpriv).
need=()
command -v sudo >/dev/null || need+=(sudo)
command -v doas >/dev/null || need+=(opendoas)
if ((${#need[@]})); then
    echo "tests/provision.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
account mitogen-other /bin/sh
account mitogen-tty /bin/sh
account mitogen-fb /bin/sh
printf '%s\n' mitogen-other:otherpw mitogen-tty:ttypw mitogen-fb:fbpw | chpasswd
sudoers=$(mktemp)
cat > "$sudoers" <<'SUDOERS'
# Written by mitogen's tests/provision.sh.
mitogen-user ALL=(root) NOPASSWD: ALL
mitogen-user ALL=(mitogen-other) ALL
Defaults:mitogen-tty requiretty
mitogen-tty ALL=(ALL) NOPASSWD: ALL
Defaults:mitogen-fb pwfeedback
mitogen-fb ALL=(ALL) ALL
SUDOERS
visudo -c -q -f "$sudoers"
install -m 440 "$sudoers" /etc/sudoers.d/mitogen-test
rm -f "$sudoers"
# doas: a rule without a password (to root) and one with the invoking user's (to mitogen-other).
if [[ ! -e /etc/doas.conf ]] || grep -q '^# Written by mitogen' /etc/doas.conf; then
    printf '%s\n' '# Written by mitogen tests/provision.sh.' \
        'permit nopass mitogen-user as root' 'permit mitogen-user as mitogen-other' > /etc/doas.conf
    chmod 400 /etc/doas.conf
    doas -C /etc/doas.conf
else
    echo "tests/provision.sh: /etc/doas.conf is not ours; the doas tests need its rules" >&2
fi

# --- containers (issue 13): the engines, their settings, and a Debian minbase root filesystem
# with nothing of ours and no Python, imported as the test image by tests/engines.sh.
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v dockerd >/dev/null || need+=(docker.io)
command -v podman >/dev/null || need+=(podman)
command -v buildah >/dev/null || need+=(buildah)
command -v runc >/dev/null || need+=(runc)
command -v lxc-attach >/dev/null || need+=(lxc)
command -v lxd >/dev/null || need+=(lxd lxd-client)
if ((${#need[@]})); then
    echo "tests/provision.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
# podman and buildah read these through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF: runc (crun
# refuses this machine's hybrid cgroups), cgroupfs, ulimits root may set here, no network.
cat > "$MT/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
cat > "$MT/storage.conf" <<'CONF'
[storage]
driver = "overlay"
graphroot = "/var/lib/mitogen-podman"
runroot = "/run/mitogen-podman"
CONF
# debootstrap_root SUITE NAME: a Debian minbase root $MT/NAME and its tarball $MT/NAME.tar.gz,
# unless made already.
debootstrap_root() {
    [[ -f $MT/$2.tar.gz ]] && return
    local mirror
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-$(awk '/^deb / { print $2; exit }' /etc/apt/sources.list)}
    echo "tests/provision.sh: debootstrap of a minbase $1 from $mirror (about a minute)" >&2
    rm -rf "$MT/$2.tmp"
    debootstrap --variant=minbase "$1" "$MT/$2.tmp" "$mirror" >"$MT/debootstrap-$2.log" 2>&1 ||
        { tail -20 "$MT/debootstrap-$2.log" >&2; exit 1; }
    tar -C "$MT/$2.tmp" -c --numeric-owner . | gzip -1 > "$MT/$2.tar.gz.tmp"
    rm -rf "$MT/$2"
    mv "$MT/$2.tmp" "$MT/$2"
    mv "$MT/$2.tar.gz.tmp" "$MT/$2.tar.gz"
}

# busybox_root PACKAGE DIR [RUNNER]: a root DIR holding only PACKAGE's static busybox (the
# .deb unpacked, not installed) and its applet links, with the device nodes a chroot needs;
# RUNNER runs a busybox of another machine to list its applets.
busybox_root() {
    [[ -x $2/bin/busybox ]] && return
    echo "tests/provision.sh: a root of one static busybox ($1, unpacked only)" >&2
    local tmp root=$2.tmp applet
    tmp=$(mktemp -d)
    chmod 755 "$tmp" # apt's download runs as _apt
    (cd "$tmp" && apt-get download "$1" >/dev/null 2>&1) ||
        { apt-get update -o Acquire::Languages=none >/dev/null && (cd "$tmp" && apt-get download "$1" >/dev/null 2>&1); }
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/pkg"
    rm -rf "$root"
    mkdir -p "$root"/{bin,tmp,root,proc,dev}
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp "$tmp/pkg/bin/busybox" "$root/bin/busybox"
    for applet in $(${3:-} "$root/bin/busybox" --list); do
        [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
    mknod -m 666 "$root/dev/null" c 1 3
    mknod -m 666 "$root/dev/zero" c 1 5
    mknod -m 666 "$root/dev/urandom" c 1 9
    rm -rf "$2" "$tmp"
    mv "$root" "$2"
}

debootstrap_root bookworm rootfs

# --- reach (issue 22): targets this machine's own build does not fit: a Debian 11 minbase
# (glibc 2.31, older than this build needs) and a root holding only a static busybox (no C
# library at all), which tests/engines.sh imports as images, and a root of one static arm64
# busybox, run through qemu-user (binfmt_misc, registered by tests/engines.sh start). The
# Debian 11 root is also where an sshd test account's sessions are chrooted (ChrootDirectory),
# with /proc mounted by tests/engines.sh start.
debootstrap_root bullseye bullseye
busybox_root busybox-static "$MT/busybox"
[[ -f $MT/busybox.tar.gz ]] || tar -C "$MT/busybox" -c --numeric-owner . | gzip -1 > "$MT/busybox.tar.gz"
command -v qemu-aarch64-static >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-user-static >/dev/null
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
busybox_root busybox-static:arm64 "$MT/arm64" qemu-aarch64-static
# The account whose ssh sessions land in the Debian 11 root (Match User in tests/sshd_config.in).
account mitogen-old /bin/sh
if ! grep -q '^mitogen-old:' "$MT/bullseye/etc/passwd"; then
    grep '^mitogen-old:' /etc/passwd >> "$MT/bullseye/etc/passwd"
    grep '^mitogen-old:' /etc/group >> "$MT/bullseye/etc/group"
fi
install -d -o mitogen-old -g mitogen-old -m 700 "$MT/bullseye/home/mitogen-old"
install -m 644 "$MT/ssh/client_ed25519.pub" "$MT/ssh/authorized_keys/mitogen-old"
