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
if [[ ! -f $MT/rootfs.tar.gz ]]; then
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-$(awk '/^deb / { print $2; exit }' /etc/apt/sources.list)}
    echo "tests/provision.sh: debootstrap of a minbase bookworm from $mirror (about a minute)" >&2
    rm -rf "$MT/rootfs.tmp"
    debootstrap --variant=minbase bookworm "$MT/rootfs.tmp" "$mirror" >"$MT/debootstrap.log" 2>&1 ||
        { tail -20 "$MT/debootstrap.log" >&2; exit 1; }
    tar -C "$MT/rootfs.tmp" -c --numeric-owner . | gzip -1 > "$MT/rootfs.tar.gz.tmp"
    rm -rf "$MT/rootfs"
    mv "$MT/rootfs.tmp" "$MT/rootfs"
    mv "$MT/rootfs.tar.gz.tmp" "$MT/rootfs.tar.gz"
fi
