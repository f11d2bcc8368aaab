#!/bin/bash
# install.sh -- install everything the tests and the all-in-one need on a fresh
# Debian bookworm machine (run as root). Idempotent: a second run only checks.
#
#   * Debian packages: RabbitMQ, OpenStack Zed (nova api/conductor/scheduler,
#     placement, glance, neutron, python3-nova as the Python RPC peer), tools.
#   * The newest Nova release (2026.2, nova 34) from PyPI in virtualenvs built
#     with Debian's /usr/bin/python3 (never the pyenv python on PATH); the
#     neutron 29 venv also provides neutron-rpc-server and
#     neutron-openvswitch-agent (and its privsep-helper); the newest Keystone
#     from PyPI in a virtualenv of its own.
#
# Environment:
#   NOVA_DOCKER_OPT   where the virtualenvs live (default /opt/nova-docker-test)
#   ND_POLICY_RC_D    the policy-rc.d this script puts in place while it
#                     installs (default /usr/sbin/policy-rc.d; tests)
#   SKIP_NEWEST=1     do not build the nova 34 virtualenvs
#   SKIP_ZED=1        do not install the Zed service packages
set -euo pipefail
OPT=${NOVA_DOCKER_OPT:-/opt/nova-docker-test}
export DEBIAN_FRONTEND=noninteractive
log() { printf '[install %(%H:%M:%S)T] %s\n' -1 "$*"; }

# Package postinsts must not start services with Debian's stock configs on our
# ports: the harness starts every service itself with its own configuration.
# A policy-rc.d forbids that while we install, and only then: one we created
# is removed when this script exits, however it exits (left behind, it
# would stop every service the machine installs later from starting). One
# that was there before (e.g. a Docker base image's) stays.
POLICY_RC_D=${ND_POLICY_RC_D:-/usr/sbin/policy-rc.d}
if [ ! -e "$POLICY_RC_D" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$POLICY_RC_D"
  chmod 755 "$POLICY_RC_D"
  trap 'rm -f "$POLICY_RC_D"' EXIT
fi

# openvswitch-switch: newest's L2 agent (neutron-openvswitch-agent) runs on our
# own ovsdb-server/ovs-vswitchd; iptables: ebtables(-nft), which zed's
# neutron-linuxbridge-agent (from neutron-common, pulled in by neutron-server)
# uses for ARP-spoofing rules; ipset, conntrack: its iptables firewall driver
# (security groups); kmod: modprobe br_netfilter; iproute2: `ip` for both
# agents and the tests. iputils-ping: its `ping` (ICMP datagram sockets as
# any user) goes into the test image nd-busybox:iputils. dnsmasq-base,
# haproxy: Neutron's DHCP agent (isolated metadata proxy). xfsprogs, btrfs-progs: the root disk tests put
# private Docker engines on loop-mounted xfs and btrfs. ovn-central, ovn-host:
# the "ovn" control plane (ovsdb NB/SB, ovn-northd, ovn-controller).
pkgs=(rabbitmq-server curl bc iproute2 iptables iputils-ping dnsmasq-base haproxy busybox-static shellcheck python3-venv openvswitch-switch
      ovn-central ovn-host
      ethtool ipset conntrack kmod python3-oslo.messaging python3-nova xfsprogs btrfs-progs
      python3-websocket)
if [ "${SKIP_ZED:-0}" != 1 ]; then
  # keystone: Zed's identity service (its python3-keystone and
  # keystone-manage; served by uwsgi, which Debian's keystone depends on)
  pkgs+=(nova-conductor nova-api nova-scheduler placement-api glance-api
         python3-glanceclient neutron-server python3-openstackclient keystone)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
log "Debian packages present"

venv() { # venv DIR PIP-ARGS...
  local dir=$1; shift
  if [ -x "$dir/bin/python" ] && [ -e "$dir/.complete" ]; then return 0; fi
  log "building virtualenv $dir"
  rm -rf "$dir"
  /usr/bin/python3 -m venv "$dir"
  "$dir/bin/pip" install -q "$@"
  touch "$dir/.complete"
}
if [ "${SKIP_NEWEST:-0}" != 1 ]; then
  mkdir -p "$OPT"
  venv "$OPT/venv" nova==34.0.0 openstack-placement==16.0.0 python-openstackclient oslo.messaging gunicorn
  venv "$OPT/venv-glance" glance==33.0.0 gunicorn
  venv "$OPT/venv-neutron" neutron==29.0.0 gunicorn
  # the newest Keystone, in its own virtualenv (its pins are not nova's)
  venv "$OPT/venv-keystone" keystone gunicorn
  log "nova 34 virtualenvs present in $OPT"
fi
log "done"
