#!/bin/bash
# smoke-fake.sh RELEASE -- prove a control plane works end to end, using its
# Python fake compute (start it with: FAKE_COMPUTE=HOST controlplane.sh RELEASE up).
#
# Boots a server with --nic none (API microversion 2.37) on the fake compute
# host (forced with --availability-zone nova:HOST), waits for ACTIVE, then
# reboot -> ACTIVE, stop -> SHUTOFF, start -> ACTIVE, delete -> gone.
# Actions go through the release's `openstack` CLI (as test code would use it
# via env.sh); state is polled with pylib/nd_rest.py (cheap REST GETs).
# A small image "nd-smoke" (container_format=docker) is uploaded once.
#
# Environment: FAKE_COMPUTE=HOST overrides the host recorded in env.sh;
#              SMOKE_TIMEOUT (default 120) per state change.
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
HOST=${FAKE_COMPUTE:-$ND_FAKE_COMPUTE}
[ -n "$HOST" ] || die "no fake compute: FAKE_COMPUTE=HOST $HERE/controlplane.sh $RELEASE up"
TMO=${SMOKE_TIMEOUT:-120}
REST=(/usr/bin/python3 "$HERE/pylib/nd_rest.py")
O=("$ND_OPENSTACK" --os-compute-api-version 2.37)

wait_status() { "${REST[@]}" server-wait "$ND_NOVA_API" "$1" "$2" "$TMO"; log "$1 -> $2"; }

log "smoke test of '$RELEASE' on fake compute $HOST"
IMG=$("${REST[@]}" image-ensure "$ND_GLANCE" nd-smoke)
log "image nd-smoke = $IMG"

NAME=nd-smoke-$$
ID=$("${O[@]}" server create --flavor m1.tiny --image "$IMG" --nic none \
       --availability-zone "nova:$HOST" "$NAME" -f value -c id)
log "created $NAME = $ID"
cleanup() {
  if [ -n "${ID:-}" ]; then
    log "FAILED: deleting $ID"
    "${O[@]}" server delete "$ID" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

wait_status "$ID" ACTIVE
got=$("${REST[@]}" server-field "$ND_NOVA_API" "$ID" OS-EXT-SRV-ATTR:host)
[ "$got" = "$HOST" ] || die "server landed on '$got', expected '$HOST'"

"${O[@]}" server reboot "$ID"
wait_status "$ID" ACTIVE
"${O[@]}" server stop "$ID"
wait_status "$ID" SHUTOFF
"${O[@]}" server start "$ID"
wait_status "$ID" ACTIVE
# the fake driver is instant: make sure each action really ran, without error
acts=$("${REST[@]}" server-actions "$ND_NOVA_API" "$ID")
[ "$acts" = create,reboot,stop,start ] || die "instance actions are '$acts'"
log "instance actions: $acts"
"${O[@]}" server delete "$ID"
wait_status "$ID" GONE
ID=
log "smoke test of '$RELEASE' PASSED"
