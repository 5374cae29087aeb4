# Fuzz smoke test, sourced by .ci/run: `fuzz_smoke` runs every fuzz target briefly.
#
# Optional and fast: FUZZ_SMOKE_SECS (default 20) seconds per target; FUZZ_SMOKE=0 skips it.
# Needs cargo-fuzz (installed here if missing, ~25 s to 3 min) and libFuzzer's nightly flags,
# which RUSTC_BOOTSTRAP=1 enables on the stable toolchain. A crash fails the run and leaves
# the input under fuzz/artifacts/<target>/ (add it as a regression test under tests/).

fuzz_smoke() {
    if [ "${FUZZ_SMOKE:-1}" = "0" ]; then
        echo "fuzz smoke: skipped (FUZZ_SMOKE=0)"
        return 0
    fi
    local secs="${FUZZ_SMOKE_SECS:-20}"
    local root
    root="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz smoke: installing cargo-fuzz"
        cargo install --locked cargo-fuzz || return 1
    fi
    local target
    for target in parse_token verify record_decode; do
        echo "fuzz smoke: $target for ${secs}s"
        mkdir -p "$root/fuzz/corpus/$target"
        (cd "$root" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" \
            "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
            -max_total_time="$secs" -print_final_stats=1 2>&1 |
            grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==|SUMMARY|thread .* panicked)' ;
            exit "${PIPESTATUS[0]}") || { echo "fuzz smoke: $target FAILED"; return 1; }
    done
    echo "fuzz smoke: all targets ran clean"
}
