#!/bin/bash
# devstack/aio.sh -- nova-docker all-in-one on a fresh Debian bookworm machine.
#
#   sudo devstack/aio.sh up       install, start, boot a demo server, show it
#   sudo devstack/aio.sh status   exit 0 iff nova-docker runs, Nova has the host
#                                 up and the demo server is ACTIVE
#   sudo devstack/aio.sh down     delete the demo server, stop nova-docker and
#                                 the control plane
#   sudo devstack/aio.sh conf     only write the compute host's nova.conf (the
#                                 control plane must be up) and print its path
#
# `up`, step by step; every step keeps what is already there, so running `up`
# again is safe (and quick):
#   1. tests/env/install.sh: Debian packages (RabbitMQ, Open vSwitch,
#      busybox-static, ...) and virtualenvs with OpenStack 2026.2 (nova 34,
#      placement, glance, neutron) from PyPI. The first run takes a while.
#   2. Docker: docker.io installed if missing, the engine started if it does
#      not answer (devstack/lib/nova-docker, shared with the DevStack plugin).
#   3. tests/env/rabbitmq.sh, then tests/env/controlplane.sh newest up: a real
#      control plane (nova-api/-conductor/-scheduler, placement, glance,
#      neutron with an Open vSwitch L2 agent, Keystone with an admin and two
#      tenant users) on loopback. Skipped when `controlplane.sh newest status` says that
#      everything answers already: `up` rewrites the control plane's config
#      files, which other users of the same control plane (tests/run) may be
#      reading at that moment.
#   4. cargo build --release, binary installed to /usr/local/bin/nova-docker
#      (lib/nova-docker again; AIO_BINARY skips this).
#   5. The compute host's nova.conf, $AIO_STATE/nova.conf: the control plane's
#      compute template (host name, state path) plus nova-docker's options.
#   6. `nova-docker serve` in the background, in its own session: PID file
#      $AIO_STATE/pids/nova-docker.pid, log $AIO_STATE/log/nova-docker.stdout.
#      Already running: kept, unless its binary or nova.conf changed (then
#      restarted). Refused when another compute service consumes the host's
#      RPC queue compute.<host>: two services must never share a host name.
#   7. Waits until Nova lists the host up, it consumes its RPC queue and has
#      its resource provider; maps it to cell1 (discover_hosts) and waits for
#      the host mapping.
#   8. tests/env/images.sh (Docker image nd-busybox:latest, busybox-static by
#      `docker import`: no registry), imported into Glance as $AIO_IMAGE with
#      `nova-docker image import` (kept if it exists).
#   9. Server $AIO_SERVER on this host: kept if ACTIVE there, started if
#      SHUTOFF, else (re)created; waits for ACTIVE, prints its console log and
#      how to use the cloud with the `openstack` CLI.
# Every wait is a readiness check with a time limit (AIO_TIMEOUT), none is a
# blind sleep. Two aio.sh runs with the same AIO_STATE never overlap (lock).
#
# Host name and networking: Neutron binds ports only to the host of its L2
# agent, ND_NET_HOST (nd-net-newest, see tests/env/controlplane.sh), so
# AIO_HOST defaults to that name and the server gets --network private. Any
# other AIO_HOST boots servers with --nic none. The test suite's network tests
# (tests/it/network.rs) run a compute service as ND_NET_HOST too: do not run
# them while the all-in-one is up with its default name (`up` refuses to start
# when the host's queue already has a consumer), or give the all-in-one
# another name, as its own test does (tests/it/operators.rs).
#
# Environment:
#   AIO_HOST     compute host name (default: ND_NET_HOST of the control plane)
#   AIO_NIC      private | none | auto (default auto: private iff AIO_HOST is
#                ND_NET_HOST)
#   AIO_SERVER   demo server name (default demo)
#   AIO_IMAGE    Glance image name (default demo)
#   AIO_STATE    nova.conf, instance state, PID file and logs
#                (default /var/lib/nova-docker-aio)
#   AIO_BINARY   run this nova-docker binary: no cargo build, nothing installed
#   AIO_TIMEOUT  seconds for each wait (default 180)
#   AIO_KEEP_CONTROLPLANE=1  `down` leaves the control plane running (it is
#                the one tests/run uses)
#   ND_ENV_STATE, NOVA_DOCKER_OPT   as for tests/env/*
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ENVDIR=$REPO/tests/env
# shellcheck source=../tests/env/lib.sh
. "$ENVDIR/lib.sh"   # log, die, wait_until, daemon_start/_pid/_alive/_wait, daemons_stop
# shellcheck source=lib/nova-docker
. "$HERE/lib/nova-docker"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }
[ $# -eq 1 ] || usage
ACTION=$1
case $ACTION in up|status|down|conf) ;; *) usage ;; esac
[ "$(id -u)" = 0 ] || die "run as root: sudo $0 $ACTION (Docker, netlink, RabbitMQ, apt-get)"

AIO_STATE=${AIO_STATE:-/var/lib/nova-docker-aio}
case $AIO_STATE in /*) ;; *) die "AIO_STATE must be an absolute path" ;; esac
TMO=${AIO_TIMEOUT:-180}
AIO_SERVER=${AIO_SERVER:-demo}
AIO_IMAGE=${AIO_IMAGE:-demo}
ENV_SH=${ND_ENV_STATE:-/var/lib/nova-docker-test}/newest/env.sh
CONF=$AIO_STATE/nova.conf
SERVICE=nova-docker
DOCKER_IMAGE=nd-busybox:latest

# One run at a time per state directory. flock -o: the lock is held by flock
# itself, so the daemons this run starts do not inherit (and keep) it.
mkdir -p "$AIO_STATE"
if [ "${AIO_LOCKED:-}" != "$AIO_STATE" ]; then
  rc=0
  AIO_LOCKED=$AIO_STATE flock -o -E 75 -w "$TMO" "$AIO_STATE/.lock" "$0" "$@" || rc=$?
  [ $rc != 75 ] || die "another aio.sh still holds $AIO_STATE/.lock after ${TMO}s"
  exit $rc
fi
[[ $AIO_SERVER =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad AIO_SERVER '$AIO_SERVER'"

# ================================================================== helpers
load_env() { # the control plane's env.sh; HOST, NIC, NOVA_MANAGE from it
  [ -s "$ENV_SH" ] || return 1
  # shellcheck disable=SC1090
  . "$ENV_SH"
  if [ "${ND_AUTH:-noauth}" = keystone ]; then
    # the admin's token for this run's own requests (valid for an hour;
    # nd_rest.py and the glance import use it too)
    ND_TOKEN=$(/usr/bin/python3 "$ENVDIR/pylib/nd_keystone.py" token) ||
      die "Keystone ($ND_KEYSTONE) issues no token for $ND_ADMIN_USER"
    export ND_TOKEN
  fi
  HOST=${AIO_HOST:-$ND_NET_HOST}
  [[ $HOST =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || die "bad AIO_HOST '$HOST' (letters, digits, . and -)"
  NIC=${AIO_NIC:-auto}
  if [ "$NIC" = auto ]; then
    if [ "$HOST" = "$ND_NET_HOST" ]; then NIC=private; else NIC=none; fi
  fi
  case $NIC in
    none) ;;
    private)
      [ "$HOST" = "$ND_NET_HOST" ] ||
        die "AIO_NIC=private needs AIO_HOST=$ND_NET_HOST: Neutron binds ports only to its L2 agent's host" ;;
    *) die "AIO_NIC must be private, none or auto" ;;
  esac
  read -r -a NOVA_MANAGE <<< "$ND_NOVA_MANAGE"
  if [ "$NIC" = none ]; then NIC_ARGS=(--nic none); else NIC_ARGS=(--network "$ND_NETWORK"); fi
}

api() { # METHOD PATH [JSON]: nova-api, admin token; prints the body
  local args=(-sf --max-time 30 -X "$1" -H "X-Auth-Token: $ND_TOKEN" -H 'X-OpenStack-Nova-API-Version: 2.53')
  if [ $# -ge 3 ]; then args+=(-H 'Content-Type: application/json' -d "$3"); fi
  curl "${args[@]}" "$ND_NOVA_API$2"
}
json() { # PYTHON-EXPRESSION over d (the JSON document on stdin)
  python3 -c "import json, sys; d = json.load(sys.stdin); r = ($1); print(r if r is not None else '')"
}

queue_consumers() { # RPC queue compute.$HOST: number of consumers (0 if none)
  rabbitmqctl -q -p "$ND_VHOST" list_queues name consumers 2>/dev/null |
    awk -v q="compute.$HOST" '$1 == q {n = $2} END {print n + 0}'
}
host_up() { # Nova lists the service up, it consumes its queue, its provider exists
  [ "$(api GET "/os-services?host=$HOST&binary=nova-compute" |
       json 'd["services"][0]["state"] if d["services"] else ""')" = up ] || return 1
  [ "$(queue_consumers)" -gt 0 ] || return 1
  curl -sf --max-time 10 -H "X-Auth-Token: $ND_TOKEN" "$ND_PLACEMENT/resource_providers?name=$HOST" |
    grep -q "\"$HOST\""
}
host_mapped() {
  "${NOVA_MANAGE[@]}" cell_v2 list_hosts 2>/dev/null |
    awk -F'|' -v h="$HOST" '{gsub(/ /, "", $4)} $4 == h {f = 1} END {exit !f}'
}

servers_named() { # "id status host" of every server named $AIO_SERVER
  api GET "/servers/detail?all_tenants=1&name=^${AIO_SERVER}\$" | python3 -c '
import json, sys
for s in json.load(sys.stdin)["servers"]:
    print(s["id"], s["status"], s.get("OS-EXT-SRV-ATTR:host") or "-")'
}
server_wait() { /usr/bin/python3 "$ENVDIR/pylib/nd_rest.py" server-wait "$ND_NOVA_API" "$1" "$2" "$TMO"; }
console_log() {
  api POST "/servers/$1/action" '{"os-getConsoleOutput": {"length": 40}}' | json 'd["output"]'
}
console_nonempty() { [ -n "$(console_log "$1" | tr -d '[:space:]')" ]; }

# ====================================================================== up
step_controlplane() {
  # progress goes to stderr; stdout is the summary at the end
  "$ENVDIR/install.sh" >&2
  nova_docker_ensure_docker root
  "$ENVDIR/rabbitmq.sh" >&2
  if [ -s "$ENV_SH" ] && "$ENVDIR/controlplane.sh" newest status >/dev/null 2>&1; then
    log "control plane 'newest' is up and answers (not touched)"
  else
    "$ENVDIR/controlplane.sh" newest up >&2
  fi
  load_env || die "no $ENV_SH after controlplane.sh newest up"
}

step_binary() {
  if [ -n "${AIO_BINARY:-}" ]; then
    BIN=$(realpath "$AIO_BINARY")
    [ -x "$BIN" ] || die "AIO_BINARY=$AIO_BINARY is not an executable"
    log "using $BIN (AIO_BINARY: not building)"
  else
    nova_docker_build_install "$REPO" "$NOVA_DOCKER_BIN"
    BIN=$NOVA_DOCKER_BIN
  fi
}

step_conf() {
  local sp=$AIO_STATE/state
  mkdir -p "$sp/instances" "$sp/lock"
  { printf '# written by devstack/aio.sh from %s\n' "$ND_COMPUTE_CONF_TEMPLATE"
    sed -e "s|@HOST@|$HOST|g" -e "s|@STATE_PATH@|$sp|g" "$ND_COMPUTE_CONF_TEMPLATE"
  } > "$CONF.tmp"
  # the test control plane's DHCP agent serves isolated metadata
  NOVA_DOCKER_ISOLATED_METADATA_ROUTE=True nova_docker_configure_compute "$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

step_service() {
  local fp pid
  fp=$(cat "$BIN" "$CONF" | sha256sum | cut -d' ' -f1)
  if pid=$(daemon_pid "$AIO_STATE" "$SERVICE"); then
    if [ "$(cat "$AIO_STATE/fingerprint" 2>/dev/null)" = "$fp" ]; then
      log "nova-docker already running as $HOST (pid $pid)"
      return 0
    fi
    log "binary or nova.conf changed since nova-docker (pid $pid) started: restarting it"
    daemons_stop "$AIO_STATE" 90 "$SERVICE"
  fi
  local n
  n=$(queue_consumers)
  if [ "$n" -gt 0 ]; then
    die "another compute service already consumes compute.$HOST ($n consumer(s)):" \
        "a test of tests/it/network.rs, or a nova-compute, runs as host $HOST." \
        "Stop it, or choose another name: AIO_HOST=<name> $0 up"
  fi
  daemon_start "$AIO_STATE" "$SERVICE" env "OVS_RUNDIR=${ND_OVS_RUNDIR:-}" \
    "$BIN" serve --config-file "$CONF"
  echo "$fp" > "$AIO_STATE/fingerprint"
}

step_host() {
  ND_POLL=1 daemon_wait "$AIO_STATE" "$SERVICE" "$TMO" \
    "compute host $HOST up (os-services, RPC consumer, resource provider)" host_up
  if host_mapped; then
    log "$HOST is mapped to cell1"
  else
    QUIET=1 "$ENVDIR/controlplane.sh" newest discover ||
      log "discover_hosts failed; waiting for the scheduler's periodic discovery"
    ND_POLL=2 daemon_wait "$AIO_STATE" "$SERVICE" "$TMO" "$HOST mapped to cell1" host_mapped
  fi
}

step_image() {
  "$ENVDIR/images.sh" >&2
  IMAGE_ID=$(nova_docker_glance_import "$BIN" "$ND_GLANCE" "$ND_TOKEN" "$DOCKER_IMAGE" "$AIO_IMAGE" "$CONF")
}

step_server() {
  local id status host list
  list=$(servers_named) || die "cannot list servers at $ND_NOVA_API"
  SERVER_ID=""
  while read -r id status host; do
    [ -n "$id" ] || continue
    if [ "$host" != "$HOST" ] && [ "$host" != - ]; then
      log "server $id is also named $AIO_SERVER but is on host $host: left alone"; continue
    fi
    if [ -z "$SERVER_ID" ]; then
      case $status in
        ACTIVE) SERVER_ID=$id; log "server $AIO_SERVER ($id) is ACTIVE on $HOST: kept"; continue ;;
        BUILD|REBOOT|HARD_REBOOT)
          if server_wait "$id" ACTIVE; then SERVER_ID=$id; continue; fi ;;
        SHUTOFF)
          api POST "/servers/$id/action" '{"os-start": null}' >/dev/null || true
          if server_wait "$id" ACTIVE; then SERVER_ID=$id; continue; fi ;;
      esac
    fi
    log "deleting server $id ($status): it is recreated"
    api DELETE "/servers/$id" >/dev/null || true
    server_wait "$id" GONE
  done <<< "$list"
  if [ -z "$SERVER_ID" ]; then
    log "creating server $AIO_SERVER on $HOST (${NIC_ARGS[*]})"
    SERVER_ID=$("$ND_OPENSTACK" --os-compute-api-version 2.37 server create --flavor m1.tiny \
      --image "$IMAGE_ID" --availability-zone "nova:$HOST" "${NIC_ARGS[@]}" "$AIO_SERVER" -f value -c id)
    server_wait "$SERVER_ID" ACTIVE
  fi
  log "server $AIO_SERVER ($SERVER_ID) is ACTIVE"
  # the image's command prints a line at start: wait for it (bounded)
  ND_POLL=1 wait_until 60 "console output of $AIO_SERVER" console_nonempty "$SERVER_ID" || true
}

do_up() {
  log "all-in-one up: state $AIO_STATE"
  step_controlplane
  step_binary
  step_conf
  step_service
  step_host
  step_image
  step_server
  local addrs pid
  addrs=$(api GET "/servers/$SERVER_ID" |
          json '"; ".join(n + " " + ", ".join(a["addr"] for a in v) for n, v in d["server"]["addresses"].items()) or "none (--nic none)"')
  pid=$(daemon_pid "$AIO_STATE" "$SERVICE" || echo '?')
  cat <<EOF

nova-docker all-in-one is up.
  compute host  $HOST: nova-docker pid $pid, config $CONF,
                log $AIO_STATE/log/$SERVICE.stdout
  server        $AIO_SERVER ($SERVER_ID), ACTIVE, container nova-$SERVER_ID
  addresses     $addrs

Console log of $AIO_SERVER:
$(console_log "$SERVER_ID" | sed -e :a -e '/^[[:space:]]*$/{$d;N;ba' -e '}' | sed 's/^/  | /')

Use the cloud with the openstack CLI, as the admin (Keystone user admin):
  export OS_CLOUD=$OS_CLOUD OS_CLIENT_CONFIG_FILE=$OS_CLIENT_CONFIG_FILE
  alias openstack=$ND_OPENSTACK
  openstack token issue
  openstack server list
  openstack console log show $AIO_SERVER
  openstack server create --flavor m1.tiny --image $AIO_IMAGE --availability-zone nova:$HOST ${NIC_ARGS[*]} NAME
As a tenant (user $ND_MEMBER_A, member of project $ND_TENANT_A):
  export OS_CLOUD=$OS_CLOUD-tenant-a OS_CLIENT_CONFIG_FILE=$OS_CLIENT_CONFIG_FILE
  openstack token issue
  openstack server create --flavor m1.tiny --image $AIO_IMAGE --availability-zone nova:$HOST ${NIC_ARGS[*]} NAME
  openstack server list
Inside the container:  docker exec -it nova-$SERVER_ID sh
Stop it all:           sudo $0 down
EOF
}

# ================================================================== status
do_status() {
  local rc=0 pid line=""
  if pid=$(daemon_pid "$AIO_STATE" "$SERVICE"); then echo "running   nova-docker (pid $pid)"
  else echo "STOPPED   nova-docker"; rc=1; fi
  if ! load_env; then echo "NO CONTROL PLANE ($ENV_SH missing)"; return 1; fi
  if host_up >/dev/null 2>&1; then echo "up        compute host $HOST"
  else echo "NOT UP    compute host $HOST"; rc=1; fi
  line=$(servers_named 2>/dev/null | awk -v h="$HOST" '$3 == h' | head -n 1) || true
  case $line in
    *" ACTIVE "*) echo "ACTIVE    server $AIO_SERVER (${line%% *})" ;;
    "") echo "NO SERVER $AIO_SERVER on $HOST"; rc=1 ;;
    *) echo "NOT ACTIVE server $AIO_SERVER: $line"; rc=1 ;;
  esac
  return $rc
}

# ==================================================================== down
do_down() {
  local id status host list
  if load_env && list=$(servers_named); then
    # while nova-docker still runs, so that it removes the containers
    while read -r id status host; do
      [ -n "$id" ] || continue
      [ "$host" = "$HOST" ] || [ "$host" = - ] || continue
      log "deleting server $AIO_SERVER ($id, $status)"
      api DELETE "/servers/$id" >/dev/null || true
      server_wait "$id" GONE || log "server $id is not gone after ${TMO}s"
    done <<< "$list"
  else
    log "control plane not answering: servers not deleted"
  fi
  daemons_stop "$AIO_STATE" 90 "$SERVICE"
  rm -f "$AIO_STATE/fingerprint"
  if [ "${AIO_KEEP_CONTROLPLANE:-0}" = 1 ]; then
    log "control plane left running (AIO_KEEP_CONTROLPLANE=1)"
  else
    "$ENVDIR/controlplane.sh" newest down
  fi
  log "all-in-one is down"
}

case $ACTION in
  up) do_up ;;
  status) do_status ;;
  down) do_down ;;
  conf) load_env || die "no $ENV_SH: run $0 up (or tests/env/controlplane.sh newest up)"
        step_conf; echo "$CONF" ;;
esac
