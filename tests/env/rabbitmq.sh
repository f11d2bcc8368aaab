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
# The TLS cluster (issue 23): three clustered private nodes ndc1..ndc3@localhost
# with AMQP on 127.0.0.1:5681..5683 and TLS on 127.0.0.1:5685..5687:
#   rabbitmq.sh tls                create (first time) the test PKI in
#                                  $ND_ENV_STATE/rabbitmq/tls: ca.pem (CA), server.pem/.key
#                                  (CN localhost, SAN localhost and 127.0.0.1),
#                                  client.pem/.key (CN nova-docker-client, for EXTERNAL),
#                                  expired-client.pem/.key (valid 2020-01-01..02),
#                                  foreign-client.pem/.key (same CN, signed by
#                                  other-ca.pem, a CA the nodes do not trust)
#   rabbitmq.sh cluster            tls, then start the three nodes (in parallel) and
#                                  join ndc2, ndc3 to ndc1 unless already clustered.
#                                  Idempotent; the user nova-docker-client (no
#                                  password: EXTERNAL only) has full rights on "/".
#   rabbitmq.sh cluster-vhost VHOST  cluster, then VHOST on it (guest and
#                                  nova-docker-client have full rights): the
#                                  "ovn" control plane's vhost
#   rabbitmq.sh cluster-delete     stop the three nodes and remove their state
#   Stop/start one node with private-stop/private-kill/private-start ndcN.
#   TLS listeners verify a client certificate when one is presented
#   (verify_peer, fail_if_no_peer_cert = false) and offer PLAIN, AMQPLAIN and
#   EXTERNAL (rabbitmq_auth_mechanism_ssl, user name = the certificate's CN).
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

# ---------------------------------------------------------------- TLS cluster
TLS_DIR=$PRIV_ROOT/tls
CLUSTER_NODES=(ndc1 ndc2 ndc3)
CLUSTER_AMQP_BASE=5680   # ndcN: AMQP on 5680+N, TLS on 5684+N
CLUSTER_TLS_BASE=5684
CLIENT_CN=nova-docker-client

# issue NAME CA SUBJECT [openssl-ca args...]: key NAME.key and NAME.pem signed by CA
tls_issue() {
  local name=$1 ca=$2 subj=$3; shift 3
  openssl req -new -newkey rsa:2048 -nodes -keyout "$TLS_DIR/$name.key" \
    -subj "$subj" -out "$TLS_DIR/$name.csr" 2>/dev/null
  openssl ca -batch -config "$TLS_DIR/ca.cnf" -name "$ca" -notext \
    -in "$TLS_DIR/$name.csr" -out "$TLS_DIR/$name.pem" "$@" 2>/dev/null
  rm -f "$TLS_DIR/$name.csr"
}

tls_ca() { # NAME: a self-signed test CA NAME.pem/NAME.key and its openssl-ca database
  [ -s "$TLS_DIR/$1.pem" ] && [ -s "$TLS_DIR/$1.key" ] && return 0
  mkdir -p "$TLS_DIR/$1.db"; : > "$TLS_DIR/$1.db/index"; echo 1000 > "$TLS_DIR/$1.db/serial"
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -subj "/CN=nova-docker test $1" \
    -keyout "$TLS_DIR/$1.key" -out "$TLS_DIR/$1.pem" 2>/dev/null
}

# Each file is created when missing: the nodes keep using ca.pem and
# server.pem while they run, so those are never replaced.
ensure_tls() {
  [ -s "$TLS_DIR/done" ] && return 0
  log "creating the test PKI in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  tls_ca ca
  tls_ca other-ca
  local sect
  {
    echo '[ ca ]'
    for sect in ca other-ca; do
      cat <<EOF
[ $sect ]
dir = $TLS_DIR
database = \$dir/$sect.db/index
serial = \$dir/$sect.db/serial
new_certs_dir = \$dir/$sect.db
certificate = \$dir/$sect.pem
private_key = \$dir/$sect.key
default_md = sha256
default_days = 3650
policy = any
copy_extensions = none
unique_subject = no
EOF
    done
    cat <<EOF
[ any ]
commonName = supplied
[ server ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[ client ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
  } > "$TLS_DIR/ca.cnf"
  [ -s "$TLS_DIR/server.pem" ] || tls_issue server ca /CN=localhost -extensions server
  [ -s "$TLS_DIR/client.pem" ] || tls_issue client ca "/CN=$CLIENT_CN" -extensions client
  [ -s "$TLS_DIR/expired-client.pem" ] || tls_issue expired-client ca "/CN=$CLIENT_CN" -extensions client \
    -startdate 20200101000000Z -enddate 20200102000000Z
  # the right name, the wrong issuer: the broker must refuse it
  [ -s "$TLS_DIR/foreign-client.pem" ] || tls_issue foreign-client other-ca "/CN=$CLIENT_CN" -extensions client
  chmod 755 "$TLS_DIR"; chmod 644 "$TLS_DIR"/*.pem "$TLS_DIR"/*.key
  chown -R rabbitmq:rabbitmq "$TLS_DIR"
  echo ok > "$TLS_DIR/done"
}

cluster_create_node() { # INDEX
  local i=$1 name=${CLUSTER_NODES[$1-1]}
  local port=$(( CLUSTER_AMQP_BASE + i )) tls=$(( CLUSTER_TLS_BASE + i ))
  D=$(priv_dir "$name")
  [ -s "$D/node.env" ] && return 0
  mkdir -p "$D/mnesia" "$D/log"
  printf '[rabbitmq_auth_mechanism_ssl].\n' > "$D/enabled_plugins"
  cat > "$D/rabbitmq.conf" <<EOF
# TLS cluster node $name@localhost (written by tests/env/rabbitmq.sh)
listeners.tcp.default = 127.0.0.1:$port
listeners.ssl.default = 127.0.0.1:$tls
loopback_users.guest = true
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
EOF
  printf 'PORT=%s\nTLS_PORT=%s\n' "$port" "$tls" > "$D/node.env"
  chmod 755 "$PRIV_ROOT" "$STATE_ROOT" 2>/dev/null || true
  chown -R rabbitmq:rabbitmq "$D"
}

cluster_members_ok() { # every node lists all three as running
  local n out
  for n in "${CLUSTER_NODES[@]}"; do
    out=$(ctl -n "$n@localhost" -q eval 'lists:sort(rabbit_nodes:all_running()).' 2>/dev/null) || return 1
    [ "$out" = "[ndc1@localhost,ndc2@localhost,ndc3@localhost]" ] || return 1
  done
}

ensure_cluster() {
  ensure_main          # epmd
  ensure_tls
  local i name pids=()
  for i in 1 2 3; do cluster_create_node "$i"; done
  # start the three at once (each takes several seconds of CPU)
  for i in 1 2 3; do
    name=${CLUSTER_NODES[$i-1]}
    ( priv_load "$name"; priv_launch "$name" ) & pids+=($!)
  done
  local failed=0
  for i in "${pids[@]}"; do wait "$i" || failed=1; done
  (( failed == 0 )) || die "a cluster node did not start"
  for name in ndc2 ndc3; do
    if ! ctl -n "$name@localhost" -q eval 'rabbit_nodes:all().' 2>/dev/null | grep -q ndc1@localhost; then
      log "joining $name@localhost to ndc1@localhost"
      local step out
      for step in stop_app reset "join_cluster ndc1@localhost" start_app; do
        # shellcheck disable=SC2086  # step is a command and its argument
        out=$(ctl -n "$name@localhost" -q $step 2>&1) || die "rabbitmqctl -n $name@localhost $step: $out"
      done
    fi
  done
  wait_until "$TIMEOUT" "cluster ndc1..ndc3 running" cluster_members_ok
  if ! ctl -n ndc1@localhost -q list_users | grep -q "^$CLIENT_CN\b"; then
    ctl -n ndc1@localhost -q add_user "$CLIENT_CN" "$(head -c 24 /dev/urandom | base64)"
    ctl -n ndc1@localhost -q clear_password "$CLIENT_CN"
    log "created user $CLIENT_CN (EXTERNAL login only)"
  fi
  ctl -n ndc1@localhost -q set_permissions -p / "$CLIENT_CN" '.*' '.*' '.*'
}

ensure_cluster_vhost() { # VHOST on the cluster: guest (PLAIN/AMQPLAIN) and the certificate's user
  local vh=$1
  if ! ctl -n ndc1@localhost -q list_vhosts | grep -x "$vh" >/dev/null; then
    ctl -n ndc1@localhost -q add_vhost "$vh"
    log "created vhost $vh on the TLS cluster"
  fi
  ctl -n ndc1@localhost -q set_permissions -p "$vh" guest '.*' '.*' '.*'
  ctl -n ndc1@localhost -q set_permissions -p "$vh" "$CLIENT_CN" '.*' '.*' '.*'
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
  tls) ensure_tls ;;
  cluster) ensure_cluster ;;
  cluster-vhost)
    [ $# -eq 2 ] || die "usage: $0 cluster-vhost VHOST"
    ensure_cluster; ensure_cluster_vhost "$2" ;;
  cluster-delete)
    for n in "${CLUSTER_NODES[@]}"; do
      D=$(priv_dir "$n")
      if [ -s "$D/node.env" ]; then priv_load "$n"; priv_stop "$n"; fi
      rm -rf "$D"
    done
    log "deleted the TLS cluster" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
