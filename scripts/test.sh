#!/usr/bin/env bash
# The one test command: Rust (format, lints, unit + integration tests), the
# Python client against a real server, the Python package (wheel) in a fresh venv,
# and the loadgen smoke gate.
# Installs what it needs (Python venv with pinned packages) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# No test may reach a cloud's instance metadata service (169.254.169.254, an
# address off this machine): an object store ingest without credentials in
# its environment would ask it. These point every store's metadata endpoint
# at a closed loopback port instead; servers the tests start inherit them.
export AWS_METADATA_ENDPOINT="http://127.0.0.1:9" AWS_EC2_METADATA_DISABLED=true
export GCE_METADATA_HOST="127.0.0.1:9" GCE_METADATA_IP="127.0.0.1:9"
export AZURE_MSI_ENDPOINT="http://127.0.0.1:9" IDENTITY_ENDPOINT="http://127.0.0.1:9"

step() { printf '\n==> %s\n' "$*"; }

# Reserve hugepages when we can (root), so both the hugetlb path and, for servers
# that find the pool used up, the fallback paths run. Restored on exit.
hugepages_prev=""
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  hugepages_prev=$(cat /proc/sys/vm/nr_hugepages)
  echo "${ARROWPOOL_TEST_HUGEPAGES:-512}" > /proc/sys/vm/nr_hugepages || true
  trap 'echo "$hugepages_prev" > /proc/sys/vm/nr_hugepages || true' EXIT
  echo "hugepages reserved: $(cat /proc/sys/vm/nr_hugepages) (was $hugepages_prev)"
else
  echo "not root: hugepages not reserved; hugetlb tests check the refusal path"
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "library dependencies"
# Programs that link the library (default-features = false) must not get the
# binaries' crates as direct dependencies (compio itself uses core_affinity).
binary_only=$(cargo tree -p arrowpool --no-default-features -e normal --depth 1 --prefix none |
  grep -E '^(clap|anyhow|indicatif|signal-hook|core_affinity) ' || true)
if [ -n "$binary_only" ]; then
  echo "the library without its cli feature still depends on: $binary_only" >&2
  exit 1
fi
echo "ok: no clap, anyhow, indicatif, signal-hook or core_affinity in the library"

step "cargo test"
cargo test --workspace

# Release builds before the Python steps: the package's wheel (maturin) builds the
# same binaries in release and reuses these artifacts.
step "release builds"
cargo build --release -p loadgen --bin loadgen
cargo build --release --bin arrowpoold --bin arrowpool

step "browser for the Dash example's test (Debian's chromium and chromium-driver)"
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "have $(chromium --version 2>/dev/null | head -1)"
elif [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  echo "installed $(chromium --version 2>/dev/null | head -1)"
else
  echo "not root and no chromium: python/tests/test_dash_browser.py will fail; apt-get install chromium chromium-driver" >&2
fi

step "python client tests"
bash scripts/python-tests.sh

step "python package (wheel with the server, in a fresh venv)"
bash scripts/package-test.sh

step "loadgen smoke gate"
smoke_dir=$(mktemp -d)
"$root/target/release/loadgen" run --preset smoke --repeats 3 --out "$smoke_dir" --data-dir "$smoke_dir/data"
"$root/target/release/loadgen" compare results/baseline-smoke.json "$smoke_dir/raw.json" --max-regression 50%
rm -rf "$smoke_dir"

echo
echo "all tests passed"
