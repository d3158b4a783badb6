#!/usr/bin/env bash
# Fuzzes every parser of outside input (fuzz/fuzz_targets/*: camera frames, manifests, board
# profiles, replayed image files, preprocessing), one target after the other, each for
# SECONDS from a fresh corpus seeded with fuzz/seeds/<target>.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [--doc]
#
# SECONDS defaults to 20. --doc writes the summary table, command, date, toolchain and sanitizer
# into docs/RELIABILITY.md between `<!-- fuzz:begin -->` and `<!-- fuzz:end -->` (nothing else in
# that file is touched). Fails on any crash, timeout or out-of-memory, printing the input that
# caused it and the command that reproduces it.
#
# Works on stable Rust: cargo-fuzz needs nightly-only flags (-Zsanitizer), which RUSTC_BOOTSTRAP=1
# allows on a stable toolchain. Environment:
#   FUZZ_SANITIZER  address (default) or none (faster build and runs, no memory-error checks)
#   FUZZ_TARGETS    space-separated subset of the targets (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [--doc]" >&2; exit 2; }
secs=20
doc=0
for a in "$@"; do
    case "$a" in
        --doc) doc=1 ;;
        ''|*[!0-9]*) usage ;;
        *) secs=$a ;;
    esac
done
[ "$secs" -ge 1 ] || usage
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
build=(cargo fuzz build --sanitizer "$sanitizer")
run=(cargo fuzz run --sanitizer "$sanitizer")

echo "== fuzz build (sanitizer: $sanitizer)"
t0=$(date +%s)
"${build[@]}"
echo "fuzz build took $(( $(date +%s) - t0 )) s"

logs=fuzz/artifacts/logs
mkdir -p "$logs"
rows=()
failed=()
for t in $targets; do
    corpus=$PWD/fuzz/corpus/$t
    rm -rf "$corpus"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    [ -d "fuzz/seeds/$t" ] && cp fuzz/seeds/"$t"/* "$corpus"/
    args=(-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="$PWD/fuzz/dict/$t.dict")
    echo "== fuzz $t for $secs s"
    log=$logs/$t.log
    set +e
    "${run[@]}" "$t" "$corpus" -- "${args[@]}" >"$log" 2>&1
    rc=$?
    set -e
    # libFuzzer's last status line: "#RUNS DONE cov: C ft: F corp: N/SIZE ... exec/s: E rss: R Mb".
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)
    [ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n1 || true)
    field() { sed -nE "s|.*[[:space:]]$1: ([^ ]+).*|\\1|p" <<<"$done_line"; }
    # -print_final_stats=1: "stat::NAME: VALUE" lines (absent when the target never ran).
    stat() { awk -v k="stat::$1:" '$1 == k {v = $2} END {print v}' "$log"; }
    runs=$(stat number_of_executed_units)
    [ -n "$runs" ] || runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
    eps=$(stat average_exec_per_sec)
    [ -n "$eps" ] || eps=$(field exec/s)
    cov=$(field cov)
    ft=$(field ft)
    corp=$(field corp)
    rss=$(stat peak_rss_mb)
    if [ "$rc" = 0 ]; then
        result=ok
    else
        kind=crash
        grep -q '^INFO: Seed:' "$log" || kind="error: the target did not start"
        grep -q 'libFuzzer: timeout' "$log" && kind=timeout
        grep -qE 'libFuzzer: out-of-memory|malloc limit|AddressSanitizer: (out of memory|requested allocation size)|allocation-size-too-big' "$log" && kind=oom
        result="FAIL ($kind)"
        artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n1)
        # cargo-fuzz gives libFuzzer an absolute artifact prefix: show it from the repository root.
        [ -z "$artifact" ] || artifact=$(realpath --relative-to=. "$artifact" 2>/dev/null || echo "$artifact")
        failed+=("$t")
        echo "!! $t: $kind (exit $rc); log: $log"
        grep -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY|^error' "$log" | head -n 5 || true
        if [ -n "$artifact" ]; then
            echo "!! input: $artifact"
            echo "!! reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t $artifact"
        fi
    fi
    rm -rf /dev/shm/anovit-fuzz-replay-* "${TMPDIR:-/tmp}"/anovit-fuzz-replay-* 2>/dev/null || true
    rows+=("| \`$t\` | $secs | ${runs:-?} | ${eps:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} | $result |")
done

table=$(
    echo "| target | s | runs | exec/s | cov | ft | corpus (inputs/bytes) | peak RSS MB | result |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
)
echo "== fuzz summary (sanitizer: $sanitizer; logs in $logs)"
echo "$table"

if [ "$doc" = 1 ]; then
    cmd="scripts/fuzz.sh $secs --doc"
    [ "$sanitizer" = address ] || cmd="FUZZ_SANITIZER=$sanitizer $cmd"
    [ -z "${FUZZ_TARGETS:-}" ] || cmd="FUZZ_TARGETS=\"$FUZZ_TARGETS\" $cmd"
    section=$(
        echo "## Fuzzing"
        echo
        echo "Every parser of outside input has a cargo-fuzz target (\`fuzz/fuzz_targets/\`): camera frames"
        echo "of every format (\`frame_convert\`), bundle manifests (\`manifest\`), board profiles with"
        echo "the values the runtime derives from them (\`board_profile\`), replayed image files"
        echo "(\`replay_image\`) and frames of any size through preprocessing (\`preprocess\`). Each ran"
        echo "for $secs s from the seeds in \`fuzz/seeds/\`, one target at a time (one fuzzing process)."
        echo
        echo "- command: \`$cmd\`"
        echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- toolchain: $(rustc --version) with RUSTC_BOOTSTRAP=1, $(cargo fuzz --version)"
        echo "- sanitizer: $sanitizer; libFuzzer options: -rss_limit_mb=2048 -timeout=10"
        echo "- host: $(nproc) cores, $(uname -sm)"
        echo
        echo "$table"
        echo
        echo "\`cov\`: code edges reached, \`ft\`: libFuzzer features; the corpus is what the run kept."
    )
    echo "$section" | python3 scripts/docsection.py docs/RELIABILITY.md fuzz
    echo "== wrote the fuzz section of docs/RELIABILITY.md"
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all ${#rows[@]} targets ran ${secs} s each without a crash, timeout or out-of-memory"
