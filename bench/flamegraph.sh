#!/usr/bin/env bash
# A flame graph of one stage under its benchmark scenario:
#
#   bench/flamegraph.sh SCENARIO PROCESS OUT.svg [BIN_DIR]
#   bench/flamegraph.sh bridge posflow-bridge bench/flamegraphs/bridge-after.svg
#
# Runs `posflow-bench --only SCENARIO` with the release binaries of BIN_DIR (default
# target/release), attaches perf to the first PROCESS the scenario starts, samples it until it
# exits (999 Hz, DWARF unwinding: release builds keep no frame pointers) and folds the stacks
# with inferno (installed into ~/.cache/posflow/tools by `make flamegraphs`). The stack must be
# up (`make up`) and its environment loaded (`eval "$(deploy/local/stack.sh env)"`).
set -euo pipefail
scenario=$1 process=$2 out=$3 bin_dir=${4:-$PWD/target/release}
tools=${POSFLOW_TOOLS:-$HOME/.cache/posflow/tools}/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
POSFLOW_BIN_DIR=$bin_dir ./target/release/posflow-bench --only "$scenario" \
  --results-dir "$work" >"$work/bench.out" 2>"$work/bench.err" &
bench=$!
pid=
for _ in $(seq 1 600); do
  pid=$(pgrep -n -x "${process:0:15}" || true)
  # Skip a short-lived run of the same binary (a `migrate` before the service starts).
  [ -n "$pid" ] && sleep 0.5 && kill -0 "$pid" 2>/dev/null && break
  pid=
  kill -0 $bench 2>/dev/null || { cat "$work/bench.err" >&2; exit 1; }
  sleep 0.2
done
[ -n "$pid" ] || { echo "no $process within 120 s" >&2; exit 1; }
echo "[flamegraph] perf on $process (pid $pid) until it exits ..." >&2
perf record -q -F 999 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" 2>"$work/perf.err" || true
wait $bench || { cat "$work/bench.err" >&2; exit 1; }
perf script -i "$work/perf.data" 2>/dev/null | "$tools/inferno-collapse-perf" >"$work/folded"
mkdir -p "$(dirname "$out")"
"$tools/inferno-flamegraph" --title "$process under 'posflow-bench --only $scenario'" \
  --width 1400 <"$work/folded" >"$out"
# The folded stacks too (not committed): `inferno-diff-folded before.folded after.folded`, or grep.
cp "$work/folded" "${out%.svg}.folded"
echo "[flamegraph] $out ($(wc -l <"$work/folded") distinct stacks); the run's table:" >&2
grep -E "^$scenario " "$work/bench.out" >&2 || true
