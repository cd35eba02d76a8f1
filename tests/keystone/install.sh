#!/usr/bin/env bash
# Install a real OpenStack Keystone (keystone and gunicorn, every package pinned in
# requirements.txt) into tests/keystone/.venv and print the venv's path, for
# REPOCRYPT_KEYSTONE_VENV and tests/keystone/start.sh:
#   export REPOCRYPT_KEYSTONE_VENV="$(bash tests/keystone/install.sh)"
# Idempotent: a second run only checks that the pins are installed (a few seconds).
# $PYTHON picks the interpreter for the venv (default python3; Keystone 30 needs >= 3.10).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
# The two entry points start.sh runs must be there and load.
"$venv/bin/keystone-manage" --version >/dev/null 2>&1
"$venv/bin/gunicorn" --version >/dev/null
echo "$venv"
