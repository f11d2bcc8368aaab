"""tests/bench/run --port [--release newest|zed|both] and --density N (issue
24), each writing its own block of BENCHMARKS.md (--port: one per release,
Zed's right after newest's).

--port: boot with one Neutron port, on newest (OVS) and/or Zed (linuxbridge),
one control plane after the other (bench.py's main runs one Bench per
release). A compute host's servers get ports only on the L2 agent's host
(ND_NET_HOST: nd-net-newest, nd-net-zed), which the integration tests use
too: the step refuses to start while a compute runs under that name, runs
one host at a time under it and stops it before it ends. In order:
  1. Python nova-compute with the FakeDriver as ND_NET_HOST (newest: its
     compute node is the host's existing one, state_path/compute_id; Zed's
     FakeDriver names its node after the host, as ours does, so it finds the
     same record): serial boots with a port, then N at once with a port. The
     FakeDriver plugs nothing and waits for no event (nova/virt/fake.py
     spawn() records the VIFs and returns, in nova 34 as in Zed's 26; only
     real drivers call wait_for_instance_event), so its servers go ACTIVE
     with their port DOWN; the port state is recorded.
  2. nova-docker as ND_NET_HOST: serial rounds, each a boot with a port, a
     boot without one and the same by hand (`docker run -d`, then the Neutron
     port steps through the API: create the port bound to the host, a veth
     pair into the container's netns, addressed as our host does; newest:
     the host end into br-int with the ids os-vif sets; Zed: the host end
     into the Linux bridge brq<net-id[:11]>, which our driver does itself
     (the linuxbridge agent leaves a compute port's tap to the plugger);
     until the port is ACTIVE); then N at once with a port and N at once
     without.
  The split of our boots with a port comes from our /metrics and JSON log:
  Neutron binding = the network_allocate build phase (ports created/bound
  to the host, the info cache saved); our plumbing = network_plug phase
  start -> the "ports plugged" line (veth, netns, OVS port or bridge); the
  wait for network-vif-plugged = that line -> the network_plug phase end.
  The cleanup removes and reports anything of the run left on the host
  (containers of its servers, their netns entries and tap devices, ports).

--density N: N busybox instances (a 16 MiB flavor created and deleted here,
networks none) on our host nd-bench, 10 POSTs at a time: all ACTIVE, the boot
rate, then at rest (after a power-state sync pass, the interval set to
sync_interval_s so that one happens while it holds N): RSS and CPU over
rest_s, the heartbeat interval as Nova records it (os-services updated_at,
polled every second in that window), then RPC ping round trips (Rust client)
and the time of a sync pass (our metrics). Then all deleted and the leftovers
counted. The same (boot rate, RSS, CPU at rest) for a Python FakeDriver host.
"""
import os
import shlex
import threading
import time
import uuid as uuidlib

from bench import (BENCH_STATE, HOST, PREFIX, PYREG_HOST, BenchError, OurService, PythonCompute, Sampler,
                   cpu_at_most, docker_rm_label, event_instance, event_time, fmt_cpu, fmt_s, free_port,
                   group_pids, hist_delta, hist_pct, host_mapped, load_note, log, machine_line, met,
                   mval, op_delta, p50, parse_ts, pct, replace_block, scrape, sh, status_kb, wait_for)

PORT_MARK_START = '<!-- bench-port:start -->'
PORT_MARK_END = '<!-- bench-port:end -->'
PORT_ZED_MARK_START = '<!-- bench-port-zed:start -->'
PORT_ZED_MARK_END = '<!-- bench-port-zed:end -->'
DENSITY_MARK_START = '<!-- bench-density:start -->'
DENSITY_MARK_END = '<!-- bench-density:end -->'
DENSITY_FLAVOR = 'nd-bench-16m'


def rows_table(rows, who):
    return ['| Measurement | nova-docker | %s | Baseline | Aim | Met |' % who, '|---|---|---|---|---|---|'] + rows


def row_fn(rows):
    def row(what, ours, py='—', base='—', aim='—', ok=None):
        cells = [str(x).replace('|', '\\|') for x in (what, ours, py, base, aim, met(ok) if aim != '—' else '')]
        rows.append('| %s |' % ' | '.join(cells))
    return row


def header(r, title, start):
    lines = [start, '', '## %s, %s, commit %s' % (title, r['date'], r['commit']), '', machine_line(r), '']
    lines += load_note(r)
    if r.get('errors'):
        lines += ['**%d error(s) in this run:**' % len(r['errors']), ''] + [
            '- %s' % e.replace('\n', ' ')[:400] for e in r['errors']] + ['']
    if r.get('warnings'):
        lines += ['**Warning:**', ''] + ['- %s' % w for w in r['warnings']] + ['']
    return lines


def wait_host_free(api, host):
    """Refuses a host name a compute runs under (up in os-services after
    the grace a stopped one takes to look down)."""
    sv = api.service(host)
    if sv and sv['state'] == 'up':
        log('%s is up in os-services; waiting up to 90 s for it to go down' % host)
        try:
            wait_for('%s down' % host, lambda: api.service(host)['state'] != 'up', 90, poll=2)
        except BenchError:
            raise BenchError('a compute runs as %s (an integration test?): not starting one under that name'
                             % host) from None


def start_service(b, host, **kw):
    """Our service as HOST (b.ours), ready: its 'ready' log line, the host
    up, mapped, its provider with inventory."""
    b.ours = OurService(b.args.binary, b.env, free_port(), host=host, **kw)
    t0 = b.ours.start()

    def ready():
        if not b.ours.alive():
            return True
        return any(e.get('message') == 'ready: serving compute requests' for e in b.ours.log_events())
    wait_for('%s ready' % host, ready, 90, poll=0.1)
    if not b.ours.alive():
        raise BenchError('nova-docker exited (see %s)' % b.ours.log)
    wait_for('%s up' % host, lambda: (b.api.service(host) or {}).get('state') == 'up', 60)
    wait_for('%s provider' % host, lambda: b.api.provider_ready(host), 60)
    wait_for('%s mapped' % host, lambda: host_mapped(host), 60, poll=0.2)
    log('nova-docker as %s ready %.2f s after exec' % (host, time.monotonic() - t0))
    ensure_image(b)


def ensure_image(b):
    if getattr(b, 'image', None):
        return
    if b.api.image_by_name('nd-busybox') is None:
        log('importing nd-busybox into Glance')
        sh([b.args.binary, 'image', 'import', 'nd-busybox:latest', '--name', 'nd-busybox', '--config-file',
            b.ours.conf], env=dict(os.environ, OS_AUTH_TOKEN=b.env['ND_TOKEN']))
    b.image = b.api.image_by_name('nd-busybox')


def start_python(b, host, node_uuid=None, wait_mapped=True):
    py = PythonCompute(b.env, host=host, node_uuid=node_uuid)
    b.pyreg = py
    if os.path.exists(py.log):
        os.unlink(py.log)  # the lines below are this process's
    t0 = py.start()
    since = time.time()
    # a record left "up" by an earlier process: wait for this one's report
    wait_for('python nova-compute %s reporting' % host,
             lambda: py.proc.poll() is not None or reported_since(b.api, host, since), 240, poll=0.5)
    if py.proc.poll() is not None:
        raise BenchError('python nova-compute exited (see %s)' % py.log)
    if wait_mapped:
        wait_for('%s provider' % host, lambda: b.api.provider_ready(host), 120)
        wait_for('%s mapped' % host, lambda: host_mapped(host), 120, poll=0.5)
    log('python nova-compute as %s up %.1f s after exec' % (host, time.monotonic() - t0))
    return py


def reported_since(api, host, since):
    """Whether HOST's service record was updated (a heartbeat, or its
    creation) after epoch SINCE."""
    sv = api.service(host) or {}
    return sv.get('state') == 'up' and bool(sv.get('updated_at')) and parse_ts(sv['updated_at']) > since


def python_logged(py, text):
    try:
        with open(py.log, errors='replace') as f:
            return text in f.read()
    except OSError:
        return False


def node_uuid_of(api, host):
    rps = api.placement_get('/resource_providers?name=%s' % host).get('resource_providers', [])
    return rps[0]['uuid'] if rps else None


# ====================================================================== --port
# each release its own block; Zed's right after newest's
PORT_BLOCKS = {
    'newest': dict(start=PORT_MARK_START, end=PORT_MARK_END, after=None,
                   title='Latest port run on newest (nova 34, Open vSwitch): '
                         '`tests/bench/run --port --release newest`'),
    'zed': dict(start=PORT_ZED_MARK_START, end=PORT_ZED_MARK_END, after=PORT_MARK_END,
                title='Latest port run on Zed (nova 26, linuxbridge): `tests/bench/run --port --release zed`'),
}


class PortBench:
    def __init__(self, b):
        self.b, self.api, self.env = b, b.api, b.env
        self.release = b.release
        self.vif_type = b.env.get('ND_NET_VIF_TYPE')
        self.net_host = b.env['ND_NET_HOST']
        self.net_id = b.env['ND_NETWORK_ID']
        # zed: brq<net-id[:11]>, the Linux bridge the linuxbridge agent (and
        # our driver, creating it when missing) use; newest: br-int
        self.bridge = b.env.get('ND_NET_BRIDGE') or ('brq' + self.net_id[:11] if self.vif_type == 'bridge'
                                                     else 'br-int')
        self.nets = [{'uuid': self.net_id}]
        self.res = b.r.setdefault('port', {'net_host': self.net_host, 'vif_type': self.vif_type,
                                           'release': self.release, 'bridge': self.bridge})
        self.hand_ports = []  # (port id, tap, container) to remove
        self.hand_made = set()  # ids of every port the by-hand rounds made
        self.ovs_env = dict(os.environ, OVS_RUNDIR=b.env.get('OVS_RUNDIR') or b.env.get('ND_OVS_RUNDIR') or '')

    def run(self):
        b = self.b
        if self.vif_type not in ('ovs', 'bridge'):
            raise BenchError('--port measures OVS (newest) or linuxbridge (zed); this control plane (%s) has '
                             'vif_type %s' % (self.release, self.vif_type))
        wait_host_free(self.api, self.net_host)
        OurService.stop_stale(os.path.join(BENCH_STATE, self.net_host + '.pid'))
        b.cleanup_servers()
        n, k = b.cfg['serial'], b.cfg['parallel']
        # the image in Glance (imported through a conf of ours if missing)
        b.ours = OurService(b.args.binary, b.env, free_port(), host=self.net_host)
        ensure_image(b)
        b.ours = None
        # 1. Python nova-compute + FakeDriver as the agent's host
        py = start_python(b, self.net_host, node_uuid=node_uuid_of(self.api, self.net_host))
        try:
            sid, dt = b.boot_with(self.net_host, 'port-warm-fake', self.nets)
            b.timed_delete(sid)
            fake, states = [], []
            for i in range(n):
                sid, dt = b.boot_with(self.net_host, 'port-fake', self.nets)
                fake.append(dt)
                states.append(self.port_status(sid))
                b.timed_delete(sid)
                log('python + FakeDriver with a port %d/%d: %.2f s (port %s)' % (i + 1, n, dt, states[-1]))
            self.res['fake_port'] = fake
            self.res['fake_port_status'] = states
            self.res['fake_waits_for_event'] = python_logged(py, 'network-vif-plugged')
            dt, ids, errors = b.many(self.net_host, k, 'portpar-fake', networks=self.nets)
            self.res['fake_par'] = {'n': k, 'all_active_s': dt, 'errors': errors,
                                    'delete_all_s': b.delete_all(ids, PREFIX + 'portpar-fake-')}
            log('python: %d at once with a port: %.2f s' % (k, dt))
        except BaseException:
            # deleted while the FakeDriver host runs: a delete cast to a
            # stopped compute that still looks up would never be done
            b.cleanup_servers()
            raise
        finally:
            py.stop()
            b.pyreg = None
        # 2. ours as the agent's host (its compute node: the same one)
        start_service(b, self.net_host)
        for nets, tag in ((self.nets, 'port-warm'), ('none', 'noport-warm')):
            sid, _ = b.boot_with(self.net_host, tag, nets)
            b.timed_delete(sid)
        self.hand_round()  # warm-up of the by-hand path
        ours, none, hand, split = [], [], [], []
        for i in range(n):
            m0 = scrape(b.ours.metrics)
            sid, dt = b.boot_with(self.net_host, 'port', self.nets)
            m1 = b.build_done(m0)
            ours.append(dt)
            split.append(self.phases(sid, m0, m1))
            b.timed_delete(sid)
            sid, dt2 = b.boot_with(self.net_host, 'noport', 'none')
            none.append(dt2)
            b.timed_delete(sid)
            hand.append(self.hand_round())
            log('round %d/%d: with a port %.2f s, without %.2f s, by hand %.2f s' % (
                i + 1, n, dt, dt2, hand[-1]['total_s']))
        self.res.update(ours_port=ours, ours_none=none, hand=hand, split=split)
        for nets, who in ((self.nets, 'ours_par_port'), ('none', 'ours_par_none')):
            tag = 'portpar-%s' % who[-4:]
            dt, ids, errors = b.many(self.net_host, k, tag, networks=nets)
            self.res[who] = {'n': k, 'all_active_s': dt, 'errors': errors,
                             'delete_all_s': b.delete_all(ids, PREFIX + tag + '-')}
            if errors:
                b.errors.extend('%d at once (%s): %s' % (k, who, e) for e in errors[:5])
            log('ours: %d at once (%s): %.2f s' % (k, who, dt))
        for who in ('fake_par',):
            if self.res[who]['errors']:
                b.errors.extend('%d at once (%s): %s' % (k, who, e) for e in self.res[who]['errors'][:5])

    def port_status(self, sid):
        ports = self.api.neutron('GET', '/v2.0/ports?device_id=%s' % sid)['ports']
        return ports[0]['status'] if ports else 'no port'

    def phases(self, sid, m0, m1):
        """One boot with a port: metrics deltas and its log lines."""
        d = {ph: op_delta(m0, m1, 'build', ph)[0] for ph in ('network_allocate', 'network_plug', 'active_saved',
                                                             'spawn', 'claim')}
        n = 'nova_docker_rpc_duration_seconds_sum'
        d['rpc_s'] = mval(m1, n, method='build_and_run_instance') - mval(m0, n, method='build_and_run_instance')
        marks = {}
        for ev in self.b.ours.log_events():
            if event_instance(ev) != sid:
                continue
            msg = ev.get('message')
            phase = ev.get('phase') or (ev.get('extra') or {}).get('phase')
            if msg == 'ports plugged':
                marks['plugged'] = event_time(ev)
            elif msg == 'build phase done' and phase == 'network_plug':
                marks['plug_end'] = event_time(ev)
        if 'plugged' in marks and 'plug_end' in marks:
            d['vif_wait_s'] = max(0.0, marks['plug_end'] - marks['plugged'])
            d['plumbing_s'] = max(0.0, d['network_plug'] - d['vif_wait_s'])
        else:
            self.b.errors.append('port split: no "ports plugged"/network_plug log lines for %s' % sid)
        return d

    def subnet(self, sid):
        if not hasattr(self, '_subnets'):
            self._subnets = {}
        if sid not in self._subnets:
            self._subnets[sid] = self.api.neutron('GET', '/v2.0/subnets/%s' % sid)['subnet']
        return self._subnets[sid]

    def hand_round(self):
        """`docker run -d` plus the Neutron port steps by hand, as our host
        does them: the port created bound to the host, a veth pair whose peer
        goes into the container's netns as eth0, the host end `tap` + the
        port id's first 11 characters wired as the release's agent expects
        (plumb_ovs / plumb_bridge), then GET the port every 50 ms until
        ACTIVE."""
        t0 = time.monotonic()
        cid = sh(['docker', 'run', '-d', '--network', 'none', '--label', 'nd-bench=1', 'nd-busybox:latest']).strip()
        t1 = time.monotonic()
        dev = str(uuidlib.uuid4())
        port = self.api.neutron('POST', '/v2.0/ports', ok=(201,), json={'port': {
            'network_id': self.net_id, 'name': PREFIX + 'hand', 'device_id': dev, 'device_owner': 'compute:nova',
            'binding:host_id': self.net_host}})['port']
        t2 = time.monotonic()
        tap = 'tap' + port['id'][:11]
        self.hand_ports.append((port['id'], tap, cid))
        self.hand_made.add(port['id'])
        if port.get('binding:vif_type') != self.vif_type:
            raise BenchError('by hand: port bound as %s, not %s' % (port.get('binding:vif_type'), self.vif_type))
        mtu = (port.get('binding:vif_details') or {}).get('mtu') or 1450
        net_mtu = self.net_mtu()
        mtu = net_mtu or mtu
        pid = sh(['docker', 'inspect', '-f', '{{.State.Pid}}', cid]).strip()
        if self.vif_type == 'ovs':
            self.plumb_ovs(port, tap, pid, mtu, dev)
        else:
            self.plumb_bridge(port, tap, pid, mtu)
        t3 = time.monotonic()
        deadline = t3 + 120
        while True:
            st = self.api.neutron('GET', '/v2.0/ports/%s' % port['id'])['port']['status']
            if st == 'ACTIVE':
                break
            if time.monotonic() > deadline:
                raise BenchError('by hand: port %s not ACTIVE after 120 s (%s)' % (port['id'], st))
            time.sleep(0.05)
        t4 = time.monotonic()
        self.remove_hand()
        return {'total_s': t4 - t0, 'docker_run_s': t1 - t0, 'port_create_s': t2 - t1, 'plumbing_s': t3 - t2,
                'active_wait_s': t4 - t3}

    def plumb_ovs(self, port, tap, pid, mtu, dev):
        """newest: the peer addressed inside (the port's MAC, the network's
        MTU, its first fixed IP and the subnet's gateway), the host end added
        to br-int with iface-id, iface-status, attached-mac and vm-uuid in
        one ovs-vsctl transaction, then up."""
        ip = port['fixed_ips'][0]
        sub = self.subnet(ip['subnet_id'])
        plen = sub['cidr'].split('/')[1]
        inside = 'ip link set eth0 address %s mtu %s && ip addr add %s/%s dev eth0 && ip link set eth0 up' % (
            port['mac_address'], mtu, ip['ip_address'], plen)
        if sub.get('gateway_ip'):
            inside += ' && ip route add default via %s' % sub['gateway_ip']
        sh('ip link add %s mtu %s type veth peer name eth0 mtu %s netns %s && nsenter -t %s -n sh -c %s && '
           'ovs-vsctl -- add-port %s %s -- set Interface %s external-ids:iface-id=%s external-ids:iface-status=active '
           'external-ids:attached-mac=%s external-ids:vm-uuid=%s && ip link set %s up' % (
               tap, mtu, mtu, pid, pid, "'%s'" % inside, self.bridge, tap, tap, port['id'], port['mac_address'],
               dev, tap), env=self.ovs_env)

    def bridge_inside(self, port):
        """The commands inside the container's netns for a linuxbridge port,
        as src/net/plug.rs configure_inside does them: IPv6 sysctls (DAD and
        RA off, IPv6 on) when the port has a v6 address, lo and eth0 up,
        every fixed IP (v6 nodad), one default route per family that has an
        address, the subnets' host routes."""
        ips = port['fixed_ips']
        fam = {4: [], 6: []}
        for ip in ips:
            fam[6 if ':' in ip['ip_address'] else 4].append(ip)
        cmds = []
        if fam[6]:
            cmds += ['echo 0 > /proc/sys/net/ipv6/conf/eth0/%s' % k for k in ('accept_dad', 'accept_ra')]
            cmds.append('echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6')
        cmds += ['ip link set lo up', 'ip link set eth0 up']
        gws, routes = {}, []
        for f in (4, 6):
            for ip in fam[f]:
                sub = self.subnet(ip['subnet_id'])
                cmds.append('ip -%d addr add %s/%s dev eth0%s' % (
                    f, ip['ip_address'], sub['cidr'].split('/')[1], ' nodad' if f == 6 else ''))
                if sub.get('gateway_ip') and f not in gws:
                    gws[f] = sub['gateway_ip']
                routes += [(f, r['destination'], r.get('nexthop')) for r in sub.get('host_routes') or []
                           if (':' in r['destination']) == (f == 6)]
        cmds += ['ip -%d route add default via %s dev eth0' % (f, gw) for f, gw in sorted(gws.items())]
        cmds += ['ip -%d route add %s%s dev eth0' % (f, dst, ' via %s' % nh if nh else '') for f, dst, nh in routes]
        return ' && '.join(cmds)

    def plumb_bridge(self, port, tap, pid, mtu):
        """zed (linuxbridge), as our driver plugs a `bridge` VIF: the Linux
        bridge brq<net-id[:11]> looked up (created, forward delay 0 and up,
        only when missing), the veth created with the host end's MAC fe: +
        the port MAC[1..], the network's MTU and the peer born inside the
        container's netns as eth0 with the port's MAC; the host end enslaved
        to the bridge and up (for a compute:* port the agent does not add
        the tap to the bridge: the plugger does); then the inside
        (bridge_inside)."""
        mac = port['mac_address']
        host_mac = 'fe' + mac[2:]
        sh('{ ip link show dev %(br)s >/dev/null 2>&1 || { ip link add %(br)s type bridge forward_delay 0 && '
           'ip link set %(br)s up; }; } && '
           'ip link add %(tap)s address %(hmac)s mtu %(mtu)s type veth peer name eth0 address %(mac)s mtu %(mtu)s '
           'netns %(pid)s && ip link set %(tap)s master %(br)s up && nsenter -t %(pid)s -n sh -c %(inside)s' % dict(
               br=self.bridge, tap=tap, hmac=host_mac, mac=mac, mtu=mtu, pid=pid,
               inside=shlex.quote(self.bridge_inside(port))))

    def net_mtu(self):
        if not hasattr(self, '_mtu'):
            self._mtu = self.api.neutron('GET', '/v2.0/networks/%s' % self.net_id)['network'].get('mtu')
        return self._mtu

    def remove_hand(self):
        while self.hand_ports:
            pid, tap, cid = self.hand_ports.pop()
            if self.vif_type == 'ovs':
                sh(['ovs-vsctl', '--if-exists', 'del-port', tap], check=False, env=self.ovs_env)
            sh(['ip', 'link', 'del', tap], check=False)
            try:
                self.api.neutron('DELETE', '/v2.0/ports/%s' % pid, ok=(204, 404))
            except Exception as e:  # noqa: BLE001
                self.b.errors.append('by hand: deleting port %s: %s' % (pid, e))
            sh(['docker', 'rm', '-f', cid], check=False)

    def cleanup(self):
        b = self.b
        self.remove_hand()
        if b.pyreg:
            b.pyreg.stop()
        # the host ends of this run's ports, known while their servers exist
        taps = self.run_taps()
        b.cleanup()  # servers, our service, containers; then the records
        # b.cleanup deletes nd-bench's service record, never the agent host's
        # (the integration tests keep using it)
        self.sweep(taps)

    def run_taps(self):
        """tap names of the ports of servers this run created (by its
        POSTs), still bound to the agent's host."""
        created = set(self.api.created)
        try:
            ports = self.api.neutron('GET', '/v2.0/ports?binding:host_id=%s' % self.net_host)['ports']
        except Exception as e:  # noqa: BLE001
            self.b.errors.append('cleanup: listing the ports of %s: %s' % (self.net_host, e))
            return set()
        return {'tap' + p['id'][:11] for p in ports if p.get('device_id') in created}

    def sweep(self, taps):
        """What a run that failed midway can leave (e.g. our service died,
        and nova-api deleted its servers locally): containers of this run's
        servers, their netns entries (which keep the veth alive), host ends
        and ports. Removes them and records each as an error; on a clean run
        it finds nothing."""
        b, created, left = self.b, set(self.api.created), []
        try:
            self.local_delete(left)
        except Exception as e:  # noqa: BLE001
            b.errors.append('cleanup: deleting the servers left: %s' % e)
        out = sh(['docker', 'ps', '-a', '--no-trunc', '--filter', 'label=nova.host=%s' % self.net_host, '--format',
                  '{{.ID}} {{.Label "nova.instance"}}'], check=False)
        for line in out.splitlines():
            cid, _, inst = line.partition(' ')
            if inst.strip() in created:
                sh(['docker', 'rm', '-f', cid], check=False)
                left.append('container %s (server %s)' % (cid[:12], inst.strip()))
                if os.path.exists(os.path.join('/var/run/netns', cid)):
                    sh(['ip', 'netns', 'delete', cid], check=False)
                    left.append('netns entry %s' % cid[:12])
        for tap in sorted(taps):
            if os.path.exists(os.path.join('/sys/class/net', tap)):
                if self.vif_type == 'ovs':
                    sh(['ovs-vsctl', '--if-exists', 'del-port', tap], check=False, env=self.ovs_env)
                sh(['ip', 'link', 'del', tap], check=False)
                left.append('host device %s' % tap)
        try:
            for p in self.api.neutron('GET', '/v2.0/ports?binding:host_id=%s' % self.net_host)['ports']:
                if p.get('device_id') in created or p['id'] in self.hand_made:
                    self.api.neutron('DELETE', '/v2.0/ports/%s' % p['id'], ok=(204, 404))
                    left.append('port %s' % p['id'])
            if b.api.servers(PREFIX):
                left.append('servers named %s* (still listed)' % PREFIX)
        except Exception as e:  # noqa: BLE001
            b.errors.append('cleanup: checking for leftovers: %s' % e)
        if left:
            b.errors.append('cleanup: left by the run and removed now: %s' % ', '.join(left))
            log('cleanup: removed leftovers: %s' % ', '.join(left))
        else:
            log('cleanup: nothing left (servers, ports, containers, host devices of this run)')

    def local_delete(self, left):
        """Servers of the run still listed after b.cleanup (their compute
        died or was stopped while their delete was cast to it): once Nova
        sees the host down (service_down_time, 60 s), DELETE again, which
        nova-api then does itself (ports released); the host side is for
        sweep."""
        api, created = self.api, set(self.api.created)

        def ours():
            # only the servers this run's POSTs made: a name is anyone's
            return [s for s in api.servers(PREFIX) if s['id'] in created]
        if not ours():
            return
        log('cleanup: servers still listed; waiting for %s to be down to delete them again' % self.net_host)
        wait_for('%s down' % self.net_host, lambda: (api.service(self.net_host) or {}).get('state') != 'up', 120,
                 poll=2)
        for s in ours():
            api.delete(s['id'])
            left.append('server %s (deleted by nova-api, its host down)' % s['id'])
        wait_for('servers of this run gone', lambda: not ours(), 120, poll=0.5)

    def write_report(self, path):
        r, p = self.b.r, self.res
        blk = PORT_BLOCKS[self.release]
        zed = self.vif_type == 'bridge'
        rows = []
        row = row_fn(rows)
        o, nn, f = p.get('ours_port'), p.get('ours_none'), p.get('fake_port')
        hand = [h['total_s'] for h in p.get('hand', [])]
        if o and nn:
            aim_ok = p50(o) <= 1.5 * p50(nn) and (not f or p50(o) < p50(f))
            row('Boot API → ACTIVE with one port, %d serial, p50' % len(o), fmt_s(p50(o)),
                fmt_s(p50(f)) if f else '—', 'by hand (`docker run -d` + port steps) %s' % fmt_s(p50(hand)),
                '≤ 1.5× ours without a port (%s), below the Python host\'s with a port' % fmt_s(1.5 * p50(nn)),
                aim_ok if f else 'n/a (no Python figure)')
            row('Boot API → ACTIVE with one port, p95', fmt_s(pct(o, .95)), fmt_s(pct(f, .95)) if f else '—',
                'by hand %s' % fmt_s(pct(hand, .95)))
            row('Boot API → ACTIVE without a port (same run, interleaved), p50 / p95', '%s / %s' % (
                fmt_s(p50(nn)), fmt_s(pct(nn, .95))))
            # the same boots, each less its own wait for network-vif-plugged:
            # what the FakeDriver host, which plugs nothing, does not wait for
            sp = p.get('split') or []
            less = [t - x['vif_wait_s'] for t, x in zip(o, sp) if 'vif_wait_s' in x]
            if less and f:
                row('The same boots with a port, each less its own wait for network-vif-plugged (which the '
                    'FakeDriver host skips), p50', fmt_s(p50(less)), fmt_s(p50(f)), '—',
                    'below the Python host\'s with a port (like for like)', p50(less) < p50(f))
        po, pn, pf = p.get('ours_par_port'), p.get('ours_par_none'), p.get('fake_par')

        def par(x):
            return '—' if not x else '%s%s' % (fmt_s(x['all_active_s']), ', %d error(s)' % len(x['errors'])
                                                if x['errors'] else '')
        if po and pn:
            ok = (not po['errors'] and po['all_active_s'] <= 1.5 * pn['all_active_s'] and
                  (not pf or po['all_active_s'] < pf['all_active_s']))
            row('%d boots at once with one port each, until all ACTIVE' % po['n'], par(po), par(pf), '—',
                '≤ 1.5× ours without a port (%s), below the Python host\'s' % fmt_s(1.5 * pn['all_active_s']), ok)
            row('%d boots at once without a port (same run)' % pn['n'], par(pn))
        if f:
            st = p.get('fake_port_status', [])
            row('Python FakeDriver host: its ports at ACTIVE', '—', '%d of %d DOWN (it plugs nothing; ACTIVE without '
                'waiting for network-vif-plugged%s)' % (sum(1 for s in st if s == 'DOWN'), len(st),
                                                          '' if not p.get('fake_waits_for_event') else
                                                          '; its log names network-vif-plugged'))
        lines = header(r, blk['title'], blk['start'])
        if zed:
            lines += ['Host `%s` (the L2 agent\'s, vif_type %s, neutron-linuxbridge-agent, Linux bridge `%s`); one '
                      'port on network `%s` per server. The Python FakeDriver host (Zed\'s nova 26 `fake.FakeDriver`, '
                      'whose compute node is named after the host, as ours) ran first, under the same name, then '
                      'ours; its rounds are not interleaved with ours.' % (
                          p.get('net_host'), p.get('vif_type'), p.get('bridge'), self.env.get('ND_NETWORK')), '']
        else:
            lines += ['Host `%s` (the L2 agent\'s, vif_type %s, Open vSwitch `br-int`); one port on network `%s` per '
                      'server. The Python FakeDriver host ran first, under the same name, then ours; its rounds are '
                      'not interleaved with ours.' % (p.get('net_host'), p.get('vif_type'), self.env.get('ND_NETWORK')),
                      '']
        lines += rows_table(rows, 'Python FakeDriver nova-compute') + ['']
        sp = p.get('split') or []
        if sp:
            def ph(k):
                v = [x[k] for x in sp if k in x]
                return fmt_s(p50(v)) if v else '—'
            lines += ['Where a boot with a port goes on nova-docker (p50 over %d boots, each on its own). From our '
                      '`/metrics` (`nova_docker_operation_duration_seconds{operation="build"}`, deltas per boot) and '
                      'JSON log: Neutron binding = the `network_allocate` phase (from the build\'s start: the ports\' '
                      'networks looked up, the ports created, bound to the host and described, beside the claim\'s '
                      'save and the image; the info cache is then saved beside the container\'s create, so the claim '
                      'save is inside this phase); our plumbing = the '
                      '`network_plug` phase up to the `ports plugged` line (%s, after the '
                      'container started); the wait for `network-vif-plugged` = that line to the phase\'s end; '
                      'the RPC `build_and_run_instance` = the whole compute side:' % (
                          len(sp), 'veth pair, netns, the host end in the Linux bridge' if zed
                          else 'veth pair, netns, OVS port'), '',
                      '| build RPC | claim save | Neutron binding | Docker start | our plumbing | wait for '
                      'network-vif-plugged | ACTIVE save |', '|---|---|---|---|---|---|---|',
                      '| %s |' % ' | '.join(ph(k) for k in ('rpc_s', 'claim', 'network_allocate', 'spawn',
                                                            'plumbing_s', 'vif_wait_s', 'active_saved')), '']
        hs = p.get('hand') or []
        if hs:
            def hp(k):
                return fmt_s(p50([x[k] for x in hs]))
            if zed:
                steps = ('the plumbing as our driver does it on linuxbridge (the bridge `%s` looked up, created only '
                         'if missing; `ip link add tap... address fe:... mtu M type veth peer name eth0 address MAC '
                         'mtu M netns PID`, `ip link set tap... master %s up`: the agent does not add a compute '
                         'port\'s tap to the bridge; `nsenter` addressing: IPv6 sysctls, lo and eth0 up, every fixed '
                         'IP, a default route per family)' % (p.get('bridge'), p.get('bridge')))
            else:
                steps = ('the plumbing (`ip link add ... type veth peer name eth0 netns PID`, `nsenter` addressing, '
                         '`ovs-vsctl add-port` with the ids, host end up)')
            lines += ['By hand (p50 over %d rounds; subprocesses and REST calls from Python, each step timed): '
                      '`docker run -d --network none`, `POST /v2.0/ports` with `binding:host_id`, %s, then `GET` the '
                      'port every 50 ms until ACTIVE:' % (len(hs), steps), '',
                      '| total | docker run | port create + bind | plumbing | until ACTIVE |',
                      '|---|---|---|---|---|', '| %s |' % ' | '.join(
                          hp(k) for k in ('total_s', 'docker_run_s', 'port_create_s', 'plumbing_s',
                                          'active_wait_s')), '']
        lines.append(blk['end'])
        replace_block(path, blk['start'], blk['end'], '\n'.join(lines), after=blk['after'])


# ====================================================================== --density
class DensityBench:
    def __init__(self, b):
        self.b, self.api = b, b.api
        self.res = b.r.setdefault('density', {'n': b.cfg['n']})
        self.flavor_made = False

    def run(self):
        b, n, cfg = self.b, self.b.cfg['n'], self.b.cfg
        wait_host_free(self.api, HOST)
        wait_host_free(self.api, PYREG_HOST)
        b.cleanup_servers()
        docker_rm_label('nova.host=' + HOST)
        for h in (HOST, PYREG_HOST):
            if self.api.service(h):
                self.api.service_delete(h)
        self.make_flavor()
        before = self.host_state()
        OurService.stop_stale(os.path.join(BENCH_STATE, HOST + '.pid'))
        start_service(b, HOST, cpu_ratio=max(128.0, float(n)),
                      extra_default='sync_power_state_interval = %d\n' % cfg['sync_interval_s'])
        self.res['sync_interval_s'] = cfg['sync_interval_s']
        # ours
        o = self.res['ours'] = {}
        dt, ids, errors = b.many(HOST, n, 'dens', post_threads=10, flavor=DENSITY_FLAVOR, timeout=max(600, 3 * n))
        o.update(boot_all_s=dt, active=self.count_active(PREFIX + 'dens-'), errors=errors[:10], posted=len(ids))
        log('density: %d of %d ACTIVE after %.1f s (%d error(s))' % (o['active'], n, dt, len(errors)))
        if errors:
            b.errors.extend('density on %s: %s' % (HOST, e) for e in errors[:5])
        o['rss_after_boots_mib'] = status_kb(b.ours.pid, 'VmRSS') / 1024.0
        # a power-state sync pass over all of them, then the rest window
        t_ready = time.time()
        try:
            wait_for('a power-state sync pass over %d instances' % o['active'],
                     lambda: any(x['instances'] >= o['active'] for x in self.sync_passes(t_ready)),
                     cfg['sync_interval_s'] + 120, poll=1)
        except BenchError as e:
            b.errors.append(str(e))
        o['sync_passes'] = self.sync_passes(0)
        beats = self.rest_window(b.ours.pid, cfg['rest_s'], heartbeat_host=HOST)
        o['rest'], o['heartbeat_s'] = beats
        o['rest_passes'] = [x for x in self.sync_passes(0) if x['end'] >= o['rest']['t_start'] - 0.001]
        m0 = scrape(b.ours.metrics)
        try:
            o['rpc_ms'] = b.rust_client('compute', HOST, cfg['rpc_calls'])['ms']
        except BenchError as e:
            b.errors.append('density RPC: %s' % e)
        m1 = scrape(b.ours.metrics)
        o['rpc_server_buckets'] = hist_delta(m0, m1, 'nova_docker_rpc_server_seconds', {'class': 'baseapi'})
        o['docker_ps'] = int(sh('docker ps -q --filter label=nova.host=%s | wc -l' % HOST).strip())
        t0 = time.monotonic()
        o['delete_all_s'] = b.delete_all(ids, PREFIX + 'dens-')
        log('density: all deleted in %.1f s' % (time.monotonic() - t0))
        time.sleep(5)
        o['left'] = self.leftovers(before, b.ours)
        o['rss_end_mib'] = status_kb(b.ours.pid, 'VmRSS') / 1024.0
        b.ours.stop()
        self.api.service_delete(HOST)
        # Python FakeDriver
        py = start_python(b, PYREG_HOST)
        f = self.res['fake'] = {}
        try:
            dt, ids, errors = b.many(PYREG_HOST, n, 'dens-fake', post_threads=10, flavor=DENSITY_FLAVOR,
                                     timeout=cfg['python_budget_s'])
            # its time budget running out is a figure (how many it reached), not an error
            budget = [e for e in errors if e.startswith('not all ACTIVE after')]
            errors = [e for e in errors if e not in budget]
            f.update(boot_all_s=dt, active=self.count_active(PREFIX + 'dens-fake-'), errors=errors[:10],
                     posted=len(ids), budget_hit=bool(budget))
            if errors:
                b.errors.extend('density on %s: %s' % (PYREG_HOST, e) for e in errors[:5])
            time.sleep(3)
            f['rest'], f['heartbeat_s'] = self.rest_window(py.proc.pid, cfg['rest_s'], heartbeat_host=PYREG_HOST)
            f['delete_all_s'] = b.delete_all(ids, PREFIX + 'dens-fake-')
        finally:
            py.stop()
            b.pyreg = None
            self.api.service_delete(PYREG_HOST)

    def make_flavor(self):
        a = self.api
        r = a.req('GET', a.nova + '/flavors/' + DENSITY_FLAVOR, ok=(200, 404))
        if r.status_code == 200:
            a.req('DELETE', a.nova + '/flavors/' + DENSITY_FLAVOR, ok=(202, 204, 404))
        a.req('POST', a.nova + '/flavors', ok=(200,), json={'flavor': {
            'name': DENSITY_FLAVOR, 'id': DENSITY_FLAVOR, 'ram': 16, 'vcpus': 1, 'disk': 0}})
        self.flavor_made = True

    def count_active(self, prefix):
        return sum(1 for s in self.api.servers(prefix) if s['status'] == 'ACTIVE')

    def sync_passes(self, since):
        """Our 'power-state sync pass done' lines since epoch SINCE."""
        out = []
        for ev in self.b.ours.log_events():
            if ev.get('message') != 'power-state sync pass done':
                continue
            t = event_time(ev)
            if t < since:
                continue
            x = ev.get('extra') or ev.get('fields') or ev
            out.append({'end': t, 'elapsed_ms': int(x.get('elapsed_ms', ev.get('elapsed_ms', -1))),
                        'instances': int(x.get('instances', ev.get('instances', -1)))})
        return out

    def rest_window(self, pid, seconds, heartbeat_host):
        """RSS and CPU over SECONDS with nothing asked of the service; the
        service's updated_at in os-services polled every second meanwhile
        (nova-api's work, not the service's)."""
        seen = []
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                try:
                    u = (self.api.service(heartbeat_host) or {}).get('updated_at')
                    if u and (not seen or seen[-1] != u):
                        seen.append(u)
                except Exception:  # noqa: BLE001
                    pass
                stop.wait(1.0)
        th = threading.Thread(target=poll, daemon=True)
        t_start = time.time()
        with Sampler(pid) as s:
            th.start()
            time.sleep(seconds)
            stop.set()
        th.join()
        ts = [parse_ts(u) for u in seen]
        res = dict(s.result, t_start=t_start, processes=len(group_pids(pid)))
        return res, [b - a for a, b in zip(ts, ts[1:])]

    def host_state(self):
        return {'netns': set(os.listdir('/var/run/netns')) if os.path.isdir('/var/run/netns') else set(),
                'devices': set(os.listdir('/sys/class/net'))}

    def leftovers(self, before, ours):
        after = self.host_state()
        left = {'containers': int(sh('docker ps -aq --filter label=nova.host=%s | wc -l' % HOST).strip()),
                'netns': sorted(after['netns'] - before['netns']),
                'devices': sorted(d for d in after['devices'] - before['devices']
                                  if d.startswith(('tap', 'qvb', 'qvo', 'veth', 'ns-'))),
                'ports': len(self.api.neutron('GET', '/v2.0/ports?binding:host_id=%s' % HOST)['ports'])}
        rp = node_uuid_of(self.api, HOST)
        if rp:
            us = self.api.placement_get('/resource_providers/%s/usages' % rp)['usages']
            left['usages'] = {k: v for k, v in us.items() if v}
            left['allocations'] = len(self.api.placement_get('/resource_providers/%s/allocations' % rp)
                                      .get('allocations', {}))
        else:
            left['usages'], left['allocations'] = {'?': 'no provider'}, -1
        ip = ours.instances_path
        left['files'] = sorted(os.listdir(ip)) if os.path.isdir(ip) else []
        return left

    def cleanup(self):
        b = self.b
        if b.pyreg:
            b.pyreg.stop()
        b.cleanup()
        if self.flavor_made:
            try:
                self.api.req('DELETE', self.api.nova + '/flavors/' + DENSITY_FLAVOR, ok=(202, 204, 404))
            except Exception as e:  # noqa: BLE001
                b.errors.append('cleanup: flavor %s: %s' % (DENSITY_FLAVOR, e))

    def write_report(self, path):
        r, d = self.b.r, self.res
        rows = []
        row = row_fn(rows)
        o, f = d.get('ours') or {}, d.get('fake') or {}
        n = d['n']

        def rate(x):
            return '%.1f /s (%d in %s)' % (x['active'] / x['boot_all_s'], x['active'], fmt_s(x['boot_all_s'])) \
                if x.get('boot_all_s') else '—'
        if o:
            row('Instances ACTIVE on one host (busybox, 16 MiB flavor, no network), of %d' % n,
                '%d%s' % (o['active'], ', %d error(s)' % len(o['errors']) if o['errors'] else ''),
                '%d%s%s' % (f['active'], ', %d error(s)' % len(f['errors']) if f.get('errors') else '',
                            ' (its %d s budget ran out)' % self.b.cfg['python_budget_s'] if f.get('budget_hit')
                            else '') if f else '—',
                '—', 'all %d ACTIVE' % n, o['active'] == n and not o['errors'])
            row('Boot rate over the whole run (10 POSTs at a time)', rate(o), rate(f) if f else '—')
        ro, rf = o.get('rest'), f.get('rest')
        if ro:
            row('RSS with %d instances, at rest' % o['active'], '%.1f MiB' % ro['rss_mib'],
                '%.1f MiB' % rf['rss_mib'] if rf else '—', '—', '≤ 80 MiB with 500',
                ro['rss_mib'] <= 80 if o['active'] >= 500 else 'n/a (%d instances; the aim is for 500)' % o['active'])
            passes = o.get('rest_passes') or []
            row('CPU at rest with %d instances (%% of one core, %.0f s%s)' % (
                o['active'], ro['window_s'], ', a sync pass inside' if passes else ', no sync pass inside'),
                fmt_cpu(ro), (fmt_cpu(rf) + (' (not at rest: still building)' if f.get('budget_hit') else ''))
                if rf else '—', '—', '≤ 0.1 % with 500',
                cpu_at_most(ro, 0.1) if o['active'] >= 500 else 'n/a (%d instances; the aim is for 500)'
                % o['active'])
        hb = o.get('heartbeat_s')
        if hb:
            row('Heartbeat interval while holding them (os-services updated_at, %d intervals), median / max' % len(hb),
                '%s / %s' % (fmt_s(p50(hb)), fmt_s(max(hb))),
                '%s / %s' % (fmt_s(p50(f['heartbeat_s'])), fmt_s(max(f['heartbeat_s']))) if f.get('heartbeat_s')
                else '—', 'report_interval 10 s')
        ms = o.get('rpc_ms')
        if ms:
            sb = o.get('rpc_server_buckets')
            row('RPC ping round trip while holding them (Rust client, %d calls), p50 / p99' % len(ms),
                '%.2f ms / %.2f ms' % (p50(ms), pct(ms, .99)), '—',
                'server side p50 / p99 from buckets %s / %s' % (
                    fmt_s(hist_pct(sb, .5)), fmt_s(hist_pct(sb, .99))) if sb else '—')
        sp = [x for x in o.get('sync_passes', []) if x['instances'] >= max(1, o.get('active', 0))]
        if sp:
            row('One power-state sync pass over %d instances (our log, %d pass(es)), median' % (
                sp[0]['instances'], len(sp)), fmt_s(p50([x['elapsed_ms'] / 1000.0 for x in sp])), '—',
                'interval set to %d s for the bench (default 600 s)' % d.get('sync_interval_s', 0))
        if o.get('delete_all_s'):
            redone = getattr(self.b, 'redeleted', 0)
            row('Delete all (10 DELETEs at a time, until none is listed)', fmt_s(o['delete_all_s']),
                fmt_s(f['delete_all_s']) if f.get('delete_all_s') else '—',
                '%d delete(s) failed by the control plane and issued again' % redone if redone else '—')
        left = o.get('left')
        if left:
            clean = (not left['containers'] and not left['netns'] and not left['devices'] and not left['ports']
                     and not left['usages'] and not left['allocations'] and not left['files'])
            row('Left after deleting all: containers, netns links, host devices, ports, allocations, files under '
                'instances_path', '%d, %s, %s, %d, %s, %s' % (
                    left['containers'], left['netns'] or 'none', left['devices'] or 'none', left['ports'],
                    left['usages'] or ('%d' % left['allocations'] if left['allocations'] else 'none'),
                    left['files'] or 'none'), '—', '—', 'nothing', clean)
        lines = header(r, 'Latest density run: `tests/bench/run --density %d`' % n, DENSITY_MARK_START)
        lines += ['Our host `%s` and a Python FakeDriver nova-compute `%s`, one after the other; flavor %s (16 MiB, '
                  '1 vCPU, created and deleted by the run), `networks: none`, 10 POSTs at a time. At rest: RSS '
                  '(VmRSS, median of 50 ms samples) and CPU (utime + stime) of the service\'s process group over '
                  'the window, which starts after a power-state sync pass over all instances (the interval set '
                  'to %d s so that one happens while it holds them), nothing asked of the service meanwhile; then '
                  'the RPC pings.' % (HOST, PYREG_HOST, DENSITY_FLAVOR, d.get('sync_interval_s', 0)), '']
        lines += rows_table(rows, 'Python FakeDriver nova-compute') + ['', DENSITY_MARK_END]
        replace_block(path, DENSITY_MARK_START, DENSITY_MARK_END, '\n'.join(lines))

