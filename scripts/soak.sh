#!/usr/bin/env bash
# The soak, by hand: 30 minutes of mixed reads and writes from 6 tenants at a fixed rate
# (open loop, 200 requests/s: 70% GET setting, 20% PUT setting, 10% registrations) on two
# replicas sharing one PostgreSQL database through a fault proxy; one replica killed with
# kill -9 and started again every minute, every PostgreSQL connection reset every 3
# minutes. At the end it checks that no acknowledged write was lost and that every audit
# record matches a request (tests/external/soak.rs), prints per minute the count of each
# outcome and the p50/p99 of reads and writes, and plots the p99s to docs/soak-p99.png.
#
#   scripts/soak.sh                        # 30 minutes (about 35 with the build)
#   SOAK_SECS=120 scripts/soak.sh          # a short one
#
# Knobs: SOAK_SECS (1800), SOAK_RATE (200/s), SOAK_KILL_EVERY (60 s), SOAK_CUT_EVERY (180 s),
# REPOCRYPT_TEST_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres), SOAK_PLOT (1: draw
# docs/soak-p99.png with matplotlib, in a venv under target/soak-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

export REPOCRYPT_TEST_DATABASE_URL="${REPOCRYPT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REPOCRYPT_SOAK_SECS="${SOAK_SECS:-1800}"
export REPOCRYPT_SOAK_RATE="${SOAK_RATE:-200}"
export REPOCRYPT_SOAK_KILL_EVERY="${SOAK_KILL_EVERY:-60}"
export REPOCRYPT_SOAK_CUT_EVERY="${SOAK_CUT_EVERY:-180}"

echo "== release build of the server" >&2
cargo build --release -j2
export REPOCRYPT_SOAK_BIN="$PWD/target/release/repocrypt"

echo "== soak: ${REPOCRYPT_SOAK_SECS}s at ${REPOCRYPT_SOAK_RATE}/s, a kill every ${REPOCRYPT_SOAK_KILL_EVERY}s, connections reset every ${REPOCRYPT_SOAK_CUT_EVERY}s" >&2
cargo test -j2 --test external soak -- --nocapture

if [ "${SOAK_PLOT:-1}" = 1 ]; then
    echo "== plot: docs/soak-p99.png" >&2
    if [ ! -x target/soak-venv/bin/python ]; then
        python3 -m venv target/soak-venv
        target/soak-venv/bin/pip install -q 'matplotlib==3.9.*'
    fi
    target/soak-venv/bin/python scripts/soak_plot.py target/tmp/soak.csv docs/soak-p99.png \
        "Soak: two replicas on PostgreSQL, ${REPOCRYPT_SOAK_RATE} req/s, kill -9 every ${REPOCRYPT_SOAK_KILL_EVERY} s, connections reset every ${REPOCRYPT_SOAK_CUT_EVERY} s"
fi
echo "== the figures: target/tmp/soak.md (docs/reliability.md shows one run)" >&2
