#!/usr/bin/env bash
# Idle connections over a fleet of socket-push processes, all on this box: starts the split
# roles on a scratch database and namespace (loopback only): one `chatd command-api` (REST
# commands and the outbox relay: loadgen's setup and broadcast only call commands), one
# `chatd projector`, and NODES `chatd socket-push`, each on its own port. Then runs
# `loadgen idle` with its connections spread over the socket-push processes, 16 source
# addresses and several loadgen processes, and measures each socket-push process alone.
# Writes target/bench/$NAME.txt and .json, and the servers' logs under
# target/bench/$NAME-logs/. Removes the database, Redis keys and broker objects afterwards.
#
#   scripts/bench-idle-fleet.sh                                   # 100,000 over 6 nodes
#   CONNECTIONS=19000 NODES=1 NAME=idle-19k scripts/bench-idle-fleet.sh   # one node
#   CHATD=... LOADGEN=... scripts/bench-idle-fleet.sh             # prebuilt binaries, no build
#
# Settings (environment): CONNECTIONS (100000), NODES (6), USERS (1000, the group limit),
# PROCESSES (loadgen processes; enough for 17,000 connections each), SOURCES (16 addresses,
# 127.0.0.1 up), HOLD (seconds idle, 10), NAME (idle-fleet), MESSAGE_BEFORE_CONNECT (1: one
# message to the group before connecting, so the inbox entry every connection reads at open
# is a message, not the group's creation listing all members).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

connections=${CONNECTIONS:-100000}
nodes=${NODES:-6}
users=${USERS:-1000}
# One process may open 20,000 files here: 17,000 sockets each leaves room to spare.
processes=${PROCESSES:-$(( (connections + 16999) / 17000 ))}
sources=${SOURCES:-16}
hold=${HOLD:-10}
name=${NAME:-idle-fleet}

if [ -z "${CHATD:-}" ] || [ -z "${LOADGEN:-}" ]; then
  ensure_rust
  cargo build --release --locked -p chatd -p loadgen
fi
chatd=${CHATD:-./target/release/chatd}
loadgen=${LOADGEN:-./target/release/loadgen}
out=target/bench
logs="$out/$name-logs"
# A rerun under the same name starts with no logs of the previous one.
rm -rf "$logs"
mkdir -p "$out" "$logs"
# Every process may hold as many sockets as the machine allows.
ulimit -n "$(ulimit -Hn)"

run_id=$(date +%s)-$$
database="chat_bench_$run_id"
namespace="bench_$run_id"
media_dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

export_run_settings "$database" "$namespace" "$media_dir"
# Eight processes share Postgres's 100 connections.
export CHAT_DB_MAX_CONNECTIONS=8
export RUST_LOG=warn

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # A node closing many sockets may take a while; it gets 30 s, then it is killed.
  for _ in $(seq 1 30); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$media_dir"
  remove_run_state "$database" "$namespace"
}
trap cleanup EXIT
echo "database $database, namespace $namespace" >&2

# The split roles do not migrate: the database and schema come first.
"$chatd" migrate > "$logs/migrate.log" 2>&1

start() { # role port
  CHAT_BIND="127.0.0.1:$2" "$chatd" "$1" > "$logs/$1-$2.log" 2>&1 &
  pids+=($!)
}
wait_ready() { # url log
  for _ in $(seq 1 60); do curl -fs "$1/readyz" >/dev/null && return 0; sleep 1; done
  echo "$1 did not become ready" >&2; cat "$2" >&2; exit 1
}

command_port=$(free_port)
start command-api "$command_port"
start projector "$(free_port)"
ws_urls=()
ws_pids=()
for _ in $(seq 1 "$nodes"); do
  port=$(free_port)
  start socket-push "$port"
  ws_urls+=("http://127.0.0.1:$port")
  ws_pids+=("${pids[-1]}")
done
url="http://127.0.0.1:$command_port"
wait_ready "$url" "$logs/command-api-$command_port.log"
for ws_url in "${ws_urls[@]}"; do wait_ready "$ws_url" "$logs/socket-push-${ws_url##*:}.log"; done

source_addresses=$(seq -s, -f '127.0.0.%g' 1 "$sources")
arguments=(idle --connections "$connections" --users "$users" --processes "$processes"
  --ws-urls "$(IFS=,; echo "${ws_urls[*]}")" --server-pid "$(IFS=,; echo "${ws_pids[*]}")"
  --source-addresses "$source_addresses" --hold-seconds "$hold")
[ "${MESSAGE_BEFORE_CONNECT:-0}" = 1 ] && arguments+=(--message-before-connect)
echo "loadgen --url $url ${arguments[*]}" >&2
"$loadgen" --url "$url" --json "$out/$name.json" "${arguments[@]}" | tee "$out/$name.txt"
echo "wrote $out/$name.txt and $out/$name.json (server logs in $logs)" >&2
