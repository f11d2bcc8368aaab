#!/bin/bash
# net-check.sh RELEASE -- prove that a control plane binds Neutron ports for
# real: L2 agent, port status, and Neutron -> Nova notifications. Plugs a port
# by hand the way nova-docker does (no nova-docker, no nova-compute needed):
#
#   1. POST a port on ND_NETWORK_ID with binding:host_id=ND_NET_HOST,
#      device_owner=compute:nova, device_id=<random uuid>; its
#      binding:vif_type must be ND_NET_VIF_TYPE (vif_details are printed)
#   2. host side: veth tap<port-id[:11]> whose peer (MAC = the port's MAC)
#      goes into a scratch network namespace, as a container's eth0 would;
#      bridge: tap enslaved to ND_NET_BRIDGE (brq<net-id[:11]>, created here
#      first if missing, as os-vif does); ovs: tap added to br-int with
#      external-ids iface-id, iface-status=active, attached-mac, vm-uuid
#   3. the port must go ACTIVE, and neutron must send network-vif-plugged to
#      nova-api's os-server-external-events: neutron logs nova's answer per
#      event (here code 404 inside HTTP 207: the instance does not exist),
#      nova-api logs the POST
#   4. unplug (delete the veth, ovs: del-port) -> port DOWN and
#      network-vif-unplugged; delete the port -> network-vif-deleted
#
# Environment: NET_CHECK_TIMEOUT (default 60) per wait.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

[ $# -eq 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }
RELEASE=$1
STATE=${ND_ENV_STATE:-/var/lib/nova-docker-test}/$RELEASE
[ -e "$STATE/env.sh" ] || die "no $STATE/env.sh: run controlplane.sh $RELEASE up first"
# shellcheck disable=SC1091
. "$STATE/env.sh"
[ -n "${ND_NET_HOST:-}" ] || die "env.sh has no ND_NET_HOST: re-run controlplane.sh $RELEASE up"
TMO=${NET_CHECK_TIMEOUT:-60}
REST=(/usr/bin/python3 "$HERE/pylib/nd_rest.py")
NOVA_LOG=$STATE/log/nova-api.log

DEVICE_ID=$(/usr/bin/python3 -c 'import uuid; print(uuid.uuid4())')
PORT="" DEV="" NS="" OVS_PORT=""
cleanup() {
  set +e
  [ -n "$OVS_PORT" ] && ovs-vsctl --db="$ND_OVS_DB" --timeout=10 -- --if-exists del-port br-int "$OVS_PORT"
  [ -n "$DEV" ] && ip link del "$DEV" 2>/dev/null
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null
  [ -n "$PORT" ] && "${REST[@]}" port-delete "$ND_NEUTRON" "$PORT"
}
trap cleanup EXIT

nova_events_since() { # OFFSET: nova-api logged an external-events POST after OFFSET
  tail -c "+$(( $1 + 1 ))" "$NOVA_LOG" | grep 'POST /v2.1/os-server-external-events' >/dev/null
}
log_size() { stat -c %s "$NOVA_LOG" 2>/dev/null || echo 0; }
event_sent() { # EVENT: neutron logged nova's answer to EVENT for our port
  # (the notifier runs in whichever neutron process changed the port)
  cat "$STATE"/log/neutron-*.log | grep -F "'tag': '$PORT'" | grep -F "'name': '$1'" >/dev/null
}

log "net check of '$RELEASE': host $ND_NET_HOST, expected vif_type $ND_NET_VIF_TYPE"
PORT=$("${REST[@]}" port-create "$ND_NEUTRON" "$ND_NETWORK_ID" "$ND_NET_HOST" "$DEVICE_ID")
info=$("${REST[@]}" port-show "$ND_NEUTRON" "$PORT")
read -r vif_type mac status < <(/usr/bin/python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p["binding:vif_type"], p["mac_address"], p["status"])' <<<"$info")
log "port $PORT: vif_type=$vif_type mac=$mac status=$status"
/usr/bin/python3 -c '
import json, sys
p = json.load(sys.stdin)
print("  binding:vif_details =", json.dumps(p["binding:vif_details"], sort_keys=True))
print("  fixed_ips =", [i["ip_address"] for i in p["fixed_ips"]])' <<<"$info" >&2
[ "$vif_type" = "$ND_NET_VIF_TYPE" ] || die "binding:vif_type is '$vif_type', expected '$ND_NET_VIF_TYPE'"

DEV=tap${PORT:0:11}
NS=ndchk-${PORT:0:8}
off=$(log_size)
ip netns add "$NS"
ip link add "$DEV" type veth peer name "ndp${PORT:0:11}"
ip link set "ndp${PORT:0:11}" netns "$NS"
ip -n "$NS" link set "ndp${PORT:0:11}" address "$mac" name eth0
ip -n "$NS" link set eth0 up
case $ND_NET_VIF_TYPE in
  bridge)
    if ! ip link show "$ND_NET_BRIDGE" >/dev/null 2>&1; then
      ip link add "$ND_NET_BRIDGE" type bridge
      log "created bridge $ND_NET_BRIDGE (the agent adds the uplink)"
    fi
    ip link set "$ND_NET_BRIDGE" up
    ip link set "$DEV" master "$ND_NET_BRIDGE" ;;
  ovs)
    OVS_PORT=$DEV
    ovs-vsctl --db="$ND_OVS_DB" --timeout=10 -- --may-exist add-port br-int "$DEV" \
      -- set Interface "$DEV" "external-ids:iface-id=$PORT" external-ids:iface-status=active \
         "external-ids:attached-mac=$mac" "external-ids:vm-uuid=$DEVICE_ID" ;;
  *) die "unknown ND_NET_VIF_TYPE '$ND_NET_VIF_TYPE'" ;;
esac
ip link set "$DEV" up
log "host side: $DEV ($(ip -o link show "$DEV" | grep -o 'master [^ ]*' || echo "OVS br-int"))"

"${REST[@]}" port-wait "$ND_NEUTRON" "$PORT" ACTIVE "$TMO"
log "port ACTIVE"
wait_until "$TMO" "neutron sent network-vif-plugged" event_sent network-vif-plugged
wait_until "$TMO" "nova-api logged POST /os-server-external-events" nova_events_since "$off"
cat "$STATE"/log/neutron-*.log | grep -F "'tag': '$PORT'" | grep -F network-vif-plugged | tail -n 1 >&2
tail -c "+$(( off + 1 ))" "$NOVA_LOG" | grep 'os-server-external-events' | tail -n 1 >&2

if [ -n "$OVS_PORT" ]; then
  ovs-vsctl --db="$ND_OVS_DB" --timeout=10 -- --if-exists del-port br-int "$OVS_PORT"; OVS_PORT=""
fi
ip link del "$DEV"; DEV=""
"${REST[@]}" port-wait "$ND_NEUTRON" "$PORT" DOWN "$TMO"
wait_until "$TMO" "neutron sent network-vif-unplugged" event_sent network-vif-unplugged

"${REST[@]}" port-delete "$ND_NEUTRON" "$PORT"
wait_until "$TMO" "neutron sent network-vif-deleted" event_sent network-vif-deleted
PORT=""
ip netns del "$NS"; NS=""
log "net check of '$RELEASE' PASSED"
