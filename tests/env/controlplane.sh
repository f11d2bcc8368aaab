#!/bin/bash
# controlplane.sh -- a real OpenStack control plane to test nova-docker against.
#
#   controlplane.sh RELEASE up        start it (first run: write configs, create DBs)
#   controlplane.sh RELEASE down      stop it (PID files only), wait until all exited
#   controlplane.sh RELEASE status    exit 0 only if every service answers
#   controlplane.sh RELEASE discover  nova-manage cell_v2 discover_hosts
#   controlplane.sh RELEASE map HOST  HOST mapped to cell1 (discover_hosts, or
#                                     wait for the scheduler's own discovery)
#   controlplane.sh RELEASE restart   down, then up: fresh Python services
#
# RELEASE (all three can run at the same time; newest and zed share the main
# RabbitMQ node, ovn runs on the TLS cluster):
#   newest  nova 34.0.0 / placement 16 / glance 33 / neutron 29 from the PyPI
#           venvs in $NOVA_DOCKER_OPT (default /opt/nova-docker-test), as in
#           harness-newest.md (NEUTRON=real). Ports: nova-api 18774, placement
#           18778, glance 19292, neutron 19696, nova-serialproxy 16083.
#           RabbitMQ vhost nova34.
#   zed     OpenStack Zed from Debian bookworm packages (nova 26.2.2, placement 8,
#           glance 25, neutron 21), as in harness.md. Ports 8774/8778/9292/9696,
#           nova-serialproxy 6083 (python3-nova's, run with /usr/bin/python3).
#           RabbitMQ vhost novazed.
#   ovn     newest's services (the same virtualenvs) with Neutron's ML2/OVN
#           instead of the OVS agent, and on the production broker set-up:
#           the TLS RabbitMQ cluster ndc1..ndc3 of rabbitmq.sh (vhost
#           novaovn, all three nodes in transport_url, TLS with the test CA,
#           quorum queues). Ports: nova-api 28774, placement 28778, glance
#           29292, neutron 29696, keystone 25000, metadata 28775,
#           nova-serialproxy 26083. See "OVN" below.
# Both: Keystone (fernet tokens, see "Identity" below), SQLite, loopback only,
# real neutron (ML2, flat type driver) with one real L2 agent on this machine:
#
#   release  mech driver / agent                  vif_type  host side of a port
#   zed      linuxbridge / neutron-linuxbridge-    bridge    tap<port-id[:11]>, in
#            agent (Debian's python3-neutron 21)            bridge brq<net-id[:11]>
#   newest   openvswitch / neutron-openvswitch-    ovs       tap<port-id[:11]> on
#            agent (neutron 29 venv; linuxbridge            OVS bridge br-int, with
#            is gone from neutron 29)                       external-ids iface-id,
#                                                           attached-mac,
#                                                           iface-status, vm-uuid
#
# zed: for a compute:* port the agent does NOT put the tap into the bridge
# ("owned by compute and thus added elsewhere"): nova-docker must, creating
# brq<net-id[:11]> if it does not exist yet (as os-vif does); the agent adds
# the uplink to it, sets the tap up and reports the port up (ACTIVE even when
# the tap is in no bridge). newest: iface-id AND attached-mac must be set in
# the same ovs-vsctl transaction as add-port (as os-vif does): the agent
# ignores an interface without attached-mac and does not look again when it
# is added later, so the port would stay DOWN.
#
#   ovn      ovn / ovn-controller (Debian's ovn-host    ovs       as newest; ovn-controller
#            23.03, chassis nd-net-ovn)                      claims the port by its
#                                                           iface-id
#
# Neutron binds a port only to a host that has an alive agent, and the agent
# runs as host nd-net-RELEASE (ND_NET_HOST in env.sh): a compute host whose
# instances get ports must use exactly that name (binding:host_id); any other
# host gets binding:vif_type binding_failed (nova: PortBindingFailed). The
# agent sets a port ACTIVE once it sees the host-side device, and neutron then
# POSTs network-vif-plugged to nova-api's os-server-external-events (also
# network-changed, network-vif-unplugged, network-vif-deleted), as user nova.
# Neutron does not run DHCP/L3 agents.
#
# Identity (ND_AUTH=keystone, the default):
#   newest  Keystone from PyPI (its own virtualenv venv-keystone) under
#           gunicorn, port 15000
#   zed     Debian's keystone 22 (Zed) under uwsgi, port 5000
#   Fernet tokens (expiration ND_TOKEN_EXPIRATION s, default 3600), SQLite,
#   one region RegionOne. Users and projects as a deployment has them:
#     admin (project admin, role admin)           password $ND_ADMIN_PASSWORD
#     project service: nova, glance, neutron,      password $ND_SERVICE_PASSWORD
#       placement (roles admin + service)
#     project nd-tenant-a: nd-member-a (member)    password $ND_MEMBER_PASSWORD
#     project nd-tenant-b: nd-member-b (member)
#   Catalog: identity, compute, placement, image, network, each with public
#   and internal endpoints (the same loopback URL). nova-api, placement,
#   glance and neutron validate tokens with keystonemiddleware's authtoken
#   (in-process cache); nova's conductor/scheduler, neutron's notifier and
#   the compute template authenticate as service users. Nova's policy lets a
#   project member force a host (availability zone nova:HOST), so that
#   tenants' servers can land on a test's own compute host; everything else
#   is the releases' default policy.
#   ND_AUTH=noauth is the fast mode without Keystone (token "admin:admin" is
#   admin; "USER:PROJECT" a member of PROJECT), for quick local iterations;
#   CI does not use it. `up` refuses to switch a running control plane from
#   one mode to the other: use `restart`.
#
# Security groups are enforced by the agents' real firewall drivers, and the
# test network has port security on (each port gets its project's default
# group unless a server asks for others):
#   newest  firewall_driver = openvswitch (native OVS firewall: conntrack in
#           the userspace datapath; ports plugged plainly, ovs_hybrid_plug false)
#   zed     firewall_driver = iptables (physdev rules on the taps in brq...,
#           ipset for remote groups) plus the agent's ebtables anti-spoofing
#           chains. Needs br_netfilter with bridge-nf-call-{arp,ip,ip6}tables=1
#           (`up` loads/sets them), and nothing in FORWARD that accepts bridged
#           traffic before neutron's chains: `up` removes the DOCKER-USER
#           `-i brq+ -o brq+ -j ACCEPT` rule earlier versions of this script
#           added (with Docker's FORWARD policy DROP, traffic of a port neutron
#           has not wired yet is dropped, which is what we want). The agent
#           runs with $STATE/bin first in PATH: an ebtables wrapper
#           (tests/env/shims/ebtables) works around an ebtables-nft bug that
#           otherwise hangs the agent when it sets a port up a second time.
# `up` restarts a running agent whose configuration (or wrapper) changed.
#
# Physical network "private" (the flat network's physnet):
#   zed     veth pair ndzed-uplink / ndzed-uplink-p (created by `up`; this
#           kernel has no dummy driver), ndzed-uplink mapped with
#           physical_interface_mappings: the agent enslaves it to brq<net-id[:11]>.
#   newest  OVS bridge br-nd-private (bridge_mappings), patched to br-int.
# Open vSwitch (newest only): our own ovsdb-server + ovs-vswitchd (Debian's
# openvswitch-switch, no systemd), userspace datapath (datapath_type=netdev: the
# kernel has no openvswitch module), run dir $STATE/ovs. Reach that OVSDB with
#   OVS_RUNDIR=$STATE/ovs ovs-vsctl ...      (ovs-ofctl/ovs-appctl too), or
#   ovs-vsctl --db=unix:$STATE/ovs/db.sock ...   (= ND_OVS_DB in env.sh).
# Nothing else uses the default /var/run/openvswitch.
#
# OVN (ovn only), as DevStack's default Neutron backend: the northbound and
# southbound ovsdb-servers (unix sockets in $STATE/ovn), ovn-northd, and
# ovn-controller as chassis nd-net-ovn (system-id and hostname; geneve encap
# on 127.0.0.1) on newest's Open vSwitch, with bridges of its own:
# integration bridge br-ovn, physnet bridge br-ovn-private
# (ovn-bridge-mappings), netdev datapath. One machine cannot run two
# userspace datapaths (each opens a tap named ovs-netdev, and one per
# bridge), so `ovn up` needs `newest up` first, and `newest down` takes the
# datapath from under OVN until newest is up again (ovn-controller
# reconnects by itself). Neutron's OVN mechanism driver serves DHCP natively (no DHCP
# agent), security groups become OVN ACLs, and neutron-ovn-metadata-agent
# runs a haproxy on 169.254.169.254 in an ovnmeta-<network> namespace behind
# the network's metadata port (device_owner network:distributed). Reach the
# OVN databases with ovn-nbctl/ovn-sbctl --db=unix:$STATE/ovn/nb.sock (sb.sock).
# A second chassis nd-net-ovn2 (a second ovn-controller on the same
# ovs-vswitchd, started with -n, options in external_ids:OPTION-nd-net-ovn2;
# encap 127.0.0.2, integration bridge br-ovn2, physnet bridge br-ovn2-private
# patched to br-ovn-private) gives ports a second host to move to; a compute
# host named nd-net-ovn2 uses [neutron] ovs_bridge = br-ovn2. The metadata
# agent serves the first chassis only.
#
# State: $ND_ENV_STATE/RELEASE (default /var/lib/nova-docker-test/RELEASE):
#   env.sh   source it; exports ND_RELEASE, ND_STATE, OS_CLOUD,
#            OS_CLIENT_CONFIG_FILE, ND_VHOST, ND_TRANSPORT_URL, ND_NOVA_API
#            (.../v2.1), ND_SERIAL_PROXY (nova-serialproxy's ws:// URL), ND_PLACEMENT, ND_GLANCE, ND_NEUTRON (URLs), ND_AUTH
#            (keystone|noauth), ND_KEYSTONE (.../v3; empty with noauth),
#            ND_ADMIN_USER/_PASSWORD/_PROJECT, ND_SERVICE_PASSWORD,
#            ND_MEMBER_PASSWORD, ND_TENANT_A/_B and ND_MEMBER_A/_B (names),
#            ND_PROJECT_IDS (JSON: admin, nd-tenant-a, nd-tenant-b), ND_REGION,
#            ND_KEYSTONE_CONF, ND_KEYSTONE_GUNICORN (newest: to serve another
#            Keystone on the same DB and keys, e.g. with a short token
#            lifetime), ND_PYLIB (tests/env/pylib),
#            ND_TOKEN (noauth only: get a token with
#            `python3 tests/env/pylib/nd_keystone.py token`),
#            ND_OPENSTACK (CLI to use), ND_NOVA_MANAGE (command line),
#            ND_PYTHON (python with this release's nova + oslo.messaging),
#            ND_COMPUTE_CONF_TEMPLATE, ND_NETWORK(_ID), ND_FAKE_COMPUTE,
#            ND_NET_HOST (compute host name that gets port bindings),
#            ND_NET_VIF_TYPE (bridge|ovs), ND_NET_AGENT (agent binary),
#            ND_NET_BRIDGE (brq<net-id[:11]> | br-int | br-ovn), ND_NET_HOST2
#            and ND_NET_BRIDGE2 (ovn: the second chassis nd-net-ovn2 and its
#            integration bridge br-ovn2; empty otherwise), ND_OVS_DB and
#            ND_OVS_RUNDIR (newest; empty for zed), OVS_RUNDIR (newest only)
#   etc/nova-compute.conf.template nova.conf for a compute host of this
#            release (no compute_driver); replace @HOST@ and @STATE_PATH@
#   etc/, db/, log/, pids/, osc/clouds.yaml (clouds nd-RELEASE = admin,
#            nd-RELEASE-tenant-a, nd-RELEASE-tenant-b), compute/<fake host>/,
#            ovs/, keystone/ (fernet and credential keys)
# Delete the directory (after `down`) to start from scratch.
#
# Environment:
#   FAKE_COMPUTE=HOST  also run this release's Python nova-compute with the
#                      in-tree fake driver as host HOST (side-by-side runs,
#                      smoke-fake.sh), and map it to cell1. Its servers get
#                      ports only if HOST is ND_NET_HOST (they stay DOWN: the
#                      fake driver plugs nothing); but never run it as
#                      ND_NET_HOST while nova-docker may run as that host too:
#                      both would consume compute.ND_NET_HOST.
#   ND_ENV_STATE, NOVA_DOCKER_OPT   see above
#   ND_TIMEOUT         seconds to wait for each service (default 180)
#   ND_AUTH            keystone (default) | noauth (see Identity above)
#   ND_TOKEN_EXPIRATION  Keystone's token lifetime in seconds (default 3600)
#
# What `up` does, and why:
#   * RabbitMQ main node + vhost via rabbitmq.sh (firehose trace_on per vhost).
#   * L2: zed creates the uplink veth pair; newest starts ovsdb-server and
#     ovs-vswitchd (own process groups, PID files) and creates br-nd-private.
#     newest runs neutron-rpc-server next to the gunicorn API (neutron 29's
#     WSGI API starts no RPC consumers); zed's neutron-server forks its RPC
#     worker itself. The agent starts with the other services if neutron's RPC
#     queues q-plugin/q-reports-plugin already exist on the vhost (they outlive
#     the server; the agent's first calls wait in them), else only once the RPC
#     server consumes them (a call published before the queue exists is lost,
#     and the agent would show up only after a 60 s RPC timeout). `up` returns
#     when neutron lists the agent alive, started after this `up` began.
#     newest's OVS runs with other_config:userspace-tso-enable=true (else TCP
#     from veths through the userspace datapath has bad checksums).
#   * The metadata path, as a VM's: Neutron's DHCP agent on the agent host
#     (isolated metadata: dnsmasq and a haproxy on 169.254.169.254 in the
#     network's qdhcp- namespace; needs dnsmasq-base and haproxy), Neutron's
#     metadata agent, and nova's metadata API (zed: a second nova-api with
#     enabled_apis = metadata on :8775; newest: nova.wsgi.metadata on :18775),
#     sharing a secret. `up` waits until the DHCP agent serves network
#     "private" (it adds the network to the agent when needed) and its
#     metadata proxy runs.
#   * `down` stops computes, the agents (SIGKILL after 10 s: neutron 29's OVS
#     agent hangs after SIGTERM), the DHCP agent's dnsmasq/haproxy and qdhcp-
#     namespaces, the servers, then OVS (`exit --cleanup`, and
#     leftover datapath tap devices are deleted). The zed uplink veth pair and
#     brq... bridges stay (harmless; tests' tap devices may still be in them).
#   * Configs are rewritten on every `up` (cheap, keeps them in sync with this
#     script); DBs are created only if db/.initialised is missing.
#   * SQLite under parallel load (harness.md, last section): WAL, synchronous
#     off, a 30 s busy timeout, BEGIN IMMEDIATE for writer transactions (oslo.db
#     readers stay deferred, see the docstring there), via pylib/sitecustomize.py
#     on every OpenStack process's PYTHONPATH; [quota] instances/cores/ram = -1.
#     In eventlet services (zed) the wait for the write lock yields to the
#     other greenthreads (SQLite's own wait froze neutron-server for 30 s).
#     Checked with pylib/nd_parallel_boot.py: 50 parallel boots + deletes on
#     the fake compute, no errors, for both releases.
#   * [scheduler] discover_hosts_in_cells_interval = 2: new compute hosts are
#     mapped to cell1 within seconds, without running discover_hosts.
#   * Services start in their own process groups; `down` stops the groups.
#   * Seed (pylib/nd_rest.py, REST, idempotent): flavors m1.tiny (id 1),
#     m1.small (id 2), m1.nano (id 42); shared flat network "private"
#     (physnet "private") with subnets 10.99.0.0/24 (DNS server 10.99.0.53,
#     DHCP: its DHCP port serves the metadata) and fd00:99::/64 (no DHCP).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=ovn.sh
. "$HERE/ovn.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }
[ $# -eq 2 ] || { [ $# -eq 3 ] && [ "$2" = map ]; } || usage
RELEASE=$1 ACTION=$2 MAP_HOST=${3:-}

STATE_ROOT=${ND_ENV_STATE:-/var/lib/nova-docker-test}
case $STATE_ROOT in /*) ;; *) die "ND_ENV_STATE must be an absolute path";; esac
STATE=$STATE_ROOT/$RELEASE
OPT=${NOVA_DOCKER_OPT:-/opt/nova-docker-test}
PYLIB=$HERE/pylib
TIMEOUT=${ND_TIMEOUT:-180}
FAKE_COMPUTE=${FAKE_COMPUTE:-}
AUTH=${ND_AUTH:-keystone}
case $AUTH in keystone|noauth) ;; *) die "ND_AUTH must be keystone or noauth" ;; esac
TOKEN_EXPIRATION=${ND_TOKEN_EXPIRATION:-3600}
# noauth: a static token; keystone: issued once Keystone answers (keystone_seed)
TOKEN=admin:admin
# Loopback-only test cloud: fixed passwords (env.sh has them for the tests).
ADMIN_PASSWORD=nd-admin-secret SERVICE_PASSWORD=nd-service-secret MEMBER_PASSWORD=nd-member-secret
REGION=RegionOne
PROJECT_IDS='{"admin": "admin"}'
ks() { [ "$AUTH" = keystone ]; }

case $RELEASE in
  newest)
    VHOST=nova34 P_NOVA=18774 P_PLACEMENT=18778 P_GLANCE=19292 P_NEUTRON=19696 P_KEYSTONE=15000 P_SERIAL=16083
    P_METADATA=18775 DHCP_INTERFACE_DRIVER=openvswitch
    V=$OPT/venv VG=$OPT/venv-glance VN=$OPT/venv-neutron VK=$OPT/venv-keystone
    KEYSTONE_MANAGE=$VK/bin/keystone-manage
    PY=$V/bin/python OSC=$V/bin/openstack
    NOVA_MANAGE=$V/bin/nova-manage
    FAKE_DRIVER=fake.FakeDriverWithoutFakeNodes  # keeps its node UUID across restarts
    NET_AGENT=neutron-openvswitch-agent NET_VIF_TYPE=ovs MECH_DRIVER=openvswitch
    FIREWALL_DRIVER=openvswitch
    for f in "$V/bin/nova-conductor" "$VG/bin/glance-manage" "$VN/bin/neutron-db-manage" \
             "$VN/bin/neutron-rpc-server" "$VN/bin/$NET_AGENT" /usr/sbin/ovs-vswitchd \
             "$VK/bin/keystone-manage"; do
      [ -x "$f" ] || die "$f missing: run tests/env/install.sh"
    done ;;
  zed)
    VHOST=novazed P_NOVA=8774 P_PLACEMENT=8778 P_GLANCE=9292 P_NEUTRON=9696 P_KEYSTONE=5000 P_SERIAL=6083
    P_METADATA=8775 DHCP_INTERFACE_DRIVER=linuxbridge
    KEYSTONE_MANAGE=/usr/bin/keystone-manage
    PY=/usr/bin/python3 OSC=/usr/bin/openstack
    NOVA_MANAGE=/usr/bin/nova-manage
    FAKE_DRIVER=fake.FakeDriver
    NET_AGENT=neutron-linuxbridge-agent NET_VIF_TYPE=bridge MECH_DRIVER=linuxbridge
    FIREWALL_DRIVER=iptables
    for f in /usr/bin/nova-api /usr/bin/placement-api /usr/bin/glance-api /usr/bin/neutron-server \
             "/usr/bin/$NET_AGENT" /usr/bin/keystone-wsgi-public /usr/bin/uwsgi; do
      [ -x "$f" ] || die "$f missing: run tests/env/install.sh"
    done ;;
  ovn)
    VHOST=novaovn P_NOVA=28774 P_PLACEMENT=28778 P_GLANCE=29292 P_NEUTRON=29696 P_KEYSTONE=25000 P_SERIAL=26083
    P_METADATA=28775 DHCP_INTERFACE_DRIVER=""
    V=$OPT/venv VG=$OPT/venv-glance VN=$OPT/venv-neutron VK=$OPT/venv-keystone
    KEYSTONE_MANAGE=$VK/bin/keystone-manage
    PY=$V/bin/python OSC=$V/bin/openstack
    NOVA_MANAGE=$V/bin/nova-manage
    FAKE_DRIVER=fake.FakeDriverWithoutFakeNodes
    NET_AGENT=ovn-controller NET_VIF_TYPE=ovs MECH_DRIVER=ovn
    FIREWALL_DRIVER=""
    for f in "$V/bin/nova-conductor" "$VG/bin/glance-manage" "$VN/bin/neutron-db-manage" \
             "$VN/bin/neutron-ovn-metadata-agent" /usr/sbin/ovs-vswitchd /usr/bin/ovn-controller \
             /usr/bin/ovn-northd "$VK/bin/keystone-manage"; do
      [ -x "$f" ] || die "$f missing: run tests/env/install.sh"
    done ;;
  *) usage ;;
esac
# The Python services' flavour: ovn runs newest's
PYREL=$RELEASE
[ "$RELEASE" != ovn ] || PYREL=newest

RABBIT=rabbit://guest:guest@127.0.0.1:5672/$VHOST
RMQCTL=(rabbitmqctl)
TLS_CA=$STATE_ROOT/rabbitmq/tls/ca.pem
if [ "$RELEASE" = ovn ]; then
  # the TLS listeners of the three cluster nodes (rabbitmq.sh: 5685..5687)
  RABBIT=rabbit://guest:guest@127.0.0.1:5685,guest:guest@127.0.0.1:5686,guest:guest@127.0.0.1:5687/$VHOST
  RMQCTL=(rabbitmqctl -n ndc1@localhost)
fi
# [oslo_messaging_rabbit] of every service (and compute host) of this
# control plane: TLS with the test CA and quorum queues on the cluster
rabbit_section() {
  [ "$RELEASE" = ovn ] || return 0
  printf '\n[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = %s\nrabbit_quorum_queue = true\n' "$TLS_CA"
}
URL_NOVA=http://127.0.0.1:$P_NOVA/v2.1
URL_PLACEMENT=http://127.0.0.1:$P_PLACEMENT
URL_GLANCE=http://127.0.0.1:$P_GLANCE
URL_NEUTRON=http://127.0.0.1:$P_NEUTRON
URL_KEYSTONE=http://127.0.0.1:$P_KEYSTONE/v3
URL_METADATA=http://127.0.0.1:$P_METADATA
# shared by nova's metadata API and neutron's metadata agent (loopback only)
METADATA_SECRET=nd-metadata-secret
URL_SERIAL=ws://127.0.0.1:$P_SERIAL/
NOVA_CONF=$STATE/etc/nova/nova.conf
KEYSTONE_CONF=$STATE/etc/keystone/keystone.conf
# what nd_keystone.py (seed, token) and nd_rest.py read
export ND_KEYSTONE=$URL_KEYSTONE ND_ADMIN_USER=admin ND_ADMIN_PASSWORD=$ADMIN_PASSWORD ND_ADMIN_PROJECT=admin
export ND_SERVICE_PASSWORD=$SERVICE_PASSWORD ND_MEMBER_PASSWORD=$MEMBER_PASSWORD ND_REGION=$REGION
export ND_ENDPOINTS="compute=$URL_NOVA,placement=$URL_PLACEMENT,image=$URL_GLANCE,network=$URL_NEUTRON"
ks || ND_KEYSTONE=""
# every OpenStack process we run gets the SQLite tuning and the paste filters
export PYTHONPATH=$PYLIB
NOVA_MANAGE_CMD=(env "PYTHONPATH=$PYLIB" "$NOVA_MANAGE" --config-file "$NOVA_CONF")

SERVICES=(placement-api glance-api neutron-api nova-conductor nova-scheduler nova-api nova-serialproxy)
# newest: neutron 29's WSGI API has no RPC consumers; neutron-rpc-server does that
[ "$RELEASE" != newest ] ||
  SERVICES=(placement-api glance-api neutron-api neutron-rpc nova-conductor nova-scheduler nova-api nova-serialproxy)
# ovn: no RPC agents; the OVN maintenance worker (neutron 29 runs the
# driver's periodic DB checks there, not in the WSGI API) instead
[ "$RELEASE" != ovn ] ||
  SERVICES=(placement-api glance-api neutron-api neutron-ovn-maintenance nova-conductor nova-scheduler nova-api nova-serialproxy)
if ks; then SERVICES=(keystone "${SERVICES[@]}"); fi

# L2 networking (see the header): the agent's host name, the physnet plumbing
NET_HOST=nd-net-$RELEASE
LB_UPLINK=ndzed-uplink            # zed: uplink (veth) of physnet "private"
OVS_DIR=$STATE/ovs                # newest: OVS run dir (db.sock, conf.db, *.ctl)
OVS_PHYS_BR=br-nd-private         # newest: OVS bridge for physnet "private"
OVS_INT_BR=br-int                 # the integration bridge
OVS_SERVICES=()
[ "$RELEASE" != newest ] || OVS_SERVICES=(ovsdb-server ovs-vswitchd)
OVN_DIR=$STATE/ovn                # ovn: NB/SB sockets, databases, *.ctl
if [ "$RELEASE" = ovn ]; then
  # newest's Open vSwitch, with bridges of its own (see "OVN" above)
  OVS_DIR=$STATE_ROOT/newest/ovs OVS_PHYS_BR=br-ovn-private OVS_INT_BR=br-ovn
  OVS_SERVICES=(ovn-nb ovn-sb ovn-northd)
fi
# ovn: the second chassis (a second ovn-controller, see "OVN" above)
NET_HOST2="" OVS_INT_BR2="" OVS_PHYS_BR2=""
[ "$RELEASE" != ovn ] || NET_HOST2=nd-net-ovn2 OVS_INT_BR2=br-ovn2 OVS_PHYS_BR2=br-ovn2-private
OVS_DB=unix:$OVS_DIR/db.sock
# the metadata path (see the header): nova's metadata API, and on the agent
# host Neutron's DHCP agent (isolated metadata) and metadata agent
SERVICES+=(nova-metadata)
AGENTS=("$NET_AGENT" neutron-dhcp-agent neutron-metadata-agent)
# ovn: DHCP is OVN's own; its metadata agent serves the metadata path
[ "$RELEASE" != ovn ] || AGENTS=("$NET_AGENT" ovn-controller2 neutron-ovn-metadata-agent)
# every service `status` checks, in start order; the agents come last
ALL_SERVICES=("${OVS_SERVICES[@]}" "${SERVICES[@]}" "${AGENTS[@]}")

# ====================================================================== configs
password_auth() { # USER: keystoneauth password options (a service user in project service)
  cat <<EOF
auth_type = password
auth_url = $URL_KEYSTONE
username = $1
password = $SERVICE_PASSWORD
user_domain_name = Default
project_name = service
project_domain_name = Default
region_name = $REGION
EOF
}

authtoken_section() { # USER: [keystone_authtoken] of an API service validating as USER
  printf '[keystone_authtoken]\nwww_authenticate_uri = %s\n' "$URL_KEYSTONE"
  password_auth "$1"
  # no memcached: the middleware caches validated tokens in process
  echo "service_token_roles_required = true"
}

service_sections() { # the [placement]/[neutron] sections every nova.conf needs
  if ks; then
    # endpoints from the catalog (internal interface), as a deployment has them
    printf '[placement]\n'; password_auth placement; printf 'valid_interfaces = internal\n\n'
    printf '[neutron]\n'; password_auth neutron; printf 'valid_interfaces = internal\n'
    ovs_bridge_line
    return 0
  fi
  cat <<EOF
[placement]
auth_type = admin_token
endpoint = $URL_PLACEMENT
token = admin
region_name = RegionOne

[neutron]
auth_type = admin_token
endpoint = $URL_NEUTRON
token = admin
endpoint_override = $URL_NEUTRON
region_name = RegionOne
EOF
  ovs_bridge_line
}
# ovn: the chassis' integration bridge is not br-int (nova's [neutron] ovs_bridge)
ovs_bridge_line() { [ "$OVS_INT_BR" = br-int ] || echo "ovs_bridge = $OVS_INT_BR"; }

write_nova_conf() {
  {
    cat <<EOF
# controller nova.conf (nova-api, -conductor, -scheduler, nova-manage)
# written by tests/env/controlplane.sh $RELEASE up; do not edit
[DEFAULT]
transport_url = $RABBIT
state_path = $STATE/state
log_dir = $STATE/log
my_ip = 127.0.0.1
host = nd-controller
# resize and cold migration may pick the same host (the tests run
# same-host resizes; Nova's API and scheduler read this)
allow_resize_to_same_host = true
EOF
    if [ "$RELEASE" = zed ]; then
      cat <<EOF
enabled_apis = osapi_compute
osapi_compute_listen = 127.0.0.1
osapi_compute_listen_port = $P_NOVA
osapi_compute_workers = 1

[api]
auth_strategy = $( if ks; then echo keystone; else echo noauth2; fi )

[wsgi]
api_paste_config = $STATE/etc/nova/api-paste.ini

[glance]
api_servers = $URL_GLANCE
EOF
    else
      cat <<EOF
# native threading (nova 34's default): pools sized for a test suite that
# boots many servers at once; the defaults (10 and 5) queue work under that
# load ("pool does not have free threads" in the scheduler and nova-api)
default_thread_pool_size = 64
cell_worker_thread_pool_size = 32

[glance]
endpoint_override = $URL_GLANCE
EOF
    fi
    cat <<EOF

[scheduler]
workers = 1
# map new compute hosts to cell1 quickly (no explicit discover_hosts needed)
discover_hosts_in_cells_interval = 2

[conductor]
workers = 1

# nova-serialproxy (serial consoles; the proxy reads tokens from the DB and
# asks the compute host to validate the port before it connects)
[serial_console]
enabled = true
base_url = $URL_SERIAL
serialproxy_host = 127.0.0.1
serialproxy_port = $P_SERIAL

[quota]
# tests boot 10-50 servers at once; quotas need keystone for their API anyway
instances = -1
cores = -1
ram = -1

[api_database]
connection = sqlite:///$STATE/db/nova_api.sqlite
sqlite_synchronous = false

[database]
connection = sqlite:///$STATE/db/nova.sqlite
sqlite_synchronous = false

EOF
    service_sections
    # (still [neutron]) the metadata API trusts requests Neutron's metadata
    # agent signed with the shared secret
    printf 'service_metadata_proxy = true\nmetadata_proxy_shared_secret = %s\n' "$METADATA_SECRET"
    if ks; then
      printf '\n'; authtoken_section nova
      cat <<EOF

[oslo_policy]
policy_file = $STATE/etc/nova/policy.yaml
EOF
    fi
    cat <<EOF

[oslo_concurrency]
lock_path = $STATE/lock

[oslo_messaging_notifications]
driver = noop
EOF
    rabbit_section
  } > "$NOVA_CONF"

  # Tests boot tenants' servers on their own compute host: a member may
  # force a host (nova:HOST). The rule's name is the same in Zed and nova 34.
  cat > "$STATE/etc/nova/policy.yaml" <<EOF
# written by tests/env/controlplane.sh: the releases' defaults, but project
# members may force a host (tests boot tenants' servers on their own host)
"os_compute_api:servers:create:forced_host": "role:admin or role:member"
EOF
  local src
  if ks; then # the stock pipelines: authtoken keystonecontext
    if [ "$RELEASE" = zed ]; then src=/etc/nova/api-paste.ini; else src=$V/etc/nova/api-paste.ini; fi
    cp "$src" "$STATE/etc/nova/api-paste.ini"
    return 0
  fi
  # noauth paste pipeline: keystone-free auth that still gives the context a token
  if [ "$RELEASE" = zed ]; then
    src=/etc/nova/api-paste.ini
    sed -e 's/ noauth2 osapi_compute_app_v21/ noauth2 ctxtoken osapi_compute_app_v21/' \
        -e 's/ noauth2 legacy_v2_compatible / noauth2 ctxtoken legacy_v2_compatible /' \
        "$src" > "$STATE/etc/nova/api-paste.ini"
    printf '\n[filter:ctxtoken]\npaste.filter_factory = nd_ctxtoken:filter_factory\n' \
      >> "$STATE/etc/nova/api-paste.ini"
    [ "$(grep -c ' noauth2 ctxtoken ' "$STATE/etc/nova/api-paste.ini")" = 2 ] ||
      die "could not insert ctxtoken into the noauth2 pipelines of $src"
  else
    src=$V/etc/nova/api-paste.ini
    sed -e 's/ authtoken keystonecontext / nd_noauth keystonecontext /' \
        "$src" > "$STATE/etc/nova/api-paste.ini"
    printf '\n[filter:nd_noauth]\npaste.filter_factory = nd_noauth:filter_factory\n' \
      >> "$STATE/etc/nova/api-paste.ini"
    [ "$(grep -c ' nd_noauth keystonecontext ' "$STATE/etc/nova/api-paste.ini")" = 2 ] ||
      die "could not replace authtoken in the keystone pipelines of $src"
  fi
}

write_compute_template() {
  {
  cat <<EOF
# nova.conf for a nova-compute host of the '$RELEASE' control plane.
# Written by tests/env/controlplane.sh. Substitute the HOST and STATE_PATH
# placeholders (each between two @ signs); add
# compute_driver (and driver sections) as needed. No [database] or
# [api_database]: a compute host reaches the DB only through nova-conductor.
[DEFAULT]
host = @HOST@
state_path = @STATE_PATH@
instances_path = @STATE_PATH@/instances
transport_url = $RABBIT
my_ip = 127.0.0.1

[glance]
endpoint_override = $URL_GLANCE

EOF
  service_sections
  cat <<EOF

[serial_console]
# Nova's default (false): a host serving consoles gives its containers a
# terminal and an open stdin, which changes their console output (CRLF);
# a test that uses the console sets enabled = true in its host's config.
enabled = false
base_url = $URL_SERIAL
proxyclient_address = 127.0.0.1
port_range = 10000:20000

[oslo_concurrency]
lock_path = @STATE_PATH@/lock

[oslo_messaging_notifications]
driver = noop
EOF
  rabbit_section
  } > "$STATE/etc/nova-compute.conf.template"
}

write_placement_conf() {
  # placement reads only \$OS_PLACEMENT_CONFIG_DIR/placement.conf
  cat > "$STATE/etc/placement/placement.conf" <<EOF
[DEFAULT]
log_file = $STATE/log/placement-api.log

[api]
auth_strategy = $( if ks; then echo keystone; else echo noauth2; fi )

[placement_database]
connection = sqlite:///$STATE/db/placement.sqlite
sqlite_synchronous = false
EOF
  if ks; then
    { printf '\n'; authtoken_section placement; } >> "$STATE/etc/placement/placement.conf"
  fi
}

write_glance_conf() {
  local c=$STATE/etc/glance/glance-api.conf
  {
    echo "[DEFAULT]"
    if [ "$RELEASE" = zed ]; then
      printf 'bind_host = 127.0.0.1\nbind_port = %s\nworkers = 1\n' "$P_GLANCE"
    else
      echo "worker_self_reference_url = $URL_GLANCE"
    fi
    cat <<EOF
log_file = $STATE/log/glance-api.log

[database]
connection = sqlite:///$STATE/db/glance.sqlite
sqlite_synchronous = false

[paste_deploy]
EOF
    if ks; then
      if [ "$RELEASE" = zed ]; then
        printf 'flavor = keystone\nconfig_file = /etc/glance/glance-api-paste.ini\n'
      else
        printf 'flavor = keystone\nconfig_file = %s\n' "$VG/etc/glance/glance-api-paste.ini"
      fi
      printf '\n'; authtoken_section glance
    elif [ "$RELEASE" = zed ]; then
      # empty flavor = pipeline 'glance-api' = unauthenticated-context (admin)
      printf 'flavor =\nconfig_file = /etc/glance/glance-api-paste.ini\n'
    else
      # glance 33's unauthenticated context has no roles and secure RBAC denies
      # it: use the keystone pipeline with authtoken replaced by nd_noauth
      printf 'flavor = keystone\nconfig_file = %s\n' "$STATE/etc/glance/glance-api-paste.ini"
    fi
    cat <<EOF

[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = $STATE/glance/images/

[os_glance_staging_store]
filesystem_store_datadir = $STATE/glance/staging/

[os_glance_tasks_store]
filesystem_store_datadir = $STATE/glance/tasks/

[oslo_concurrency]
lock_path = $STATE/lock

[oslo_messaging_notifications]
driver = noop
EOF
  } > "$c"
  if [ "$PYREL" = newest ] && ! ks; then
    sed -e 's/ authtoken context / nd_noauth context /' \
        "$VG/etc/glance/glance-api-paste.ini" > "$STATE/etc/glance/glance-api-paste.ini"
    printf '\n[filter:nd_noauth]\npaste.filter_factory = nd_noauth:filter_factory\n' \
      >> "$STATE/etc/glance/glance-api-paste.ini"
    grep -q '^keystone = .* nd_noauth context ' "$STATE/etc/glance/glance-api-paste.ini" ||
      die "could not replace authtoken in glance's keystone pipeline"
  fi
}

write_neutron_conf() {
  {
    echo "[DEFAULT]"
    if [ "$RELEASE" = zed ]; then
      cat <<EOF
bind_host = 127.0.0.1
bind_port = $P_NEUTRON
api_workers = 1
api_paste_config = /etc/neutron/api-paste.ini
EOF
    else
      echo "api_paste_config = $VN/etc/neutron/api-paste.ini"
    fi
    cat <<EOF
auth_strategy = $( if ks; then echo keystone; else echo noauth; fi )
core_plugin = ml2
# 'router' is needed even without L3 agents: it imports the port_forwarding
# model that ml2 get_ports() references (ovn: its own router plugin)
service_plugins = $( if [ "$RELEASE" = ovn ]; then echo ovn-router; else echo router; fi )
transport_url = $RABBIT
# one RPC worker (q-plugin, and q-reports-plugin as there are no report
# workers): zed's neutron-server forks it, newest runs neutron-rpc-server
rpc_workers = 1
rpc_state_report_workers = 0
# port status/data changes -> nova-api os-server-external-events
# (network-vif-plugged, network-changed, network-vif-deleted ...); see [nova]
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
$( if [ "$RELEASE" = ovn ]; then
     echo "# OVN serves DHCP itself: no DHCP agent to schedule or notify (as DevStack)"
     echo "dhcp_agent_notification = false"
   fi )
send_events_interval = 1
state_path = $STATE/state-neutron
log_file = $STATE/log/neutron-api.log

[QUOTAS]
# No quota bookkeeping (as nova's [quota] -1 above): each port create wrote
# and deleted a reservation, and usage tracking inserts a quotausages row the
# first time a project lists a resource, inside a read transaction that
# SQLite cannot upgrade while another writer holds the lock: Zed answered
# 500 "database is locked" to port creates and security-group lists (seen
# in CI). The group is upper case: oslo.config ignores [quotas].
quota_driver = neutron.db.quota.driver_null.DbQuotaDriverNull
track_quota_usage = false

[database]
connection = sqlite:///$STATE/db/neutron.sqlite
sqlite_synchronous = false

[ml2]
type_drivers = flat$( if [ "$RELEASE" = ovn ]; then echo ",geneve"; fi )
tenant_network_types =
mechanism_drivers = $MECH_DRIVER
extension_drivers = port_security

[ml2_type_flat]
flat_networks = *
$( if [ "$RELEASE" = ovn ]; then cat <<OVN

[ml2_type_geneve]
# the OVN driver needs the geneve type (with room for its header) loaded
vni_ranges = 1:65536
max_header_size = 38

[ovn]
ovn_nb_connection = unix:$OVN_DIR/nb.sock
ovn_sb_connection = unix:$OVN_DIR/sb.sock
ovn_metadata_enabled = true
OVN
fi )

[nova]
$( if ks; then
     password_auth nova; echo "endpoint_type = internal"
     echo; authtoken_section neutron
   else
     # no keystone: a static token that nova-api's auth (zed noauth2, newest
     # pylib/nd_noauth.py) turns into an admin context
     printf 'auth_type = admin_token\nendpoint = %s\ntoken = %s\nregion_name = RegionOne\n' "$URL_NOVA" "$TOKEN"
   fi )

[oslo_concurrency]
lock_path = $STATE/lock

[oslo_messaging_notifications]
driver = noop
EOF
    if [ "$RELEASE" = zed ]; then
      # the linuxbridge mechanism driver refuses to load without this (Zed)
      printf '\n[experimental]\nlinuxbridge = true\n'
    fi
    rabbit_section
  } > "$STATE/etc/neutron/neutron.conf"
}

# The L2 agent's own config (it does not read neutron.conf): it runs as host
# $NET_HOST, so neutron binds ports with binding:host_id=$NET_HOST to it.
# root_helper = env: we are root already; `env` (not sudo, whose secure_path
# would pick Debian's privsep-helper for the venv agent) runs the privsep
# helper and the agent's commands from PATH.
write_l2_agent_conf() {
  [ "$RELEASE" != ovn ] || return 0   # ovn-controller reads the OVSDB, not a file
  local conf=$STATE/etc/neutron/l2-agent.conf
  {
    echo "# $NET_AGENT config, written by tests/env/controlplane.sh $RELEASE up"
    if [ "$RELEASE" = zed ]; then
      # a new wrapper makes a new config, so that `up` restarts the agent
      echo "# ebtables wrapper in its PATH: $(sha256sum < "$HERE/shims/ebtables" | cut -c1-16)"
    fi
    cat <<EOF
[DEFAULT]
host = $NET_HOST
transport_url = $RABBIT
state_path = $STATE/state-neutron

[agent]
root_helper = env
polling_interval = 1
report_interval = 10
EOF
    if [ "$RELEASE" = newest ]; then echo "tunnel_types ="; fi
    cat <<EOF

[securitygroup]
# real security groups (see the header): native OVS firewall / iptables
enable_security_group = true
firewall_driver = $FIREWALL_DRIVER

[oslo_concurrency]
lock_path = $STATE/lock

EOF
    if [ "$RELEASE" = zed ]; then
      cat <<EOF
[linux_bridge]
physical_interface_mappings = private:$LB_UPLINK

[vxlan]
enable_vxlan = false
EOF
    else
      cat <<EOF
[ovs]
integration_bridge = br-int
bridge_mappings = private:$OVS_PHYS_BR
# userspace datapath: this kernel has no openvswitch module
datapath_type = netdev
ovsdb_connection = $OVS_DB
of_listen_address = 127.0.0.1
EOF
    fi
  } > "$conf.new"
  # A running agent keeps the config it started with: restart it when the
  # config changed (`up` starts it again), so that `up` applies changes.
  if daemon_alive "$STATE" "$NET_AGENT" && ! cmp -s "$conf.new" "$conf"; then
    log "$NET_AGENT config changed: restarting the agent"
    daemons_stop "$STATE" 10 "$NET_AGENT"
  fi
  mv "$conf.new" "$conf"
  if [ "$RELEASE" = zed ]; then
    mkdir -p "$STATE/bin"
    install -m 755 "$HERE/shims/ebtables" "$STATE/bin/ebtables"
  fi
}

# The metadata path's configs: Neutron's DHCP agent on the agent host serves
# isolated metadata (a haproxy on 169.254.169.254:80 in the network's DHCP
# namespace, Neutron's `enable_isolated_metadata`), its metadata agent signs
# what the proxy forwards for nova's metadata API, which a second nova-api
# process (zed: enabled_apis = metadata) or nova.wsgi.metadata (newest) serves.
write_metadata_confs() {
  if [ "$RELEASE" = ovn ]; then write_ovn_metadata_conf; return 0; fi
  local dhcp=$STATE/etc/neutron/dhcp-agent.conf md=$STATE/etc/neutron/metadata-agent.conf
  {
    cat <<EOF
# neutron-dhcp-agent config, written by tests/env/controlplane.sh $RELEASE up
[DEFAULT]
host = $NET_HOST
transport_url = $RABBIT
state_path = $STATE/state-neutron
interface_driver = $DHCP_INTERFACE_DRIVER
enable_isolated_metadata = true
# no resolver of the host's inside the test network
dnsmasq_local_resolv = false
EOF
    if [ "$RELEASE" = newest ]; then
      cat <<EOF
# a veth pair into the namespace (an OVS internal port of the netdev
# datapath is a tap device ovs-vswitchd holds open)
ovs_use_veth = true
EOF
    fi
    cat <<EOF

[agent]
root_helper = env
report_interval = 10

[oslo_concurrency]
lock_path = $STATE/lock
EOF
    if [ "$RELEASE" = newest ]; then
      printf '\n[ovs]\nintegration_bridge = br-int\novsdb_connection = %s\n' "$OVS_DB"
    fi
  } > "$dhcp.new"
  cat > "$md.new" <<EOF
# neutron-metadata-agent config, written by tests/env/controlplane.sh $RELEASE up
[DEFAULT]
host = $NET_HOST
transport_url = $RABBIT
state_path = $STATE/state-neutron
nova_metadata_host = 127.0.0.1
nova_metadata_port = $P_METADATA
metadata_proxy_shared_secret = $METADATA_SECRET
metadata_workers = 1

[agent]
root_helper = env
report_interval = 10

[oslo_concurrency]
lock_path = $STATE/lock
EOF
  local f name
  for f in "$dhcp" "$md"; do
    name=neutron-dhcp-agent; [ "$f" = "$md" ] && name=neutron-metadata-agent
    if daemon_alive "$STATE" "$name" && ! cmp -s "$f.new" "$f"; then
      log "$name config changed: restarting it"
      daemons_stop "$STATE" 10 "$name"
    fi
    mv "$f.new" "$f"
  done
  if [ "$RELEASE" = zed ]; then
    cat > "$STATE/etc/nova/metadata-api.conf" <<EOF
# the metadata API as its own nova-api process (read after nova.conf)
[DEFAULT]
enabled_apis = metadata
metadata_listen = 127.0.0.1
metadata_listen_port = $P_METADATA
metadata_workers = 1
EOF
  fi
}

# Neutron's DHCP and metadata agents (after the L2 agent: the DHCP port is
# bound to it). PATH as for the L2 agent: the privsep helper, ip, dnsmasq
# and haproxy.
start_metadata_agents() {
  local name args
  for name in neutron-dhcp-agent neutron-metadata-agent; do
    if daemon_alive "$STATE" "$name"; then log "$name already running"; continue; fi
    args=(--config-file "$STATE/etc/neutron/${name#neutron-}.conf" --log-file "$STATE/log/$name.log")
    if [ "$RELEASE" = zed ]; then
      daemon_start "$STATE" "$name" env "PATH=$STATE/bin:$PATH" "/usr/bin/$name" "${args[@]}"
    else
      daemon_start "$STATE" "$name" env "PATH=$VN/bin:$PATH" "OVS_RUNDIR=$OVS_DIR" "$VN/bin/$name" "${args[@]}"
    fi
  done
}

dhcp_agent_ready() { # neutron lists a DHCP agent of $NET_HOST alive
  curl -sf --max-time 10 -H "X-Auth-Token: $TOKEN" \
    "$URL_NEUTRON/v2.0/agents?agent_type=DHCP%20agent&host=$NET_HOST" |
    /usr/bin/python3 -c 'import json,sys; a=json.load(sys.stdin)["agents"]; sys.exit(0 if a and a[0]["alive"] else 1)'
}

dhcp_served() { # the DHCP agent hosts network $1, its DHCP port is ACTIVE and its metadata proxy runs
  /usr/bin/python3 "$PYLIB/nd_rest.py" dhcp-served "$URL_NEUTRON" "$1" "$NET_HOST" &&
    [ -s "$STATE/state-neutron/external/pids/$1.pid.haproxy" ]
}

metadata_ready() { # the metadata API answers (its root lists versions)
  curl -sf -o /dev/null --max-time 10 "$URL_METADATA/"
}

# What the DHCP agent leaves behind when it stops: dnsmasq and haproxy
# (daemons of their own, their command lines name this state dir) and the
# qdhcp- namespaces of this control plane's networks.
stop_metadata_leftovers() {
  local pid ns
  for pid in $(pgrep -f -- "$STATE/state-neutron/" || true); do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '/^qdhcp-/ {print $1}'); do
    if [ -d "$STATE/state-neutron/dhcp/${ns#qdhcp-}" ]; then ip netns delete "$ns" 2>/dev/null || true; fi
  done
}

write_keystone_conf() {
  mkdir -p "$STATE/etc/keystone" "$STATE/keystone"
  cat > "$KEYSTONE_CONF" <<EOF
# written by tests/env/controlplane.sh $RELEASE up; do not edit
[DEFAULT]
log_file = $STATE/log/keystone.log

[database]
connection = sqlite:///$STATE/db/keystone.sqlite
sqlite_synchronous = false

[token]
provider = fernet
expiration = $TOKEN_EXPIRATION

[fernet_tokens]
key_repository = $STATE/keystone/fernet-keys

[fernet_receipts]
key_repository = $STATE/keystone/fernet-keys

[credential]
key_repository = $STATE/keystone/credential-keys

[identity]
# bcrypt's minimum: every password login costs Keystone CPU (services log
# in, tests issue tokens), and this cloud's passwords are loopback test ones
password_hash_rounds = 4
EOF
}

# Keystone's database, keys and bootstrap (admin, roles, region, identity
# endpoints): once, marked by db/.keystone-initialised.
init_keystone() {
  [ -e "$STATE/db/.keystone-initialised" ] && return 0
  log "creating Keystone's database and keys (log: $STATE/log/db-init.log)"
  local K=("$KEYSTONE_MANAGE" --config-file "$KEYSTONE_CONF")
  rm -f "$STATE/db/keystone.sqlite"
  rm -rf "$STATE/keystone/fernet-keys" "$STATE/keystone/credential-keys"
  (
    set -e
    "${K[@]}" db_sync
    "${K[@]}" fernet_setup --keystone-user root --keystone-group root
    "${K[@]}" credential_setup --keystone-user root --keystone-group root
    "${K[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
      --bootstrap-username admin --bootstrap-project-name admin --bootstrap-role-name admin \
      --bootstrap-admin-url "$URL_KEYSTONE" --bootstrap-public-url "$URL_KEYSTONE" \
      --bootstrap-internal-url "$URL_KEYSTONE" --bootstrap-region-id "$REGION"
  ) >> "$STATE/log/db-init.log" 2>&1 || {
    tail -n 20 "$STATE/log/db-init.log" >&2; die "Keystone initialisation failed (see $STATE/log/db-init.log)"
  }
  touch "$STATE/db/.keystone-initialised"
  log "Keystone initialised (admin, roles, region $REGION, identity endpoints)"
}

keystone_ready() { curl -sf -o /dev/null --max-time 10 "$URL_KEYSTONE"; }

# Waits for Keystone, creates what a deployment has (nd_keystone.py seed),
# then issues the admin token this script's own checks use.
keystone_seed() {
  ks || return 0
  daemon_wait "$STATE" keystone "$TIMEOUT" "keystone $URL_KEYSTONE" keystone_ready
  PROJECT_IDS=$(/usr/bin/python3 "$PYLIB/nd_keystone.py" seed) ||
    die "could not seed Keystone's users, projects and catalog"
  TOKEN=$(/usr/bin/python3 "$PYLIB/nd_keystone.py" token) || die "Keystone issues no admin token"
  export ND_TOKEN=$TOKEN ND_PROJECT_IDS=$PROJECT_IDS
  log "keystone: service users, tenants nd-tenant-a/-b and the catalog present"
}

write_clouds_yaml() {
  if ks; then
    {
      echo "clouds:"
      local cloud user project pass
      for cloud in "nd-$RELEASE admin admin $ADMIN_PASSWORD" \
                   "nd-$RELEASE-tenant-a nd-member-a nd-tenant-a $MEMBER_PASSWORD" \
                   "nd-$RELEASE-tenant-b nd-member-b nd-tenant-b $MEMBER_PASSWORD"; do
        read -r cloud user project pass <<< "$cloud"
        cat <<EOF
  $cloud:
    auth:
      auth_url: $URL_KEYSTONE
      username: $user
      password: $pass
      project_name: $project
      user_domain_name: Default
      project_domain_name: Default
    identity_api_version: 3
    region_name: $REGION
    interface: public
EOF
      done
    } > "$STATE/osc/clouds.yaml"
    return 0
  fi
  cat > "$STATE/osc/clouds.yaml" <<EOF
clouds:
  nd-$RELEASE:
    auth_type: admin_token
    auth:
      token: "$TOKEN"
      endpoint: $URL_NOVA
    region_name: RegionOne
    compute_endpoint_override: $URL_NOVA
    image_endpoint_override: $URL_GLANCE
    network_endpoint_override: $URL_NEUTRON
    placement_endpoint_override: $URL_PLACEMENT
EOF
}

write_env_sh() { # NETWORK_ID FAKE_HOST
  local tmp=$STATE/env.sh.tmp net_bridge ovs_db="" ovs_rundir=""
  if [ "$RELEASE" = zed ]; then
    net_bridge=brq${1:0:11}        # nova's and the linuxbridge agent's name
  else
    net_bridge=$OVS_INT_BR ovs_db=$OVS_DB ovs_rundir=$OVS_DIR
  fi
  {
    echo "# written by tests/env/controlplane.sh $RELEASE up -- source it"
    local kv
    for kv in \
      "ND_RELEASE=$RELEASE" \
      "ND_STATE=$STATE" \
      "OS_CLOUD=nd-$RELEASE" \
      "OS_CLIENT_CONFIG_FILE=$STATE/osc/clouds.yaml" \
      "ND_VHOST=$VHOST" \
      "ND_TRANSPORT_URL=$RABBIT" \
      "ND_NOVA_API=$URL_NOVA" \
      "ND_SERIAL_PROXY=$URL_SERIAL" \
      "ND_PLACEMENT=$URL_PLACEMENT" \
      "ND_GLANCE=$URL_GLANCE" \
      "ND_NEUTRON=$URL_NEUTRON" \
      "ND_AUTH=$AUTH" \
      "ND_KEYSTONE=$ND_KEYSTONE" \
      "ND_ADMIN_USER=admin" \
      "ND_ADMIN_PASSWORD=$ADMIN_PASSWORD" \
      "ND_ADMIN_PROJECT=admin" \
      "ND_SERVICE_PASSWORD=$SERVICE_PASSWORD" \
      "ND_MEMBER_PASSWORD=$MEMBER_PASSWORD" \
      "ND_TENANT_A=nd-tenant-a" "ND_MEMBER_A=nd-member-a" \
      "ND_TENANT_B=nd-tenant-b" "ND_MEMBER_B=nd-member-b" \
      "ND_PROJECT_IDS=$PROJECT_IDS" \
      "ND_REGION=$REGION" \
      "ND_KEYSTONE_CONF=$( if ks; then echo "$KEYSTONE_CONF"; fi )" \
      "ND_KEYSTONE_GUNICORN=$( if ks && [ "$PYREL" = newest ]; then echo "$VK/bin/gunicorn"; fi )" \
      "ND_PYLIB=$PYLIB" \
      "ND_OPENSTACK=$OSC" \
      "ND_NOVA_MANAGE=${NOVA_MANAGE_CMD[*]}" \
      "ND_PYTHON=$PY" \
      "ND_COMPUTE_CONF_TEMPLATE=$STATE/etc/nova-compute.conf.template" \
      "ND_NETWORK=private" \
      "ND_NETWORK_ID=$1" \
      "ND_FAKE_COMPUTE=$2" \
      "ND_NET_HOST=$NET_HOST" \
      "ND_NET_VIF_TYPE=$NET_VIF_TYPE" \
      "ND_NET_AGENT=$NET_AGENT" \
      "ND_NET_BRIDGE=$net_bridge" \
      "ND_NET_HOST2=$NET_HOST2" \
      "ND_NET_BRIDGE2=$OVS_INT_BR2" \
      "ND_OVS_DB=$ovs_db" \
      "ND_OVS_RUNDIR=$ovs_rundir"; do
      printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
    # noauth: the static token; keystone: tokens expire, get one when needed
    if ! ks; then printf 'export ND_TOKEN=%q\n' "$TOKEN"; fi
    # so that ovs-vsctl/ovs-ofctl/ovs-appctl in a shell that sourced this
    # file talk to this control plane's Open vSwitch
    if [ -n "$ovs_rundir" ]; then printf 'export OVS_RUNDIR=%q\n' "$ovs_rundir"; fi
  } > "$tmp"
  mv "$tmp" "$STATE/env.sh"
}

# ====================================================================== databases
init_dbs() {
  [ -e "$STATE/db/.initialised" ] && return 0
  log "creating databases (log: $STATE/log/db-init.log)"
  rm -rf "$STATE/db"; mkdir -p "$STATE/db"
  local dblog=$STATE/log/db-init.log
  (
    set -e
    N=("${NOVA_MANAGE_CMD[@]}")
    "${N[@]}" api_db sync
    "${N[@]}" cell_v2 map_cell0 --database_connection "sqlite:///$STATE/db/nova_cell0.sqlite"
    "${N[@]}" cell_v2 create_cell --name cell1 \
      --database_connection "sqlite:///$STATE/db/nova.sqlite" --transport-url "$RABBIT"
    "${N[@]}" db sync
  ) >> "$dblog.nova" 2>&1 &
  local nova_pid=$!
  (
    set -e
    if [ "$RELEASE" = zed ]; then
      /usr/bin/placement-manage --config-file "$STATE/etc/placement/placement.conf" db sync
      /usr/bin/glance-manage --config-file "$STATE/etc/glance/glance-api.conf" db_sync
      /usr/bin/python3 "$PYLIB/nd_neutron_schema.py" "sqlite:///$STATE/db/neutron.sqlite"
      /usr/bin/neutron-db-manage --config-file "$STATE/etc/neutron/neutron.conf" stamp heads
    else
      "$V/bin/placement-manage" --config-file "$STATE/etc/placement/placement.conf" db sync
      "$VG/bin/glance-manage" --config-file "$STATE/etc/glance/glance-api.conf" db_sync
      "$VN/bin/python" "$PYLIB/nd_neutron_schema.py" "sqlite:///$STATE/db/neutron.sqlite"
      "$VN/bin/neutron-db-manage" --config-file "$STATE/etc/neutron/neutron.conf" stamp heads
    fi
  ) >> "$dblog.others" 2>&1 &
  local others_pid=$! rc=0
  wait "$nova_pid" || { rc=1; log "nova DB init FAILED:"; tail -n 20 "$dblog.nova" >&2; }
  wait "$others_pid" || { rc=1; log "placement/glance/neutron DB init FAILED:"; tail -n 20 "$dblog.others" >&2; }
  cat "$dblog.nova" "$dblog.others" >> "$dblog"; rm -f "$dblog.nova" "$dblog.others"
  [ $rc = 0 ] || die "database initialisation failed (see $dblog)"
  touch "$STATE/db/.initialised"
  log "databases created (nova api/cell0/cell1, placement, glance, neutron)"
}

# ====================================================================== services
port_of() {
  case $1 in
    keystone) echo "$P_KEYSTONE" ;;
    placement-api) echo "$P_PLACEMENT" ;; glance-api) echo "$P_GLANCE" ;;
    neutron-api) echo "$P_NEUTRON" ;; nova-api) echo "$P_NOVA" ;; nova-metadata) echo "$P_METADATA" ;;
    nova-serialproxy) echo "$P_SERIAL" ;; *) echo "" ;;
  esac
}

start_service() {
  local name=$1 port
  port=$(port_of "$name")
  if daemon_alive "$STATE" "$name"; then log "$name already running"; return 0; fi
  if [ -n "$port" ] && tcp_open 127.0.0.1 "$port"; then
    die "127.0.0.1:$port is in use by a process this script did not start ($(ss -Hltnp "sport = :$port" | awk '{print $NF}'))"
  fi
  # No request-line limit (gunicorn's default is 4094 bytes): nova-api lists
  # servers by asking Neutron for the ports of all of them in one query
  # string, which for 100 servers is longer than that (DevStack's uwsgi
  # allows 64 KiB). Keep-alive 75 s, not gunicorn's 2 s: the Python
  # services' HTTP pools keep idle connections without a limit, and one
  # reused just as the server closes it fails the request (the scheduler
  # then finds no allocation candidates: NoValidHost under load).
  local gunicorn=(--no-control-socket --workers 1 --bind "127.0.0.1:$port" --limit-request-line 0 --keep-alive 75)
  case $PYREL:$name in
    zed:keystone)
      # Debian's WSGI script under uwsgi (as Debian's own keystone service).
      # 'Connection: close': uwsgi's plain http-socket closes the connection
      # after each response without saying so, and a client reusing it
      # fails ("Remote end closed connection without response": the
      # services' token validation then answers 503).
      # Without pylib's SQLite tuning: under it, Zed's keystone left a
      # BEGIN IMMEDIATE open and every later request waited for the lock
      # ("database is locked" after 30 s); keystone barely writes anyway
      # (fernet tokens are not stored).
      ND_SQLITE_TUNE=0 OS_KEYSTONE_CONFIG_FILES=$KEYSTONE_CONF daemon_start "$STATE" "$name" \
        /usr/bin/uwsgi --plugins python3 --http-socket "127.0.0.1:$port" \
        --wsgi-file /usr/bin/keystone-wsgi-public --master --processes 1 --threads 8 \
        --enable-threads --lazy-apps --die-on-term --buffer-size 65535 \
        --add-header 'Connection: close' --logto "$STATE/log/keystone.uwsgi.log" ;;
    newest:keystone)
      OS_KEYSTONE_CONFIG_FILES=$KEYSTONE_CONF daemon_start "$STATE" "$name" \
        "$VK/bin/gunicorn" "${gunicorn[@]}" --threads 8 nd_keystone_wsgi:application ;;
    zed:placement-api)
      OS_PLACEMENT_CONFIG_DIR=$STATE/etc/placement daemon_start "$STATE" "$name" \
        /usr/bin/placement-api --host 127.0.0.1 --port "$port" ;;
    zed:glance-api)
      daemon_start "$STATE" "$name" /usr/bin/glance-api --config-file "$STATE/etc/glance/glance-api.conf" ;;
    zed:neutron-api)
      daemon_start "$STATE" "$name" /usr/bin/neutron-server --config-file "$STATE/etc/neutron/neutron.conf" ;;
    zed:nova-api)
      daemon_start "$STATE" "$name" /usr/bin/nova-api --config-file "$NOVA_CONF" ;;
    zed:nova-metadata)
      daemon_start "$STATE" "$name" /usr/bin/nova-api --config-file "$NOVA_CONF" \
        --config-file "$STATE/etc/nova/metadata-api.conf" --log-file "$STATE/log/nova-metadata.log" ;;
    zed:nova-conductor|zed:nova-scheduler)
      daemon_start "$STATE" "$name" "/usr/bin/$name" --config-file "$NOVA_CONF" ;;
    zed:nova-serialproxy)
      # python3-nova has the proxy (Debian's nova-serialproxy package only
      # adds the script and a systemd unit)
      daemon_start "$STATE" "$name" /usr/bin/python3 -c 'import sys; from nova.cmd.serialproxy import main; sys.exit(main())' \
        --config-file "$NOVA_CONF" --log-file "$STATE/log/nova-serialproxy.log" ;;
    newest:nova-serialproxy)
      daemon_start "$STATE" "$name" "$V/bin/nova-serialproxy" \
        --config-file "$NOVA_CONF" --log-file "$STATE/log/nova-serialproxy.log" ;;
    newest:placement-api)
      OS_PLACEMENT_CONFIG_DIR=$STATE/etc/placement daemon_start "$STATE" "$name" \
        "$V/bin/gunicorn" "${gunicorn[@]}" --threads 8 placement.wsgi.api:application ;;
    newest:glance-api)
      OS_GLANCE_CONFIG_DIR=$STATE/etc/glance daemon_start "$STATE" "$name" \
        "$VG/bin/gunicorn" "${gunicorn[@]}" --threads 4 --timeout 300 glance.wsgi.api:application ;;
    newest:neutron-api)
      # ASGI_WORKERS: neutron 29 learns its API worker count from uwsgi or
      # mod_wsgi only, else from this; the OVN driver's hash ring (which API
      # worker handles which OVN event, e.g. a port going up) needs it
      ASGI_WORKERS=1 OS_NEUTRON_CONFIG_DIR=$STATE/etc/neutron OS_NEUTRON_CONFIG_FILES=neutron.conf \
        daemon_start "$STATE" "$name" \
        "$VN/bin/gunicorn" "${gunicorn[@]}" --threads 8 --timeout 120 nd_neutron_api_wsgi:application ;;
    newest:nova-api)
      OS_NOVA_CONFIG_DIR=$STATE/etc/nova ND_NOVA_API_LOG=$STATE/log/nova-api.log \
        daemon_start "$STATE" "$name" \
        "$V/bin/gunicorn" "${gunicorn[@]}" --threads 16 --timeout 120 nd_nova_api_wsgi:application ;;
    newest:nova-metadata)
      OS_NOVA_CONFIG_DIR=$STATE/etc/nova ND_NOVA_API_LOG=$STATE/log/nova-metadata.log \
        daemon_start "$STATE" "$name" \
        "$V/bin/gunicorn" "${gunicorn[@]}" --threads 8 --timeout 120 nd_nova_metadata_wsgi:application ;;
    newest:neutron-rpc)
      daemon_start "$STATE" "$name" "$VN/bin/neutron-rpc-server" \
        --config-file "$STATE/etc/neutron/neutron.conf" --log-file "$STATE/log/neutron-rpc.log" ;;
    newest:neutron-ovn-maintenance)
      ASGI_WORKERS=1 daemon_start "$STATE" "$name" "$VN/bin/neutron-ovn-maintenance-worker" \
        --config-file "$STATE/etc/neutron/neutron.conf" --log-file "$STATE/log/$name.log" ;;
    newest:nova-conductor|newest:nova-scheduler)
      daemon_start "$STATE" "$name" "$V/bin/$name" --config-file "$NOVA_CONF" ;;
  esac
}

# ====================================================================== L2 networking
ovs_vsctl() { OVS_RUNDIR=$OVS_DIR ovs-vsctl --db="$OVS_DB" "$@"; }

ensure_lb_uplink() { # zed: the interface behind physnet "private"
  # a veth pair, as this kernel has no dummy driver (CONFIG_DUMMY); the peer
  # end is the "wire" of the physnet (tests may move it into a netns)
  if ! ip link show "$LB_UPLINK" >/dev/null 2>&1; then
    ip link del "$LB_UPLINK-p" 2>/dev/null || true
    ip link add "$LB_UPLINK" type veth peer name "$LB_UPLINK-p"
    log "created veth pair $LB_UPLINK / $LB_UPLINK-p (physnet private)"
  fi
  ip link set "$LB_UPLINK" up
  ip link set "$LB_UPLINK-p" up 2>/dev/null || true
  bridge_netfilter
  # Anti-spoofing chains an agent left for taps that are gone (an agent
  # killed mid-way, or one that ran without the ebtables wrapper and hung on
  # them): remove them before the agent starts, which sets up those of the
  # taps present again. Never under a running agent: its ports would lose
  # their anti-spoofing rules until it looked at them again.
  daemon_alive "$STATE" "$NET_AGENT" && return 0
  local rule chain rules
  # Rules are listed as their match words, e.g. "-i tapX -j neutronARP-tapX".
  rules=$(ebtables -t nat -L PREROUTING 2>/dev/null | grep -E -- '-j neutron' || true)
  while read -r rule; do
    [ -n "$rule" ] || continue
    # shellcheck disable=SC2086 # the rule is a list of ebtables words
    ebtables -t nat -D PREROUTING $rule || true
  done <<< "$rules"
  for chain in $(ebtables -t nat -L 2>/dev/null | awk '/^Bridge chain: neutron/ {sub(",", "", $3); print $3}'); do
    ebtables -t nat -F "$chain" || true
    ebtables -t nat -X "$chain" || true
  done
}

bridge_netfilter() { # zed: what the iptables firewall driver needs (see the header)
  # Frames bridged between taps reach iptables only through br_netfilter
  # (a module on most kernels, built in on some).
  if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    modprobe br_netfilter || true
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
      die "br_netfilter is missing: the iptables firewall (security groups) cannot see bridged traffic"
  fi
  local proto
  for proto in arp ip ip6; do
    sysctl -q -w "net.bridge.bridge-nf-call-${proto}tables=1" >/dev/null
  done
  # Earlier versions of this script accepted all brq* bridged traffic in
  # DOCKER-USER (for the noop firewall). Docker puts DOCKER-USER first in
  # FORWARD whenever it (re)starts, so that rule would let traffic past the
  # security groups: remove it. Neutron's own chains accept what the groups
  # (and ports without port security) allow; Docker's DROP policy the rest.
  local ipt
  for ipt in iptables ip6tables; do
    while "$ipt" -C DOCKER-USER -i 'brq+' -o 'brq+' -j ACCEPT 2>/dev/null; do
      "$ipt" -D DOCKER-USER -i 'brq+' -o 'brq+' -j ACCEPT
      log "removed the DOCKER-USER rule accepting brq* traffic ($ipt)"
    done
  done
}

start_ovs() { # newest: ovsdb-server (waits until it answers), then ovs-vswitchd
  mkdir -p "$OVS_DIR"
  local schema=/usr/share/openvswitch/vswitch.ovsschema
  if [ ! -s "$OVS_DIR/conf.db" ]; then
    ovsdb-tool create "$OVS_DIR/conf.db" "$schema"
    log "created OVS database $OVS_DIR/conf.db"
  elif ! daemon_alive "$STATE" ovsdb-server &&
       [ "$(ovsdb-tool needs-conversion "$OVS_DIR/conf.db" "$schema")" = yes ]; then
    ovsdb-tool convert "$OVS_DIR/conf.db" "$schema"   # openvswitch-switch upgraded
  fi
  if daemon_alive "$STATE" ovsdb-server; then
    log "ovsdb-server already running"
  else
    # foreground (no --detach): daemon_start's PID is the server's PID
    daemon_start "$STATE" ovsdb-server env "OVS_RUNDIR=$OVS_DIR" \
      ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
      --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
      --pidfile="$OVS_DIR/ovsdb-server.pid" --unixctl="$OVS_DIR/ovsdb-server.ctl" \
      --log-file="$STATE/log/ovsdb-server.log" --no-chdir
  fi
  daemon_wait "$STATE" ovsdb-server 30 "ovsdb-server $OVS_DB" ovsdb_ready
  # The userspace datapath forwards a veth's packets through AF_PACKET: without
  # virtio-net headers (userspace TSO) a TCP packet whose checksum the sender
  # left to offload arrives with a bad one and is dropped (ICMP works, TCP to
  # the metadata proxy or between instances does not). Read at start only.
  if [ "$(ovs_vsctl --timeout=5 --no-wait get Open_vSwitch . other_config:userspace-tso-enable 2>/dev/null)" != '"true"' ]; then
    ovs_vsctl --timeout=5 --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true
    if daemon_alive "$STATE" ovs-vswitchd; then
      log "userspace TSO turned on: restarting ovs-vswitchd"
      daemons_stop "$STATE" 10 ovs-vswitchd
    fi
  fi
  if daemon_alive "$STATE" ovs-vswitchd; then
    log "ovs-vswitchd already running"
  else
    daemon_start "$STATE" ovs-vswitchd env "OVS_RUNDIR=$OVS_DIR" \
      ovs-vswitchd "$OVS_DB" --pidfile="$OVS_DIR/ovs-vswitchd.pid" \
      --log-file="$STATE/log/ovs-vswitchd.log" --no-chdir
  fi
}

# idempotent; before `init` an empty DB has no root row, and ovs-vsctl show
# would wait for one until its timeout
ovsdb_ready() { [ -S "$OVS_DIR/db.sock" ] && ovs_vsctl --timeout=2 --no-wait init; }
# ovn: newest's ovs-vswitchd applies changes (its ovsdb-server answers, and
# a transaction that waits for ovs-vswitchd returns)
ovs_vswitchd_answers() { [ -S "$OVS_DIR/db.sock" ] && ovs_vsctl --timeout=5 init >/dev/null 2>&1; }

ovs_phys_bridge() { # without --no-wait, ovs-vsctl returns once ovs-vswitchd applied it
  ovs_vsctl --timeout=5 -- --may-exist add-br "$OVS_PHYS_BR" \
    -- set Bridge "$OVS_PHYS_BR" datapath_type=netdev
}

vswitchd_gone() { ! daemon_alive "$STATE" ovs-vswitchd; }
stop_ovs() {
  if daemon_alive "$STATE" ovs-vswitchd; then
    # --cleanup also removes the userspace datapath's internal ports (tap
    # devices br-int, br-nd-private); the bridges stay in the DB for the next
    # `up`. ovs-appctl returns before the process has finished: wait for it.
    if OVS_RUNDIR=$OVS_DIR timeout 20 ovs-appctl --timeout=15 -t ovs-vswitchd exit --cleanup \
         >/dev/null 2>&1; then
      wait_until 20 "ovs-vswitchd exited (exit --cleanup)" vswitchd_gone || true
    else
      log "ovs-appctl exit --cleanup failed; stopping ovs-vswitchd by signal"
    fi
  fi
  daemons_stop "$STATE" 30 ovs-vswitchd ovsdb-server
  # what the datapath leaves behind (persistent taps; ovs-netdev always stays)
  local d
  for d in ovs-netdev br-int "$OVS_PHYS_BR" br-ovn br-ovn-private br-ovn2 br-ovn2-private; do
    if ip -d link show "$d" 2>/dev/null | grep 'tun type tap' >/dev/null; then ip link del "$d"; fi
  done
}

neutron_rpc_ok() { # neutron's RPC server consumes the plugin and report topics
  "${RMQCTL[@]}" -q -p "$VHOST" list_queues name consumers 2>/dev/null |
    awk '$1=="q-plugin" && $2>0 {p=1} $1=="q-reports-plugin" && $2>0 {r=1} END {exit !(p && r)}'
}
neutron_queues_exist() { # declared by an earlier neutron RPC server on this vhost
  "${RMQCTL[@]}" -q -p "$VHOST" list_queues name 2>/dev/null |
    awk '$1=="q-plugin" {p=1} $1=="q-reports-plugin" {r=1} END {exit !(p && r)}'
}

AGENT_SINCE="" AGENT_STARTED=0
start_l2_agent() {
  [ $AGENT_STARTED = 0 ] || return 0
  AGENT_STARTED=1
  [ "$RELEASE" != ovn ] || return 0    # ovn-controller: started by start_ovn
  if daemon_alive "$STATE" "$NET_AGENT"; then log "$NET_AGENT already running"; return 0; fi
  # its first state report must be newer than this (an old agent row of the
  # same host can still look alive for agent_down_time = 75 s)
  AGENT_SINCE=$(date -u '+%F %T')
  local args=(--config-file "$STATE/etc/neutron/l2-agent.conf" --log-file "$STATE/log/$NET_AGENT.log")
  if [ "$RELEASE" = zed ]; then
    # PATH: the ebtables wrapper (see the header) before the real one
    daemon_start "$STATE" "$NET_AGENT" env "PATH=$STATE/bin:$PATH" "/usr/bin/$NET_AGENT" "${args[@]}"
  else
    # PATH: the venv's privsep-helper; OVS_RUNDIR: ovs-vsctl/ovs-ofctl/ovs-appctl
    daemon_start "$STATE" "$NET_AGENT" env "PATH=$VN/bin:$PATH" "OVS_RUNDIR=$OVS_DIR" \
      "$VN/bin/$NET_AGENT" "${args[@]}"
  fi
}

l2_agent_ready() { # neutron lists the agent alive (newest: and br-int exists)
  /usr/bin/python3 "$PYLIB/nd_rest.py" agent-alive "$URL_NEUTRON" "$NET_HOST" "$NET_AGENT" \
    ${AGENT_SINCE:+"$AGENT_SINCE"} || return 1
  [ "$RELEASE" = zed ] || ovs_vsctl --timeout=5 br-exists "$OVS_INT_BR"
}
metadata_agent_ready() { # ovn: neutron lists the OVN metadata agent of $NET_HOST alive
  /usr/bin/python3 "$PYLIB/nd_rest.py" agent-alive "$URL_NEUTRON" "$NET_HOST" neutron-ovn-metadata-agent
}

http_ok() { curl -sf -o /dev/null --max-time 10 -H "X-Auth-Token: $TOKEN" "$1"; }
rpc_consumers_ok() { # conductor and scheduler queues both have a consumer
  "${RMQCTL[@]}" -q -p "$VHOST" list_queues name consumers 2>/dev/null |
    awk '$1=="conductor" && $2>0 {c=1} $1=="scheduler" && $2>0 {s=1} END {exit !(c && s)}'
}

wait_services() {
  daemon_wait "$STATE" placement-api "$TIMEOUT" "placement-api $URL_PLACEMENT" http_ok "$URL_PLACEMENT/"
  daemon_wait "$STATE" glance-api "$TIMEOUT" "glance-api $URL_GLANCE" http_ok "$URL_GLANCE/versions"
  daemon_wait "$STATE" neutron-api "$TIMEOUT" "neutron-api $URL_NEUTRON" http_ok "$URL_NEUTRON/v2.0/networks"
  # neutron bug: the first GET /v2.0/ports in a fresh worker can 500 until the
  # mappers are configured (harness.md failure 6); /networks above does that
  daemon_wait "$STATE" neutron-api 30 "neutron-api /v2.0/ports" http_ok "$URL_NEUTRON/v2.0/ports"
  # the L2 agent needs neutron's RPC server (zed: neutron-server's RPC worker)
  # (do_up started it already if the RPC queues existed)
  local rpc=neutron-api
  [ "$RELEASE" = zed ] || rpc=neutron-rpc
  # (ovn: no RPC agents, no RPC server)
  [ "$RELEASE" = ovn ] ||
    ND_POLL=1 daemon_wait "$STATE" "$rpc" "$TIMEOUT" "neutron RPC server consuming q-plugin + q-reports-plugin" \
      neutron_rpc_ok
  start_l2_agent
  daemon_wait "$STATE" nova-api "$TIMEOUT" "nova-api $URL_NOVA" http_ok "$URL_NOVA/"
  daemon_wait "$STATE" nova-serialproxy "$TIMEOUT" "nova-serialproxy $URL_SERIAL" tcp_open 127.0.0.1 "$P_SERIAL"
  ND_POLL=1 daemon_wait "$STATE" nova-conductor "$TIMEOUT" \
    "nova-conductor + nova-scheduler consuming on vhost $VHOST" rpc_consumers_ok
  daemon_alive "$STATE" nova-scheduler || die "nova-scheduler died (see $STATE/log/nova-scheduler.log)"
  daemon_wait "$STATE" "$NET_AGENT" "$TIMEOUT" "$NET_AGENT alive in neutron as host $NET_HOST" l2_agent_ready
  daemon_wait "$STATE" nova-metadata "$TIMEOUT" "nova metadata API $URL_METADATA" metadata_ready
  if [ "$RELEASE" = ovn ]; then
    daemon_alive "$STATE" neutron-ovn-metadata-agent || ovn_prune_stale_ports
    start_ovn_metadata_agent
    daemon_wait "$STATE" neutron-ovn-metadata-agent "$TIMEOUT" \
      "neutron-ovn-metadata-agent alive in neutron as host $NET_HOST" metadata_agent_ready
    return 0
  fi
  start_metadata_agents
  daemon_wait "$STATE" neutron-dhcp-agent "$TIMEOUT" "neutron-dhcp-agent alive in neutron as host $NET_HOST" \
    dhcp_agent_ready
}

# ====================================================================== fake compute
rp_exists() { # resource provider named $1 exists in placement
  curl -sf --max-time 10 -H "X-Auth-Token: $TOKEN" "$URL_PLACEMENT/resource_providers?name=$1" |
    grep -q "\"$1\""
}
compute_ready() { # nova-compute $1 consumes its RPC queue and has its resource provider
  "${RMQCTL[@]}" -q -p "$VHOST" list_queues name consumers 2>/dev/null |
    awk -v q="compute.$1" '$1==q && $2>0 {ok=1} END {exit !ok}' && rp_exists "$1"
}
host_mapped() { # host $1 has a host mapping (read-only look into the API DB)
  /usr/bin/python3 - "$STATE/db/nova_api.sqlite" "$1" <<'EOF'
import sqlite3, sys
db = sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True, timeout=10)
sys.exit(0 if db.execute('SELECT 1 FROM host_mappings WHERE host = ?',
                         (sys.argv[2],)).fetchone() else 1)
EOF
}

discover() { # nova-manage cell_v2 discover_hosts; QUIET=1: summary only
  local out rc=0
  out=$("${NOVA_MANAGE_CMD[@]}" cell_v2 discover_hosts --verbose 2>&1) || rc=$?
  if [ "${QUIET:-0}" = 1 ] && [ $rc = 0 ]; then
    printf '%s\n' "$out" | grep -E 'Creating host mapping|unmapped' >&2 || true
  else
    printf '%s\n' "$out" >&2
  fi
  return $rc
}

start_fake_compute() {
  local host=$1 name=fake-compute-$1
  [[ $host =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || die "bad FAKE_COMPUTE host name '$host'"
  local sp=$STATE/compute/$host conf=$STATE/etc/fake-compute-$host.conf
  mkdir -p "$sp/instances" "$sp/lock"
  sed -e "s|@HOST@|$host|g" -e "s|@STATE_PATH@|$sp|g" \
      -e "/^host = /a compute_driver = $FAKE_DRIVER" \
      "$STATE/etc/nova-compute.conf.template" > "$conf"
  if ! daemon_alive "$STATE" "$name"; then
    if [ "$RELEASE" = zed ]; then  # python3-nova has no nova-compute script
      daemon_start "$STATE" "$name" /usr/bin/python3 -c \
        'import sys; from nova.cmd.compute import main; sys.exit(main())' \
        --config-file "$conf" --log-file "$STATE/log/$name.log"
    else
      daemon_start "$STATE" "$name" "$V/bin/nova-compute" \
        --config-file "$conf" --log-file "$STATE/log/$name.log"
    fi
  else
    log "$name already running"
  fi
  local ND_POLL=1   # compute_ready runs rabbitmqctl (~0.5 s of CPU each)
  daemon_wait "$STATE" "$name" "$TIMEOUT" "fake compute $host (RPC consumer + resource provider)" \
    compute_ready "$host"
  map_host "$host"
}

map_host() { # host $1 gets mapped to cell1, by discover_hosts or the scheduler's periodic one
  local host=$1
  if host_mapped "$host"; then
    log "$host is mapped to cell1"
  elif QUIET=1 discover; then
    log "discover_hosts done: $host is mapped to cell1"
  else
    # the scheduler's periodic discovery (every 2 s) maps the same host at the
    # same moment; the loser of that race fails on the duplicate mapping
    log "discover_hosts failed (output above); waiting for the host mapping"
    local ND_POLL=1
    daemon_wait "$STATE" nova-scheduler 60 "$host mapped to cell1" host_mapped "$host"
  fi
}

# ====================================================================== actions
do_up() {
  log "control plane '$RELEASE' up: state $STATE"
  mkdir -p "$STATE"/{etc/nova,etc/placement,etc/glance,etc/neutron,db,log,pids,lock,osc} \
           "$STATE"/{state,state-neutron,compute,glance/images,glance/staging,glance/tasks}
  if [ "$RELEASE" = ovn ]; then
    mkdir -p "$OVN_DIR"
    "$HERE/rabbitmq.sh" cluster-vhost "$VHOST"
  else
    "$HERE/rabbitmq.sh" vhost "$VHOST"
  fi
  # in the background (rabbitmqctl costs ~0.5 s of CPU, more once the
  # services start): do neutron's RPC queues exist already? (see below)
  local qfile=$STATE/pids/.neutron-queues qpid
  # (ovn: no L2 agent of Neutron's RPC to start early; nothing to ask)
  { if [ "$RELEASE" != ovn ] && neutron_queues_exist; then echo yes; else echo no; fi; } > "$qfile" 2>/dev/null &
  qpid=$!
  check_auth_mode
  write_nova_conf; write_compute_template; write_placement_conf
  write_glance_conf; write_neutron_conf; write_l2_agent_conf; write_metadata_confs; write_clouds_yaml
  # the databases first: init_dbs starts from an empty db/ on a fresh
  # machine, which would take Keystone's database and marker with it
  init_dbs
  if ks; then write_keystone_conf; init_keystone; fi
  case $RELEASE in
    zed) ensure_lb_uplink ;;
    newest) start_ovs ;;
    ovn) ovs_vswitchd_answers ||
           die "the ovn control plane runs on newest's Open vSwitch ($OVS_DIR): run '$0 newest up' first" ;;
  esac
  local s
  # Keystone first, with its users: nova-conductor and -scheduler log in
  # to Keystone as they start (their Placement client), and exit on a 401
  if ks; then
    start_service keystone
    keystone_seed
  fi
  for s in "${SERVICES[@]}"; do start_service "$s"; done
  echo "$AUTH" > "$STATE/auth-mode"
  if [ "$RELEASE" = newest ]; then
    daemon_wait "$STATE" ovs-vswitchd 60 "ovs-vswitchd, bridge $OVS_PHYS_BR (datapath netdev)" ovs_phys_bridge
  fi
  if [ "$RELEASE" = ovn ]; then
    wait_until 60 "newest's ovs-vswitchd, bridge $OVS_PHYS_BR (datapath netdev)" ovs_phys_bridge
    start_ovn
    daemon_wait "$STATE" ovn-controller 60 "ovn-controller: chassis $NET_HOST in the southbound DB, $OVS_INT_BR" \
      ovn_chassis_ready "$NET_HOST" "$OVS_INT_BR"
    daemon_wait "$STATE" ovn-controller2 60 "ovn-controller2: chassis $NET_HOST2 in the southbound DB, $OVS_INT_BR2" \
      ovn_chassis2_ready
  fi
  # Start the agent now, in parallel with the servers, if neutron's RPC queues
  # already exist on the vhost (a previous run declared them; they outlive
  # their consumers): its first calls then wait in them for the RPC server.
  # Else wait_services starts it once the RPC server consumes.
  wait "$qpid" || true
  if [ "$(cat "$qfile" 2>/dev/null)" = yes ]; then start_l2_agent; fi
  rm -f "$qfile"
  wait_services
  local net_id
  net_id=$(ND_PROJECT_IDS=$PROJECT_IDS /usr/bin/python3 "$PYLIB/nd_rest.py" seed "$URL_NOVA" "$URL_NEUTRON")
  log "flavors m1.tiny/m1.small/m1.nano and network private ($net_id) present"
  if [ "$RELEASE" = ovn ]; then
    ND_POLL=1 daemon_wait "$STATE" neutron-ovn-metadata-agent "$TIMEOUT" \
      "network private has its OVN metadata port" ovn_metadata_port "$net_id"
  else
    ND_POLL=1 daemon_wait "$STATE" neutron-dhcp-agent "$TIMEOUT" "network private served by the DHCP agent (metadata proxy)" \
      dhcp_served "$net_id"
  fi
  if [ -n "$FAKE_COMPUTE" ]; then start_fake_compute "$FAKE_COMPUTE"; fi
  local fake=$FAKE_COMPUTE
  if [ -z "$fake" ]; then  # keep announcing a fake compute still running from before
    for s in "$STATE"/pids/fake-compute-*.pid; do
      [ -e "$s" ] || continue
      s=$(basename "$s" .pid)
      if daemon_alive "$STATE" "$s"; then fake=${s#fake-compute-}; break; fi
    done
  fi
  write_env_sh "$net_id" "$fake"
  log "control plane '$RELEASE' is up; source $STATE/env.sh"
}

# The services run with the auth mode of the `up` that started them: a
# different one needs new processes (`restart`), not only new configs.
check_auth_mode() {
  local was s
  was=$(cat "$STATE/auth-mode" 2>/dev/null || echo noauth)
  [ "$was" != "$AUTH" ] || return 0
  for s in "${ALL_SERVICES[@]}" keystone; do
    if daemon_alive "$STATE" "$s"; then
      die "the control plane runs with ND_AUTH=$was ($s is running): use '$0 $RELEASE restart' to switch to $AUTH"
    fi
  done
}

do_down() {
  local computes=() f
  for f in "$STATE"/pids/fake-compute-*.pid; do
    [ -e "$f" ] && computes+=("$(basename "$f" .pid)")
  done
  # computes first: they talk to the conductor while shutting down
  if [ ${#computes[@]} -gt 0 ]; then daemons_stop "$STATE" 60 "${computes[@]}"; fi
  # then the agent, then the servers, Open vSwitch last
  # neutron 29's OVS agent logs "quitting daemon loop" within a second of
  # SIGTERM, but its process then hangs (> 60 s): SIGKILL it after 10 s
  daemons_stop "$STATE" 10 "${AGENTS[@]}"
  stop_metadata_leftovers
  [ "$RELEASE" != ovn ] || stop_ovn_leftovers
  local rest=() n
  for f in "$STATE"/pids/*.pid; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    case $n in ovsdb-server|ovs-vswitchd) ;; *) rest+=("$n") ;; esac
  done
  if [ ${#rest[@]} -gt 0 ]; then daemons_stop "$STATE" 60 "${rest[@]}"; fi
  if [ "$RELEASE" = newest ]; then stop_ovs; fi
  log "control plane '$RELEASE' is down"
}

do_status() {
  local ok=0 s f
  if ks; then
    if keystone_ready && TOKEN=$(/usr/bin/python3 "$PYLIB/nd_keystone.py" token 2>/dev/null); then
      echo "answers  keystone $URL_KEYSTONE (admin token issued)"
      export ND_TOKEN=$TOKEN
    else
      echo "NO ANSWER keystone $URL_KEYSTONE (no admin token)"; ok=1
    fi
  fi
  for s in "${ALL_SERVICES[@]}"; do
    if daemon_alive "$STATE" "$s"; then echo "running  $s"; else echo "DOWN     $s"; ok=1; fi
  done
  for f in "$STATE"/pids/fake-compute-*.pid; do
    [ -e "$f" ] || continue
    s=$(basename "$f" .pid)
    if daemon_alive "$STATE" "$s"; then echo "running  $s"; else echo "DOWN     $s"; ok=1; fi
  done
  local name url
  for name in placement:"$URL_PLACEMENT/" glance:"$URL_GLANCE/versions" \
              neutron:"$URL_NEUTRON/v2.0/networks" nova-api:"$URL_NOVA/"; do
    url=${name#*:}; name=${name%%:*}
    if http_ok "$url"; then echo "answers  $name $url"; else echo "NO ANSWER $name $url"; ok=1; fi
  done
  if rpc_consumers_ok; then echo "answers  conductor+scheduler RPC queues (vhost $VHOST)"
  else echo "NO CONSUMER on conductor/scheduler queues (vhost $VHOST)"; ok=1; fi
  if [ "$RELEASE" = ovn ]; then :
  elif neutron_rpc_ok; then echo "answers  neutron RPC queues q-plugin + q-reports-plugin (vhost $VHOST)"
  else echo "NO CONSUMER on neutron's q-plugin/q-reports-plugin (vhost $VHOST)"; ok=1; fi
  if l2_agent_ready >/dev/null 2>&1; then echo "answers  $NET_AGENT alive in neutron as host $NET_HOST"
  else echo "NOT ALIVE $NET_AGENT as host $NET_HOST"; ok=1; fi
  return $ok
}

case $ACTION in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  discover) discover ;;
  map) map_host "$MAP_HOST" ;;
  restart) do_down; do_up ;;
  *) usage ;;
esac
