# shellcheck shell=bash
# ovn.sh -- the OVN pieces of the "ovn" control plane, sourced by
# controlplane.sh (which sets STATE, OVS_DIR, OVS_DB, OVN_DIR, NET_HOST,
# OVS_PHYS_BR, VN, P_METADATA, METADATA_SECRET, RABBIT and the daemon_*
# helpers of lib.sh). See "OVN" in controlplane.sh's header.
#
# Why by hand and not Debian's ovn-ctl: ovn-ctl puts its sockets, databases
# and PID files under /var/run/ovn and /var/lib/ovn, one set per machine;
# this control plane keeps everything in its own state directory, as it does
# for Open vSwitch, and runs each daemon in the foreground under daemon_start
# (its PID file and process group), so that `down` stops exactly its own.

ovn_env() { env "OVN_RUNDIR=$OVN_DIR" "OVS_RUNDIR=$OVS_DIR" "$@"; }
ovn_nbctl() { ovn_env ovn-nbctl --db="unix:$OVN_DIR/nb.sock" --timeout=5 "$@"; }
ovn_sbctl() { ovn_env ovn-sbctl --db="unix:$OVN_DIR/sb.sock" --timeout=5 "$@"; }

ovn_db_ready() { # DB (nb|sb): its server answers on its socket
  [ -S "$OVN_DIR/$1.sock" ] && ovn_env ovsdb-client --timeout=2 list-dbs "unix:$OVN_DIR/$1.sock" >/dev/null 2>&1
}

# The NB and SB databases (created once, converted after an upgrade of
# Debian's ovn-common), ovn-northd between them, then ovn-controller as
# chassis $NET_HOST on this control plane's Open vSwitch (start_ovs first).
start_ovn() {
  mkdir -p "$OVN_DIR"
  local db schema name
  for db in nb sb; do
    schema=/usr/share/ovn/ovn-$db.ovsschema name=ovn-$db
    if [ ! -s "$OVN_DIR/ovn$db.db" ]; then
      ovsdb-tool create "$OVN_DIR/ovn$db.db" "$schema"
      log "created OVN database $OVN_DIR/ovn$db.db"
    elif ! daemon_alive "$STATE" "$name" &&
         [ "$(ovsdb-tool needs-conversion "$OVN_DIR/ovn$db.db" "$schema")" = yes ]; then
      ovsdb-tool convert "$OVN_DIR/ovn$db.db" "$schema"
    fi
    if daemon_alive "$STATE" "$name"; then
      log "$name already running"
    else
      daemon_start "$STATE" "$name" env "OVN_RUNDIR=$OVN_DIR" ovsdb-server "$OVN_DIR/ovn$db.db" \
        --remote="punix:$OVN_DIR/$db.sock" --pidfile="$OVN_DIR/$name.pid" \
        --unixctl="$OVN_DIR/$name.ctl" --log-file="$STATE/log/$name.log" --no-chdir
    fi
  done
  daemon_wait "$STATE" ovn-nb 30 "OVN northbound DB unix:$OVN_DIR/nb.sock" ovn_db_ready nb
  daemon_wait "$STATE" ovn-sb 30 "OVN southbound DB unix:$OVN_DIR/sb.sock" ovn_db_ready sb
  if daemon_alive "$STATE" ovn-northd; then
    log "ovn-northd already running"
  else
    daemon_start "$STATE" ovn-northd env "OVN_RUNDIR=$OVN_DIR" ovn-northd \
      --ovnnb-db="unix:$OVN_DIR/nb.sock" --ovnsb-db="unix:$OVN_DIR/sb.sock" \
      --pidfile="$OVN_DIR/ovn-northd.pid" --unixctl="$OVN_DIR/ovn-northd.ctl" \
      --log-file="$STATE/log/ovn-northd.log" --no-chdir
  fi
  # What makes this Open vSwitch an OVN chassis named $NET_HOST (Neutron
  # binds ports to the chassis' hostname), on the netdev datapath as newest's.
  ovs_vsctl --timeout=5 set Open_vSwitch . \
    "external_ids:system-id=$NET_HOST" "external_ids:hostname=$NET_HOST" \
    "external_ids:ovn-remote=unix:$OVN_DIR/sb.sock" \
    external_ids:ovn-encap-type=geneve external_ids:ovn-encap-ip=127.0.0.1 \
    "external_ids:ovn-bridge=$OVS_INT_BR" external_ids:ovn-bridge-datapath-type=netdev \
    "external_ids:ovn-bridge-mappings=private:$OVS_PHYS_BR"
  if daemon_alive "$STATE" ovn-controller; then
    log "ovn-controller already running"
  else
    daemon_start "$STATE" ovn-controller env "OVN_RUNDIR=$OVN_DIR" "OVS_RUNDIR=$OVS_DIR" ovn-controller "$OVS_DB" \
      --pidfile="$OVN_DIR/ovn-controller.pid" \
      --log-file="$STATE/log/ovn-controller.log" --no-chdir
  fi
  start_ovn_chassis2
}

# A second chassis $NET_HOST2 on the same ovs-vswitchd, so that instances
# with ports can move between two hosts (cold migration, evacuation): a
# second ovn-controller named by -n (ovn-controller(8), "multiple
# ovn-controller instances"), whose options are the Open_vSwitch
# external_ids suffixed with -$NET_HOST2: its own integration bridge
# $OVS_INT_BR2, physnet bridge $OVS_PHYS_BR2, and encap IP (the SB Encap
# table is unique on type+ip). Its unixctl socket and PID file live in
# $OVN_DIR/chassis2, apart from the first controller's. The two physnet
# bridges are joined by a patch-port pair: the flat network "private" then
# spans both chassis (OVN sends cross-chassis traffic of a network with a
# localnet port through that port, no tunnel).
start_ovn_chassis2() {
  mkdir -p "$OVN_DIR/chassis2"
  ovs_vsctl --timeout=5 \
    -- --may-exist add-br "$OVS_PHYS_BR2" -- set Bridge "$OVS_PHYS_BR2" datapath_type=netdev \
    -- --may-exist add-port "$OVS_PHYS_BR" patch-ovn-ovn2 \
    -- set Interface patch-ovn-ovn2 type=patch options:peer=patch-ovn2-ovn \
    -- --may-exist add-port "$OVS_PHYS_BR2" patch-ovn2-ovn \
    -- set Interface patch-ovn2-ovn type=patch options:peer=patch-ovn-ovn2
  ovs_vsctl --timeout=5 set Open_vSwitch . \
    "external_ids:hostname-$NET_HOST2=$NET_HOST2" \
    "external_ids:ovn-remote-$NET_HOST2=unix:$OVN_DIR/sb.sock" \
    "external_ids:ovn-encap-type-$NET_HOST2=geneve" "external_ids:ovn-encap-ip-$NET_HOST2=127.0.0.2" \
    "external_ids:ovn-bridge-$NET_HOST2=$OVS_INT_BR2" \
    "external_ids:ovn-bridge-datapath-type-$NET_HOST2=netdev" \
    "external_ids:ovn-bridge-mappings-$NET_HOST2=private:$OVS_PHYS_BR2"
  if daemon_alive "$STATE" ovn-controller2; then
    log "ovn-controller2 already running"
  else
    daemon_start "$STATE" ovn-controller2 env "OVN_RUNDIR=$OVN_DIR/chassis2" "OVS_RUNDIR=$OVS_DIR" \
      ovn-controller -n "$NET_HOST2" "$OVS_DB" \
      --pidfile="$OVN_DIR/chassis2/ovn-controller.pid" \
      --log-file="$STATE/log/ovn-controller2.log" --no-chdir
  fi
}

ovn_chassis_ready() { # CHASSIS BRIDGE: the chassis is in the SB DB and its integration bridge exists
  ovn_sbctl --bare --columns=hostname find Chassis "name=$1" | grep -qx "$1" &&
    ovs_vsctl --timeout=5 br-exists "$2"
}

# Neutron's OVN driver names the integration bridge in a binding's
# vif_details (bridge_name) from the chassis' Chassis_Private
# external_ids:neutron:ovn-bridge, which the OVN metadata agent writes for
# its own chassis; without it Neutron says "br-int". The metadata agent runs
# for $NET_HOST only: write the second chassis' bridge as the agent would.
ovn_chassis2_ready() {
  ovn_chassis_ready "$NET_HOST2" "$OVS_INT_BR2" &&
    ovn_sbctl set Chassis_Private "$NET_HOST2" "external_ids:\"neutron:ovn-bridge\"=$OVS_INT_BR2"
}

# neutron-ovn-metadata-agent: a haproxy on 169.254.169.254 in an
# ovnmeta-<network> namespace per network with a metadata port on this
# chassis, signing requests for nova's metadata API.
write_ovn_metadata_conf() {
  local md=$STATE/etc/neutron/ovn-metadata-agent.conf
  cat > "$md.new" <<EOF
# neutron-ovn-metadata-agent config, written by tests/env/controlplane.sh ovn up
[DEFAULT]
state_path = $STATE/state-neutron
nova_metadata_host = 127.0.0.1
nova_metadata_port = $P_METADATA
metadata_proxy_shared_secret = $METADATA_SECRET
metadata_workers = 1

[agent]
root_helper = env

[ovs]
ovsdb_connection = $OVS_DB

[ovn]
ovn_sb_connection = unix:$OVN_DIR/sb.sock

[oslo_concurrency]
lock_path = $STATE/lock
EOF
  if daemon_alive "$STATE" neutron-ovn-metadata-agent && ! cmp -s "$md.new" "$md"; then
    log "neutron-ovn-metadata-agent config changed: restarting it"
    daemons_stop "$STATE" 10 neutron-ovn-metadata-agent
  fi
  mv "$md.new" "$md"
}

start_ovn_metadata_agent() {
  if daemon_alive "$STATE" neutron-ovn-metadata-agent; then
    log "neutron-ovn-metadata-agent already running"; return 0
  fi
  # PATH: the venv's privsep-helper, then ip and haproxy
  daemon_start "$STATE" neutron-ovn-metadata-agent env "PATH=$VN/bin:$PATH" "OVS_RUNDIR=$OVS_DIR" \
    "$VN/bin/neutron-ovn-metadata-agent" --config-file "$STATE/etc/neutron/ovn-metadata-agent.conf" \
    --log-file "$STATE/log/neutron-ovn-metadata-agent.log"
}

# The network's metadata port (Neutron creates it with the subnet): the
# agent builds the ovnmeta-<network> namespace and its haproxy behind it
# when the first port of the network is bound to this chassis, not before.
ovn_metadata_port() { # network $1 has its metadata port
  curl -sf --max-time 10 -H "X-Auth-Token: $TOKEN" \
    "$URL_NEUTRON/v2.0/ports?network_id=$1&device_owner=network%3Adistributed" |
    /usr/bin/python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["ports"] else 1)'
}

# Ports on the integration bridge whose device is gone (a veth deleted under
# OVS: the metadata agent's, after its namespace went): the userspace
# datapath never reads a port again once its device went, even when the
# agent creates a veth of the same name, so the network's metadata would
# stay unreachable. Only system ports that carry an iface-id (ovn-controller
# recreates its own patch and tunnel ports); run at `up`, before the agent
# starts, and at `down`.
ovn_prune_stale_ports() {
  ovs_vswitchd_answers || return 0
  local port
  for port in $(ovs_vsctl --timeout=5 list-ports "$OVS_INT_BR" 2>/dev/null); do
    [ -n "$(ovs_vsctl --timeout=5 get Interface "$port" external_ids:iface-id 2>/dev/null)" ] || continue
    [ "$(ovs_vsctl --timeout=5 get Interface "$port" type 2>/dev/null)" = '""' ] || continue
    if ! ip link show "$port" >/dev/null 2>&1; then
      ovs_vsctl --timeout=5 --if-exists del-port "$OVS_INT_BR" "$port" || true
      log "removed OVS port $port of $OVS_INT_BR (its device is gone)"
    fi
  done
}

# What the metadata agent leaves behind: the ovnmeta- namespaces of this
# control plane's networks (those it wrote a proxy config for; their
# haproxy is killed by stop_metadata_leftovers), then the OVS ports of
# their veths.
stop_ovn_leftovers() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^ovnmeta-/ {print $1}'); do
    if [ -e "$STATE/state-neutron/ovn-metadata-proxy/${ns#ovnmeta-}.conf" ]; then
      ip netns delete "$ns" 2>/dev/null || true
    fi
  done
  ovn_prune_stale_ports
}
