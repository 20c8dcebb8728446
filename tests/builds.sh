#!/usr/bin/env bash
# The builds the reach tests ship to targets this machine's own build does not fit: this suite
# and the quickstart example for x86_64-unknown-linux-musl (static: they fit any Linux
# x86_64), this suite for aarch64-unknown-linux-musl (rust-lld links it: no cross
# compiler), for the arm64 root tests/provision.sh makes, and for i686-unknown-linux-musl
# (rust-lld too), which this machine's kernel runs where `setarch i686` makes `uname -m` say
# so. Prints the `export` line that names them (eval it); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

for triple in x86_64-unknown-linux-musl aarch64-unknown-linux-musl i686-unknown-linux-musl; do
    if ! rustup target list --installed | grep -qx "$triple"; then
        echo "tests/builds.sh: adding the Rust target $triple" >&2
        rustup target add "$triple" >&2
    fi
done
# The suite's test binary for a triple: its path is in cargo's JSON messages (its name carries
# a hash).
suite() {
    cargo test --no-run -p mitogen-tests --test tests --target "$1" --message-format=json-render-diagnostics |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tests" and m.get("executable"):
        print(m["executable"])'
}
static=$(suite x86_64-unknown-linux-musl)
arm64=$(suite aarch64-unknown-linux-musl)
i686=$(suite i686-unknown-linux-musl)
cargo build -p mitogen --example quickstart --target x86_64-unknown-linux-musl >&2
# The cargo-layout test's program, beside its own build (target/<triple>/debug/discover).
cargo build -p mitogen-tests --bin discover --target x86_64-unknown-linux-musl >&2
echo "export MITOGEN_TEST_STATIC_BUILD=$static MITOGEN_TEST_STATIC_OTHER=$PWD/target/x86_64-unknown-linux-musl/debug/examples/quickstart MITOGEN_TEST_ARM64_BUILD=$arm64 MITOGEN_TEST_ARM64_ROOT=/var/lib/mitogen-tests/arm64 MITOGEN_TEST_I686_BUILD=$i686"
