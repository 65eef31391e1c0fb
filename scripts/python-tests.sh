#!/usr/bin/env bash
# Runs the Python client's tests against a real arrowpoold.
#
# Creates python/.venv if missing, installs the pinned versions from
# python/requirements-dev.txt and the package (editable: maturin builds the server and
# the CLI into the venv), then runs pytest. The tests start their own servers from
# $ARROWPOOLD (default: target/debug/arrowpoold) and run the CLI from $ARROWPOOL_CLI
# (default: the arrowpool beside it). scripts/package-test.sh checks the wheel itself.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/python/.venv"
requirements="$repo/python/requirements-dev.txt"

# No test may reach a cloud's instance metadata service (169.254.169.254, an
# address off this machine): an object store ingest without credentials in
# its environment would ask it. These point every store's metadata endpoint
# at a closed loopback port instead; servers the tests start inherit them.
export AWS_METADATA_ENDPOINT="http://127.0.0.1:9" AWS_EC2_METADATA_DISABLED=true
export GCE_METADATA_HOST="127.0.0.1:9" GCE_METADATA_IP="127.0.0.1:9"
export AZURE_MSI_ENDPOINT="http://127.0.0.1:9" IDENTITY_ENDPOINT="http://127.0.0.1:9"

export ARROWPOOLD="${ARROWPOOLD:-target/debug/arrowpoold}"
case "$ARROWPOOLD" in
  /*) ;;
  *) ARROWPOOLD="$repo/$ARROWPOOLD" ;;
esac
# `python -m arrowpool stop` and friends run this build's CLI, not the copy the
# editable install put in the venv when the pins last changed.
export ARROWPOOL_CLI="${ARROWPOOL_CLI:-$(dirname "$ARROWPOOLD")/arrowpool}"
if [[ ! -x "$ARROWPOOLD" ]]; then
  echo "python-tests: no arrowpoold binary at $ARROWPOOLD; run 'cargo build --bin arrowpoold' or set ARROWPOOLD" >&2
  exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi

# Reinstall only when the pins or the package metadata changed.
stamp="$venv/.arrowpool-installed"
want="$(cat "$requirements" "$repo/python/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log="$venv/pip-install.log"
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check -r "$requirements" &&
         "$venv/bin/python" -m pip install --disable-pip-version-check -e "$repo/python"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "python-tests: pip install failed (log above, also in $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

cd "$repo"
exec "$venv/bin/python" -m pytest -q python/tests "$@"
