#!/bin/bash
# tests/operators/devstack-plugin.sh NOVA_CONF WORKDIR -- run the DevStack
# plugin (devstack/settings, devstack/plugin.sh, devstack/lib/nova-docker)
# the way stack.sh does, without DevStack: its helpers are stubs defined here
# (iniset/iniget write and read real INI files; run_process records what it
# would start), NOVA_CONF is a real compute nova.conf (tests/it/operators.rs
# passes the one devstack/aio.sh generates). Called by tests/it/operators.rs,
# which then reads the resulting files with nova-docker's own config loader.
#
# Checks, failing with a message on the first difference:
#   * settings + post-config: glance-api.conf gets 'docker' (and 'raw') in
#     [image_format], keeping what was configured; nova-docker.conf is written,
#     its metadata route following the Neutron backend (metadata_port with OVN)
#   * n-cpu is taken over: DevStack's start_nova_compute (a stand-in with the
#     same shape: nova-cpu.conf from nova.conf, then run_process n-cpu with
#     Python's nova-compute) still writes nova-cpu.conf, but the one process
#     started is nova-docker as n-cpu, as root; ENABLED_SERVICES is restored;
#     sourcing plugin.sh again (every phase does) does not wrap twice
#   * test-config: tempest's feature flags and image_ref
#   * NOVA_DOCKER_USER=nova: group docker, capabilities, rootwrap wrapper
#   * the fallback iniset/iniget of lib/nova-docker (used by aio.sh) agree
#     with the stubs
# Leaves in WORKDIR: etc/nova/nova-cpu.conf, etc/nova/nova-docker.conf,
# glance-api.conf, tempest.conf, run_process.log ("SERVICE|COMMAND|GROUP|USER").
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ $# -eq 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }
INPUT=$1 W=$2
mkdir -p "$W/etc/nova" "$W/systemd"
rm -f "$W"/run_process.log "$W"/*.conf "$W"/etc/nova/*

fail() { echo "FAIL: $*" >&2; exit 1; }
expect() { # FILE SECTION OPTION VALUE (read back with Python's configparser)
  local got
  got=$(/usr/bin/python3 - "$@" <<'EOF'
import configparser, sys
c = configparser.RawConfigParser(strict=False, interpolation=None)
c.optionxform = str
c.read(sys.argv[1])
print(c.get(sys.argv[2], sys.argv[3], fallback="<unset>"))
EOF
)
  [ "$got" = "$4" ] || fail "$1 [$2] $3 = '$got', expected '$4'"
}

# ------------------------------------------------------------ DevStack stubs
INI=$W/ini.py
cat > "$INI" <<'EOF'
# iniset/iniget with DevStack's semantics (inc/ini-config): set replaces the
# option's first line in the section, else adds it right after the section
# header, else appends the section; get prints the value or nothing.
import re, sys
op, path, section, option = sys.argv[1:5]
try:
    lines = open(path).read().splitlines()
except FileNotFoundError:
    lines = []
head = re.compile(r'^\s*\[(.*)\]\s*$')
opt = re.compile(r'^\s*' + re.escape(option) + r'\s*=\s*(.*)$')
cur, start, found = None, None, None
for i, l in enumerate(lines):
    m = head.match(l)
    if m:
        cur = m.group(1)
        if cur == section and start is None:
            start = i
        continue
    if cur == section and found is None and opt.match(l):
        found = i
if op == 'get':
    if found is not None:
        print(opt.match(lines[found]).group(1))
    sys.exit(0)
new = f'{option} = {sys.argv[5]}'
if found is not None:
    lines[found] = new
elif start is not None:
    lines.insert(start + 1, new)
else:
    lines += ['', f'[{section}]', new]
open(path, 'w').write('\n'.join(lines) + '\n')
EOF
iniset() { if [ "$1" = -sudo ]; then shift; fi; /usr/bin/python3 "$INI" set "$@"; }
iniget() { /usr/bin/python3 "$INI" get "$@"; }
inidelete() { :; }
is_service_enabled() {
  local s
  for s in "$@"; do [[ ,$ENABLED_SERVICES, == *,$s,* ]] && return 0; done
  return 1
}
run_process() { # SERVICE COMMAND [GROUP [USER]]
  if is_service_enabled "$1"; then echo "$1|$2|${3:-}|${4:-}" >> "$W/run_process.log"; fi
}
die() { shift; fail "die: $*"; }
define_plugin() { echo "$1" > "$W/define_plugin.log"; }
echo_summary() { echo "summary: $*" >&2; }
install_package() { echo "install_package $*" >> "$W/packages.log"; }
sudo() { "$@"; }   # we are root; DevStack's stack user would sudo
# DevStack's start_nova_compute, reduced to what matters here: it builds
# nova-cpu.conf from nova.conf and then, for VIRT_DRIVER=docker, starts
# Python's nova-compute as n-cpu (lib/nova, start_nova_compute)
start_nova_compute() {
  cp "$NOVA_CONF" "$NOVA_CPU_CONF"
  inidelete "$NOVA_CPU_CONF" database connection
  if [[ "$VIRT_DRIVER" = 'docker' || "$VIRT_DRIVER" = 'zun' ]]; then
    run_process n-cpu "$NOVA_BIN_DIR/nova-compute --config-file $NOVA_CPU_CONF" "$DOCKER_GROUP"
  fi
}

# --------------------------------------------------- what stack.sh has set up
STACK_USER=$(id -un)
export VIRT_DRIVER=docker DOCKER_GROUP=docker STACK_USER REGION_NAME=RegionOne
ENABLED_SERVICES=key,n-api,n-cond,n-sch,n-cpu,placement-api,g-api,q-svc,q-agt,tempest
DEST=$W/opt/stack NOVA_BIN_DIR=/usr/local/bin
NOVA_CONF_DIR=$W/etc/nova NOVA_CONF=$W/etc/nova/nova.conf NOVA_CPU_CONF=$W/etc/nova/nova-cpu.conf
GLANCE_API_CONF=$W/glance-api.conf TEMPEST_CONFIG=$W/tempest.conf
SYSTEMD_DIR=$W/systemd SYSTEMCTL=true
NOVA_DOCKER_METRICS_LISTEN=127.0.0.1:9777
declare -A GITDIR=([nova-docker]=$REPO)
cp "$INPUT" "$NOVA_CONF"
printf '[DEFAULT]\nbind_host = 127.0.0.1\n\n[image_format]\ncontainer_formats = bare,ovf\ndisk_formats = qcow2\n' > "$GLANCE_API_CONF"
printf '[compute-feature-enabled]\nresize = True\nsuspend = False\n' > "$TEMPEST_CONFIG"

# ------------------------------------------------ override-defaults, settings
IMAGE_URLS="http://example.invalid/cirros.qcow2" DEFAULT_IMAGE_NAME=cirros
# shellcheck source=../../devstack/override-defaults
source "$REPO/devstack/override-defaults"
[ -z "$IMAGE_URLS" ] || fail "override-defaults left IMAGE_URLS=$IMAGE_URLS"
[ "$DEFAULT_IMAGE_NAME" = cirros-docker ] || fail "DEFAULT_IMAGE_NAME=$DEFAULT_IMAGE_NAME"
# shellcheck source=../../devstack/settings
source "$REPO/devstack/settings"
[ "$NOVA_DOCKER_DIR" = "$REPO" ] || fail "NOVA_DOCKER_DIR=$NOVA_DOCKER_DIR"
[ "$NOVA_DOCKER_CONF" = "$NOVA_CONF_DIR/nova-docker.conf" ] || fail "NOVA_DOCKER_CONF=$NOVA_DOCKER_CONF"
[ "$(cat "$W/define_plugin.log" 2>/dev/null)" = nova-docker ] || fail "settings did not call define_plugin nova-docker"

# ------------------------------------------------- the Rust toolchain (install)
# Stub cargo, rustup and curl on a PATH of their own (HOME and CARGO_HOME are
# fresh, so no real toolchain is seen). The rustup-init "downloaded" by the
# stub curl, and the stub rustup, put a new cargo in CARGO_HOME; every call
# is recorded in calls.log.
want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$REPO/Cargo.toml")
[ -n "$want" ] || fail "no rust-version in Cargo.toml"
toolchain() { # NAME CARGO_VERSION|"" rustup|none: prepares $W/rust-NAME, prints the PATH to use
  local d=$W/rust-$1
  rm -rf "$d"; mkdir -p "$d/bin" "$d/home"
  if [ -n "$2" ]; then printf '#!/bin/sh\necho "cargo %s (stub)"\n' "$2" > "$d/bin/cargo"; fi
  # new cargo: what a successful install leaves in CARGO_HOME
  printf '#!/bin/sh\necho "cargo 9.99.0 (installed stub)"\n' > "$d/new-cargo"
  # shellcheck disable=SC2016 # expanded by the stubs, not here
  printf '#!/bin/sh\necho "curl $*" >> "%s/calls.log"\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\nprintf "echo \\"rustup-init \\$*\\" >> %s/calls.log\\nmkdir -p \\"\\$CARGO_HOME/bin\\"\\ncp %s/new-cargo \\"\\$CARGO_HOME/bin/cargo\\"\\n" > "$out"\n' \
    "$d" "$d" "$d" > "$d/bin/curl"
  if [ "$3" = rustup ]; then
    # shellcheck disable=SC2016
    printf '#!/bin/sh\necho "rustup $*" >> "%s/calls.log"\nmkdir -p "$CARGO_HOME/bin"\ncp %s/new-cargo "$CARGO_HOME/bin/cargo"\n' \
      "$d" "$d" > "$d/bin/rustup"
  fi
  chmod +x "$d"/bin/* "$d/new-cargo"
  echo "$d/bin:/usr/bin:/bin"
}
ensure() { # NAME PATH [VAR=VALUE...]: nova_docker_ensure_cargo with that toolchain; prints the cargo
  local d=$W/rust-$1 path=$2; shift 2
  # shellcheck disable=SC2016 # $1 is the inner bash's
  env -i "PATH=$path" "HOME=$d/home" "CARGO_HOME=$d/home/.cargo" "$@" bash -c \
    'source "$1/devstack/lib/nova-docker"; nova_docker_ensure_cargo "$1"' _ "$REPO" 2> "$d/stderr"
}
# an old cargo, no rustup: rustup-init from https://sh.rustup.rs, stable, minimal
p=$(toolchain old 1.63.0 none)
got=$(ensure old "$p") || fail "old cargo: $(cat "$W/rust-old/stderr")"
[ "$got" = "$W/rust-old/home/.cargo/bin/cargo" ] || fail "old cargo: printed '$got'"
grep -q '^curl .*--proto =https .*https://sh.rustup.rs$' "$W/rust-old/calls.log" || fail "curl: $(cat "$W/rust-old/calls.log")"
grep -qx 'rustup-init -y --no-modify-path --profile minimal --default-toolchain stable' "$W/rust-old/calls.log" ||
  fail "rustup-init: $(cat "$W/rust-old/calls.log")"
# no cargo at all: the same
p=$(toolchain none "" none)
got=$(ensure none "$p") || fail "no cargo: $(cat "$W/rust-none/stderr")"
[ "$got" = "$W/rust-none/home/.cargo/bin/cargo" ] || fail "no cargo: printed '$got'"
# an old cargo managed by rustup: rustup installs stable, nothing downloaded
p=$(toolchain rustup 1.63.0 rustup)
got=$(ensure rustup "$p") || fail "rustup: $(cat "$W/rust-rustup/stderr")"
[ "$got" = "$W/rust-rustup/home/.cargo/bin/cargo" ] || fail "rustup: printed '$got'"
grep -qx 'rustup toolchain install stable --profile minimal' "$W/rust-rustup/calls.log" ||
  fail "rustup: $(cat "$W/rust-rustup/calls.log")"
if grep -q '^curl' "$W/rust-rustup/calls.log"; then fail "rustup is there, yet curl ran"; fi
# a cargo exactly as new as rust-version: used as it is, nothing installed
p=$(toolchain current "$want" none)
got=$(ensure current "$p") || fail "current cargo: $(cat "$W/rust-current/stderr")"
[ "$got" = "$W/rust-current/bin/cargo" ] || fail "current cargo: printed '$got'"
[ ! -e "$W/rust-current/calls.log" ] || fail "installed although cargo $want is enough: $(cat "$W/rust-current/calls.log")"
# installing forbidden: fails, saying why, and installs nothing
p=$(toolchain forbidden 1.63.0 none)
if ensure forbidden "$p" NOVA_DOCKER_INSTALL_RUST=False >/dev/null; then fail "NOVA_DOCKER_INSTALL_RUST=False: no failure"; fi
grep -q "NOVA_DOCKER_INSTALL_RUST=False forbids" "$W/rust-forbidden/stderr" || fail "$(cat "$W/rust-forbidden/stderr")"
[ ! -e "$W/rust-forbidden/calls.log" ] || fail "NOVA_DOCKER_INSTALL_RUST=False, yet: $(cat "$W/rust-forbidden/calls.log")"

# ----------------------------------------------------------------- post-config
# shellcheck source=../../devstack/plugin.sh
source "$REPO/devstack/plugin.sh" stack post-config
expect "$GLANCE_API_CONF" image_format container_formats bare,ovf,docker
expect "$GLANCE_API_CONF" image_format disk_formats qcow2,raw
expect "$GLANCE_API_CONF" DEFAULT bind_host 127.0.0.1
expect "$NOVA_DOCKER_CONF" docker host_url unix:///var/run/docker.sock
expect "$NOVA_DOCKER_CONF" neutron ovs_bridge br-int
expect "$NOVA_DOCKER_CONF" docker metrics_listen 127.0.0.1:9777
# no Q_AGENT here, no isolated metadata: routers serve the metadata
expect "$NOVA_DOCKER_CONF" docker metadata_route router
( # the metadata route follows the Neutron backend (subshell: no leak)
  f=$W/metadata-route.conf
  Q_AGENT=ovn nova_docker_configure_compute "$f"
  expect "$f" docker metadata_route metadata_port
  Q_AGENT=ovn NOVA_DOCKER_ISOLATED_METADATA_ROUTE=True nova_docker_configure_compute "$f"
  expect "$f" docker metadata_route metadata_port
  Q_AGENT=openvswitch NOVA_DOCKER_ISOLATED_METADATA_ROUTE=True nova_docker_configure_compute "$f"
  expect "$f" docker metadata_route dhcp_port
  Q_AGENT=openvswitch nova_docker_configure_compute "$f"
  expect "$f" docker metadata_route router
  Q_AGENT=ovn NOVA_DOCKER_METADATA_ROUTE=router nova_docker_configure_compute "$f"
  expect "$f" docker metadata_route router
)
# again (idempotent): the formats are not added twice
source "$REPO/devstack/plugin.sh" stack post-config
expect "$GLANCE_API_CONF" image_format container_formats bare,ovf,docker

# ------------------------------------------------------ start_nova (stack.sh)
saved=$ENABLED_SERVICES
# shellcheck disable=SC2119 # called as stack.sh calls it, without arguments
start_nova_compute
[ "$ENABLED_SERVICES" = "$saved" ] || fail "ENABLED_SERVICES changed: $ENABLED_SERVICES"
[ -s "$NOVA_CPU_CONF" ] || fail "DevStack's start_nova_compute did not run (no nova-cpu.conf)"
[ "$(wc -l < "$W/run_process.log")" = 1 ] || fail "run_process calls: $(cat "$W/run_process.log")"
want="n-cpu|/usr/local/bin/nova-docker serve --config-file $NOVA_CPU_CONF --config-file $NOVA_DOCKER_CONF||root"
[ "$(cat "$W/run_process.log")" = "$want" ] || fail "run_process: $(cat "$W/run_process.log"), expected $want"

# ----------------------------------------------------------------- test-config
NOVA_DOCKER_IMAGE_ID=11111111-2222-4333-8444-555555555555
source "$REPO/devstack/plugin.sh" stack test-config
for f in pause suspend snapshot console_output interface_attach; do
  expect "$TEMPEST_CONFIG" compute-feature-enabled "$f" True
done
for f in resize cold_migration live_migration shelve rescue vnc_console spice_console serial_console \
         attach_encrypted_volume config_drive volume_multiattach; do
  expect "$TEMPEST_CONFIG" compute-feature-enabled "$f" False
done
expect "$TEMPEST_CONFIG" compute image_ref "$NOVA_DOCKER_IMAGE_ID"
expect "$TEMPEST_CONFIG" compute image_ref_alt "$NOVA_DOCKER_IMAGE_ID"
expect "$TEMPEST_CONFIG" validation run_validation False

# ---------------------------------------------------- a non-root service user
( # a subshell: these settings must not leak into the checks below
  # shellcheck disable=SC2030
  NOVA_DOCKER_USER=nova NOVA_DOCKER_ROOTWRAP_BIN=$W/rootwrap-bin NOVA_ROOTWRAP=/usr/local/bin/nova-rootwrap
  # shellcheck disable=SC2317 # called by lib/nova-docker
  _nova_docker_root() { case $1 in mkdir|chown) echo "root: $*" >> "$W/root.log" ;; *) "$@" ;; esac; }
  nova_docker_devstack_install_rootwrap "$REPO"
  [ -s "$NOVA_CONF_DIR/rootwrap.d/nova-docker.filters" ] || fail "filters not installed"
  grep -qx "exec sudo -n \"/usr/local/bin/nova-rootwrap\" \"$NOVA_CONF_DIR/rootwrap.conf\" ovs-vsctl \"\$@\"" \
    "$W/rootwrap-bin/ovs-vsctl" || fail "ovs-vsctl wrapper: $(tail -n 1 "$W/rootwrap-bin/ovs-vsctl")"
  : > "$W/run_process.log"
  nova_docker_devstack_run_n_cpu
  grep -q '^n-cpu|.*|docker|nova$' "$W/run_process.log" || fail "non-root run_process: $(cat "$W/run_process.log")"
  unit=$SYSTEMD_DIR/devstack@n-cpu.service
  expect "$unit" Service AmbientCapabilities "CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE"
  expect "$unit" Service Environment "\"PATH=$W/rootwrap-bin:$PATH\""
  grep -qx 'root: chown nova /var/run/netns' "$W/root.log" || fail "/var/run/netns not given to nova"
)

# --------------------------------- lib/nova-docker's own iniset/iniget (aio.sh)
(
  unset -f iniset iniget
  # shellcheck source=../../devstack/lib/nova-docker
  source "$REPO/devstack/lib/nova-docker"
  f=$W/fallback.conf
  printf '# comment\n[DEFAULT]\nhost = a\n\n[docker]\ndebug = x\n' > "$f"
  iniset "$f" DEFAULT host b
  iniset "$f" docker host_url unix:///run/d.sock
  iniset "$f" neutron ovs_bridge br-x
  iniset "$f" neutron ovs_bridge br-y
  expect "$f" DEFAULT host b
  expect "$f" docker host_url unix:///run/d.sock
  expect "$f" docker debug x
  expect "$f" neutron ovs_bridge br-y
  [ "$(iniget "$f" docker host_url)" = unix:///run/d.sock ] || fail "fallback iniget"
  [ -z "$(iniget "$f" nosuch option)" ] || fail "fallback iniget of a missing option"
  [ "$(grep -c ovs_bridge "$f")" = 1 ] || fail "fallback iniset duplicated an option: $(cat "$f")"
  grep -qx '# comment' "$f" || fail "fallback iniset lost a comment"
)
echo "devstack plugin checks passed"
