#!/usr/bin/env bash
# Instructions the server executes per command (or per attendance record, or per registration), counted by
# valgrind's callgrind: repeatable for the same binary and load, whatever else the machine is doing, where
# commands/s on a shared 2-core box moves ±20 % between runs of the same binary. For comparing two builds
# (BENCHMARKS.md, session 9).
#
#   scripts/callgrind-per-op.sh [SERVER_BIN]                      # commands --devices 20 --callers 8
#   SCENARIO="ingest --devices 20 --batch 50" METRIC=gatehouse_attendance_records_total \
#     scripts/callgrind-per-op.sh [SERVER_BIN]                    # per attendance record
#   WHOLE=1 SCENARIO="conns --devices 2000 --idle-secs 0.1" METRIC=gatehouse_registrations_total \
#     scripts/callgrind-per-op.sh [SERVER_BIN]                    # per registration (connect, register, idle, close)
#
# It starts SERVER_BIN (default target/release/gatehouse) under callgrind with instrumentation off, runs
# gatehouse-bench against it for SECS (default 30), switches instrumentation on after WARM seconds (default 10,
# past the registrations) for WINDOW seconds (default 10), and divides the instructions counted by the growth of
# METRIC (default gatehouse_commands_total) on the node's /metrics over the same window. With WHOLE=1 (for
# scenarios that take no --secs) the window is the whole bench run instead, until the node holds no device
# socket any more (SECS, WARM and WINDOW are not used; the bench dials CONCURRENCY terminals at a time,
# default 100). Under valgrind the
# server runs ~50x slower, so work done per unit of time (the checkpoint timer, a writer's linger) weighs more per
# operation than at full speed; and `rep movsb`/`rep stosb` count one instruction per byte (memcpy, memset).
# Output: one line `ir_per_op=… ops=… ir=…` and the directory with callgrind.out (callgrind_annotate reads it).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_BIN="${1:-target/release/gatehouse}"
BENCH_BIN="${BENCH_BIN:-target/release/gatehouse-bench}"
SCENARIO="${SCENARIO:-commands --devices 20 --callers 8}"
METRIC="${METRIC:-gatehouse_commands_total}"
SECS="${SECS:-30}"
WARM="${WARM:-10}"
WINDOW="${WINDOW:-10}"
PORT="${PORT:-18711}"
METRICS_PORT="${METRICS_PORT:-19711}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true

dir=$(mktemp -d)
# The bench's own environment for a spawned server (abuse limits off, idle terminals not pinged).
env RUST_LOG=warn GATEHOUSE_LOG_FORMAT=json TM20_HEARTBEAT_INTERVAL=3600 TM20_CONNECTION_TIMEOUT=7200 \
  GATEHOUSE_SHUTDOWN_GRACE=1 SXDM_BIND=off GATEHOUSE_MAX_DEVICES=0 IP_MAX_SOCKETS=0 IP_CONNECT_RATE=0 \
  DEVICE_FRAME_RATE=0 REST_RATE=0 REST_TOKEN_RATE=0 \
  GATEHOUSE_BIND="127.0.0.1:$PORT" GATEHOUSE_METRICS_BIND="127.0.0.1:$METRICS_PORT" \
  DATABASE_URL="sqlite://$dir/gatehouse.db?mode=rwc" GATEHOUSE_API_TOKEN=callgrind \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
  "$SERVER_BIN" serve >"$dir/server.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.5
done

metric() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v m="$1" '$1 ~ "^"m"(\\{|$)" {s += $2} END {printf "%d\n", s}'
}

if [ "${WHOLE:-0}" = 1 ]; then
  # A scenario without a time window (conns): count the whole run, from before the first connection to
  # after the last close.
  before=$(metric "$METRIC")
  callgrind_control -i on "$server" >/dev/null 2>&1
  # shellcheck disable=SC2086 # SCENARIO is a list of arguments
  "$BENCH_BIN" --server-url "http://127.0.0.1:$PORT" --server-pid "$server" --api-token callgrind \
    --concurrency "${CONCURRENCY:-100}" $SCENARIO >"$dir/bench.out" 2>&1 ||
    { echo "the bench failed; see $dir/bench.out" >&2; }
  # Under valgrind the closes trail the bench's exit: wait (at most a minute) until every socket is gone.
  for _ in $(seq 1 120); do
    [ "$(metric gatehouse_devices_connected)" -le 0 ] && break
    sleep 0.5
  done
  callgrind_control -i off "$server" >/dev/null 2>&1
  after=$(metric "$METRIC")
else
  # shellcheck disable=SC2086 # SCENARIO is a list of arguments
  "$BENCH_BIN" --server-url "http://127.0.0.1:$PORT" --server-pid "$server" --api-token callgrind \
    $SCENARIO --secs "$SECS" >"$dir/bench.out" 2>&1 &
  bench=$!
  sleep "$WARM"
  before=$(metric "$METRIC")
  callgrind_control -i on "$server" >/dev/null 2>&1
  sleep "$WINDOW"
  callgrind_control -i off "$server" >/dev/null 2>&1
  after=$(metric "$METRIC")
  wait "$bench" || { echo "the bench failed; see $dir/bench.out" >&2; }
fi
kill -TERM "$server"
wait "$server" || true

ir=$(awk '/^totals:/ {print $2; exit}' "$dir/callgrind.out")
ops=$((after - before))
if [ "$ops" -le 0 ]; then
  echo "no $METRIC counted in the window; see $dir" >&2
  exit 1
fi
echo "ir_per_op=$((ir / ops)) ops=$ops ir=$ir dir=$dir"
