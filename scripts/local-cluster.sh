#!/usr/bin/env bash
# The docker-compose topology without Docker: a private redis-server, three Gatehouse nodes on 127.0.0.1, and
# (when nginx is installed) an nginx load balancer in front of them.
#
#   scripts/local-cluster.sh up      # start; prints the addresses
#   scripts/local-cluster.sh down    # stop everything it started
#
# Settings (environment): GATEHOUSE_BIN (default target/release/gatehouse, else target/debug/gatehouse),
# RUN_DIR (default .local-cluster), BASE_PORT (default 17801: nodes on 17801-17803), LB_PORT (default 17800),
# REDIS_PORT (default 17899), DATABASE_URL (default an SQLite file shared by the nodes in RUN_DIR),
# GATEHOUSE_API_TOKEN (default "local-cluster").
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR="${RUN_DIR:-.local-cluster}"
BASE_PORT="${BASE_PORT:-17801}"
LB_PORT="${LB_PORT:-17800}"
REDIS_PORT="${REDIS_PORT:-17899}"
TOKEN="${GATEHOUSE_API_TOKEN:-local-cluster}"
if [ -z "${GATEHOUSE_BIN:-}" ]; then
  if [ -x target/release/gatehouse ]; then GATEHOUSE_BIN=target/release/gatehouse; else GATEHOUSE_BIN=target/debug/gatehouse; fi
fi

wait_http() {
  # Up to ~30 s: a debug build starting three nodes on a loaded 2-core machine (a test run beside a build) has
  # needed more than 10.
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "node on port $1 did not become ready (see $RUN_DIR/*.log)" >&2
  return 1
}

up() {
  [ -x "$GATEHOUSE_BIN" ] || { echo "build first: cargo build --release (or set GATEHOUSE_BIN)" >&2; exit 1; }
  mkdir -p "$RUN_DIR"
  local run_dir_abs; run_dir_abs="$(cd "$RUN_DIR" && pwd)"
  local database_url="${DATABASE_URL:-sqlite://$run_dir_abs/gatehouse.db?mode=rwc}"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_dir_abs" \
    --daemonize yes --pidfile "$run_dir_abs/redis.pid" --logfile "$run_dir_abs/redis.log"
  # Migrate once, so the three nodes do not race on an empty database.
  DATABASE_URL="$database_url" "$GATEHOUSE_BIN" migrate >"$RUN_DIR/migrate.log" 2>&1
  for i in 1 2 3; do
    local port=$((BASE_PORT + i - 1))
    GATEHOUSE_BIND="127.0.0.1:$port" DATABASE_URL="$database_url" GATEHOUSE_API_TOKEN="$TOKEN" \
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" GATEHOUSE_NODE_ID="node-$i" SXDM_BIND="off" TRUST_FORWARDED_FOR=1 \
      nohup "$GATEHOUSE_BIN" serve >"$RUN_DIR/node-$i.log" 2>&1 &
    echo $! >"$RUN_DIR/node-$i.pid"
  done
  for i in 1 2 3; do wait_http $((BASE_PORT + i - 1)); done
  if command -v nginx >/dev/null; then
    sed -e "s/gatehouse1:7788/127.0.0.1:$BASE_PORT/; s/gatehouse2:7788/127.0.0.1:$((BASE_PORT + 1))/; s/gatehouse3:7788/127.0.0.1:$((BASE_PORT + 2))/" \
        -e "s/listen 80;/listen 127.0.0.1:$LB_PORT;/" deploy/nginx.conf >"$run_dir_abs/nginx.conf"
    sed -i "s|^events {}|pid $run_dir_abs/nginx.pid;\nerror_log $run_dir_abs/nginx-error.log;\nevents {}|" "$run_dir_abs/nginx.conf"
    nginx -c "$run_dir_abs/nginx.conf" -p "$run_dir_abs"
    echo "load balancer: http://127.0.0.1:$LB_PORT"
  else
    echo "nginx not installed: use the nodes directly"
  fi
  echo "nodes: http://127.0.0.1:$BASE_PORT http://127.0.0.1:$((BASE_PORT + 1)) http://127.0.0.1:$((BASE_PORT + 2))"
  echo "token: $TOKEN"
}

down() {
  [ -d "$RUN_DIR" ] || return 0
  if [ -f "$RUN_DIR/nginx.pid" ]; then kill "$(cat "$RUN_DIR/nginx.pid")" 2>/dev/null || true; fi
  for i in 1 2 3; do
    if [ -f "$RUN_DIR/node-$i.pid" ]; then kill -TERM "$(cat "$RUN_DIR/node-$i.pid")" 2>/dev/null || true; fi
  done
  sleep 1
  for i in 1 2 3; do
    if [ -f "$RUN_DIR/node-$i.pid" ]; then kill -KILL "$(cat "$RUN_DIR/node-$i.pid")" 2>/dev/null || true; rm -f "$RUN_DIR/node-$i.pid"; fi
  done
  if [ -f "$RUN_DIR/redis.pid" ]; then kill "$(cat "$RUN_DIR/redis.pid")" 2>/dev/null || true; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
