#!/usr/bin/env bash
# Install moto_server (pinned in requirements.txt) into tests/moto/.venv and print the
# path of its moto_server, for REPOCRYPT_MOTO_SERVER:
#   export REPOCRYPT_MOTO_SERVER="$(bash tests/moto/install.sh)"
# $PYTHON picks the interpreter for the venv (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
"$venv/bin/moto_server" --help >/dev/null
echo "$venv/bin/moto_server"
