#!/usr/bin/env bash
# A/B: two builds of repocrypt under the same load, in one run, in interleaved rounds, so
# that the machine's drift between runs cancels out; prints each build's medians and the
# ratio B/A.
#
#   scripts/ab.sh A_BIN B_BIN                 # SQLite
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/ab.sh A_BIN B_BIN
#                                             # ...and PostgreSQL (a fresh database per build)
#
# Each binary must have `bench load` (built with `--features bench`, or older than it).
# Per round and build: GET setting (token) at BENCH_CONNECTIONS (32) for BENCH_DURATION (5s),
# then PUT setting (durable) the same way. Knobs: BENCH_ROUNDS (5), BENCH_DURATION,
# BENCH_CONNECTIONS, BENCH_TENANTS (1000). wrk from Debian.
#
# BENCH_ROTATE=N (with BENCH_LOADGEN, the path of a build of examples/loadgen.rs) adds the
# open-loop rotation of bench.sh's 1,000,000-tenant part: GET setting at BENCH_RATE (5000)
# requests/s for BENCH_DURATION, each request for the next of N tenants (a token each),
# after one warm pass over them; p50/p99/p99.9 medians and the B/A ratios.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 A_BIN B_BIN" >&2; exit 2; }
a_bin="$(realpath "$1")"
b_bin="$(realpath "$2")"
rounds="${BENCH_ROUNDS:-5}"
duration="${BENCH_DURATION:-5s}"
conns="${BENCH_CONNECTIONS:-32}"
tenants="${BENCH_TENANTS:-1000}"
rotate_n="${BENCH_ROTATE:-0}"
rate="${BENCH_RATE:-5000}"
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# wrk_run URL [ARGS...]: "rps p99_ms non2xx"
wrk_run() {
    local url="$1"
    shift
    wrk -t2 -c"$conns" -d"$duration" --latency "$@" "$url" | awk '
        /Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        END {printf "%.0f %.3f %d\n", rps, ms(p99), bad+0}'
}

# setup NAME BIN [ENV...]: a data directory with $tenants tenants (under $work/$label), a
# server on it; sets ${NAME}_addr, ${NAME}_path, ${NAME}_token and writes the PUT's script.
setup() {
    local name="$1" bin="$2"
    shift 2
    local dir="$work/$label/$name"
    mkdir -p "$dir"
    env "$@" REPOCRYPT_DATA_DIR="$dir" "$bin" init >/dev/null 2>&1 || true # older builds have no init
    env "$@" REPOCRYPT_DATA_DIR="$dir" "$bin" bench load --tenants "$tenants" \
        --tokens "$((rotate_n > 1 ? rotate_n : 1))" --tokens-file "$dir.tokens" >/dev/null 2>&1
    local tenant token key_id port
    read -r tenant token < <(head -1 "$dir.tokens")
    key_id="$(env "$@" REPOCRYPT_DATA_DIR="$dir" "$bin" kms list-keys --tenant "$tenant" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["key_id"])')"
    cat >"$dir.lua" <<EOF
wrk.method = "PUT"
wrk.body = '{"encryption_type":"kms","default_encryption_enabled":true,"cmk_key_id":"$key_id"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Auth-Token"] = "$token"
EOF
    port="$(free_port)"
    env REPOCRYPT_RATE_LIMIT_PER_TENANT=0 REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL=0 "$@" \
        REPOCRYPT_DATA_DIR="$dir" "$bin" serve --listen "127.0.0.1:$port" \
        >"$dir.out" 2>/dev/null &
    pids+=("$!")
    for _ in $(seq 100); do
        grep -q listening "$dir.out" 2>/dev/null && break
        sleep 0.1
    done
    printf -v "${name}_addr" '%s' "127.0.0.1:$port"
    printf -v "${name}_path" '%s' "/v4/tenants/$tenant/repo-encryption/setting"
    printf -v "${name}_token" '%s' "$token"
}

# compare LABEL [ENV_A...] -- [ENV_B...]
compare() {
    label="$1"
    shift
    local env_a=() env_b=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do env_a+=("$1"); shift; done
    shift || true
    env_b=("$@")
    setup a "$a_bin" "${env_a[@]}"
    setup b "$b_bin" "${env_b[@]}"
    declare -A r=()
    for round in $(seq "$rounds"); do
        log "[$label] round $round/$rounds"
        # A and B alternate first, so that neither always runs on a warmer machine.
        local order=(a b)
        [ $((round % 2)) -eq 0 ] && order=(b a)
        for x in "${order[@]}"; do
            local addr="${x}_addr" path="${x}_path" token="${x}_token"
            r[$x-get]+="$(wrk_run "http://${!addr}${!path}" -H "X-Auth-Token: ${!token}")"$'\n'
            r[$x-put]+="$(wrk_run "http://${!addr}${!path}" -s "$work/$label/$x.lua")"$'\n'
            if [ "$rotate_n" -gt 0 ]; then
                rotate "${!addr}" "$work/$label/$x.tokens" 1 >/dev/null
                rotate "${!addr}" "$work/$label/$x.tokens" 0 >"$work/lg.json"
                r[$x-rot]+="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["rate"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["errors"])' "$work/lg.json")"$'\n'
            fi
        done
    done
    printf '\n## %s: %s connections, %s per run, median of %s interleaved rounds\n\n' \
        "$label" "$conns" "$duration" "$rounds"
    printf '| operation | A rps | B rps | B/A rps | A p99 ms | B p99 ms | B/A p99 | non-2xx A, B |\n'
    printf '|---|---|---|---|---|---|---|---|\n'
    for op in get put; do
        local ar br ap bp abad bbad
        ar="$(printf '%s' "${r[a-$op]}" | awk 'NF{print $1}' | median)"
        br="$(printf '%s' "${r[b-$op]}" | awk 'NF{print $1}' | median)"
        ap="$(printf '%s' "${r[a-$op]}" | awk 'NF{print $2}' | median)"
        bp="$(printf '%s' "${r[b-$op]}" | awk 'NF{print $2}' | median)"
        abad="$(printf '%s' "${r[a-$op]}" | awk 'NF{s+=$3} END{print s+0}')"
        bbad="$(printf '%s' "${r[b-$op]}" | awk 'NF{s+=$3} END{print s+0}')"
        printf '| %s setting | %s | %s | %s | %s | %s | %s | %s, %s |\n' "${op^^}" "$ar" "$br" \
            "$(awk -v a="$ar" -v b="$br" 'BEGIN{printf "%.2f", b/a}')" "$ap" "$bp" \
            "$(awk -v a="$ap" -v b="$bp" 'BEGIN{printf "%.2f", b/a}')" "$abad" "$bbad"
    done
    if [ "$rotate_n" -gt 0 ]; then
        printf '\n%s tenants, GET setting rotating over %s of them at %s rps (open loop, one warm pass first)\n\n' \
            "$tenants" "$rotate_n" "$rate"
        printf '| | A | B | B/A |\n|---|---|---|---|\n'
        local col i name
        for i in 1 2 3 4; do
            name=(x "achieved rps" "p50 ms" "p99 ms" "p99.9 ms")
            local av bv
            av="$(printf '%s' "${r[a-rot]}" | awk -v c=$i 'NF{print $c}' | median)"
            bv="$(printf '%s' "${r[b-rot]}" | awk -v c=$i 'NF{print $c}' | median)"
            printf '| %s | %s | %s | %s |\n' "${name[$i]}" "$av" "$bv" \
                "$(awk -v a="$av" -v b="$bv" 'BEGIN{printf "%.2f", b/a}')"
        done
        printf '| errors | %s | %s | |\n' \
            "$(printf '%s' "${r[a-rot]}" | awk 'NF{s+=$5} END{print s+0}')" \
            "$(printf '%s' "${r[b-rot]}" | awk 'NF{s+=$5} END{print s+0}')"
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pids=()
}

# rotate ADDR TOKENS PASSES: GET setting at $rate rps, the next tenant of TOKENS each time;
# PASSES > 0 runs that many passes over the tokens, 0 runs for $duration.
rotate() {
    local passes=()
    [ "$3" -gt 0 ] && passes=(--duration "$(( ($(wc -l <"$2") * $3 + rate - 1) / rate ))s")
    [ "$3" -eq 0 ] && passes=(--duration "$duration")
    "${BENCH_LOADGEN:?BENCH_ROTATE needs BENCH_LOADGEN}" \
        --url "http://$1/v4/tenants/{tenant}/repo-encryption/setting" --tokens "$2" \
        --rate "$rate" --connections "$conns" "${passes[@]}"
}

printf '# A/B, %s\n\nA: %s\nB: %s\nmachine: %s cores; load generator on the same cores\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$a_bin" "$b_bin" "$(nproc)"
compare sqlite
if [ -n "${BENCH_PG_URL:-}" ]; then
    server="${BENCH_PG_URL%/*}"
    for x in a b; do
        psql "$BENCH_PG_URL" -qc "DROP DATABASE IF EXISTS repocrypt_ab_$x" -c "CREATE DATABASE repocrypt_ab_$x" >/dev/null
    done
    compare postgres REPOCRYPT_DATABASE_URL="$server/repocrypt_ab_a" -- \
        REPOCRYPT_DATABASE_URL="$server/repocrypt_ab_b"
    for x in a b; do psql "$BENCH_PG_URL" -qc "DROP DATABASE IF EXISTS repocrypt_ab_$x WITH (FORCE)" >/dev/null; done
fi
