#!/usr/bin/env bash
# The production shape on one machine, on loopback: a fresh database on the running
# PostgreSQL, a Redis database of its own on the running Redis, two portals (daphne)
# behind nginx (Debian's package, started here with a config written from
# deploy/nginx/portal.conf), two SmolLM2 workers, one MiniLM worker and the task cluster.
#
#   deploy/local-cluster.sh up       start it all, wait until healthy, print URLs and an API key
#   deploy/local-cluster.sh status   each process, its pid and its health
#   deploy/local-cluster.sh down     stop exactly what `up` started, by pid
#   deploy/local-cluster.sh restart NAME   stop one process (TERM, then KILL) and start it again
#
# State (pids, logs, env, nginx config, static files) lives in $CLUSTER_DIR
# (var/cluster). Settings: PG_URL (the server, default postgres://postgres@127.0.0.1:5432),
# CLUSTER_DB (portal_cluster), CLUSTER_REDIS_URL (redis://127.0.0.1:6379/7), CLUSTER_PORT
# (8080, nginx), PORTAL_PORTS ("8010 8011"), WORKER_PORTS ("8111 8112 8113").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLUSTER_DIR=${CLUSTER_DIR:-$ROOT/var/cluster}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
CLUSTER_DB=${CLUSTER_DB:-portal_cluster}
CLUSTER_REDIS_URL=${CLUSTER_REDIS_URL:-redis://127.0.0.1:6379/7}
CLUSTER_PORT=${CLUSTER_PORT:-8080}
read -r -a PORTAL_PORTS <<<"${PORTAL_PORTS:-8010 8011}"
read -r -a WORKER_PORTS <<<"${WORKER_PORTS:-8111 8112 8113}"
DRAIN_SECONDS=${DRAIN_SECONDS:-20}
PIDS=$CLUSTER_DIR/pids
LOGS=$CLUSTER_DIR/log
BASE=http://127.0.0.1:$CLUSTER_PORT

# name → command, in start order (nginx is started apart: it daemonizes itself).
processes() {
  local smollm2="runworker --model-path smollm2-135m-instruct --threads 1 --drain-timeout $DRAIN_SECONDS"
  echo "worker-smollm2-a|python manage.py $smollm2 --port ${WORKER_PORTS[0]}"
  echo "worker-smollm2-b|python manage.py $smollm2 --port ${WORKER_PORTS[1]}"
  echo "worker-minilm|python manage.py runworker --model-path all-minilm-l6-v2 --threads 1 --port ${WORKER_PORTS[2]} --drain-timeout $DRAIN_SECONDS"
  echo "qcluster|python manage.py qcluster"
  local n=0
  for port in "${PORTAL_PORTS[@]}"; do
    n=$((n + 1))
    echo "portal-$n|daphne -b 127.0.0.1 -p $port portal.asgi:application"
  done
}

started() { [ -n "$(ls -A "$PIDS" 2>/dev/null)" ]; }

alive() {  # a zombie that nobody reaped yet counts as stopped
  local pid
  [ -f "$PIDS/$1.pid" ] || return 1
  pid=$(cat "$PIDS/$1.pid")
  kill -0 "$pid" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$pid/status"
}

http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" || true; }

write_env() {
  local secret token metrics
  secret=$(python -c "import secrets; print(secrets.token_urlsafe(50))")
  token=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
  metrics=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
  cat >"$CLUSTER_DIR/cluster.env" <<ENV
SECRET_KEY=$secret
WORKER_TOKEN=$token
METRICS_TOKEN=$metrics
DEBUG=false
DATABASE_URL=$PG_URL/$CLUSTER_DB?connect_timeout=5
REDIS_URL=$CLUSTER_REDIS_URL
DATABASE_POOL_SIZE=8
ALLOWED_HOSTS=127.0.0.1,localhost
CSRF_TRUSTED_ORIGINS=$BASE,http://localhost:$CLUSTER_PORT
SERVE_STATIC=false
PORTAL_VAR_DIR=$CLUSTER_DIR/var
PROMETHEUS_MULTIPROC_DIR=$CLUSTER_DIR/metrics
HF_HUB_OFFLINE=1
TOKENIZERS_PARALLELISM=false
ENV
}

load_env() {
  # Exported, so that they win over anything this shell inherited (read_env does not overwrite).
  set -a
  # shellcheck disable=SC1091
  . "$CLUSTER_DIR/cluster.env"
  set +a
  export ENV_FILE=$CLUSTER_DIR/cluster.env DJANGO_SETTINGS_MODULE=portal.settings
}

start_process() {  # name command...: in a session of its own, so that `down` signals it (and only it) by pid
  local name=$1
  shift
  setsid "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

fresh_stores() {
  python - "$PG_URL" "$CLUSTER_DB" "$CLUSTER_REDIS_URL" <<'PY'
import sys

import psycopg
import redis

server, name, redis_url = sys.argv[1:]
with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.execute(f'CREATE DATABASE "{name}"')
redis.Redis.from_url(redis_url).flushdb()
PY
}

write_nginx_conf() {
  local upstreams="" port
  for port in "${PORTAL_PORTS[@]}"; do upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=5s;"$'\n'; done
  mkdir -p "$CLUSTER_DIR/nginx"
  {
    echo "# Written by deploy/local-cluster.sh; the locations come from deploy/nginx/portal.conf."
    # Started by root, nginx's workers would run as nobody and could not read the static files.
    [ "$(id -u)" = 0 ] && echo "user $(id -un) $(id -gn);"
    cat <<CONF
pid $CLUSTER_DIR/nginx/nginx.pid;
error_log $LOGS/nginx-error.log;
worker_processes 1;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    access_log $LOGS/nginx-access.log;
    client_body_temp_path $CLUSTER_DIR/nginx/body;
    proxy_temp_path $CLUSTER_DIR/nginx/proxy;
    fastcgi_temp_path $CLUSTER_DIR/nginx/fastcgi;
    uwsgi_temp_path $CLUSTER_DIR/nginx/uwsgi;
    scgi_temp_path $CLUSTER_DIR/nginx/scgi;
CONF
    sed -n '/# BEGIN http-level limits/,/# END http-level limits/p' deploy/nginx/portal.conf
    cat <<CONF
    upstream portal {
        least_conn;
$upstreams        keepalive 64;
    }
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      '';
    }
    server {
        listen 127.0.0.1:$CLUSTER_PORT;
        server_name _;
        client_max_body_size 4m;
        location /static/ {
            alias $CLUSTER_DIR/var/static/;
        }
CONF
    sed -n '/# BEGIN proxied locations/,/# END proxied locations/p' deploy/nginx/portal.conf
    echo "    }"
    echo "}"
  } >"$CLUSTER_DIR/nginx/nginx.conf"
}

wait_until() {  # seconds, description, command...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq "$seconds"); do
    "$@" && return 0
    sleep 1
  done
  echo "Gave up waiting for $what after ${seconds}s; logs in $LOGS/" >&2
  return 1
}

models_online() {
  curl -s -m 5 -H "Authorization: Bearer $API_KEY" "$BASE/v1/models" \
    | python -c "import json, sys; ids = {m['id'] for m in json.load(sys.stdin)['data']}; \
sys.exit(not {'smollm2-135m-instruct', 'all-minilm-l6-v2'} <= ids)" 2>/dev/null
}

portals_healthy() { [ "$(http_code "$BASE/health")" = 200 ]; }

workers_healthy() {
  local port
  for port in "${WORKER_PORTS[@]}"; do [ "$(http_code "http://127.0.0.1:$port/health")" = 200 ] || return 1; done
}

workers_online() {
  python manage.py shell -c "from registry.models import Worker, WorkerStatus; \
import sys; sys.exit(Worker.objects.filter(status=WorkerStatus.ONLINE).count() < 3)" 2>/dev/null
}

stop_failed_up() {  # a failed start stops what it started
  local rc=$?
  [ "$rc" = 0 ] || { echo "The cluster did not come up; stopping it." >&2; down; }
}

up() {
  if started; then
    echo "A cluster is already up (see '$0 status'); run '$0 down' first." >&2
    exit 1
  fi
  command -v nginx >/dev/null || { echo "nginx is not installed: apt-get install nginx" >&2; exit 1; }
  [ -d .venv ] || scripts/install
  . .venv/bin/activate
  trap stop_failed_up EXIT
  rm -rf "$CLUSTER_DIR"
  mkdir -p "$PIDS" "$LOGS" "$CLUSTER_DIR/var" "$CLUSTER_DIR/metrics"
  write_env
  load_env
  fresh_stores
  python manage.py migrate --no-input -v 0
  python manage.py setup_schedules
  python manage.py collectstatic --no-input -v 0
  python manage.py bootstrap_admin
  API_KEY=$(python manage.py createapikey --name local-cluster | tail -n 1)
  echo "$API_KEY" >"$CLUSTER_DIR/api-key"

  local name command
  while IFS='|' read -r name command; do
    # shellcheck disable=SC2086
    start_process "$name" $command
  done < <(processes)
  write_nginx_conf
  nginx -c "$CLUSTER_DIR/nginx/nginx.conf" -p "$CLUSTER_DIR/nginx" -e "$LOGS/nginx-error.log"
  wait_until 20 "nginx" test -s "$CLUSTER_DIR/nginx/nginx.pid"
  cp "$CLUSTER_DIR/nginx/nginx.pid" "$PIDS/nginx.pid"

  wait_until 60 "the portals' /health through nginx" portals_healthy
  wait_until 300 "the workers' /health" workers_healthy
  wait_until 30 "three workers online" workers_online
  wait_until 30 "both models listed through nginx" models_online
  cat <<MSG

The cluster is up (logs in $LOGS/):
  Through nginx   $BASE  (admin: $BASE/admin/, chat: $BASE/chat/, API: $BASE/v1)
  Portals         $(for p in "${PORTAL_PORTS[@]}"; do printf 'http://127.0.0.1:%s ' "$p"; done)
  Workers         $(for p in "${WORKER_PORTS[@]}"; do printf 'http://127.0.0.1:%s ' "$p"; done)
  Database        $PG_URL/$CLUSTER_DB   Redis $CLUSTER_REDIS_URL
  Metrics         curl -H "Authorization: Bearer $(sed -n 's/^METRICS_TOKEN=//p' "$CLUSTER_DIR/cluster.env")" $BASE/metrics
  API key         $API_KEY
Stop it with: $0 down
MSG
  trap - EXIT
}

status() {
  started || { echo "No cluster is up."; return 0; }
  local name command pid health url
  printf '%-18s %-8s %-6s %s\n' process pid state health
  while IFS='|' read -r name command; do
    pid=$(cat "$PIDS/$name.pid" 2>/dev/null || echo -)
    url=""
    case $name in
      worker-smollm2-a) url=http://127.0.0.1:${WORKER_PORTS[0]}/health ;;
      worker-smollm2-b) url=http://127.0.0.1:${WORKER_PORTS[1]}/health ;;
      worker-minilm) url=http://127.0.0.1:${WORKER_PORTS[2]}/health ;;
      portal-*) url=http://127.0.0.1:${PORTAL_PORTS[${name#portal-} - 1]}/health ;;
    esac
    health=-
    [ -n "$url" ] && health=$(http_code "$url")
    printf '%-18s %-8s %-6s %s\n' "$name" "$pid" "$(alive "$name" && echo up || echo down)" "$health"
  done < <(processes; echo "nginx|")
}

stop_pids() {  # TERM each, wait up to DRAIN_SECONDS + 5, then KILL what is left
  local name pid left
  for name in "$@"; do alive "$name" && kill -TERM "$(cat "$PIDS/$name.pid")" 2>/dev/null || true; done
  for _ in $(seq $((DRAIN_SECONDS + 5))); do
    left=0
    for name in "$@"; do alive "$name" && left=1; done
    [ "$left" = 0 ] && break
    sleep 1
  done
  for name in "$@"; do
    if alive "$name"; then
      pid=$(cat "$PIDS/$name.pid")
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
  done
}

down() {
  started || { echo "No cluster is up."; return 0; }
  local names=() name command
  # nginx first (no new requests), then the portals and workers together (workers drain),
  # then the task cluster last.
  stop_pids nginx
  while IFS='|' read -r name command; do
    [ "$name" = qcluster ] || names+=("$name")
  done < <(processes)
  stop_pids "${names[@]}"
  stop_pids qcluster
  echo "Stopped. The database $CLUSTER_DB and the logs in $LOGS/ are kept until the next 'up'."
}

restart() {
  local name=${1:-} command
  command=$(processes | sed -n "s/^$name|//p")
  if [ -z "$name" ] || [ -z "$command" ]; then
    echo "usage: $0 restart NAME, one of: $(processes | cut -d'|' -f1 | tr '\n' ' ')" >&2
    exit 2
  fi
  started || { echo "No cluster is up." >&2; exit 1; }
  . .venv/bin/activate
  load_env
  stop_pids "$name"
  # shellcheck disable=SC2086
  start_process "$name" $command
  echo "Restarted $name (pid $(cat "$PIDS/$name.pid"))."
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  restart) restart "${2:-}" ;;
  *) echo "usage: $0 up|down|status|restart NAME" >&2; exit 2 ;;
esac
