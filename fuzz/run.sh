#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for a bounded time from its committed seeds.
#
#   fuzz/run.sh [seconds-per-target] [target…]     (./dev fuzz and ./dev test call it)
#
# Installs what it needs first: the nightly toolchain (rustup) and cargo-fuzz (pinned, from
# crates.io). Each target starts from fuzz/seeds/<target>/ (committed) plus fuzz/corpus/<target>/
# (what earlier local runs found; not committed). A crash or a failed property stops that
# target, leaves the input in fuzz/artifacts/<target>/, and makes the script fail after the
# other targets ran. docs/fuzzing.md says how to turn a crash into a regression test.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-60}"
shift || true

command -v rustup >/dev/null || { echo "fuzz: rustup is required (for the nightly toolchain)" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# No sanitizer: the code under test is #![forbid(unsafe_code)] (pgvane and pgvane-sql-lexer),
# and AddressSanitizer would instrument every dependency too, doubling the build.
# Coverage-guided fuzzing, debug assertions and overflow checks stay on.
cargo +nightly fuzz build --sanitizer none --codegen-units 16

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="target/fuzz-$target.log"
    echo "fuzz: $target for ${seconds}s" >&2
    # -timeout: one input taking more than 10 s is a finding (a hang), not a slow run.
    if cargo +nightly fuzz run --sanitizer none --codegen-units 16 "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        echo "fuzz: $target ok: ${runs:-?} runs, ${speed:-?}/s, corpus $(ls "corpus/$target" | wc -l) inputs" >&2
    else
        echo "fuzz: $target FAILED (log: fuzz/$log, input in fuzz/artifacts/$target/):" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 >&2 || tail -20 "$log" >&2
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
