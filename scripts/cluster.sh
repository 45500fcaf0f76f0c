#!/usr/bin/env bash
# A promptbank cluster on this machine, one network namespace per host (README "Running on more than one host"):
#   bash scripts/cluster.sh up       bring it up; the last line printed is the load balancer's base URL
#   bash scripts/cluster.sh status   each host's health (exit 1 when one is not healthy)
#   bash scripts/cluster.sh down     stop every process and remove the namespaces and the state directory
# Faults, as bench/cluster.py makes them (HOST: lb, redis, apiN or workerN; link: any host):
#   bash scripts/cluster.sh kill HOST        SIGKILL the host's process, as a crash would
#   bash scripts/cluster.sh start HOST       start it again (same settings as up), return once it is healthy
#   bash scripts/cluster.sh link HOST down   pull the host's cable (its port on the bridge); `link HOST up` again
# Hosts: db (PostgreSQL), redis, api1..apiN, worker1..workerN, lb (HAProxy), on a bridge in a namespace of their own
# ($NAME-net); nothing of it is routed from this machine. HAProxy runs here, listens on 127.0.0.1:$PORT and opens
# its connections to the API hosts from the lb host's namespace. docker-compose.yml describes the same layout.
# Needs root (ip netns). Settings: PROMPTBANK_CLUSTER_* below; PROMPTBANK_* settings in the environment reach every
# host (PROMPTBANK_MODEL_PATH, PROMPTBANK_DEVICE, ...), except the ones a host's role and address fix.
set -Eeuo pipefail  # -E: the ERR trap of `up` holds inside functions too
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PYTHON="${PYTHON:-python3}"
[[ $PYTHON != */* ]] || PYTHON=$(realpath "$PYTHON")  # the hosts start in directories of their own

NAME="${PROMPTBANK_CLUSTER_NAME:-pb}"                    # namespace prefix: $NAME-db, $NAME-api1, ...
STATE="${PROMPTBANK_CLUSTER_DIR:-/tmp/promptbank-cluster}" # data, logs, pids, secrets; removed by down
PORT="${PROMPTBANK_CLUSTER_PORT:-8800}"                  # the balancer: http://127.0.0.1:$PORT
APIS="${PROMPTBANK_CLUSTER_APIS:-2}"
WORKERS="${PROMPTBANK_CLUSTER_WORKERS:-2}"
NET="${PROMPTBANK_CLUSTER_SUBNET:-10.77.0}"               # a /24 that exists only inside the namespaces
START_SECONDS="${PROMPTBANK_CLUSTER_START_SECONDS:-600}"  # longest wait for a host to become healthy
AFFINITY="${PROMPTBANK_CLUSTER_AFFINITY:-on}"             # off: model requests go round robin too (read by start lb)
API_PORT=8000
# Every host's data directory: the model, converted once by the first host to start (the others wait for it)
DATA=$(realpath -m "${PROMPTBANK_DATA_DIR:-data}")

if [[ ! "$NAME" =~ ^[a-z][a-z0-9-]{0,11}$ ]]; then
  echo "cluster: PROMPTBANK_CLUSTER_NAME takes 1-12 of a-z, 0-9 and -, starting with a letter" >&2
  exit 2
fi
if [[ ! "$APIS" =~ ^[1-9]$ || ! "$WORKERS" =~ ^[1-9]$ ]]; then
  echo "cluster: PROMPTBANK_CLUSTER_APIS and PROMPTBANK_CLUSTER_WORKERS take 1 to 9" >&2
  exit 2
fi
if [[ $AFFINITY != on && $AFFINITY != off ]]; then
  echo "cluster: PROMPTBANK_CLUSTER_AFFINITY takes on or off" >&2
  exit 2
fi

addr() {  # a host's address
  case "$1" in
    lb) echo "$NET.2" ;; db) echo "$NET.10" ;; redis) echo "$NET.11" ;;
    api*) echo "$NET.$((20 + ${1#api}))" ;; worker*) echo "$NET.$((40 + ${1#worker}))" ;;
  esac
}
hosts() { echo lb db redis; seq -f 'api%g' "$APIS"; seq -f 'worker%g' "$WORKERS"; }
ours() { ip netns list | awk '{print $1}' | grep -E "^$NAME-(net|lb|db|redis|api[0-9]+|worker[0-9]+)$" || true; }
log() { echo "cluster: $*"; }
# shellcheck disable=SC2012  # Debian's version folders: 15, 16, ...
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# --- what every process runs with ---------------------------------------------------------------------------------

# The thread budget of every compute process, set here and nowhere else: the hosts share this machine's cores, so each
# of the APIS + WORKERS processes gets its share (README "PostgreSQL and many workers": thread budgets, what to run).
# docker-compose.yml sets the same from PROMPTBANK_CLUSTER_THREADS.
process_threads() {
  local threads="${PROMPTBANK_CLUSTER_THREADS:-$(($(nproc) / (APIS + WORKERS)))}"
  echo $((threads > 0 ? threads : 1))
}

role_env() {  # api|worker: the settings of deploy/<role>.env (shared with docker-compose.yml), then the host's own
  local threads
  threads=$(process_threads)
  grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$ROOT/deploy/$1.env"
  echo "PROMPTBANK_TORCH_THREADS=$threads"
  echo "OMP_NUM_THREADS=$threads"
  local password
  password=$(cat "$STATE/secrets/db_password")
  echo "PROMPTBANK_DATABASE_URL=postgresql+psycopg://promptbank:$password@$(addr db):5432/promptbank"
  echo "PROMPTBANK_DATA_DIR=$DATA"
  if [[ -n "${PROMPTBANK_MODEL_PATH:-}" ]]; then echo "PROMPTBANK_MODEL_PATH=$(realpath "$PROMPTBANK_MODEL_PATH")"; fi
  if [[ $1 == api ]]; then
    echo "PROMPTBANK_ADMIN_KEY=$(cat "$STATE/admin_key")"
    echo "PROMPTBANK_REDIS_URL=redis://$(addr redis):6379/0"
    echo "FORWARDED_ALLOW_IPS=$(addr lb)"  # uvicorn: the client's address is the balancer's X-Forwarded-For
  fi
}

start() {  # host, command...: run it in the host's namespace (its own host name too), in the background
  local host=$1
  shift
  mkdir -p "$STATE/hosts/$host"
  # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
  (cd "$STATE/hosts/$host" && exec setsid ip netns exec "$NAME-$host" unshare --uts \
    sh -c 'hostname "$0" && exec "$@"' "$NAME-$host" "$@" >>"$STATE/logs/$host.log" 2>&1 </dev/null) &
  echo $! >"$STATE/run/$host.pid"
}

alive() { [[ -f "$STATE/run/$1.pid" ]] && running "$(cat "$STATE/run/$1.pid")"; }

wait_for() {  # host, what, command...: poll the command until it succeeds; fail when the host's process ends
  local host=$1 what=$2 deadline=$((SECONDS + START_SECONDS))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ -f "$STATE/run/$host.pid" ]] && ! alive "$host"; then
      log "$host exited before $what; the end of $STATE/logs/$host.log:" >&2
      tail -n 40 "$STATE/logs/$host.log" >&2 || true
      return 1
    fi
    if ((SECONDS > deadline)); then
      log "$host: no $what after ${START_SECONDS} s; the end of $STATE/logs/$host.log:" >&2
      tail -n 40 "$STATE/logs/$host.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

in_ns() { local host=$1; shift; ip netns exec "$NAME-$host" "$@"; }
as_postgres() { runuser -u postgres -- "$@"; }
api_healthy() { in_ns lb curl -fsS -o /dev/null --max-time 5 "http://$(addr "$1"):$API_PORT/healthz"; }
worker_started() {  # the worker id names the host and its process: the line of this start, not of an earlier one
  grep -q "worker $NAME-$1:$(cat "$STATE/run/$1.pid"):[0-9a-f]* started" "$STATE/logs/$1.log"
}
lb_healthy() { curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$PORT/healthz"; }

lb_stat() {  # the balancer's runtime API: "show stat" as CSV
  "$PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
print(s.makefile().read(), end="")' "$STATE/lb/haproxy.sock"
}

# --- up -----------------------------------------------------------------------------------------------------------

install() {
  bash scripts/install.sh
  local packages=()
  command -v ip >/dev/null || packages+=(iproute2)
  command -v curl >/dev/null || packages+=(curl)
  command -v haproxy >/dev/null || packages+=(haproxy)
  command -v redis-server >/dev/null || packages+=(redis-server)
  [[ -n "$(pg_bin)" ]] || packages+=(postgresql)
  ((${#packages[@]})) || return 0
  log "installing ${packages[*]} from Debian's packages"
  # Their own services must not start (Debian's postinst would): ours run with configurations of their own.
  local policy=/usr/sbin/policy-rc.d made=""
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" || { apt-get update -q && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"; }
  [[ -z $made ]] || rm -f "$policy"
}

network() {  # a bridge in $NAME-net, each host on it through a veth pair
  ip netns add "$NAME-net"
  ip -n "$NAME-net" link add br0 type bridge
  ip -n "$NAME-net" link set br0 up
  local host
  for host in $(hosts); do
    ip netns add "$NAME-$host"
    ip link add "v-$host" netns "$NAME-net" type veth peer name eth0 netns "$NAME-$host"
    ip -n "$NAME-net" link set "v-$host" master br0 up
    ip -n "$NAME-$host" addr add "$(addr "$host")/24" dev eth0
    ip -n "$NAME-$host" link set eth0 up
    ip -n "$NAME-$host" link set lo up
  done
}

secrets() {
  mkdir -m 700 "$STATE/secrets"
  openssl rand -hex 24 >"$STATE/secrets/db_password"
  # the operator's key: PROMPTBANK_ADMIN_KEY when set, else a new one (read it from this file)
  (umask 077 && echo "${PROMPTBANK_ADMIN_KEY:-pb_$(openssl rand -hex 24)}" >"$STATE/admin_key")
}

database() {  # PostgreSQL of its own: initdb, then pg_ctl as the postgres user, listening on the db host's address
  local bin db=$STATE/db
  bin=$(pg_bin)
  mkdir -p "$db/run"
  touch "$STATE/logs/db.log"
  chown -R postgres: "$db" "$STATE/logs/db.log"
  chmod 700 "$db"
  cp "$STATE/secrets/db_password" "$db/password" && chown postgres: "$db/password"
  if ! (cd "$db" && as_postgres "$bin/initdb" -D "$db/data" -U promptbank --pwfile="$db/password" \
    --auth-local=trust --auth-host=scram-sha-256 >>"$STATE/logs/db.log" 2>&1); then
    log "initdb failed (can the postgres user reach $STATE?); the end of $STATE/logs/db.log:" >&2
    tail -n 20 "$STATE/logs/db.log" >&2
    return 1
  fi
  rm -f "$db/password"
  echo "host all all $NET.0/24 scram-sha-256" >>"$db/data/pg_hba.conf"
  if ! (cd "$db" && in_ns db runuser -u postgres -- "$bin/pg_ctl" -D "$db/data" -l "$STATE/logs/db.log" -w -t 60 \
    -o "-c listen_addresses=$(addr db) -p 5432 -k $db/run" start >/dev/null); then
    log "PostgreSQL did not start; the end of $STATE/logs/db.log:" >&2
    tail -n 20 "$STATE/logs/db.log" >&2
    return 1
  fi
  (cd "$db" && as_postgres "$bin/createdb" -h "$db/run" -U promptbank promptbank)
}

balancer() {  # HAProxy on 127.0.0.1:$PORT with deploy/haproxy/haproxy.cfg and the API hosts as its servers
  mkdir -p "$STATE/lb"
  local host backend check
  {
    echo "# written by scripts/cluster.sh: the API hosts, reached from the lb host's namespace"
    for backend in "api_affinity from affinity" "api from spread"; do
      echo "backend $backend"
      for host in $(seq -f 'api%g' "$APIS"); do
        if [[ $backend == api_affinity* ]]; then check=check; else check="track api_affinity/$host"; fi
        echo "    server $host $(addr "$host"):$API_PORT $check namespace $NAME-lb"
      done
      # PROMPTBANK_CLUSTER_AFFINITY=off: what task affinity gains is measured against round robin (bench.cluster)
      if [[ $backend == api_affinity* && $AFFINITY == off ]]; then echo "    balance roundrobin"; fi
    done
  } >"$STATE/lb/backends.cfg"
  export PROMPTBANK_LB_BIND="127.0.0.1:$PORT" PROMPTBANK_LB_STATS_SOCKET="$STATE/lb/haproxy.sock"
  local configs=(-f "$ROOT/deploy/haproxy/haproxy.cfg" -f "$STATE/lb/backends.cfg")
  haproxy -q -c "${configs[@]}"
  (exec setsid haproxy -db "${configs[@]}" >>"$STATE/logs/lb.log" 2>&1 </dev/null) &
  echo $! >"$STATE/run/lb.pid"
}

launch() {  # host: start its process, as up does (redis, apiN, workerN, lb)
  local host=$1 env
  case $host in
    redis)
      start redis redis-server --bind "$(addr redis)" --port 6379 --save "" --appendonly no --protected-mode no \
        --dir "$STATE/hosts/redis"
      ;;
    api*)
      mapfile -t env < <(role_env api)
      start "$host" env "${env[@]}" "$PYTHON" -m app.cli serve --host "$(addr "$host")" --port "$API_PORT"
      ;;
    worker*)
      mapfile -t env < <(role_env worker)
      start "$host" env "${env[@]}" "$PYTHON" -m workers
      ;;
    lb) balancer ;;
  esac
}

ready() {  # host: wait until it is healthy (an API host answers /healthz, a worker logged its start, ...)
  case $1 in
    redis) wait_for redis "an answer" in_ns redis redis-cli -h "$(addr redis)" ping ;;
    api*) wait_for "$1" "healthy /healthz" api_healthy "$1" ;;
    worker*) wait_for "$1" "start" worker_started "$1" ;;
    lb) wait_for lb "every API host up" all_up && wait_for lb "healthy /healthz" lb_healthy ;;
  esac
}

all_up() {  # every API host is UP in the balancer's view
  [[ $(lb_stat | awk -F, '$1 == "api_affinity" && $2 ~ /^api[0-9]+$/ && $18 == "UP"' | wc -l) -eq $APIS ]]
}

up() {
  [[ $EUID -eq 0 ]] || { echo "cluster: run as root (ip netns needs it)" >&2; exit 1; }
  if [[ -f "$STATE/url" ]] && ours | grep -qx "$NAME-net"; then
    log "already up (bash scripts/cluster.sh down stops it)"
    cat "$STATE/url"
    return 0
  fi
  [[ -z "$(ours)" && ! -e "$STATE" ]] || { log "removing what an earlier run left"; down >/dev/null; }
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    log "127.0.0.1:$PORT is taken: set PROMPTBANK_CLUSTER_PORT to a free port" >&2
    exit 1
  fi
  install
  trap 'log "up failed: taking down what started"; down >/dev/null 2>&1 || true' ERR
  mkdir -p "$STATE"
  chmod 755 "$STATE"  # the postgres user reaches its files in it
  mkdir "$STATE/logs" "$STATE/run" "$STATE/hosts"
  secrets
  network
  log "db: PostgreSQL on $(addr db):5432"
  database
  log "redis: $(addr redis):6379"
  launch redis
  ready redis
  local host env
  mapfile -t env < <(role_env api)
  log "migrating the database"
  (cd "$STATE/hosts" && in_ns api1 env "${env[@]}" "$PYTHON" -m app.migrate >>"$STATE/logs/api1.log" 2>&1)
  for host in $(seq -f 'api%g' "$APIS"); do
    log "$host: $(addr "$host"):$API_PORT"
    launch "$host"
  done
  for host in $(seq -f 'worker%g' "$WORKERS"); do
    log "$host: $(addr "$host")"
    launch "$host"
  done
  log "lb: HAProxy on 127.0.0.1:$PORT, from $(addr lb) to the API hosts"
  launch lb
  for host in $(seq -f 'api%g' "$APIS") $(seq -f 'worker%g' "$WORKERS") lb; do ready "$host"; done
  trap - ERR
  echo "http://127.0.0.1:$PORT" >"$STATE/url"
  log "up; admin key in $STATE/admin_key, logs in $STATE/logs, stop with: bash scripts/cluster.sh down"
  cat "$STATE/url"
}

# --- down and status ----------------------------------------------------------------------------------------------

running() {  # pid: a process that has not ended (one ended but not yet reaped by its parent counts as ended)
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]
}

stop_pids() {  # pids: TERM, then KILL what still runs 10 s later
  local pid left
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 100); do
    left=()
    for pid in "$@"; do if running "$pid"; then left+=("$pid"); fi; done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
}

down() {
  local file ns pids=()
  if [[ -f "$STATE/run/lb.pid" ]]; then stop_pids "$(cat "$STATE/run/lb.pid")"; fi  # no new requests first
  for file in "$STATE"/run/*.pid; do
    if [[ -f $file ]]; then pids+=("$(cat "$file")"); fi
  done
  ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
  if [[ -f "$STATE/db/data/postmaster.pid" ]]; then
    (cd "$STATE/db" && as_postgres "$(pg_bin)/pg_ctl" -D "$STATE/db/data" -m fast -w stop) >/dev/null 2>&1 || true
  fi
  for ns in $(ours); do  # whatever still runs inside one of our hosts
    mapfile -t pids < <(ip netns pids "$ns")
    ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
  done
  for ns in $(ours); do ip netns delete "$ns"; done  # their veth pairs go with them
  rm -rf "$STATE"
  log "down"
}

endpoint() {  # where a host answers
  case $1 in
    lb) echo "127.0.0.1:$PORT" ;; db) echo "$(addr db):5432" ;; redis) echo "$(addr redis):6379" ;;
    api*) echo "$(addr "$1"):$API_PORT" ;; *) addr "$1" ;;
  esac
}

healthy() {
  case $1 in
    lb) lb_healthy ;;
    db) in_ns db "$(pg_bin)/pg_isready" -q -h "$(addr db)" ;;
    redis) [[ $(in_ns redis redis-cli -h "$(addr redis)" ping) == PONG ]] ;;
    api*) api_healthy "$1" ;;
    worker*) alive "$1" ;;
  esac
}

status() {  # a line per host: name, address, up or down (and what the balancer thinks of an API host)
  [[ -f "$STATE/url" ]] || { log "not up"; return 1; }
  local host state ok=0 server check
  declare -A seen=()
  while IFS=, read -r server check; do seen[$server]=$check; done \
    < <(lb_stat 2>/dev/null | awk -F, '$1 == "api_affinity" {print $2 "," $18}')
  for host in $(hosts); do
    state=down
    if healthy "$host" >/dev/null 2>&1; then state=up; else ok=1; fi
    [[ $host != api* ]] || state="$state (balancer: ${seen[$host]:-unknown})"
    printf '%-8s %-18s %s\n' "$host" "$(endpoint "$host")" "$state"
  done
  return $ok
}

# --- faults: kill, start, link ------------------------------------------------------------------------------------

is_up() { [[ -f "$STATE/url" ]] || { log "not up (bash scripts/cluster.sh up starts it)" >&2; exit 1; }; }

known() { local host; for host in $(hosts); do [[ $host != "$1" ]] || return 0; done; return 1; }

process_host() {  # host: refuse one without a process of ours (db: PostgreSQL is not killed or started here)
  if ! known "$1" || [[ $1 == db ]]; then
    echo "cluster: kill and start take lb, redis, api1..api$APIS or worker1..worker$WORKERS" >&2
    exit 2
  fi
}

kill_host() {  # host: SIGKILL its process, as a crash would (no clean shutdown: its jobs and connections just end)
  is_up
  process_host "$1"
  alive "$1" || { log "$1 is not running"; return 0; }
  local pid
  pid=$(cat "$STATE/run/$1.pid")
  kill -KILL "$pid"
  for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
  log "$1 killed (process $pid)"
}

start_host() {  # host: start its process again with up's settings; return once it is healthy
  is_up
  process_host "$1"
  if alive "$1"; then log "$1 is already running"; return 0; fi
  launch "$1"
  ready "$1"
  log "$1 started (process $(cat "$STATE/run/$1.pid"))"
}

link() {  # host, down|up: the host's port on the bridge; packets to and from it are dropped while down
  is_up
  if ! known "$1" || [[ $2 != down && $2 != up ]]; then
    echo "cluster: usage: link HOST down|up (HOST: one of $(hosts | paste -sd ' '))" >&2
    exit 2
  fi
  ip -n "$NAME-net" link set "v-$1" "$2"
  log "$1: link $2"
}

case "${1:-} ${2:-}" in
  "up "*) up ;;
  "down "*) down ;;
  "status "*) status ;;
  "kill "?*) kill_host "$2" ;;
  "start "?*) start_host "$2" ;;
  "link "?*) link "$2" "${3:-}" ;;
  *) echo "usage: bash scripts/cluster.sh up|down|status, kill HOST, start HOST, link HOST down|up" >&2; exit 2 ;;
esac
