#!/usr/bin/env bash
# Builds the plugins written in Python and JavaScript into target/plugins/<name>.wasm, installing
# their toolchains from the package registries first, and skips every step whose inputs did not
# change (called by plugins/build.sh; needs python3 with venv or pip, and node + npm):
#
#   python-router -> target/plugins/python_router.wasm   componentize-py (PyPI), pinned in
#                                                        plugins/python-router/requirements.txt
#   js-rewrite    -> target/plugins/js_rewrite.wasm      ComponentizeJS (npm), pinned in
#                                                        plugins/js-rewrite/package.json + package-lock.json
#
#   plugins/build-lang.sh                  both
#   plugins/build-lang.sh js-rewrite       one
#
# Caching: componentize-py lives in a venv under target/plugin-lang/ (remade when
# requirements.txt or the Python version changes), the npm packages in
# plugins/js-rewrite/node_modules (`npm ci`, redone when package-lock.json or the Node version
# changes). Each component has a stamp next to it (target/plugins/<file>.stamp) holding a SHA-256
# of its sources, the WIT files, the lock files, this script and the tool versions; when the stamp
# matches, the build is skipped. PGVANE_LANG_FORCE=1 rebuilds anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=$root/target/plugin-lang
out=$root/target/plugins
mkdir -p "$cache" "$out"

say() { echo "build-lang.sh: $*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
need() { command -v "$1" >/dev/null || { say "$1 is required to build $2"; exit 1; }; }

# The stamp check: `fresh FILE HASH` is true when FILE exists and was built from HASH.
fresh() { [ -z "${PGVANE_LANG_FORCE:-}" ] && [ -f "$out/$1" ] && [ "$(cat "$out/$1.stamp" 2>/dev/null)" = "$2" ]; }
report() { printf '%-24s %8d bytes%s\n' "target/plugins/$1" "$(wc -c <"$out/$1")" "$2"; }

build_python_router() {
    local dir=plugins/python-router file=python_router.wasm
    need python3 python-router
    local pyver venv
    pyver=$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    venv=$cache/venv-py$pyver
    local want
    want=$(printf '%s\n' "$pyver" | cat - "$dir/requirements.txt" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$venv/.pgvane-stamp" 2>/dev/null)" != "$want" ]; then
        say "installing componentize-py into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
        echo "$want" >"$venv/.pgvane-stamp"
    fi
    local tool="$venv/bin/componentize-py"
    local stamp
    stamp=$( { "$tool" --version; hash_of "$dir/app.py" "$dir/requirements.txt" wit/*.wit plugins/build-lang.sh; } | sha256sum | cut -d' ' -f1)
    if fresh "$file" "$stamp"; then
        report "$file" " (up to date)"
        return
    fi
    say "componentize-py: $dir -> target/plugins/$file"
    (cd "$dir" && "$tool" -d ../../wit -w policy componentize app -o "$out/$file.tmp" >/dev/null)
    mv "$out/$file.tmp" "$out/$file"
    echo "$stamp" >"$out/$file.stamp"
    report "$file" ""
}

build_js_rewrite() {
    local dir=plugins/js-rewrite file=js_rewrite.wasm
    need node js-rewrite
    need npm js-rewrite
    local want
    want=$( { node --version; cat "$dir/package.json" "$dir/package-lock.json"; } | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$dir/node_modules/.pgvane-stamp" 2>/dev/null)" != "$want" ]; then
        say "npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$want" >"$dir/node_modules/.pgvane-stamp"
    fi
    local stamp
    stamp=$( { node --version; hash_of "$dir/app.js" "$dir/package.json" "$dir/package-lock.json" wit/*.wit plugins/build-lang.sh; } | sha256sum | cut -d' ' -f1)
    if fresh "$file" "$stamp"; then
        report "$file" " (up to date)"
        return
    fi
    say "componentize-js: $dir -> target/plugins/$file"
    # No WASI: the plugin needs none of it (the host links WASI with nothing granted anyway).
    (cd "$dir" && node_modules/.bin/componentize-js app.js --wit ../../wit --world-name policy \
        --disable stdio random clocks http fetch-event -o "$out/$file.tmp" >/dev/null)
    mv "$out/$file.tmp" "$out/$file"
    echo "$stamp" >"$out/$file.stamp"
    report "$file" ""
}

for p in "${@:-python-router js-rewrite}"; do
    for name in $p; do
        case "$name" in
            python-router) build_python_router ;;
            js-rewrite) build_js_rewrite ;;
            *) say "unknown plugin $name (python-router, js-rewrite)"; exit 2 ;;
        esac
    done
done
