#!/usr/bin/env bash
# Start a real OpenStack Keystone v3 on 127.0.0.1:PORT with its state in DIR, and print
# the PID of its server (stop it with `kill PID`: gunicorn's master, which stops its worker).
#   pid="$(bash tests/keystone/start.sh DIR PORT)"
# Needs tests/keystone/install.sh first ($KEYSTONE_VENV overrides the venv it made).
# $KEYSTONE_TOKEN_EXPIRATION: a token's life in seconds (default 3600).
# $KEYSTONE_CACHE=1: turn on Keystone's own in-process cache (default off, as Keystone
#   ships): a validation then took 6-18 ms instead of 150-800 ms here; a revocation still
#   takes effect at once (Keystone invalidates the cached token; one worker, one cache).
#
# What is in DIR afterwards: keystone.conf, keystone.db (SQLite), fernet-keys/ and
# credential-keys/, keystone.log (Keystone's and gunicorn's output), keystone.pid, and
# ids.env (KEY=value: the ids Keystone chose for the domains, users, projects and roles).
#
# Identities (passwords are test credentials):
#   Default domain:  admin / admin-secret   (admin on project admin, and on the system)
#                    repocrypt / repocrypt-secret   (service on project service)
#   tenant-a, tenant-b (domains; each also has a project `app`, with the same grants):
#                    alice / alice-secret   admin on the domain
#                    bob / bob-secret       member
#                    dave / dave-secret     reader
#                    carol / carol-secret   no role
#
# Run again on the same DIR (after a kill) it restarts the same Keystone: the database
# and keys are kept, so tokens issued before still validate; keystone.conf is rewritten
# (a new $KEYSTONE_TOKEN_EXPIRATION applies), the setup and seeding steps are skipped
# (about 3 s instead of 16-32 s; a copy of a started DIR restarts as fast, with the same
# ids and keys). The catalog's endpoint keeps the PORT of the first start.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR PORT" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${KEYSTONE_VENV:-$here/.venv}"
mkdir -p "$1"
dir="$(cd "$1" && pwd)"   # absolute: SQLite's URL and the key repositories need it
port="$2"
expiration="${KEYSTONE_TOKEN_EXPIRATION:-3600}"
cache_enabled=false
if [ "${KEYSTONE_CACHE:-0}" = 1 ]; then cache_enabled=true; fi
url="http://127.0.0.1:$port/v3"
log="$dir/keystone.log"

# Something already answering on PORT would pass the readiness check below for this one.
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
    echo "start.sh: 127.0.0.1:$port is already in use" >&2
    exit 1
fi
if [ ! -x "$venv/bin/keystone-manage" ]; then
    echo "start.sh: no Keystone in $venv: run tests/keystone/install.sh" >&2
    exit 1
fi

# 1. keystone.conf: SQLite database in DIR, fernet tokens (and receipts) with their keys
#    in DIR, credential encryption keys in DIR, the token life, and bcrypt's fewest rounds
#    (4, instead of 12) so that each password login costs about 1 ms, not 250 ms, and
#    Keystone's cache (in memory, off unless KEYSTONE_CACHE=1).
cat >"$dir/keystone.conf" <<EOF
[DEFAULT]
debug = false

[database]
connection = sqlite:///$dir/keystone.db

[token]
provider = fernet
expiration = $expiration

[fernet_tokens]
key_repository = $dir/fernet-keys

[fernet_receipts]
key_repository = $dir/fernet-keys

[credential]
key_repository = $dir/credential-keys

[identity]
password_hash_rounds = 4

[cache]
enabled = $cache_enabled
backend = dogpile.cache.memory
EOF

if [ ! -e "$dir/.bootstrapped" ]; then
    # 2-5, four keystone-manage commands, run by manage.py in one Python that imports
    # Keystone once (each command is what `keystone-manage --config-file DIR/keystone.conf
    # COMMAND ...` does, in a forked child):
    #  2. db_sync: the database schema (all of Keystone's migrations, into keystone.db);
    #  3. fernet_setup: the keys that encrypt and sign tokens, and 4. credential_setup:
    #     the keys that encrypt stored credentials, owned by whoever runs this (Keystone
    #     wants a user and a group);
    #  5. bootstrap: domain Default, project admin, user admin with role admin on it (and
    #     on the system), roles reader < member < manager < admin (each implies the one
    #     before) and service, region RegionOne, and the identity service with its public
    #     endpoint at $url.
    owner=(--keystone-user "$(id -un)" --keystone-group "$(id -gn)")
    "$venv/bin/python" "$here/manage.py" "$dir/keystone.conf" \
        db_sync -- \
        fernet_setup "${owner[@]}" -- \
        credential_setup "${owner[@]}" -- \
        bootstrap \
            --bootstrap-username admin --bootstrap-password admin-secret \
            --bootstrap-project-name admin --bootstrap-role-name admin \
            --bootstrap-service-name keystone --bootstrap-region-id RegionOne \
            --bootstrap-public-url "$url" \
        >>"$log" 2>&1 || {
        echo "start.sh: keystone-manage failed; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    }
    touch "$dir/.bootstrapped"
fi

# 6. The server, in the background: Keystone's public WSGI application (keystone_wsgi.py
#    clears gunicorn's arguments, which oslo.config would otherwise parse) in one gunicorn
#    worker with one thread, bound to loopback only. One thread: every login writes the
#    user's last_active_at, and two at once in SQLite failed with "database is locked" (a
#    500) under the test suite's load. A short graceful timeout, so that
#    `kill PID` stops it in about 3 s. Its output and stdin are detached from the caller
#    (a `$(start.sh ...)` would otherwise wait for it to exit).
OS_KEYSTONE_CONFIG_DIR="$dir" "$venv/bin/gunicorn" \
    --pythonpath "$here" --chdir "$dir" \
    --bind "127.0.0.1:$port" --workers 1 --threads 1 \
    --timeout 60 --graceful-timeout 2 \
    --access-logfile - --error-logfile - \
    keystone_wsgi:application </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid" >"$dir/keystone.pid"

# 7. Wait until GET /v3 answers (the worker has loaded Keystone), for 60 s at most; a
#    server that died (port taken, bad configuration) fails at once with its log.
for _ in $(seq 300); do
    if curl -sf -o /dev/null --max-time 2 "$url"; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "start.sh: Keystone exited; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    sleep 0.2
done
if ! curl -sf -o /dev/null --max-time 2 "$url"; then
    echo "start.sh: Keystone did not answer $url within 60 s; the end of $log:" >&2
    tail -n 30 "$log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
fi

# 8. The test identities (roles member, reader, service; project service and user
#    repocrypt; domains tenant-a and tenant-b with alice, bob, dave, carol), through the
#    API as admin; their ids go to DIR/ids.env, written last, so a restart skips this.
if [ ! -e "$dir/ids.env" ] && ! "$venv/bin/python" "$here/seed.py" "$url" "$dir/ids.env" >>"$log" 2>&1; then
    echo "start.sh: creating the test identities failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
fi

# 9. Warm up: Keystone loads its policy engine on the first request that needs it (about
#    1.5 s here), which would otherwise fall within a client's first deadline. The admin's
#    token validates itself once.
admin_token="$(curl -si --max-time 30 -X POST "$url/auth/tokens?nocatalog" -H 'Content-Type: application/json' \
    -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"id":"default"},"password":"admin-secret"}}},"scope":{"project":{"name":"admin","domain":{"id":"default"}}}}}' |
    awk 'tolower($1)=="x-subject-token:"{print $2}' | tr -d '\r')"
curl -sf -o /dev/null --max-time 30 "$url/auth/tokens?nocatalog" \
    -H "X-Auth-Token: $admin_token" -H "X-Subject-Token: $admin_token" || {
    echo "start.sh: Keystone did not validate a token; the end of $log:" >&2
    tail -n 30 "$log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
}

echo "$pid"
