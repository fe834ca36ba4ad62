#!/bin/bash
# User-space instructions a proxy executes per transaction, counted by valgrind's callgrind
# (repeatable on a noisy machine, unlike times). See bench/README.md.
#
#   bench/instructions.sh PORT MODE -- PROXY COMMAND…
#
# Starts the proxy command under callgrind twice, runs `pgbench -S -M MODE -c 4 -j 1` through
# it (PORT; PGUSER, PGPASSWORD, PGDATABASE from the environment) for 500 and then 2,500
# transactions per client, and prints (instructions of the long run - those of the short run)
# / 8,000: logins and start-up cost the same in both runs and cancel out. The proxy must
# listen on PORT in front of a database that `pgbench -i` has filled, and must not fork (run
# PgBouncer without -d; it refuses to run as root, so run this script as its user:
# `su postgres -c "bench/instructions.sh 6433 simple -- pgbouncer pgbouncer.ini"`).
set -euo pipefail
port=$1 mode=$2
shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
instructions() {
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" "$@" >"$out/proxy.log" 2>&1 &
    local proxy=$!
    for _ in $(seq 1 300); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 0.2
    done
    pgbench -h 127.0.0.1 -p "$port" -S -M "$mode" -c 4 -j 1 -t "$transactions" >"$out/pgbench.log" 2>&1 \
        || { cat "$out/pgbench.log" >&2; kill "$proxy"; exit 1; }
    kill -INT "$proxy"
    wait "$proxy" || true
    callgrind_annotate "$out/callgrind.out" | awk '/PROGRAM TOTALS/ && !found { gsub(",", "", $1); print $1; found = 1 }'
}
transactions=500 short=$(instructions "$@")
transactions=2500 long=$(instructions "$@")
echo "-M $mode: $(((long - short) / 8000)) instructions per transaction ($1)"
