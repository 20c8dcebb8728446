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
