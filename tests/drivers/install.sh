#!/usr/bin/env bash
# Installs the database drivers the integration tests use into target/drivers/ (called by
# ./dev test; each part is remade only when its pins or its runtime change):
#   - psycopg 3 and asyncpg from PyPI into target/drivers/venv (tests/drivers/requirements.txt);
#   - node-postgres (pg) and postgres.js from npm into target/drivers/node/node_modules
#     (tests/drivers/node/package.json and package-lock.json, with npm ci).
# Tests find them with pgvane_tests::drivers::{python, run_python, run_node}.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$PWD/target/drivers/venv
want=$( { python3 --version; cat tests/drivers/requirements.txt; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.pgvane-stamp" 2>/dev/null)" != "$want" ]; then
    echo "drivers: installing $(grep -v '^#' tests/drivers/requirements.txt | tr '\n' ' ')into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/drivers/requirements.txt
    echo "$want" >"$venv/.pgvane-stamp"
fi

node_dir=$PWD/target/drivers/node
want=$( { node --version; cat tests/drivers/node/package.json tests/drivers/node/package-lock.json; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$node_dir/.pgvane-stamp" 2>/dev/null)" != "$want" ]; then
    echo "drivers: installing pg and postgres (npm) into $node_dir" >&2
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp tests/drivers/node/package.json tests/drivers/node/package-lock.json "$node_dir/"
    (cd "$node_dir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
    echo "$want" >"$node_dir/.pgvane-stamp"
fi
