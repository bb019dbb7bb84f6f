#!/usr/bin/env bash
# CI's short fuzz run: builds the fuzz crate once, then runs every target for
# FUZZ_SMOKE_SECS seconds (default 10) starting from the corpus kept in
# fuzz/corpus/<target>/. Any crash, leak or timeout fails the run. The long
# runs (10 minutes a target) and their results are in fuzz/README.md.
#
# New inputs go to a scratch folder, not the committed corpus, so a CI run
# leaves the tree clean; to grow the corpus, run `cargo fuzz run` by hand
# and minimise with `cargo fuzz cmin` (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${FUZZ_SMOKE_SECS:-10}"
# cargo-fuzz passes unstable compiler flags (sanitizer, coverage); the
# project's toolchain is stable.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "-- build"
cargo fuzz build
for target in $(cargo fuzz list); do
    echo "-- $target: ${secs}s from $(find "corpus/$target" -type f 2>/dev/null | wc -l) corpus files"
    mkdir -p "$scratch/$target" "corpus/$target"
    # The first folder takes new inputs; the second is only read.
    log="$scratch/$target.log"
    if ! cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/"
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" || true
done
echo "-- every target ran ${secs}s without a crash"
