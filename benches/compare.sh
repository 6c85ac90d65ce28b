#!/usr/bin/env bash
# benches/compare.sh ROUNDS SECONDS LABEL=COMMAND... — interleaved rounds against nginx-proxy, one summary.
#
# On this noisy VM a single run says little: the same binary swings by half between two runs a minute apart. Each
# round here runs nginx-proxy (`../shared/peers/bench.sh http://127.0.0.1:18082/`) and then every LABEL=COMMAND in
# turn, with SECONDS exported as S for the command; each command must print a bench.sh summary line last. Rounds
# compare each row with the nginx run of the same round, and the summary takes medians over the rounds:
#   rps ratio    the row's requests/s over nginx's;
#   p99 diff     the row's p99 minus nginx's;
#   tail ratio   p99 over the mean cycle time (64 connections / requests per s), i.e. p99 in units of the row's own
#                cycle: it compares latency spread between rows whose throughput the neighbours moved apart.
# Example (two builds, the static row):
#   benches/compare.sh 8 10 'old=CREDGATE_BIN=/tmp/a benches/load.sh 64 $S' 'new=CREDGATE_BIN=/tmp/b benches/load.sh 64 $S'
# Knobs: PEERS (peers folder), OUT (the raw lines, default a temporary file that is kept and named at the end),
#   BASE=LABEL (ratios and differences against that row instead of nginx, e.g. BASE=static for OAuth2 against static
#   or BASE=haproxy for the distinct-token rows; nginx still runs first in every round),
#   CSV=file (append every run as SCENARIO,label,round,rps,p50_ms,p99_ms, the format of benches/results/runs.csv
#   that benches/plot.py draws; SCENARIO defaults to "compare").
# A row's label is the bench.sh name up to any "/" (bench.sh appends /distinct2000 and the like).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
rounds=${1:?usage: compare.sh ROUNDS SECONDS LABEL=COMMAND...}
secs=${2:?usage: compare.sh ROUNDS SECONDS LABEL=COMMAND...}
shift 2
[ $# -gt 0 ] || { echo "usage: compare.sh ROUNDS SECONDS LABEL=COMMAND..." >&2; exit 1; }
out=${OUT:-$(mktemp /tmp/compare.XXXXXX)}
: > "$out"

cd "$root"
for i in $(seq 1 "$rounds"); do
  NAME=nginx "$peers/bench.sh" http://127.0.0.1:18082/ 64 "$secs" | tail -1 | tee -a "$out"
  for row in "$@"; do
    label=${row%%=*}
    NAME=$label S=$secs bash -c "${row#*=}" | tail -1 | tee -a "$out"
  done
done

python3 - "$out" <<'PY'
import os, re, statistics, sys

rounds, cur = [], {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)\s+rps=(\d+)\s+p50=([\d.]+)\s*ms p99=([\d.]+)", line)
    if not m:
        continue
    name = m.group(1).split("/")[0]
    if name == "nginx" and cur:
        rounds.append(cur)
        cur = {}
    cur[name] = (int(m.group(2)), float(m.group(4)), float(m.group(3)))
rounds.append(cur)

def tail(rps, p99, *_):
    return p99 * rps / 64000

med = statistics.median
base = os.environ.get("BASE") or "nginx"
if base not in rounds[0]:
    sys.exit(f"BASE={base}: no such row (rows: {', '.join(rounds[0])})")
labels = [k for k in rounds[0] if k != base]
print(f"\n{len(rounds)} rounds; medians over rounds; ratios and differences against {base}")
print(f"{'row':<12} {'rps':>7} {'p99 ms':>7} {'rps ratio':>10} {'p99 diff':>9} {'lower p99':>10} {'tail ratio':>11} {base + ' tail':>11}")
print(f"{base:<12} {med(r[base][0] for r in rounds):>7.0f} {med(r[base][1] for r in rounds):>7.2f}")
for k in labels:
    rs = [r for r in rounds if k in r and base in r]
    diff = [r[k][1] - r[base][1] for r in rs]
    print(f"{k:<12} {med(r[k][0] for r in rs):>7.0f} {med(r[k][1] for r in rs):>7.2f}"
          f" {med(r[k][0] / r[base][0] for r in rs):>9.3f}x {med(diff):>+9.2f}"
          f" {sum(d < 0 for d in diff):>5}/{len(rs):<4} {med(tail(*r[k]) for r in rs):>11.3f}"
          f" {med(tail(*r[base]) for r in rs):>11.3f}")
if os.environ.get("CSV"):
    scenario = os.environ.get("SCENARIO") or "compare"
    with open(os.environ["CSV"], "a") as f:
        for i, r in enumerate(rounds, 1):
            for k, (rps, p99, p50) in r.items():
                f.write(f"{scenario},{k},{i},{rps},{p50:.3f},{p99:.3f}\n")
    print(f"runs appended to {os.environ['CSV']}")
PY
echo "raw lines: $out"
