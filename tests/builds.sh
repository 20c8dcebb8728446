#!/usr/bin/env bash
# The builds the reach tests ship to targets this machine's own build does not fit: this suite
# and the quickstart example for x86_64-unknown-linux-musl (static: they fit any Linux
# x86_64). Prints the `export` line that names them (eval it); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$triple"; then
    echo "tests/builds.sh: adding the Rust target $triple" >&2
    rustup target add "$triple" >&2
fi
# The suite's test binary: its path is in cargo's JSON messages (its name carries a hash).
suite=$(cargo test --no-run -p mitogen-tests --test tests --target "$triple" --message-format=json-render-diagnostics |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tests" and m.get("executable"):
        print(m["executable"])')
cargo build -p mitogen --example quickstart --target "$triple" >&2
echo "export MITOGEN_TEST_STATIC_BUILD=$suite MITOGEN_TEST_STATIC_OTHER=$PWD/target/$triple/debug/examples/quickstart"
