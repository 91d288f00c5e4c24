#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS each (default 30), seeded from the golden vectors
# (scripts/fuzz_seeds.py). Installs cargo-fuzz if it is missing. No nightly toolchain needed:
# RUSTC_BOOTSTRAP=1 lets the stable one take cargo-fuzz's flags. Built with debug assertions (an
# integer overflow is a crash) and without a sanitizer (the code under test is safe Rust);
# FUZZ_SANITIZER=address turns ASan on. FUZZ_TARGETS="frames broker" picks targets.
#
# A crash fails the run and leaves its input in <crate>/fuzz/artifacts/<target>/; replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <that file>` in <crate>/fuzz. The corpora
# (<crate>/fuzz/corpus/<target>/, git-ignored) keep what each run learnt for the next.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-none}"
wanted="${FUZZ_TARGETS:-frames control broker}"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
uv run python scripts/fuzz_seeds.py

declare -A crate=([frames]=libs/protocol/rust/fuzz [control]=libs/protocol/rust/fuzz [broker]=services/orchestrator-rs/fuzz)
for target in $wanted; do
    dir="${crate[$target]:?unknown fuzz target $target (frames, control, broker)}"
    log="$dir/artifacts/$target.log"
    mkdir -p "$dir/artifacts"
    echo "fuzz: $target ($dir) for ${seconds}s" >&2
    (cd "$dir" && cargo fuzz build -s "$sanitizer" --debug-assertions "$target")
    if ! (cd "$dir" && cargo fuzz run -s "$sanitizer" --debug-assertions "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED; the input is in $dir/artifacts/$target/, the log in $log" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)" "$log" | sed "s/^/fuzz: $target: /" >&2
done
