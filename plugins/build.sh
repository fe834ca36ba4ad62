#!/usr/bin/env bash
# Builds every plugin in plugins/ for wasm32-wasip2 and copies the components to a stable
# folder: target/plugins/<name>.wasm (regex_router.wasm, query_rewrite.wasm, rw_split.wasm,
# tenant_guard.wasm, and the test fixture hostile_fixture.wasm), then the plugins written in other
# languages (python_router.wasm, js_rewrite.wasm) with plugins/build-lang.sh, which installs
# componentize-py and ComponentizeJS and skips a build whose inputs did not change.
#
#   plugins/build.sh              build all of them (installs the rustup target if missing)
#   plugins/build.sh regex-router build only the named packages (python-router and js-rewrite
#                                 are names too)
#   plugins/build.sh --rust       only the Rust plugins (needs neither Python nor Node)
#
# The build is `cargo build --release --target wasm32-wasip2` with the release profile tuned
# for size through environment overrides (no debug info, opt-level "s", LTO): the workspace's
# release profile keeps debug info for the proxy, which would make each plugin ~10x larger.
# Function names are kept so the host's trap backtraces stay readable. The plugins use WebAssembly
# SIMD (wasmtime enables it by default): memchr, and so the regex crate's literal search, scans
# 16 bytes at a time with it instead of 4.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-wasip2
ALL=(regex-router query-rewrite rw-split tenant-guard hostile-fixture)
LANG_ALL=(python-router js-rewrite)
packages=()
lang=()
if [ "${1:-}" = "--rust" ]; then
    packages=("${ALL[@]}")
elif [ $# -eq 0 ]; then
    packages=("${ALL[@]}")
    lang=("${LANG_ALL[@]}")
else
    for p in "$@"; do
        case " ${LANG_ALL[*]} " in
            *" $p "*) lang+=("$p") ;;
            *) packages+=("$p") ;;
        esac
    done
fi
[ ${#packages[@]} -gt 0 ] || { bash plugins/build-lang.sh "${lang[@]}"; exit; }

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "build.sh: installing the rustup target $TARGET" >&2
    rustup target add "$TARGET"
fi

args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done

CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_PROFILE_RELEASE_STRIP=debuginfo \
CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
CARGO_PROFILE_RELEASE_LTO=true \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="${CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS:--C target-feature=+simd128}" \
    cargo build --locked --release --target "$TARGET" "${args[@]}"

out=target/plugins
mkdir -p "$out"
for p in "${packages[@]}"; do
    file="${p//-/_}.wasm"
    cp "target/$TARGET/release/$file" "$out/$file"
    printf '%-24s %8d bytes\n' "$out/$file" "$(wc -c <"$out/$file")"
done

[ ${#lang[@]} -eq 0 ] || bash plugins/build-lang.sh "${lang[@]}"
