#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-afl (stable toolchain). See docs/fuzzing.md.
#
#   scripts/fuzz.sh list                 the targets
#   scripts/fuzz.sh TARGET MINUTES       run one target (nice 19, one core) from its corpus in fuzz/corpus/TARGET;
#                                        with FUZZ_EXECS=N it stops after about N executions if that comes first
#   scripts/fuzz.sh smoke SECONDS        run every target that long in turn (CI)
#   scripts/fuzz.sh cmin TARGET          merge the last run's queue into fuzz/corpus/TARGET, minimised (afl-cmin)
#
# Installs cargo-afl and builds AFL++ when missing. Fails when a target crashed or hung (a property failure is a
# crash: the targets assert); the inputs are left in fuzz/out/TARGET/default/{crashes,hangs}.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

# Containers: no CPU frequency governor to check, core dumps piped elsewhere, no terminal for the status screen, and
# a core that may be busy with other work.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_TRY_AFFINITY=1
export AFL_SUPPRESS_FUZZER_HELP=1
# A parser taking this long on one input is a bug (ms); generous so that a loaded machine does not flake.
TIMEOUT_MS=${FUZZ_TIMEOUT_MS:-5000}

targets() {
  grep -A1 '^\[\[bin\]\]' Cargo.toml | sed -n 's/^name = "\(.*\)"/\1/p' | grep -v '^seeds$'
}

setup() {
  command -v cargo-afl >/dev/null || cargo install --locked cargo-afl
  local out
  # `config --build` refuses when AFL++ is already built for this rustc; that is the state wanted.
  if ! out=$(cargo afl config --build 2>&1); then
    grep -q "already built" <<<"$out" || { echo "$out" >&2; exit 1; }
  fi
}

build() {
  nice -n 19 cargo afl build --release --quiet "$@"
}

# Run TARGET for SECONDS; print its figures; fail on a crash or hang.
run() {
  local t=$1 secs=$2 out="out/$1"
  [[ -d "corpus/$t" ]] || { echo "no target $t (scripts/fuzz.sh list)" >&2; exit 2; }
  rm -rf "$out"; mkdir -p out
  local dict=()
  [[ -f "dict/$t.dict" ]] && dict=(-x "dict/$t.dict")
  local execs=()
  [[ -n "${FUZZ_EXECS:-}" ]] && execs=(-E "$FUZZ_EXECS")
  echo "== fuzz $t for ${secs}s"
  nice -n 19 cargo afl fuzz -V "$secs" -t "$TIMEOUT_MS" -i "corpus/$t" -o "$out" "${dict[@]}" "${execs[@]}" \
    "target/release/$t" 2>&1 | tail -n 40 >"$out.log" || { cat "$out.log" >&2; exit 1; }
  local stats="$out/default/fuzzer_stats"
  stat() { sed -n "s/^$1 *: //p" "$stats"; }
  echo "   execs $(stat execs_done) in $(stat run_time)s ($(stat execs_per_sec)/s), edges $(stat edges_found)/$(stat total_edges)," \
    "corpus $(stat corpus_count), crashes $(stat saved_crashes), hangs $(stat saved_hangs)"
  if [[ "$(stat saved_crashes)" != 0 || "$(stat saved_hangs)" != 0 ]]; then
    echo "FAIL: $t crashed or hung; inputs in fuzz/$out/default/{crashes,hangs}:" >&2
    ls "$out/default/crashes" "$out/default/hangs" >&2
    return 1
  fi
}

case "${1:-}" in
  list) targets ;;
  smoke)
    setup
    build
    failed=0
    for t in $(targets); do run "$t" "${2:-20}" || failed=1; done
    exit "$failed"
    ;;
  cmin)
    t=${2:?target}
    tmp=$(mktemp -d)
    cp "corpus/$t"/* "out/$t/default/queue"/id:* "$tmp"/
    rm -rf "corpus/$t.new"
    # Edges only (-e): hit counts would keep ten times the files. afl-cmin takes the map size from a first run,
    # too small for the small targets; a map smaller than a target needs hangs it, a larger one only costs memory.
    AFL_MAP_SIZE=$((1 << 20)) nice -n 19 cargo afl cmin -e -t "$TIMEOUT_MS" -i "$tmp" -o "corpus/$t.new" -- "target/release/$t"
    rm -rf "$tmp"
    [[ -n "$(ls "corpus/$t.new")" ]] || { echo "afl-cmin kept nothing; corpus/$t left as it was" >&2; exit 1; }
    rm -rf "corpus/$t"
    mv "corpus/$t.new" "corpus/$t"
    # Stable names: a file's content hash, so that re-minimising changes only what changed.
    for f in "corpus/$t"/*; do mv "$f" "corpus/$t/$(sha1sum "$f" | cut -c1-16)" 2>/dev/null || true; done
    echo "corpus/$t: $(ls "corpus/$t" | wc -l) inputs"
    ;;
  ''|-h|--help) sed -n '2,10p' "$0" ;;
  *)
    t=$1
    minutes=${2:?minutes}
    setup
    build --bin "$t"
    run "$t" $((minutes * 60))
    ;;
esac
