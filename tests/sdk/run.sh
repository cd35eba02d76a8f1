#!/usr/bin/env bash
# Official-SDK compatibility suite: the Huawei Cloud Python SDK against the real binary.
#   tests/sdk/run.sh [pytest args...]
# Uses $REPOCRYPT_BIN if set, else builds target/release/repocrypt. $PYTHON picks the
# interpreter for the venv (default python3); CARGO_BUILD_JOBS limits the build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

if [ -z "${REPOCRYPT_BIN:-}" ]; then
    (cd "$repo" && cargo build --release)
    export REPOCRYPT_BIN="$repo/target/release/repocrypt"
fi

cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
