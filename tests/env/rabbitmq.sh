#!/bin/bash
# rabbitmq.sh -- the RabbitMQ brokers the integration tests use.
#
# Main node (shared by both control planes, each on its own vhost):
#   rabbitmq.sh [ensure]           make sure node rabbit@<host> runs with AMQP on
#                                  127.0.0.1:5672 only, wait until it is ready
#   rabbitmq.sh status             exit 0 iff the main node is up and 5672 answers
#   rabbitmq.sh vhost VHOST        ensure VHOST exists, guest has full rights on it,
#                                  and the firehose (trace_on) is enabled there
#   rabbitmq.sh restart-main       stop the main node (every client loses its
#                                  connection, transient queues are gone) and
#                                  start it again; for the one test that runs
#                                  alone (.config/nextest.toml) to restart the
#                                  broker under the control planes
#
# Private nodes, for fault-injection tests that stop/start "their" broker
# without disturbing anything else (other tests, the control planes):
#   rabbitmq.sh private NAME PORT  create (first time) and start node NAME@localhost
#                                  with AMQP on 127.0.0.1:PORT and Erlang distribution
#                                  on PORT+20000; its mnesia, logs and pid file live in
#                                  $ND_ENV_STATE/rabbitmq/NAME. Idempotent.
#   rabbitmq.sh private-stop NAME  graceful stop (rabbitmqctl stop), waits until
#                                  the process exited and PORT is closed
#   rabbitmq.sh private-kill NAME  SIGKILL the node's beam process (crash)
#   rabbitmq.sh private-start NAME start it again (same port and data), wait ready
#   rabbitmq.sh private-status NAME  exit 0 iff it is up and PORT answers
#   rabbitmq.sh private-delete NAME  stop it and remove its state directory
#   A private node has the default vhost "/" and user guest/guest (loopback only):
#   rabbit://guest:guest@127.0.0.1:PORT/
#
# Why like this: there is no systemd on the test machines, so the node is run
# with `rabbitmq-server -detached` (Debian's wrapper su's to user rabbitmq).
# Every node runs as user rabbitmq with HOME=/var/lib/rabbitmq, so all share
# that Erlang cookie and `rabbitmqctl -n NAME@localhost ...` works as root.
# A private node gets its own enabled-plugins file (no plugins, so no port
# clash with the main node's plugins) and its own config file.
# Every wait is a readiness poll with a timeout: a node is "ready" when its
# AMQP port accepts connections and `rabbitmqctl await_startup` succeeds.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf
STATE_ROOT=${ND_ENV_STATE:-/var/lib/nova-docker-test}
case $STATE_ROOT in /*) ;; *) die "ND_ENV_STATE must be an absolute path";; esac
PRIV_ROOT=$STATE_ROOT/rabbitmq
TIMEOUT=${RABBIT_TIMEOUT:-60}

ctl() { rabbitmqctl "$@"; }

main_listening_everywhere() { # AMQP bound to a wildcard address?
  ss -Hltn 'sport = :5672' | awk '{print $4}' | grep -vE '^127\.0\.0\.1:5672$' >/dev/null
}
main_ready() { tcp_open 127.0.0.1 5672 && ctl -q await_startup --timeout 10; }

ensure_main() {
  if ! grep -qx 'NODE_IP_ADDRESS=127.0.0.1' "$ENV_CONF" 2>/dev/null; then
    sed -i '/^NODE_IP_ADDRESS=/d' "$ENV_CONF" 2>/dev/null || true
    echo 'NODE_IP_ADDRESS=127.0.0.1' >> "$ENV_CONF"
    log "set NODE_IP_ADDRESS=127.0.0.1 in $ENV_CONF"
  fi
  if main_ready >/dev/null 2>&1; then
    log "RabbitMQ main node on 127.0.0.1:5672 is running"
  else
    if ! ctl -q status >/dev/null 2>&1; then  # not even booting
      log "starting main RabbitMQ node (rabbitmq-server -detached)"
      rabbitmq-server -detached
    fi
    wait_until "$TIMEOUT" "RabbitMQ main node on 127.0.0.1:5672" main_ready
  fi
  if main_listening_everywhere; then
    die "the running main node listens on $(ss -Hltn 'sport = :5672' | awk '{print $4}' | tr '\n' ' ')," \
        "not only 127.0.0.1:5672 (started before $ENV_CONF had NODE_IP_ADDRESS?)." \
        "Restart it yourself when nothing uses it: rabbitmqctl stop; $0"
  fi
}

main_stopped() { ! tcp_open 127.0.0.1 5672 && ! ctl -q status >/dev/null 2>&1; }

restart_main() {
  log "stopping the main RabbitMQ node"
  ctl -q stop >/dev/null 2>&1 || true
  wait_until "$TIMEOUT" "main node stopped (port closed)" main_stopped
  ensure_main
}

ensure_vhost() {
  local vh=$1
  if ! ctl -q list_vhosts | grep -x "$vh" >/dev/null; then
    ctl -q add_vhost "$vh"
    ctl -q set_permissions -p "$vh" guest '.*' '.*' '.*'
    log "created vhost $vh (guest has full rights)"
  fi
  # the firehose: a copy of every publish goes to amq.rabbitmq.trace (dropped
  # unless a test binds a queue to it); not persistent across broker restarts
  ctl -q -p "$vh" trace_on >/dev/null
}

# ---------------------------------------------------------------- private nodes
priv_dir() {
  [[ $1 =~ ^[A-Za-z][A-Za-z0-9_-]*$ ]] || die "bad node name '$1' (letters, digits, - and _)"
  [ "$1" != rabbit ] || die "'rabbit' is the main node's name"
  echo "$PRIV_ROOT/$1"
}
priv_load() { # NAME -> sets D, NODE, PORT from the node's saved settings
  D=$(priv_dir "$1"); NODE=$1@localhost
  [ -s "$D/node.env" ] || die "no private node '$1' (create it with: $0 private $1 PORT)"
  PORT=$(sed -n 's/^PORT=//p' "$D/node.env")
}
priv_ready() { tcp_open 127.0.0.1 "$PORT" && ctl -n "$NODE" -q await_startup --timeout 10; }
priv_beam_pid() { # running beam.smp of this node (from its pid file), else fail
  local pid
  [ -s "$D/$1.pid" ] || return 1
  read -r pid < "$D/$1.pid"
  [ -n "$pid" ] && [ -r "/proc/$pid/environ" ] || return 1
  # a reused PID would not be a beam.smp started for this node name
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ] || return 1
  # read by grep itself (-z: NUL-separated): with pipefail, a producer piped
  # into `grep -q` fails with SIGPIPE when grep stops reading early
  grep -qxz "RABBITMQ_NODENAME=$NODE" "/proc/$pid/environ" 2>/dev/null || return 1
  echo "$pid"
}
priv_stopped() { ! priv_beam_pid "$1" >/dev/null && ! tcp_open 127.0.0.1 "$PORT"; }

priv_launch() { # NAME: start the node from its saved settings, wait until ready
  local name=$1
  if priv_beam_pid "$name" >/dev/null; then
    # left running by an earlier run: it may be busy (starting, or catching
    # up after the main node restarted epmd); a node that stays deaf is a
    # test's own and is killed and started afresh
    if wait_until 20 "private node $NODE already running on 127.0.0.1:$PORT" priv_ready; then
      return 0
    fi
    log "private node $NODE runs but does not answer on $PORT: restarting it"
    priv_stop "$name" kill
  fi
  tcp_open 127.0.0.1 "$PORT" && die "127.0.0.1:$PORT is taken by something else"
  log "starting private RabbitMQ node $NODE on 127.0.0.1:$PORT"
  # RABBITMQ_* variables override /etc/rabbitmq/rabbitmq-env.conf; Debian's
  # wrapper su's to rabbitmq without a login shell, so they pass through.
  env RABBITMQ_NODENAME="$NODE" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$PORT" \
      RABBITMQ_DIST_PORT=$(( PORT + 20000 )) \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
      RABBITMQ_MNESIA_BASE="$D/mnesia" \
      RABBITMQ_LOG_BASE="$D/log" \
      RABBITMQ_PID_FILE="$D/$name.pid" \
      RABBITMQ_CONFIG_FILE="$D/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$D/enabled_plugins" \
      rabbitmq-server -detached
  wait_until "$TIMEOUT" "private node $NODE on 127.0.0.1:$PORT" priv_ready
}

priv_create() { # NAME PORT
  local name=$1 port=$2
  if ! [[ $port =~ ^[0-9]+$ ]] || (( port <= 1024 || port > 45535 )); then
    die "PORT must be 1025..45535 (the distribution port is PORT+20000)"
  fi
  D=$(priv_dir "$name"); NODE=$name@localhost
  if [ -s "$D/node.env" ]; then
    PORT=$(sed -n 's/^PORT=//p' "$D/node.env")
    [ "$PORT" = "$port" ] || die "private node $name exists with port $PORT (private-delete it first)"
  else
    (( port != 5672 )) || die "5672 is the main node's port"
    mkdir -p "$D/mnesia" "$D/log"
    printf '[].\n' > "$D/enabled_plugins"
    cat > "$D/rabbitmq.conf" <<EOF
# private test node $NODE (written by tests/env/rabbitmq.sh)
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
EOF
    printf 'PORT=%s\n' "$port" > "$D/node.env"
    chmod 755 "$PRIV_ROOT" "$STATE_ROOT" 2>/dev/null || true
    chown -R rabbitmq:rabbitmq "$D"
    PORT=$port
  fi
}

priv_stop() { # NAME [kill]
  local name=$1 how=${2:-stop} pid
  if ! pid=$(priv_beam_pid "$name"); then
    log "private node $NODE is not running"; return 0
  fi
  if [ "$how" = kill ]; then
    log "SIGKILL private node $NODE (beam pid $pid)"
    kill -KILL "$pid"
  else
    log "stopping private node $NODE (beam pid $pid)"
    # with the pid file, rabbitmqctl stop also waits for the OS process to exit
    ctl -n "$NODE" -q stop "$D/$name.pid" >/dev/null || true
  fi
  wait_until "$TIMEOUT" "private node $NODE gone (process exited, port closed)" priv_stopped "$name"
}

cmd=${1:-ensure}
case $cmd in
  ensure) ensure_main ;;
  status) main_ready >/dev/null 2>&1 ;;
  restart-main) restart_main ;;
  vhost)
    [ $# -eq 2 ] || die "usage: $0 vhost VHOST"
    ensure_main; ensure_vhost "$2" ;;
  private)
    [ $# -eq 3 ] || die "usage: $0 private NAME PORT"
    ensure_main          # the main node also starts epmd, which all nodes share
    priv_create "$2" "$3"; priv_launch "$2" ;;
  private-start)
    [ $# -eq 2 ] || die "usage: $0 private-start NAME"
    priv_load "$2"; priv_launch "$2" ;;
  private-stop|private-kill)
    [ $# -eq 2 ] || die "usage: $0 $cmd NAME"
    priv_load "$2"; priv_stop "$2" "${cmd#private-}" ;;
  private-status)
    [ $# -eq 2 ] || die "usage: $0 private-status NAME"
    priv_load "$2"; priv_beam_pid "$2" >/dev/null && priv_ready >/dev/null 2>&1 ;;
  private-delete)
    [ $# -eq 2 ] || die "usage: $0 private-delete NAME"
    D=$(priv_dir "$2")
    if [ -s "$D/node.env" ]; then priv_load "$2"; priv_stop "$2"; fi
    if [ -e "$D" ]; then rm -rf "$D"; log "deleted private node $2"; fi ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
