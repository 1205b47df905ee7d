#!/usr/bin/env bash
# The standard load runs: builds chatd and loadgen in release, starts `chatd serve` on a
# scratch database and namespace (loopback only), runs each loadgen scenario against it, and
# writes docs/benchmarks-loadgen.md (machine, commands, settings, results) and the JSON of
# every run under target/bench/. Everything runs on this one box.
#
#   scripts/bench.sh            # the standard set
#   BENCH_QUICK=1 scripts/bench.sh   # a short smoke run of the same set
#   BENCH_RUN='name|direct --pairs 500 --rate 2000 --seconds 10' scripts/bench.sh
#                               # one run of your own, reported in target/bench/adhoc.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_rust
ensure_services

cargo build --release --locked -p chatd -p loadgen
out=target/bench
mkdir -p "$out"
seconds=${BENCH_SECONDS:-20}
[ "${BENCH_QUICK:-0}" = 1 ] && seconds=3

run_id=$(date +%s)-$$
database="chat_bench_$run_id"
namespace="bench_$run_id"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
media_dir=$(mktemp -d)

export_run_settings "$database" "$namespace" "$media_dir"
export CHAT_BIND="127.0.0.1:$port"
export CHAT_WS_OUTBOUND_QUEUE=65536
export RUST_LOG=warn

./target/release/chatd serve > "$out/chatd.log" 2>&1 &
chatd_pid=$!
cleanup() {
  kill "$chatd_pid" 2>/dev/null || true
  wait "$chatd_pid" 2>/dev/null || true
  rm -rf "$media_dir"
  remove_run_state "$database" "$namespace"
}
trap cleanup EXIT
for _ in $(seq 1 60); do curl -fs "$url/readyz" >/dev/null && break; sleep 1; done
curl -fs "$url/readyz" >/dev/null || { echo "chatd did not become ready" >&2; cat "$out/chatd.log" >&2; exit 1; }

runs=(
  "direct-ws-1000|direct --pairs 500 --rate 1000 --seconds $seconds --transport ws"
  "direct-rest-1000|direct --pairs 500 --rate 1000 --seconds $seconds --transport rest"
  "group-100x10|group --groups 10 --members 100 --rate 200 --seconds $seconds --transport ws"
  "group-1000x1|group --groups 1 --members 1000 --rate 20 --seconds $seconds --transport ws"
  # Fan-out above the target: 170 messages/s to two 1,000-member groups offer 170,000 frames/s.
  # (delivered/s divides by the sending time plus the drain, so an offered 150,000 frames/s
  # always shows a little less than 150,000.)
  "group-1000x2-170|group --groups 2 --members 1000 --rate 170 --seconds $seconds --transport ws"
  "reconnect-500|direct --pairs 100 --rate 500 --seconds $seconds --transport rest --reconnect-every-ms 300"
  # Seeds the log, then rebuilds every read model from it and switches (`chatd replay`).
  "rebuild-50000|rebuild --events 50000 --chatd ./target/release/chatd --database-url $DATABASE_URL"
  # Last of the traffic runs: it overloads the server, whose backlog would slow the next run.
  "direct-ws-3000|direct --pairs 500 --rate 3000 --seconds $seconds --transport ws"
  "direct-ws-5000|direct --pairs 500 --rate 5000 --seconds $seconds --transport ws"
  "idle-15000|idle --connections 15000 --users 100 --source-addresses 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --server-pid $chatd_pid --hold-seconds $seconds"
)
# The share of the box's CPU busy over one second, in percent.
busy_percent() {
  local before after
  before=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
  sleep 1
  after=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
  echo "$before $after" | awk '{busy=$3-$1; idle=$4-$2; print int(100*busy/(busy+idle+1))}'
}
# Waits (at most 60 s) until the box is quiet, under 10 % busy: a run that overloaded the
# server leaves it working through its backlog for a while, and the next run (and a
# calibration) would share the CPU with that.
wait_quiet() {
  for _ in $(seq 1 60); do
    [ "$(busy_percent)" -lt 10 ] && return
  done
  echo "the box stayed busy for 60 s; going on" >&2
}
# "median M ms (min–max A–B ms over N rounds)" of `loadgen calibrate`.
calibration() {
  ./target/release/loadgen calibrate --rounds "$1" --json "$out/calibrate.json" > /dev/null
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print("median %.1f ms (%.1f–%.1f ms over %d rounds)" % (c["median_ms"], c["min_ms"], c["max_ms"], c["rounds"]))' "$out/calibrate.json"
}
report=docs/benchmarks-loadgen.md
if [ -n "${BENCH_RUN:-}" ]; then
  runs=("$BENCH_RUN")
  report=target/bench/adhoc.md
fi
{
  echo "# Load-generator runs (\`make bench\`)"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d). Everything on one box: Postgres,"
  echo "Redis, RabbitMQ, \`chatd serve\` (release, every role in one process) and \`loadgen\`"
  echo "(release), over loopback. Postgres keeps \`synchronous_commit = $(psql -h 127.0.0.1 -U postgres -Atqc 'show synchronous_commit')\`."
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
  echo "$(free -g | awk '/Mem:/ {print $2}') GiB RAM; $(uname -sr)."
  echo
  echo "Settings: \`CHAT_SENDS_PER_10_SECONDS=1000000\`, \`CHAT_WS_OUTBOUND_QUEUE=65536\`, other"
  echo "settings default. Latency is send (the time each message was due, open loop) to"
  echo "receipt by every other member's socket. \`lost\` counts accepted messages some member's"
  echo "sockets had not received when the drain time after sending (10 s) ran out; \`overloaded\`"
  echo "counts sends not made because 20,000 were already waiting for their ack (open loop:"
  echo "the offered rate is never lowered). Sending lasted $seconds s per run. Before sending,"
  echo "loadgen reads and drops what setup pushed (presence of everyone coming online) until no"
  echo "socket has received anything for a second (\`--settle-seconds\`, at most 60 s)."
  echo
  echo "Machine speed: \`loadgen calibrate\` times a fixed single-threaded workload (JSON frames"
  echo "parsed and written, integers sorted; lower is faster). This virtual machine's speed moves"
  echo "by up to 1.6× within minutes, so each run below starts with its own calibration, taken"
  echo "once the box is quiet (under 10 % busy: the previous run's backlog worked off)."
  echo "Before the set: $(calibration 9)."
} > "$report"
for entry in "${runs[@]}"; do
  name=${entry%%|*}
  arguments=${entry#*|}
  echo "loadgen $arguments" >&2
  wait_quiet
  speed=$(calibration 3)
  # shellcheck disable=SC2086
  ./target/release/loadgen --url "$url" --json "$out/$name.json" $arguments > "$out/$name.txt"
  {
    echo
    echo "## $name"
    echo
    echo '```sh'
    echo "loadgen --url $url $arguments"
    echo '```'
    echo
    echo "Machine speed just before: $speed."
    echo
    cat "$out/$name.txt"
  } >> "$report"
done
wait_quiet
echo >> "$report"
echo "Machine speed after the set: $(calibration 9)." >> "$report"
echo "wrote $report" >&2
