#!/usr/bin/env bash
# The benchmark harness: one command, one run, every figure of docs/performance.md.
#
#   scripts/bench.sh                 # everything, on SQLite (about 20 minutes; 25 with PostgreSQL)
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench.sh
#                                    # ...and the same figures on PostgreSQL
#
# It builds release, installs the load generators if missing (wrk from Debian, oha from
# crates.io into target/bench-tools), starts the baseline (examples/baseline.rs: the same
# GET JSON from memory, no auth, no storage) and repocrypt (SQLite, local KMS) on
# loopback, and loads both with the same generator, same connections and duration, in
# interleaved rounds. Every server runs with defaults but for the rate limits, which are
# turned off (REPOCRYPT_RATE_LIMIT_PER_TENANT=0 and ..._PER_CREDENTIAL=0): the load
# generator is one client far over any sane per-tenant rate.
#
# Knobs (environment): BENCH_DURATION (10s), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32),
# BENCH_RATE (5000, the open-loop rate), BENCH_LARGE (1000000 tenants),
# BENCH_LARGE_TOKENS (100000 of them in the cold rotation), BENCH_LARGE_WARM (40000 of
# those in the warmed rotation: within the default cache of 50,000 settings), BENCH_PG_URL (unset: SQLite only),
# BENCH_BROKER_REPOS (10000 repositories in the key broker's part), BENCH_BROKER_RATE (2000,
# its open-loop releases/s),
# BENCH_PARTS ("sqlite postgres broker keystone large logdisk": which parts to run; postgres needs
# BENCH_PG_URL; keystone needs tests/keystone/install.sh's venv (or REPOCRYPT_KEYSTONE_VENV);
# "ratio" is a focused check of GET setting's ratio alone, with every round shown, for wrk
# -t1 -c64 and -t2 -c32 (BENCH_RATIO_SHAPES): BENCH_PARTS=ratio BENCH_ROUNDS=5 scripts/bench.sh; "logdisk" is durable PUT with the access
# log written to the database's disk, see below).
# BENCH_SERVER_LOG (/dev/null): where the servers' logs go. They log as in production (one
# access line per request); the "logdisk" part measures a log on the database's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

duration="${BENCH_DURATION:-10s}"
rounds="${BENCH_ROUNDS:-3}"
conns="${BENCH_CONNECTIONS:-32}"
rate="${BENCH_RATE:-5000}"
large="${BENCH_LARGE:-1000000}"
large_tokens="${BENCH_LARGE_TOKENS:-100000}"
large_warm="${BENCH_LARGE_WARM:-40000}"
broker_repos="${BENCH_BROKER_REPOS:-10000}"
broker_rate="${BENCH_BROKER_RATE:-2000}"
oha_version="1.16.0"

log() { printf '%s\n' "$*" >&2; }

# ---- tools -----------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    log "installing wrk (Debian)"
    apt-get install -y wrk >/dev/null || { log "need wrk: apt-get install wrk"; exit 1; }
fi
parts="${BENCH_PARTS:-sqlite postgres broker keystone large logdisk}"
part() { [[ " $parts " == *" $1 "* ]]; }
oha="$repo/target/bench-tools/bin/oha"
# Only the open loop on one tenant of the sqlite and postgres parts uses oha.
if [ ! -x "$oha" ] && { part sqlite || part postgres; }; then
    log "installing oha $oha_version (crates.io) into target/bench-tools"
    cargo install oha --locked --version "$oha_version" --root "$repo/target/bench-tools"
fi

log "building release"
cargo build --release --features bench --bin repocrypt --example baseline --example loadgen >&2
bin="$repo/target/release/repocrypt"
baseline="$repo/target/release/examples/baseline"
loadgen="$repo/target/release/examples/loadgen"

work="$repo/target/bench-run"
rm -rf "$work"
mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_server NAME DATA_DIR [ENV...]: starts repocrypt serve, sets $addr and $pid.
start_server() {
    local name="$1" dir="$2"
    shift 2
    local port
    port="$(free_port)"
    # The load generator is one client at tens of thousands of requests a second: the
    # rate limits (meant for exactly that) are turned off.
    env REPOCRYPT_RATE_LIMIT_PER_TENANT=0 REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL=0 "$@" \
        REPOCRYPT_DATA_DIR="$dir" "$bin" serve --listen "127.0.0.1:$port" \
        >"$work/$name.out" 2>"${BENCH_SERVER_LOG:-/dev/null}" &
    pid=$!
    pids+=("$pid")
    addr="127.0.0.1:$port"
    for _ in $(seq 100); do
        grep -q listening "$work/$name.out" 2>/dev/null && return 0
        sleep 0.1
    done
    log "$name did not start (run it by hand to see why)"
    exit 1
}

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
hwm_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# wrk_run URL [ARGS...]: prints "rps p50_ms p99_ms non2xx" (threads and connections:
# $wrk_t, default 2, and $wrk_c, default $conns)
wrk_run() {
    local url="$1"
    shift
    wrk -t"${wrk_t:-2}" -c"${wrk_c:-$conns}" -d"$duration" --latency "$@" "$url" | awk '
        /Requests\/sec/ {rps=$2}
        /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
        /Non-2xx/ {bad=$NF} /Socket errors/ {bad+=0}
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        END {printf "%.0f %.3f %.3f %d\n", rps, ms(p50), ms(p99), bad+0}'
}

# rotate ADDR TOKENS DURATION: GET setting on the server at ADDR at $rate requests/s for
# DURATION, each request for the next tenant of the TOKENS file (loadgen's JSON on stdout).
rotate() {
    "$loadgen" --url "http://$1/v4/tenants/{tenant}/repo-encryption/setting" --tokens "$2" \
        --rate "$rate" --duration "$3" --connections "$conns"
}
commas() { python3 -c 'import sys; print(f"{int(sys.argv[1]):,}")' "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# ---- data: 1,000 tenants ---------------------------------------------------------------
small="$work/small"
mkdir -p "$small"
log "loading 1,000 tenants"
REPOCRYPT_DATA_DIR="$small" "$bin" init >/dev/null # the root key bench load needs
REPOCRYPT_DATA_DIR="$small" "$bin" bench load --tenants 1000 --tokens 1000 \
    --tokens-file "$work/tokens-1k.txt" 2>&1 | tail -1 >&2
read -r tenant token < <(head -1 "$work/tokens-1k.txt")
key_id="$(REPOCRYPT_DATA_DIR="$small" "$bin" kms list-keys --tenant "$tenant" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["key_id"])')"
cat >"$work/put.lua" <<EOF
wrk.method = "PUT"
wrk.body = '{"encryption_type":"kms","default_encryption_enabled":true,"cmk_key_id":"$key_id"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Auth-Token"] = "$token"
EOF

# ensure_baseline RC_ADDR: starts the baseline once, answering with what repocrypt at RC_ADDR
# answers to GET setting; sets $base_addr.
ensure_baseline() {
    [ -n "${base_addr:-}" ] && return 0
    curl -sf -H "X-Auth-Token: $token" "http://$1/v4/tenants/$tenant/repo-encryption/setting" \
        >"$work/response.json"
    local port
    port="$(free_port)"
    "$baseline" "127.0.0.1:$port" "$work/response.json" >/dev/null &
    pids+=("$!")
    base_addr="127.0.0.1:$port"
    sleep 0.3
}

# bench_store LABEL DATA_DIR [ENV...]: the closed-loop rounds and the open-loop run.
bench_store() {
    local label="$1" dir="$2"
    shift 2
    start_server "repocrypt-$label" "$dir" "$@"
    local rc_addr="$addr" rc_pid="$pid"
    local setting="/v4/tenants/$tenant/repo-encryption/setting"
    local grant="/v4/tenants/$tenant/repo-encryption/kms-grant"
    local tsetting="/v4/tenant/setting"
    ensure_baseline "$rc_addr"
    declare -A results=()
    for round in $(seq "$rounds"); do
        log "[$label] round $round/$rounds"
        for name in setting grant tsetting; do
            local path="${!name}"
            results[base-$name]+="$(wrk_run "http://$base_addr$path")"$'\n'
            results[rc-$name]+="$(wrk_run "http://$rc_addr$path" -H "X-Auth-Token: $token")"$'\n'
        done
        results[put]+="$(wrk_run "http://$rc_addr$setting" -s "$work/put.lua")"$'\n'
    done
    printf '\n## %s: closed loop, %s connections, %s per run, median of %s interleaved rounds\n\n' \
        "$label" "$conns" "$duration" "$rounds"
    printf '| operation | rps | p50 ms | p99 ms | non-2xx | baseline rps | ratio |\n|---|---|---|---|---|---|---|\n'
    for name in setting grant tsetting put; do
        local key="rc-$name"
        [ "$name" = put ] && key=put
        local rps p50 p99 bad
        rps="$(printf '%s' "${results[$key]}" | awk 'NF{print $1}' | median)"
        p50="$(printf '%s' "${results[$key]}" | awk 'NF{print $2}' | median)"
        p99="$(printf '%s' "${results[$key]}" | awk 'NF{print $3}' | median)"
        bad="$(printf '%s' "${results[$key]}" | awk 'NF{s+=$4} END{print s+0}')"
        if [ "$name" = put ]; then
            printf '| PUT setting | %s | %s | %s | %s | | |\n' "$rps" "$p50" "$p99" "$bad"
        else
            local brps
            brps="$(printf '%s' "${results[base-$name]}" | awk 'NF{print $1}' | median)"
            printf '| GET %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$bad" "$brps" \
                "$(awk -v a="$rps" -v b="$brps" 'BEGIN{printf "%.2f", a/b}')"
        fi
    done
    printf '\n## %s: open loop at %s rps for %s (latency from the due time)\n\n' "$label" "$rate" "$duration"
    printf '| target | tool | achieved rps | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---|---|---|---|---|---|\n'
    for target in baseline repocrypt; do
        local a="$base_addr" h=()
        [ "$target" = repocrypt ] && { a="$rc_addr"; h=(-H "X-Auth-Token: $token"); }
        "$oha" --no-tui --output-format json -q "$rate" --latency-correction -z "$duration" \
            -c "$conns" "${h[@]}" "http://$a$setting" >"$work/oha.json"
        python3 - "$work/oha.json" "$target" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
# Requests still in flight when the run ends are "aborted due to deadline": not errors.
errors = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(
    v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k)
print(f"| {sys.argv[2]} GET setting | oha -q | {r['summary']['requestsPerSec']:.0f} | {p['p50']*1000:.3f} | {p['p99']*1000:.3f} | {p['p99.9']*1000:.3f} | {errors} |")
EOF
    done
    # The steady state, as in the 1,000,000-tenant part: one pass over the rotation first
    # (a fresh server's first request for a tenant also reads its key's state).
    rotate "$rc_addr" "$work/tokens-1k.txt" 1s >/dev/null
    rotate "$rc_addr" "$work/tokens-1k.txt" "$duration" >"$work/lg.json"
    python3 - "$work/lg.json" "repocrypt GET setting, 1,000 tenants rotating" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | loadgen | {r['rate']} | {r['p50_ms']} | {r['p99_ms']} | {r['p999_ms']} | {r['errors']} |")
EOF
    printf '\nrepocrypt (%s) resident memory: %s MiB now, %s MiB peak\n' "$label" "$(rss_mib "$rc_pid")" "$(hwm_mib "$rc_pid")"
    kill "$rc_pid"
    wait "$rc_pid" 2>/dev/null || true
}

printf '# repocrypt benchmark, %s\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
printf 'machine: %s, %s cores, %s GiB; load generator on the same cores\n' \
    "$(uname -sr)" "$(nproc)" "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)"
printf 'commit: %s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

part sqlite && bench_store sqlite "$small"

# ---- GET setting's ratio alone, every round shown ----------------------------------------------
# For each wrk shape of BENCH_RATIO_SHAPES ("1x64 2x32": threads x connections), interleaved
# rounds of baseline then repocrypt.
if part ratio; then
    start_server repocrypt-ratio "$small"
    rc_addr="$addr"
    setting="/v4/tenants/$tenant/repo-encryption/setting"
    ensure_baseline "$rc_addr"
    shapes="${BENCH_RATIO_SHAPES:-1x64 2x32}"
    printf '\n## GET setting alone: closed loop, wrk %s, %s per run, %s interleaved rounds\n\n' \
        "$shapes" "$duration" "$rounds"
    printf '| round | wrk | baseline rps | repocrypt rps | p99 ms | non-2xx | ratio |\n|---|---|---|---|---|---|---|\n'
    declare -A shape_ratios=()
    for round in $(seq "$rounds"); do
        for shape in $shapes; do
            log "[ratio] round $round/$rounds, wrk $shape"
            wrk_t="${shape%x*}" wrk_c="${shape#*x}"
            read -r brps _ _ _ < <(wrk_run "http://$base_addr$setting")
            read -r rps _ p99 bad < <(wrk_run "http://$rc_addr$setting" -H "X-Auth-Token: $token")
            ratio="$(awk -v a="$rps" -v b="$brps" 'BEGIN {printf "%.3f", a / b}')"
            shape_ratios[$shape]+="$ratio"$'\n'
            printf '| %s | -t%s -c%s | %s | %s | %s | %s | %s |\n' "$round" "$wrk_t" "$wrk_c" "$brps" "$rps" "$p99" "$bad" "$ratio"
        done
    done
    unset wrk_t wrk_c
    printf '\n'
    for shape in $shapes; do
        printf 'median ratio, wrk %s: %s\n' "$shape" "$(printf '%s' "${shape_ratios[$shape]}" | awk 'NF' | median)"
    done
fi

# ---- durable PUT with the access log on the database's disk ------------------------------------
# What a server under systemd or with 2>file does for hours: its log on the same disk as the
# WAL. For each destination (a file: 2>file; a pipe to a file: 2> >(cat >file)), a fresh
# server on the 1,000-tenant data: BENCH_LOG_ROUNDS (3) interleaved rounds of GET setting
# (wrk -t1 -c64, baseline then repocrypt: the log's volume), then durable PUT at 32
# connections; with the log lines dropped (/metrics) and the log's size.
# BENCH_LOG_WRITEBACK ("true false"): the values of log_writeback to compare;
# BENCH_LOG_DESTS ("file pipe"); BENCH_LOG_REPEAT (2): times the whole sequence runs, so
# that each row is measured more than once, interleaved with the others.
if part logdisk; then
    setting="/v4/tenants/$tenant/repo-encryption/setting"
    printf '\n## Durable PUT with the access log on the database disk: %s GET rounds (wrk -t1 -c64, %s), then PUT (wrk -t2 -c32, %s)\n\n' \
        "${BENCH_LOG_ROUNDS:-3}" "$duration" "$duration"
    printf '| log to | log_writeback | GET ratio (median) | PUT rps | PUT p50 ms | PUT p99 ms | non-2xx | log MiB | lines dropped |\n|---|---|---|---|---|---|---|---|---|\n'
    for _ in $(seq "${BENCH_LOG_REPEAT:-2}"); do
    for dest in ${BENCH_LOG_DESTS:-file pipe}; do
        for wb in ${BENCH_LOG_WRITEBACK:-true false}; do
            logfile="$small/server-$dest-$wb.log"
            rm -f "$logfile"
            # Each case starts from a disk with nothing of the harness's own left to write
            # (the database just loaded, the previous run's files just deleted, the last
            # case's log): what is measured is this server's log against its WAL.
            sync
            port="$(free_port)"
            wbenv=(REPOCRYPT_LOG_WRITEBACK="$wb")
            if [ "$dest" = file ]; then
                env REPOCRYPT_RATE_LIMIT_PER_TENANT=0 REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL=0 "${wbenv[@]}" \
                    REPOCRYPT_DATA_DIR="$small" "$bin" serve --listen "127.0.0.1:$port" \
                    >"$work/logdisk.out" 2>"$logfile" &
            else
                env REPOCRYPT_RATE_LIMIT_PER_TENANT=0 REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL=0 "${wbenv[@]}" \
                    REPOCRYPT_DATA_DIR="$small" "$bin" serve --listen "127.0.0.1:$port" \
                    >"$work/logdisk.out" 2> >(cat >"$logfile") &
            fi
            pid=$!
            pids+=("$pid")
            rc_addr="127.0.0.1:$port"
            for _ in $(seq 100); do
                grep -q listening "$work/logdisk.out" 2>/dev/null && break
                sleep 0.1
            done
            ensure_baseline "$rc_addr"
            ratios=""
            for round in $(seq "${BENCH_LOG_ROUNDS:-3}"); do
                log "[logdisk $dest $wb] GET round $round"
                read -r brps _ _ _ < <(wrk_t=1 wrk_c=64 wrk_run "http://$base_addr$setting")
                read -r rps _ _ _ < <(wrk_t=1 wrk_c=64 wrk_run "http://$rc_addr$setting" -H "X-Auth-Token: $token")
                ratios+="$(awk -v a="$rps" -v b="$brps" 'BEGIN {printf "%.3f", a / b}')"$'\n'
            done
            log "[logdisk $dest $wb] PUT"
            read -r prps pp50 pp99 pbad < <(wrk_run "http://$rc_addr$setting" -s "$work/put.lua")
            dropped="$(curl -s "http://$rc_addr/metrics" | awk '/^repocrypt_log_lines_dropped_total/ {print $2}')"
            kill "$pid"; wait "$pid" 2>/dev/null || true
            sleep 0.5
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$dest" "$wb" \
                "$(printf '%s' "$ratios" | awk 'NF' | median)" "$prps" "$pp50" "$pp99" "$pbad" \
                "$(du -m "$logfile" | cut -f1)" "${dropped:-?}"
            rm -f "$logfile"
        done
    done
    done
fi

if part postgres && [ -n "${BENCH_PG_URL:-}" ]; then
    pgdb="repocrypt_bench_$$"
    psql "$BENCH_PG_URL" -qc "CREATE DATABASE $pgdb" >/dev/null
    pg_url="${BENCH_PG_URL%/*}/$pgdb"
    pgdir="$work/pg"
    mkdir -p "$pgdir"
    cp "$small/root.key" "$pgdir/root.key" # the same tokens verify
    REPOCRYPT_DATA_DIR="$pgdir" REPOCRYPT_DATABASE_URL="$pg_url" "$bin" bench load --tenants 1000 \
        --tokens 1000 --tokens-file "$work/tokens-1k-pg.txt" 2>&1 | tail -1 >&2
    saved_tokens="$work/tokens-1k.txt"
    cp "$work/tokens-1k-pg.txt" "$saved_tokens"
    read -r tenant token < <(head -1 "$saved_tokens")
    key_id="$(REPOCRYPT_DATA_DIR="$pgdir" REPOCRYPT_DATABASE_URL="$pg_url" "$bin" kms list-keys --tenant "$tenant" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["key_id"])')"
    sed -i "s/\"cmk_key_id\":\"[^\"]*\"/\"cmk_key_id\":\"$key_id\"/; s/X-Auth-Token\"] = \".*\"/X-Auth-Token\"] = \"$token\"/" "$work/put.lua"
    bench_store postgres "$pgdir" REPOCRYPT_DATABASE_URL="$pg_url"
    psql "$BENCH_PG_URL" -qc "DROP DATABASE $pgdb WITH (FORCE)" >/dev/null 2>&1 ||
        log "could not drop $pgdb"
fi

# ---- the key broker ---------------------------------------------------------------------
# One tenant with $broker_repos encrypted repositories (registered through the service by
# bench load, each with its own data key from the local KMS), a service token, and in
# each round: the release of repository 1 (wrk, against a second baseline answering the
# release's body on the release's path), registrations with fresh repository ids (wrk
# with a counting script), PUT setting, and the open-loop release over all the
# repositories, with the KMS calls it cost read from /metrics.
if part broker; then
    bdir="$work/broker"
    mkdir -p "$bdir"
    log "loading 1 tenant and $broker_repos repositories"
    REPOCRYPT_DATA_DIR="$bdir" "$bin" init >/dev/null
    REPOCRYPT_DATA_DIR="$bdir" "$bin" bench load --tenants 1 --tokens 1 \
        --tokens-file "$work/tokens-broker.txt" --repositories "$broker_repos" 2>&1 | grep registered >&2
    read -r btenant btoken < <(head -1 "$work/tokens-broker.txt")
    svc_token="$(REPOCRYPT_DATA_DIR="$bdir" "$bin" token issue --service bench --ttl 1h)"
    bkey_id="$(REPOCRYPT_DATA_DIR="$bdir" "$bin" kms list-keys --tenant "$btenant" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["key_id"])')"
    seq "$broker_repos" | awk -v t="$btenant" -v k="$svc_token" '{print t, $1, k}' >"$work/repos-broker.txt"
    sed "s/\"cmk_key_id\":\"[^\"]*\"/\"cmk_key_id\":\"$bkey_id\"/; s/X-Auth-Token\"] = \".*\"/X-Auth-Token\"] = \"$btoken\"/" \
        "$work/put.lua" >"$work/put-broker.lua"
    # Each wrk thread counts its own repository ids from BASE + thread * 1,000,000: every
    # registration is a new repository (201), as the platform creating repositories.
    cat >"$work/register.lua.in" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Auth-Token"] = "$svc_token"
local threads = 0
function setup(thread)
    thread:set("first", @BASE@ + threads * 1000000)
    threads = threads + 1
end
function init(args) n = 0 end
function request()
    n = n + 1
    local id = first + n
    return wrk.format(nil, nil, nil, string.format(
        '{"repo_id":%d,"repo_name":"bench-new-%d","full_path":"bench/bench-new-%d","encrypted":true}', id, id, id))
end
EOF
    start_server repocrypt-broker "$bdir"
    rc_addr="$addr" rc_pid="$pid"
    release="/v4/tenants/$btenant/repo-encryption/repositories/1/data-key"
    repos="/v4/tenants/$btenant/repo-encryption/repositories"
    curl -sf -H "X-Auth-Token: $svc_token" "http://$rc_addr$release" >"$work/release.json"
    port="$(free_port)"
    "$baseline" "127.0.0.1:$port" "$work/release.json" >/dev/null &
    pids+=("$!")
    rbase_addr="127.0.0.1:$port"
    sleep 0.3
    curl -sf "http://$rbase_addr$release" | cmp -s - "$work/release.json" ||
        { log "the release baseline does not answer the release's body"; exit 1; }
    kms_calls() { # CALL: the server's count of KMS calls CALL, every outcome
        curl -sf "http://$rc_addr/metrics" |
            awk -v c="repocrypt_kms_calls_total{call=\"$1\"," 'index($0, c) == 1 {s += $2} END {print s + 0}'
    }
    declare -A br=()
    for round in $(seq "$rounds"); do
        log "[broker] round $round/$rounds"
        br[base-t2]+="$(wrk_run "http://$rbase_addr$release")"$'\n'
        br[rc-t2]+="$(wrk_run "http://$rc_addr$release" -H "X-Auth-Token: $svc_token")"$'\n'
        br[base-t1]+="$(wrk_t=1 wrk_c=64 wrk_run "http://$rbase_addr$release")"$'\n'
        br[rc-t1]+="$(wrk_t=1 wrk_c=64 wrk_run "http://$rc_addr$release" -H "X-Auth-Token: $svc_token")"$'\n'
        sed "s/@BASE@/$((round * 10000000))/" "$work/register.lua.in" >"$work/register.lua"
        br[register]+="$(wrk_run "http://$rc_addr$repos" -s "$work/register.lua")"$'\n'
        br[put]+="$(wrk_run "http://$rc_addr/v4/tenants/$btenant/repo-encryption/setting" -s "$work/put-broker.lua")"$'\n'
        # The released keys of the earlier round have expired by now (the closed-loop
        # runs take more than the TTL): each round starts cold. The same open loop against
        # the baseline is the floor of this machine and load generator at that rate; the
        # two take turns at going first, so that neither always follows the PUTs.
        ol_run() { # ADDR: rate p50 p99 p99.9 errors requests, of one open-loop run
            "$loadgen" --url "http://$1/v4/tenants/{tenant}/repo-encryption/repositories/{repo}/data-key" \
                --tokens "$work/repos-broker.txt" --rate "$broker_rate" --duration "$duration" \
                --connections "$conns" >"$work/lg.json"
            python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["rate"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["errors"], r["requests"], end=" ")' "$work/lg.json"
        }
        if [ $((round % 2)) -eq 0 ]; then br[rotate-base]+="$(ol_run "$rbase_addr")"$'\n'; fi
        d0="$(kms_calls decrypt)" k0="$(kms_calls describe_key)"
        br[rotate]+="$(ol_run "$rc_addr") "
        d1="$(kms_calls decrypt)" k1="$(kms_calls describe_key)"
        br[rotate]+="$((d1 - d0)) $((k1 - k0))"$'\n'
        if [ $((round % 2)) -eq 1 ]; then br[rotate-base]+="$(ol_run "$rbase_addr")"$'\n'; fi
    done
    bcol() { printf '%s' "${br[$1]}" | awk -v c="$2" 'NF{print $c}' | median; }
    bsum() { printf '%s' "${br[$1]}" | awk -v c="$2" 'NF{s+=$c} END{print s+0}'; }
    printf '\n## broker: closed loop, %s per run, median of %s interleaved rounds\n\n' "$duration" "$rounds"
    printf 'One tenant, %s encrypted repositories (SQLite, local KMS); a service token. The baseline: a second instance answering the release'"'"'s body (%s bytes) on the release'"'"'s path.\n\n' \
        "$(commas "$broker_repos")" "$(wc -c <"$work/release.json")"
    printf '| operation | wrk | rps | p50 ms | p99 ms | non-2xx | baseline rps | ratio |\n|---|---|---|---|---|---|---|---|\n'
    for t in t2 t1; do
        wc="-t2 -c$conns"
        [ "$t" = t1 ] && wc="-t1 -c64"
        printf '| GET data-key, repository 1 | %s | %s | %s | %s | %s | %s | %s |\n' "$wc" "$(bcol "rc-$t" 1)" \
            "$(bcol "rc-$t" 2)" "$(bcol "rc-$t" 3)" "$(bsum "rc-$t" 4)" "$(bcol "base-$t" 1)" \
            "$(awk -v a="$(bcol "rc-$t" 1)" -v b="$(bcol "base-$t" 1)" 'BEGIN{printf "%.2f", a/b}')"
    done
    printf '| POST repositories, a new repository each | -t2 -c%s | %s | %s | %s | %s | | |\n' "$conns" \
        "$(bcol register 1)" "$(bcol register 2)" "$(bcol register 3)" "$(bsum register 4)"
    printf '| PUT setting | -t2 -c%s | %s | %s | %s | %s | | |\n' "$conns" \
        "$(bcol put 1)" "$(bcol put 2)" "$(bcol put 3)" "$(bsum put 4)"
    printf '\n## broker: open loop at %s releases/s over %s repositories for %s (latency from the due time), %s connections\n\n' \
        "$broker_rate" "$(commas "$broker_repos")" "$duration" "$conns"
    printf '| round | achieved rps | p50 ms | p99 ms | p99.9 ms | errors | requests | KMS decrypt | KMS describe_key |\n|---|---|---|---|---|---|---|---|---|\n'
    printf '%s' "${br[rotate]}" | awk 'NF {n++; printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", n, $1, $2, $3, $4, $5, $6, $7, $8}'
    printf '| median | %s | %s | %s | %s | %s (sum) | | | |\n' "$(bcol rotate 1)" "$(bcol rotate 2)" \
        "$(bcol rotate 3)" "$(bcol rotate 4)" "$(bsum rotate 5)"
    printf '| baseline, same rounds (median) | %s | %s | %s | %s | %s (sum) | | | |\n' "$(bcol rotate-base 1)" \
        "$(bcol rotate-base 2)" "$(bcol rotate-base 3)" "$(bcol rotate-base 4)" "$(bsum rotate-base 5)"
    printf '\nThe baseline'"'"'s p99 by round (its floor on this machine at this rate): %s\n' \
        "$(printf '%s' "${br[rotate-base]}" | awk 'NF{printf "%s%s", sep, $3; sep=", "}')"
    printf '\nrepocrypt (broker) resident memory: %s MiB now, %s MiB peak\n' "$(rss_mib "$rc_pid")" "$(hwm_mib "$rc_pid")"
    kill "$rc_pid"
    wait "$rc_pid" 2>/dev/null || true
fi

# ---- 1,000,000 tenants --------------------------------------------------------------------
if part large; then
    big="$work/large"
    mkdir -p "$big"
    log "loading $large tenants (about a minute per million)"
    REPOCRYPT_DATA_DIR="$big" "$bin" init >/dev/null
    REPOCRYPT_DATA_DIR="$big" "$bin" bench load --tenants "$large" --tokens "$large_tokens" \
        --tokens-file "$work/tokens-large.txt" 2>&1 | tail -2 >&2
    # The steady state: a rotation that fits the default caches (50,000 settings), each
    # tenant touched once before the measured run, as on a server that has been up a while.
    # And the cold case: a fresh server and a rotation of $large_tokens tenants, most
    # requests the first for their tenant (a database read each).
    head -n "$large_warm" "$work/tokens-large.txt" >"$work/tokens-large-warm.txt"
    printf '\n## %s tenants vs 1,000: open loop at %s rps, tenants rotating (latency from the due time)\n\n' "$(commas "$large")" "$rate"
    printf 'Warmed rows: median of %s interleaved rounds, each on a fresh server warmed by one pass over its rotation; RSS the largest seen.\n\n' "$rounds"
    printf '| database | tenants in rotation | warmed | achieved rps | p50 ms | p99 ms | p99.9 ms | errors | RSS after, MiB | peak RSS, MiB |\n|---|---|---|---|---|---|---|---|---|---|\n'
    declare -A lg_runs=()
    # run_set SET: one fresh server, warmed unless cold, one measured run; appends
    # "rate p50 p99 p999 errors rss hwm" to lg_runs[SET].
    # set_tokens SET: the tokens file of its rotation.
    set_tokens() {
        case "$1" in
        small) echo "$work/tokens-1k.txt" ;;
        large) echo "$work/tokens-large-warm.txt" ;;
        cold) echo "$work/tokens-large.txt" ;;
        esac
    }
    run_set() {
        local set="$1" dir="$big" tokens
        tokens="$(set_tokens "$set")"
        [ "$set" = small ] && dir="$small"
        start_server "repocrypt-$set" "$dir"
        if [ "$set" != cold ]; then
            # One pass over the whole rotation (and a second more) before measuring.
            passes="$(($(wc -l <"$tokens") / rate + 1))s"
            rotate "$addr" "$tokens" "$passes" >/dev/null
        fi
        rotate "$addr" "$tokens" "$duration" >"$work/lg.json"
        lg_runs[$set]+="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["rate"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["errors"], end=" ")' "$work/lg.json") $(rss_mib "$pid") $(hwm_mib "$pid")"$'\n'
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    }
    for round in $(seq "$rounds"); do
        log "[large] round $round/$rounds"
        run_set small
        run_set large
    done
    run_set cold
    declare -A p99s=()
    for set in small large cold; do
        n="$large" warm=yes tokens="$(set_tokens "$set")"
        [ "$set" = small ] && n=1000
        [ "$set" = cold ] && warm=no
        col() { printf '%s' "${lg_runs[$set]}" | awk -v c="$1" 'NF{print $c}' | median; }
        colmax() { printf '%s' "${lg_runs[$set]}" | awk -v c="$1" 'NF{print $c}' | sort -g | tail -1; }
        errors="$(printf '%s' "${lg_runs[$set]}" | awk 'NF{e+=$5} END{print e+0}')"
        p99s[$set]="$(col 3)"
        printf '| %s tenants | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$(commas "$n")" "$(commas "$(wc -l <"$tokens")")" "$warm" "$(col 1)" "$(col 2)" \
            "${p99s[$set]}" "$(col 4)" "$errors" "$(colmax 6)" "$(colmax 7)"
    done
    printf '\nwarmed p99, %s tenants against 1,000: %s\n' "$(commas "$large")" \
        "$(awk -v a="${p99s[large]}" -v b="${p99s[small]}" 'BEGIN {printf "%.2f x", a / b}')"
fi

# ---- GET setting with Keystone tokens against local tokens ------------------------------------
# Two servers on the same data: one with the built-in IAM and a local token, one with
# iam = "keystone" against a real Keystone (tests/keystone) and a Keystone token of the same
# tenant (its domain). Every request after the first is answered from the IAM cache, so
# the ratio is the cost of that cache against one HMAC.
keystone_venv="${REPOCRYPT_KEYSTONE_VENV:-$repo/tests/keystone/.venv}"
if part keystone && [ ! -x "$keystone_venv/bin/keystone-manage" ]; then
    log "[keystone] skipped: no Keystone venv (run tests/keystone/install.sh)"
elif part keystone; then
    log "[keystone] starting Keystone"
    kport="$(free_port)"
    kpid="$(KEYSTONE_VENV="$keystone_venv" bash tests/keystone/start.sh "$work/keystone" "$kport")"
    pids+=("$kpid")
    kurl="http://127.0.0.1:$kport/v3"
    ktenant="$(awk -F= '$1=="TENANT_A_DOMAIN_ID"{print $2}' "$work/keystone/ids.env")"
    ktoken="$(curl -si -X POST "$kurl/auth/tokens?nocatalog" -H 'Content-Type: application/json' \
        -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"alice","domain":{"name":"tenant-a"},"password":"alice-secret"}}},"scope":{"domain":{"name":"tenant-a"}}}}' |
        awk 'tolower($1)=="x-subject-token:"{print $2}' | tr -d '\r')"
    ltoken="$(REPOCRYPT_DATA_DIR="$small" "$bin" token issue --tenant "$ktenant" --user alice --role admin)"
    start_server repocrypt-local-iam "$small"
    local_addr="$addr"
    start_server repocrypt-keystone-iam "$small" REPOCRYPT_IAM=keystone REPOCRYPT_IAM_URL="$kurl" \
        REPOCRYPT_IAM_USER=repocrypt REPOCRYPT_IAM_PROJECT=service REPOCRYPT_IAM_PASSWORD=repocrypt-secret
    keystone_addr="$addr"
    ksetting="/v4/tenants/$ktenant/repo-encryption/setting"
    check_202() { # ADDR TOKEN
        local code
        code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $2" "http://$1$ksetting")"
        [ "$code" = 202 ] || { log "[keystone] GET setting on $1 answered $code"; exit 1; }
    }
    check_202 "$local_addr" "$ltoken"
    check_202 "$keystone_addr" "$ktoken"
    printf '\n## GET setting, Keystone tokens against local tokens: closed loop, %s connections, %s per run, %s interleaved rounds\n\n' \
        "$conns" "$duration" "$rounds"
    printf '| round | local-token rps | local p99 ms | Keystone-token rps | Keystone p99 ms | non-2xx | ratio |\n|---|---|---|---|---|---|---|\n'
    kratios=""
    for round in $(seq "$rounds"); do
        log "[keystone] round $round/$rounds"
        read -r lrps _ lp99 lbad < <(wrk_run "http://$local_addr$ksetting" -H "X-Auth-Token: $ltoken")
        read -r krps _ kp99 kbad < <(wrk_run "http://$keystone_addr$ksetting" -H "X-Auth-Token: $ktoken")
        kratio="$(awk -v a="$krps" -v b="$lrps" 'BEGIN {printf "%.3f", a / b}')"
        kratios+="$kratio"$'\n'
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$round" "$lrps" "$lp99" "$krps" "$kp99" "$((lbad + kbad))" "$kratio"
    done
    printf '\nmedian ratio, Keystone tokens to local tokens: %s\n' "$(printf '%s' "$kratios" | awk 'NF' | median)"
fi
