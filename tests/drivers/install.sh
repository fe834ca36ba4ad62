#!/usr/bin/env bash
# Installs the database drivers the integration tests use, from PyPI, into a venv under
# target/drivers/ (called by ./dev test; remade only when requirements.txt or Python changes).
# Tests find the interpreter with pgvane_tests::drivers::python().
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
