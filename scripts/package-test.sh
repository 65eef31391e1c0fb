#!/usr/bin/env bash
# The Python package as a user gets it: build the wheel (maturin, from this
# repository's Rust and Python code), install it into a fresh venv, then, with no
# Rust toolchain on PATH and nothing but the venv's own files, run the server and
# the CLI it installed and let connect() start this user's server.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work=$(mktemp -d)
cleanup() {
  if [[ -S "$work/run/arrowpool/arrowpool.sock" ]]; then
    "$work/venv/bin/arrowpool" --socket "$work/run/arrowpool/arrowpool.sock" stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "package-test: building the wheel"
"$repo/python/.venv/bin/python" -m pip wheel --disable-pip-version-check --no-deps -q "$repo/python" -w "$work/wheel"
wheel=$(ls "$work"/wheel/arrowpool-*.whl)
echo "package-test: $(basename "$wheel"), $(du -h "$wheel" | cut -f1)"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --disable-pip-version-check -q "$wheel" \
  -r <(grep -E '^(pyarrow|numpy|pandas)==' "$repo/python/requirements-dev.txt")

mkdir -m 700 "$work/run"
# A user's shell: the venv, the system, no cargo, no repository.
clean_env=(env -i "PATH=$work/venv/bin:/usr/bin:/bin" "HOME=$work" "XDG_RUNTIME_DIR=$work/run"
           "ARROWPOOL_MEMORY=256M")
cd "$work"
"${clean_env[@]}" sh -c '! command -v cargo >/dev/null' || { echo "package-test: cargo is on the clean PATH" >&2; exit 1; }
"${clean_env[@]}" arrowpoold --version
"${clean_env[@]}" arrowpool --version
"${clean_env[@]}" python - <<'PY'
import os, pyarrow as pa, arrowpool
c = arrowpool.connect()  # nothing listens: starts this user's server
assert c.path == os.path.join(os.environ["XDG_RUNTIME_DIR"], "arrowpool", "arrowpool.sock"), c.path
c.put("t", pa.table({"x": list(range(1000))}))
assert c.get("t").column("x").to_pylist() == list(range(1000))
assert c.arena_bytes == 256 * 1024 * 1024
print("package-test: connect() started", arrowpool.server.server_binary(), "pid", arrowpool.server.server_pid())
PY
"${clean_env[@]}" python -m arrowpool ls
"${clean_env[@]}" arrowpool stop
echo "package-test: ok"
