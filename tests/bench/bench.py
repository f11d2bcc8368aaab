"""nova-docker benchmark, side by side with Python nova-compute and raw Docker.

Started by tests/bench/run (which builds, brings the environment up and runs
this with the bench virtualenv); see that script for the options. Everything
here talks to the "newest" control plane of tests/env/controlplane.sh (except
--port, which also measures Zed: --release, see port_density.py):

  * our service runs as compute host nd-bench (started and stopped here,
    state and JSON log in $ND_ENV_STATE/bench/nd-bench);
  * Python nova-compute with Nova's FakeDriver runs as host nd-bench-fake
    (started by `FAKE_COMPUTE=nd-bench-fake controlplane.sh newest up`): it
    starts nothing, so its boot time is the control plane's own floor;
  * raw Docker: `docker run -d` of the same image, and the same create +
    start through the Engine API (no CLI), the engine's floor.

Servers are booted with networks "none", forced onto a host with
availability_zone nova:<host> (API microversion 2.88), flavor m1.nano (42),
through the Nova REST API directly. Every measurement is described next to
its code and in the report that is written into BENCHMARKS.md.

Exit status: 1 if any step failed (a server in ERROR, a timeout, a crash of
a step); the numbers themselves never fail the run.
"""
import argparse
import datetime
import http.client
import json
import math
import os
import platform
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STATE_ROOT = os.environ.get('ND_ENV_STATE', '/var/lib/nova-docker-test')
# the control plane this run talks to: 'newest' unless --port --release zed
# (use_release switches it before a Bench is made)
STATE = os.path.join(STATE_ROOT, 'newest')
RELEASES = ('newest', 'zed')
BENCH_STATE = os.path.join(STATE_ROOT, 'bench')
HOST = 'nd-bench'
PYREG_HOST = 'nd-bench-pyreg'
PREFIX = 'nd-bench-'
MV = '2.88'
FLAVOR = '42'
POLL = 0.05            # seconds between GETs while waiting for a state
BOOT_TIMEOUT = 180
HZ = os.sysconf('SC_CLK_TCK')
DOCKER_SOCK = '/var/run/docker.sock'
BUSYBOX_CMD = ('["/bin/sh", "-c", "echo nova-docker test instance $(hostname) up; '
               'trap \\"echo stopping; exit 0\\" TERM INT; while true; do sleep 1 & wait $!; done"]')
MARK_START = '<!-- bench:start -->'
MARK_END = '<!-- bench:end -->'

MODES = {
    'full': dict(serial=20, lifecycle=10, parallel=(15, 50), many=100, image_mb=500, image_rounds=3, idle_s=30,
                 rpc_calls=1000, rpc_casts=5000),
    'quick': dict(serial=5, lifecycle=3, parallel=(5, 10), many=20, image_mb=100, image_rounds=1, idle_s=5,
                  rpc_calls=200, rpc_casts=1000),
    # tests/bench/run --rpc: the RPC step alone, in about a minute
    'rpc': dict(rpc_calls=1000, rpc_casts=2000),
    # tests/bench/run --port / --density N (tests/bench/port_density.py)
    'port': dict(serial=10, parallel=50),
    # python_budget_s: the Python FakeDriver host boots for at most this
    # long (it managed ~0.1 /s under load: 500 would take an hour); what it
    # reached by then is reported, not counted as an error
    'density': dict(n=500, rest_s=60, rpc_calls=500, sync_interval_s=90, python_budget_s=600),
    # tests/bench/run --moves [--moves-mb N] (tests/bench/moves.py): MiB written in each moved instance
    'moves': dict(mb=500),
}
RPC_MARK_START = '<!-- bench-rpc:start -->'
RPC_MARK_END = '<!-- bench-rpc:end -->'
SERVER_HIST = 'nova_docker_rpc_server_seconds'
PUBLISHED_HIST = 'nova_docker_rpc_reply_published_seconds'


T0 = time.monotonic()


def log(msg):
    sys.stderr.write('[bench %7.1fs] %s\n' % (time.monotonic() - T0, msg))
    sys.stderr.flush()


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ statistics
def pct(values, p):
    """Percentile with linear interpolation between closest ranks."""
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * p
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def p50(v):
    return pct(v, 0.5)


# ------------------------------------------------------------------ environment
def use_release(release):
    """Points STATE (env.sh, the nova_api DB host_mapped reads) at
    RELEASE's control plane."""
    global STATE
    if release not in RELEASES:
        raise BenchError('unknown release %r' % release)
    STATE = os.path.join(STATE_ROOT, release)


def read_env_sh(path):
    """`export K=V` lines, values as bash's printf %q wrote them."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip('\n')
            if not line.startswith('export '):
                continue
            k, _, v = line[len('export '):].partition('=')
            if v == "''":
                v = ''
            out, it = [], iter(v)
            for ch in it:
                out.append(next(it, '') if ch == '\\' else ch)
            env[k] = ''.join(out)
    return env


def sh(cmd, check=True, timeout=900, **kw):
    """Runs a command (list, or str for bash -o pipefail); returns stdout."""
    if isinstance(cmd, str):
        cmd = ['bash', '-o', 'pipefail', '-c', cmd]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError('%s: exit %s: %s' % (' '.join(cmd)[:200], p.returncode, p.stderr.strip()[-800:]))
    return p.stdout


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------ /proc
def proc_fields(pid):
    """Fields of /proc/PID/stat from field 3 (state) on."""
    with open('/proc/%d/stat' % pid) as f:
        stat = f.read()
    return stat[stat.rindex(')') + 2:].split()


def proc_start(pid):
    return int(proc_fields(pid)[19])


def group_pids(pgid):
    """Every process of process group PGID."""
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            if int(proc_fields(int(d))[2]) == pgid:
                out.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return out


def status_kb(pid, key):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss_kb(pids):
    return sum(status_kb(p, 'VmRSS') for p in pids)


def group_ticks(pids):
    total = 0
    for p in pids:
        try:
            f = proc_fields(p)
            total += int(f[11]) + int(f[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return total


class Sampler:
    """RSS (sum over a process group, VmRSS) every 50 ms and CPU time
    (utime+stime from /proc/PID/stat) over the sampling window."""

    def __init__(self, pgid, interval=0.05):
        self.pgid, self.interval = pgid, interval
        self.samples = []
        self.stop_ev = threading.Event()

    def __enter__(self):
        self.pids = group_pids(self.pgid) or [self.pgid]
        self.t0 = time.monotonic()
        self.ticks0 = group_ticks(self.pids)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop_ev.is_set():
            self.samples.append(group_rss_kb(self.pids))
            self.stop_ev.wait(self.interval)

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join()
        dt = time.monotonic() - self.t0
        dticks = group_ticks(self.pids) - self.ticks0
        s = [x for x in self.samples if x > 0] or [0]
        self.result = {
            'rss_mib': p50(s) / 1024.0, 'rss_peak_mib': max(s) / 1024.0,
            'cpu_pct': 100.0 * dticks / HZ / dt if dt > 0 else None, 'cpu_ticks': dticks,
            'cpu_resolution_pct': 100.0 / HZ / dt if dt > 0 else None,
            'window_s': dt, 'processes': len(self.pids), 'samples': len(s),
        }
        return False


def pid_from_file(path):
    """PID of a daemon_start PID file ("PID BOOT_ID STARTTIME"), if alive."""
    try:
        with open(path) as f:
            pid, boot, start = f.read().split()[:3]
        with open('/proc/sys/kernel/random/boot_id') as f:
            if f.read().strip() != boot:
                return None
        return int(pid) if str(proc_start(int(pid))) == start else None
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------ REST
class Api:
    def __init__(self, env):
        self.nova = env['ND_NOVA_API']
        self.glance = env['ND_GLANCE']
        self.placement = env['ND_PLACEMENT']
        self.neutron_url = env.get('ND_NEUTRON')
        self.token = env['ND_TOKEN']
        self._local = threading.local()
        # every server this run POSTed (list.append is atomic): what the
        # --port cleanup looks for on the host when a service died
        self.created = []

    @property
    def s(self):
        s = getattr(self._local, 's', None)
        if s is None:
            s = requests.Session()
            s.headers.update({'X-Auth-Token': self.token, 'X-OpenStack-Nova-API-Version': MV,
                              'OpenStack-API-Version': 'compute ' + MV})
            self._local.s = s
        return s

    def req(self, method, url, ok=(200,), timeout=60, **kw):
        r = self.s.request(method, url, timeout=timeout, **kw)
        if r.status_code not in ok:
            raise BenchError('%s %s -> HTTP %s: %s' % (method, url, r.status_code, r.text[:500]))
        return r

    # servers
    def create(self, name, image, host, networks='none', flavor=FLAVOR):
        """POST /servers forced onto HOST; NETWORKS 'none' or a list of
        {'uuid': network} (one port each)."""
        body = {'server': {'name': name, 'imageRef': image, 'flavorRef': flavor, 'networks': networks,
                           'availability_zone': 'nova:' + host}}
        sid = self.req('POST', self.nova + '/servers', ok=(202,), json=body).json()['server']['id']
        self.created.append(sid)
        return sid

    def server(self, sid):
        r = self.req('GET', '%s/servers/%s' % (self.nova, sid), ok=(200, 404))
        return None if r.status_code == 404 else r.json()['server']

    def wait(self, sid, status, timeout=BOOT_TIMEOUT, poll=POLL):
        """Polls until STATUS with no task state (GONE: 404); returns the
        monotonic time the answer that showed it arrived, and the server."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.server(sid)
            now = time.monotonic()
            if status == 'GONE':
                if s is None:
                    return now, None
            elif s is None:
                raise BenchError('server %s vanished while waiting for %s' % (sid, status))
            elif s['status'] == status and s.get('OS-EXT-STS:task_state') is None:
                return now, s
            elif s['status'] == 'ERROR':
                raise BenchError('server %s (%s) went to ERROR: %s' % (sid, s.get('name'), s.get('fault')))
            if now > deadline:
                raise BenchError('server %s not %s after %ss (%s)' % (
                    sid, status, timeout, s and (s['status'], s.get('OS-EXT-STS:task_state'))))
            time.sleep(poll)

    def action(self, sid, body):
        return self.req('POST', '%s/servers/%s/action' % (self.nova, sid), ok=(202,), json=body)

    def delete(self, sid):
        self.req('DELETE', '%s/servers/%s' % (self.nova, sid), ok=(204, 404))

    def servers(self, name_prefix):
        r = self.req('GET', self.nova + '/servers/detail', params={'all_tenants': '1', 'name': '^' + name_prefix})
        return r.json()['servers']

    # services
    def service(self, host):
        r = self.req('GET', self.nova + '/os-services', params={'host': host, 'binary': 'nova-compute'})
        sv = r.json()['services']
        return sv[0] if sv else None

    def service_delete(self, host):
        sv = self.service(host)
        if sv:
            self.req('DELETE', '%s/os-services/%s' % (self.nova, sv['id']), ok=(204, 404))

    def provider_ready(self, name):
        h = {'X-Auth-Token': self.token, 'OpenStack-API-Version': 'placement 1.36'}
        r = requests.get(self.placement + '/resource_providers', params={'name': name}, headers=h, timeout=30)
        rps = r.json().get('resource_providers', []) if r.ok else []
        if not rps:
            return False
        r = requests.get('%s/resource_providers/%s/inventories' % (self.placement, rps[0]['uuid']),
                         headers=h, timeout=30)
        return r.ok and 'VCPU' in r.json().get('inventories', {})

    def neutron(self, method, path, ok=(200,), **kw):
        """A Neutron API request (admin token); the JSON answer, or None."""
        r = self.req(method, self.neutron_url + path, ok=ok, **kw)
        return r.json() if r.content else None

    def placement_get(self, path):
        h = {'X-Auth-Token': self.token, 'OpenStack-API-Version': 'placement 1.36'}
        r = requests.get(self.placement + path, headers=h, timeout=30)
        if not r.ok:
            raise BenchError('placement GET %s -> HTTP %s: %s' % (path, r.status_code, r.text[:300]))
        return r.json()

    # glance
    def image_by_name(self, name):
        r = self.req('GET', self.glance + '/v2/images', params={'name': name, 'status': 'active'})
        imgs = r.json()['images']
        return imgs[0]['id'] if imgs else None

    def image_create(self, name):
        body = {'name': name, 'container_format': 'docker', 'disk_format': 'raw', 'visibility': 'public'}
        return self.req('POST', self.glance + '/v2/images', ok=(201,), json=body).json()['id']

    def image(self, iid):
        r = self.req('GET', '%s/v2/images/%s' % (self.glance, iid), ok=(200, 404))
        return None if r.status_code == 404 else r.json()

    def image_delete(self, iid):
        self.req('DELETE', '%s/v2/images/%s' % (self.glance, iid), ok=(204, 404))


def host_mapped(host):
    import sqlite3
    db = sqlite3.connect('file:%s?mode=ro' % os.path.join(STATE, 'db', 'nova_api.sqlite'), uri=True, timeout=30)
    try:
        return db.execute('SELECT 1 FROM host_mappings WHERE host = ?', (host,)).fetchone() is not None
    finally:
        db.close()


def wait_for(desc, fn, timeout, poll=0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if fn():
                return time.monotonic()
        except (requests.RequestException, BenchError, OSError):
            pass
        if time.monotonic() > deadline:
            raise BenchError('timeout (%ss) waiting for %s' % (timeout, desc))
        time.sleep(poll)


# ------------------------------------------------------------------ metrics
def scrape(url):
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    out = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = re.match(r'^([A-Za-z_:][\w:]*)(\{.*\})?\s+(\S+)$', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ''))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def mval(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def hist_delta(m0, m1, name, labels):
    """A histogram's buckets between two scrapes: sorted [(le, cumulative
    count)], le = inf for +Inf."""
    out = []
    for (n, ls), v in m1.items():
        if n != name + '_bucket':
            continue
        d = dict(ls)
        le = d.pop('le', None)
        if le is None or d != labels:
            continue
        out.append((float('inf') if le == '+Inf' else float(le), v - m0.get((n, ls), 0.0)))
    return sorted(out)


def hist_pct(buckets, p):
    """A percentile from cumulative buckets, interpolated linearly inside
    its bucket (as Prometheus's histogram_quantile): exact to the bucket's
    width. None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = p * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le  # the highest finite bound, as Prometheus
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def to_buckets(samples, bounds):
    """Exact samples counted into cumulative buckets with the given upper
    bounds (our histogram's), to read them the same way as ours."""
    return [(le, float(sum(1 for x in samples if x <= le))) for le in bounds]


def op_delta(m0, m1, operation, phase):
    """(seconds, count) of an operation phase between two scrapes."""
    n = 'nova_docker_operation_duration_seconds'
    return (mval(m1, n + '_sum', operation=operation, phase=phase) - mval(m0, n + '_sum', operation=operation,
                                                                          phase=phase),
            mval(m1, n + '_count', operation=operation, phase=phase) - mval(m0, n + '_count', operation=operation,
                                                                              phase=phase))


def event_time(ev):
    """Epoch seconds of a JSON log event (oslo.log JSON: created)."""
    return ev['created'] if 'created' in ev else parse_ts(ev['timestamp'])


def parse_ts(s):
    m = re.match(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?', s)
    base = datetime.datetime.strptime(m.group(1), '%Y-%m-%dT%H:%M:%S').replace(tzinfo=datetime.timezone.utc)
    return base.timestamp() + (float('0.' + m.group(2)) if m.group(2) else 0.0)


# ------------------------------------------------------------------ docker
class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__('localhost', timeout=120)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def docker_api(conn, method, path, body=None):
    headers = {'Content-Type': 'application/json'} if body is not None else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.status >= 300:
        raise BenchError('docker API %s %s: %s %s' % (method, path, r.status, data[:300]))
    return json.loads(data) if data else None


def glance_repo(image_id):
    """The Docker repository in which the host binds a Glance image."""
    return 'glance/%s' % image_id.lower()


def rmi_all(ref):
    """Removes a reference, or every reference of a repository."""
    refs = [ref] if ':' in ref else sh(['docker', 'images', ref, '--format', '{{.Repository}}:{{.Tag}}'],
                                          check=False).split()
    for r in refs:
        sh(['docker', 'rmi', r], check=False)


def docker_rm_label(label):
    ids = sh(['docker', 'ps', '-aq', '--no-trunc', '--filter', 'label=' + label], check=False).split()
    if ids:
        sh(['docker', 'rm', '-f'] + ids, check=False)
    return len(ids)


# ------------------------------------------------------------------ the services
class OurService:
    """nova-docker serve as compute host nd-bench, in its own process group."""

    def __init__(self, binary, env, metrics_port, host=HOST, cpu_ratio=128.0, extra_default=''):
        """HOST: nd-bench, or the L2 agent's host for servers with ports
        (--port); EXTRA_DEFAULT: more [DEFAULT] options (--density)."""
        self.binary, self.env, self.host = binary, env, host
        self.dir = os.path.join(BENCH_STATE, host)
        self.conf = os.path.join(self.dir, 'nova.conf')
        self.log = os.path.join(self.dir, 'nova-docker.log')
        self.instances_path = os.path.join(self.dir, 'instances')
        self.pidfile = os.path.join(BENCH_STATE, host + '.pid')
        self.metrics = 'http://127.0.0.1:%d/metrics' % metrics_port
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)
        with open(env['ND_COMPUTE_CONF_TEMPLATE']) as f:
            text = f.read().replace('@HOST@', host).replace('@STATE_PATH@', self.dir)
        # 100 one-vCPU 128 MB instances on a 2-core host: overcommit generously
        text = text.replace('[DEFAULT]\n', '[DEFAULT]\ncpu_allocation_ratio = %.1f\n'
                            'ram_allocation_ratio = 8.0\ndisk_allocation_ratio = 8.0\n%s' % (cpu_ratio, extra_default), 1)
        text += ('\n[docker]\nmetrics_listen = 127.0.0.1:%d\n'
                 '# JSON lines: the build phase timestamps are read from them\nlog_format = json\n' % metrics_port)
        with open(self.conf, 'w') as f:
            f.write(text)

    @staticmethod
    def stop_stale(pidfile):
        """A service left running by an interrupted bench run (ours)."""
        try:
            with open(pidfile) as f:
                pid, start = (int(x) for x in f.read().split()[:2])
        except (OSError, ValueError):
            return
        try:
            if proc_start(pid) == start:
                log('stopping nova-docker left by an earlier bench run (pid %d)' % pid)
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
                for _ in range(300):
                    time.sleep(0.1)
                    proc_start(pid)
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        os.unlink(pidfile)

    def start(self):
        env = dict(os.environ)
        env['RUST_LOG'] = 'info,nova_docker::compute=debug,lapin=warn'  # phase lines, not per-RPC debug
        if self.env.get('OVS_RUNDIR'):
            env['OVS_RUNDIR'] = self.env['OVS_RUNDIR']
        logf = open(self.log, 'w')
        t = time.monotonic()
        self.proc = subprocess.Popen([self.binary, 'serve', '--config-file', self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=logf, env=env, start_new_session=True)
        logf.close()
        with open(self.pidfile, 'w') as f:
            f.write('%d %d\n' % (self.proc.pid, proc_start(self.proc.pid)))
        return t

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                log('nova-docker did not exit within 90 s of SIGTERM: SIGKILL')
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.pidfile)
        except OSError:
            pass

    def log_events(self):
        """The JSON log lines, parsed (others skipped)."""
        out = []
        with open(self.log, errors='replace') as f:
            for line in f:
                if line.startswith('{'):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        return out


def event_instance(ev):
    """The instance of a JSON log event: oslo.log JSON keeps it in
    extra.instance_uuid (older tracing JSON: in a span)."""
    if (ev.get('extra') or {}).get('instance_uuid'):
        return ev['extra']['instance_uuid']
    for sp in [ev.get('span') or {}] + list(ev.get('spans') or []):
        if sp.get('instance'):
            return sp['instance']
    return ev.get('instance')


class PythonCompute:
    """A Python nova-compute (FakeDriver) started here as PYREG_HOST, the way
    controlplane.sh starts its fake compute: newest with its venv's
    nova-compute and FakeDriverWithoutFakeNodes, Zed (Debian's python3-nova,
    which has no nova-compute script) with `python3 -c` nova.cmd.compute's
    main and FakeDriver (its node is named after the host, as ours).
    """

    def __init__(self, env, host=PYREG_HOST, node_uuid=None):
        """NODE_UUID: the compute node to be (state_path/compute_id), when
        HOST already has one (the L2 agent's host, shared with ours)."""
        self.host = host
        # beside, not inside, the state of our service under the same name
        self.dir = os.path.join(BENCH_STATE, host if host == PYREG_HOST else host + '-python')
        os.makedirs(os.path.join(self.dir, 'instances'), exist_ok=True)
        os.makedirs(os.path.join(self.dir, 'lock'), exist_ok=True)
        self.conf = os.path.join(self.dir, 'nova.conf')
        self.log = os.path.join(self.dir, 'nova-compute.log')
        with open(env['ND_COMPUTE_CONF_TEMPLATE']) as f:
            text = f.read().replace('@HOST@', host).replace('@STATE_PATH@', self.dir)
        zed = env.get('ND_RELEASE') == 'zed'
        driver = 'fake.FakeDriver' if zed else 'fake.FakeDriverWithoutFakeNodes'
        text = re.sub(r'^(host = .*)$', r'\1\ncompute_driver = %s' % driver, text, count=1, flags=re.M)
        with open(self.conf, 'w') as f:
            f.write(text)
        if node_uuid:
            with open(os.path.join(self.dir, 'compute_id'), 'w') as f:
                f.write(node_uuid + '\n')
        if zed:
            self.cmd = [env['ND_PYTHON'], '-c', 'import sys; from nova.cmd.compute import main; sys.exit(main())']
        else:
            self.cmd = [os.path.join(os.path.dirname(env['ND_PYTHON']), 'nova-compute')]
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, 'tests', 'env', 'pylib'))
        t = time.monotonic()
        self.proc = subprocess.Popen(self.cmd + ['--config-file', self.conf, '--log-file', self.log],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        return t

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, args, release='newest'):
        """RELEASE: the control plane (--port only; use_release(RELEASE)
        first)."""
        self.args = args
        self.release = release
        self.mode = ('quick' if args.quick else 'rpc' if args.rpc else 'port' if args.port
                     else 'density' if args.density else 'moves' if args.moves else 'full')
        self.cfg = dict(MODES[self.mode])
        if self.mode == 'density':
            self.cfg['n'] = args.density
        if self.mode == 'port' and args.serial:
            self.cfg['serial'] = args.serial
        if self.mode == 'port' and args.at_once:
            self.cfg['parallel'] = args.at_once
        if self.mode == 'moves' and args.moves_mb:
            self.cfg['mb'] = args.moves_mb
        self.env = read_env_sh(os.path.join(STATE, 'env.sh'))
        if not self.env.get('ND_TOKEN'):
            # Keystone: the admin's token, issued now (tests/env/pylib)
            sys.path.insert(0, os.path.join(ROOT, 'tests', 'env', 'pylib'))
            from nd_keystone import issue
            e = self.env
            e['ND_TOKEN'] = issue(e['ND_KEYSTONE'], e['ND_ADMIN_USER'], e['ND_ADMIN_PASSWORD'], e['ND_ADMIN_PROJECT'])
        self.api = Api(self.env)
        self.r = {'mode': self.mode, 'config': self.cfg}
        self.errors = []
        self.warnings = []
        self.created_images = []   # Glance ids to delete
        self.docker_images = []    # Docker references to remove
        self.ours = None
        self.pyreg = None
        self.rpc_server = None
        self.fake_pid = pid_from_file(os.path.join(STATE, 'pids', 'fake-compute-%s.pid' % args.fake_host))
        self.seq = 0

    def name(self, tag):
        self.seq += 1
        return '%s%s-%d' % (PREFIX, tag, self.seq)

    def step(self, title, fn, needs_ours=True):
        if needs_ours and not (self.ours and self.ours.alive()):
            self.errors.append('%s: skipped, nova-docker is not running' % title)
            log('SKIP %s: nova-docker is not running' % title)
            return
        log('== %s' % title)
        t = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the run goes on
            self.errors.append('%s: %s' % (title, e))
            log('ERROR in %s: %s\n%s' % (title, e, traceback.format_exc()))
            self.cleanup_servers()
        self.r.setdefault('step_s', {})[title] = time.monotonic() - t

    # -------------------------------------------------------------- setup
    def machine(self):
        def first(path, key):
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(':', 1)[1].strip()
            return '?'
        dirty = sh(['git', '-C', ROOT, 'status', '--porcelain', '--untracked-files=no'], check=False).strip()
        self.r['machine'] = {
            'nproc': os.cpu_count(),
            'memory_gib': int(first('/proc/meminfo', 'MemTotal').split()[0]) / 1024 / 1024,
            'kernel': platform.release(),
            'docker': sh(['docker', 'version', '--format', '{{.Server.Version}}'], check=False).strip(),
            'cpu': first('/proc/cpuinfo', 'model name'),
            'loadavg_start': open('/proc/loadavg').read().split()[:3],
        }
        self.r['date'] = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        self.r['commit'] = sh(['git', '-C', ROOT, 'rev-parse', '--short=12', 'HEAD'], check=False).strip() + (
            ' (with uncommitted changes)' if dirty else '')

    def cleanup_servers(self):
        """Deletes every server whose name starts with nd-bench- and waits."""
        try:
            left = self.api.servers(PREFIX)
        except Exception as e:  # noqa: BLE001
            log('cleanup: cannot list servers: %s' % e)
            return
        if not left:
            return
        log('cleanup: deleting %d server(s)' % len(left))
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda s: self.api.delete(s['id']), left))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not self.api.servers(PREFIX):
                return
            time.sleep(0.5)
        self.errors.append('cleanup: servers still there after 300 s')

    def preflight(self):
        if not self.fake_pid and self.mode != 'rpc':
            raise BenchError('the fake compute %s is not running (FAKE_COMPUTE=%s tests/env/controlplane.sh '
                             'newest up)' % (self.args.fake_host, self.args.fake_host))
        os.makedirs(BENCH_STATE, exist_ok=True)
        OurService.stop_stale(os.path.join(BENCH_STATE, HOST + '.pid'))
        for h in (HOST, PYREG_HOST):
            sv = self.api.service(h)
            if sv and sv['state'] == 'up':
                # a service of an interrupted run (stopped above) looks up for
                # up to service_down_time (60 s); a live one stays up
                log('host %s is up in os-services; waiting until it is down' % h)
                try:
                    wait_for('%s down' % h, lambda: self.api.service(h)['state'] != 'up', 90, poll=2)
                except BenchError:
                    raise BenchError('a nova-compute runs as host %s (another bench run?)' % h) from None
        self.cleanup_servers()
        docker_rm_label('nova.host=' + HOST)
        docker_rm_label('nd-bench=1')
        for h in (HOST, PYREG_HOST):
            if self.api.service(h):
                log('deleting the leftover service record of %s' % h)
                self.api.service_delete(h)
        # the test image, imported once (the integration tests use the same)
        if self.mode != 'rpc' and subprocess.run(['docker', 'image', 'inspect', 'nd-busybox:latest'], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode != 0:
            raise BenchError('Docker image nd-busybox:latest missing (tests/env/images.sh)')

    # -------------------------------------------------------------- registration
    def start_ours(self):
        """Exec -> 'up' in os-services (polled every 50 ms); then waits until
        the host can take builds (resource provider with inventory, host
        mapped to the cell)."""
        self.ours = OurService(self.args.binary, self.env, free_port())
        t_exec = self.ours.start()
        t_up = wait_for('nd-bench up in os-services',
                        lambda: (self.api.service(HOST) or {}).get('state') == 'up' or not self.ours.alive(), 60)
        if not self.ours.alive():
            raise BenchError('nova-docker exited (see %s)' % self.ours.log)
        t_rp = wait_for('nd-bench resource provider', lambda: self.api.provider_ready(HOST), 60)
        t_map = wait_for('nd-bench host mapping', lambda: host_mapped(HOST), 60, poll=0.2)
        wait_for('metrics endpoint', lambda: scrape(self.ours.metrics) is not None, 10)
        self.r['register'] = {'ours_up_s': t_up - t_exec, 'ours_rp_s': t_rp - t_exec, 'ours_mapped_s': t_map - t_exec,
                              'ours_rss_mib': status_kb(self.ours.pid, 'VmRSS') / 1024.0}
        log('nova-docker: up %.3f s after exec (provider %.2f s, mapped %.2f s)' % (
            t_up - t_exec, t_rp - t_exec, t_map - t_exec))
        if self.mode == 'rpc':
            return
        if self.api.image_by_name('nd-busybox') is None:
            log('importing nd-busybox into Glance')
            out = sh([self.args.binary, 'image', 'import', 'nd-busybox:latest', '--name', 'nd-busybox',
                      '--config-file', self.ours.conf], env=dict(os.environ, OS_AUTH_TOKEN=self.env['ND_TOKEN']))
            log('nd-busybox = %s' % out.strip())
        self.image = self.api.image_by_name('nd-busybox')

    def python_registration(self):
        """The same for Python nova-compute + FakeDriver as PYREG_HOST,
        stopped and its service record deleted afterwards."""
        self.pyreg = PythonCompute(self.env)
        t_exec = self.pyreg.start()
        try:
            t_up = wait_for('%s up' % PYREG_HOST,
                            lambda: (self.api.service(PYREG_HOST) or {}).get('state') == 'up'
                            or self.pyreg.proc.poll() is not None, 180)
            if self.pyreg.proc.poll() is not None:
                raise BenchError('python nova-compute exited (see %s)' % self.pyreg.log)
            rss = group_rss_kb(group_pids(self.pyreg.proc.pid)) / 1024.0
            self.r['register'].update(py_up_s=t_up - t_exec, py_rss_at_up_mib=rss)
            log('python nova-compute: up %.3f s after exec' % (t_up - t_exec))
        finally:
            self.pyreg.stop()
            self.api.service_delete(PYREG_HOST)

    # -------------------------------------------------------------- idle
    def idle(self):
        """RSS and CPU of both computes with no instance, sampled together."""
        time.sleep(2)
        with Sampler(self.ours.pid) as a, Sampler(self.fake_pid) as b:
            time.sleep(self.cfg['idle_s'])
        self.r['idle'] = {'ours': a.result, 'fake': b.result}
        log('idle: ours %.1f MiB %.2f%% CPU; python %.1f MiB %.2f%% CPU' % (
            a.result['rss_mib'], a.result['cpu_pct'], b.result['rss_mib'], b.result['cpu_pct']))

    # -------------------------------------------------------------- RPC
    def rpc_client(self, *args):
        """Runs rpc_peer.py with the nova 34 python; returns its JSON line as
        soon as it is printed (the client's exit takes a while)."""
        return self.json_line([self.env['ND_PYTHON'], os.path.join(HERE, 'rpc_peer.py')] + list(args), args[0])

    def rust_client(self, topic, server, calls, *extra):
        """examples/rpc_ping.rs (built by tests/bench/run): {"ms": [...]}."""
        if not self.args.rpc_client or not os.access(self.args.rpc_client, os.X_OK):
            raise BenchError('the Rust RPC client is missing (cargo build --release --example rpc_ping; '
                             '--rpc-client PATH)')
        return self.json_line([self.args.rpc_client, '--url', self.env['ND_TRANSPORT_URL'], '--topic', topic,
                               '--server', server, '--calls', str(calls)] + list(extra), 'rpc_ping')

    def json_line(self, cmd, what):
        with open(os.path.join(BENCH_STATE, 'rpc-client.log'), 'a') as err:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            line = p.stdout.readline()
        finally:
            threading.Thread(target=p.wait, daemon=True).start()
        if not line.strip():
            p.wait(60)
            raise BenchError('%s failed (exit %s, see %s)' % (
                what, p.returncode, os.path.join(BENCH_STATE, 'rpc-client.log')))
        return json.loads(line)

    def rpc(self):
        """Call round trips (sequential baseapi pings from one oslo.messaging
        client) and casts handled per second (SIGSTOP the server, queue N ping
        casts, SIGCONT, time until it handled all: our metrics counter, or
        the Python server's DONE line). The calls are made twice per server,
        with the Python oslo.messaging client and with the Rust client
        (examples/rpc_ping.rs); around each run the server's own part of
        every ping call (delivery -> reply confirmed) is read: ours from
        nova_docker_rpc_server_seconds (scraped before and after), the Python
        server's from its timing wrapper (take_times). Both cover every call
        of the run, its 20 warm-up calls included."""
        url = self.env['ND_TRANSPORT_URL']
        calls, casts = self.cfg['rpc_calls'], self.cfg['rpc_casts']
        srv = subprocess.Popen([self.env['ND_PYTHON'], os.path.join(HERE, 'rpc_peer.py'), 'server', url,
                                'nd-bench-rpc', 'py'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
        self.rpc_server = srv
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x.strip()) for x in srv.stdout], daemon=True).start()
        if lines.get(timeout=120) != 'READY':
            raise BenchError('python RPC server did not start')
        res = {}
        baseapi = {'class': 'baseapi'}

        def ours(client):
            m0 = scrape(self.ours.metrics)
            ms = client()
            m1 = scrape(self.ours.metrics)
            return ms, hist_delta(m0, m1, SERVER_HIST, baseapi), hist_delta(m0, m1, PUBLISHED_HIST, baseapi)

        def python(client):
            self.rpc_client('times', url, 'nd-bench-rpc', 'py')  # a fresh list
            ms = client()
            return ms, self.rpc_client('times', url, 'nd-bench-rpc', 'py')['s']

        res['ours_ms'], res['ours_server_buckets'], res['ours_published_buckets'] = ours(
            lambda: self.rpc_client('calls', url, 'compute', HOST, str(calls))['ms'])
        res['py_ms'], res['py_server_s'] = python(
            lambda: self.rpc_client('calls', url, 'nd-bench-rpc', 'py', str(calls))['ms'])
        if self.fake_pid:
            res['fake_ms'] = self.rpc_client('calls', url, 'compute', self.args.fake_host, str(calls))['ms']
        try:
            res['ours_rust_ms'], res['ours_rust_server_buckets'], res['ours_rust_published_buckets'] = ours(
                lambda: self.rust_client('compute', HOST, calls)['ms'])
            res['py_rust_ms'], res['py_rust_server_s'] = python(
                lambda: self.rust_client('nd-bench-rpc', 'py', calls)['ms'])
            # the broker's part of a server's span: a reply-like publish
            # (default exchange, mandatory, persistent) until its confirm
            res['broker_confirm_ms'] = self.rust_client('-', '-', calls, '--broker-floor')['ms']
        except BenchError as e:
            self.errors.append('RPC, Rust client: %s' % e)
            log('ERROR in RPC, Rust client: %s' % e)
        # casts, ours
        counter = ('nova_docker_rpc_requests_total', 'ping')
        base = mval(scrape(self.ours.metrics), counter[0], method=counter[1], outcome='ok')
        try:
            out = self.rpc_client('casts', url, 'compute', HOST, str(casts), '--stop-pid', str(self.ours.pid))
        finally:
            os.kill(self.ours.pid, signal.SIGCONT)
        target = base + 1 + casts
        while True:
            now = time.monotonic()
            if mval(scrape(self.ours.metrics), counter[0], method=counter[1], outcome='ok') >= target:
                break
            if now - out['cont_monotonic'] > 300:
                raise BenchError('nova-docker did not handle %d casts in 300 s' % casts)
            time.sleep(0.005)
        res['ours_casts_s'] = now - out['cont_monotonic']
        res['ours_publish_s'] = out['publish_s']
        # casts, Python
        try:
            out = self.rpc_client('casts', url, 'nd-bench-rpc', 'py', str(casts), '--expect', '--stop-pid',
                                  str(srv.pid))
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        while True:
            line = lines.get(timeout=300)
            if line.startswith('DONE '):
                break
        res['py_casts_s'] = float(line.split()[1]) - out['cont_monotonic']
        res['py_publish_s'] = out['publish_s']
        res['casts'] = casts
        srv.stdin.close()
        srv.wait(60)
        self.rpc_server = None
        self.r['rpc'] = res
        log('rpc: ping p50 ours %.2f ms, python %.2f ms; casts/s ours %.0f, python %.0f' % (
            p50(res['ours_ms']), p50(res['py_ms']), casts / res['ours_casts_s'], casts / res['py_casts_s']))
        if 'ours_rust_ms' in res:
            log('rpc, Rust client: ping p50 ours %.3f ms, python %.3f ms; server side p50 ours %.3f ms '
                '(buckets), python %.3f ms (exact)' % (
                    p50(res['ours_rust_ms']), p50(res['py_rust_ms']),
                    (hist_pct(res['ours_rust_server_buckets'], .5) or 0) * 1000,
                    (p50(res['py_rust_server_s']) or 0) * 1000))

    # -------------------------------------------------------------- serial boots
    def boot(self, host, tag):
        t0 = time.monotonic()
        sid = self.api.create(self.name(tag), self.image, host)
        t1, s = self.api.wait(sid, 'ACTIVE')
        if s.get('OS-EXT-SRV-ATTR:host') != host:
            raise BenchError('server %s landed on %s, not %s' % (sid, s.get('OS-EXT-SRV-ATTR:host'), host))
        return sid, t1 - t0

    def boot_with(self, host, tag, networks):
        """A boot with NETWORKS ('none' or [{'uuid': net}]): (id, API -> ACTIVE seconds)."""
        t0 = time.monotonic()
        sid = self.api.create(self.name(tag), self.image, host, networks=networks)
        t1, s = self.api.wait(sid, 'ACTIVE')
        if s.get('OS-EXT-SRV-ATTR:host') != host:
            raise BenchError('server %s landed on %s, not %s' % (sid, s.get('OS-EXT-SRV-ATTR:host'), host))
        return sid, t1 - t0

    def timed_action(self, sid, body, status):
        t0 = time.monotonic()
        self.api.action(sid, body)
        t1, _ = self.api.wait(sid, status)
        return t1 - t0

    def timed_delete(self, sid):
        t0 = time.monotonic()
        self.api.delete(sid)
        t1, _ = self.api.wait(sid, 'GONE')
        return t1 - t0

    def lifecycle(self, sid, into):
        into.setdefault('soft_reboot', []).append(self.timed_action(sid, {'reboot': {'type': 'SOFT'}}, 'ACTIVE'))
        into.setdefault('hard_reboot', []).append(self.timed_action(sid, {'reboot': {'type': 'HARD'}}, 'ACTIVE'))
        into.setdefault('stop', []).append(self.timed_action(sid, {'os-stop': None}, 'SHUTOFF'))
        into.setdefault('start', []).append(self.timed_action(sid, {'os-start': None}, 'ACTIVE'))

    def build_done(self, before):
        """Waits until our RPC handler for build_and_run_instance returned
        (it ends after the ACTIVE save and the instance-action event);
        returns the metrics scraped then."""
        n = 'nova_docker_rpc_requests_total'
        want = mval(before, n, method='build_and_run_instance', outcome='ok') + 1
        deadline = time.monotonic() + 30
        while True:
            m = scrape(self.ours.metrics)
            if mval(m, n, method='build_and_run_instance', outcome='ok') >= want:
                return m
            if time.monotonic() > deadline:
                raise BenchError('the build_and_run_instance RPC did not finish within 30 s of ACTIVE')
            time.sleep(0.02)

    def docker_run(self):
        """`docker run -d --network none` of the bench image (seconds)."""
        t0 = time.monotonic()
        cid = sh(['docker', 'run', '-d', '--network', 'none', '--label', 'nd-bench=1', 'nd-busybox:latest']).strip()
        dt = time.monotonic() - t0
        sh(['docker', 'rm', '-f', cid])
        return dt

    def docker_create_start(self, network_disabled=False):
        """Engine-API create and start of the bench image with network mode
        `none` (seconds each). Docker sets that namespace up itself (a
        libnetwork sandbox and a `libnetwork-setkey` prestart hook that
        re-executes dockerd) unless the container has networking disabled,
        as our instances have: runc then makes the namespace (see serial)."""
        conn = UnixHTTPConnection(DOCKER_SOCK)
        conn.connect()
        body = {'Image': 'nd-busybox:latest', 'Labels': {'nd-bench': '1'}, 'HostConfig': {'NetworkMode': 'none'},
                'NetworkDisabled': network_disabled}
        t0 = time.monotonic()
        cid = docker_api(conn, 'POST', '/containers/create', body)['Id']
        t1 = time.monotonic()
        docker_api(conn, 'POST', '/containers/%s/start' % cid)
        t2 = time.monotonic()
        docker_api(conn, 'DELETE', '/containers/%s?force=1' % cid)
        conn.close()
        return t1 - t0, t2 - t1

    def serial(self):
        """N rounds, interleaved so that background load hits all alike: a
        boot on our host, one on the FakeDriver host, a `docker run -d`, an
        Engine-API create+start. The first L rounds also time soft reboot,
        hard reboot, stop and start on both hosts; every server is deleted
        (timed). API->ACTIVE = POST /servers sent -> first GET (polled every
        50 ms) answering ACTIVE with no task state."""
        n, nl = self.cfg['serial'], self.cfg['lifecycle']
        # warm-up, not counted: the first boot loads the image into Docker
        # (the image_download phase; later boots hit the image cache)
        for host, tag in ((HOST, 'warm'), (self.args.fake_host, 'warm-fake')):
            sid, dt = self.boot(host, tag)
            log('warm-up boot on %s: %.2f s' % (host, dt))
            self.timed_delete(sid)
        self.docker_run()
        res = {'ours': [], 'fake': [], 'docker_run': [], 'docker_api': [], 'docker_api_create': [],
               'docker_api_start': [], 'docker_api_disabled_start': []}
        life = {'ours': {}, 'fake': {}}
        boots = []  # (uuid, metrics before, metrics after)
        fake_sids = []
        events = {}  # instance uuid -> {Docker action: time}
        for i in range(n):
            m0 = scrape(self.ours.metrics)
            t_boot = time.time() - 0.5
            sid, dt = self.boot(HOST, 'serial')
            res['ours'].append(dt)
            boots.append((sid, m0, self.build_done(m0)))
            # read now: the engine keeps only its last 256 events
            events.update(self.build_events(t_boot))
            if i < nl:
                self.lifecycle(sid, life['ours'])
            life['ours'].setdefault('delete', []).append(self.timed_delete(sid))
            sid, dt2 = self.boot(self.args.fake_host, 'serial-fake')
            res['fake'].append(dt2)
            fake_sids.append(sid)
            if i < nl:
                self.lifecycle(sid, life['fake'])
            life['fake'].setdefault('delete', []).append(self.timed_delete(sid))
            res['docker_run'].append(self.docker_run())
            c, s = self.docker_create_start()
            res['docker_api'].append(c + s)
            res['docker_api_create'].append(c)
            res['docker_api_start'].append(s)
            # the two starts differ by what Docker's own network set-up costs
            res['docker_api_disabled_start'].append(self.docker_create_start(network_disabled=True)[1])
            log('round %d/%d: ours %.2f s, fake %.2f s, docker run %.3f s, API create+start %.3f s' % (
                i + 1, n, dt, dt2, res['docker_run'][-1], res['docker_api'][-1]))
        self.r['serial'] = res
        self.r['lifecycle'] = life
        self.r['compute'] = self.compute_phases(boots, events)
        self.r['fake_build'] = self.fake_build_times(fake_sids)

    def fake_build_times(self, sids):
        """The FakeDriver host's own 'Took N seconds to build instance' per
        boot: its compute side after the first (BUILDING) save, up to and
        including the ACTIVE save (nova/compute/manager.py)."""
        log_path = os.path.join(STATE, 'log', 'fake-compute-%s.log' % self.args.fake_host)
        want = set(sids)
        took = {}
        pat = re.compile(r'\[instance: ([0-9a-f-]{36})\] Took ([0-9.]+) seconds to build instance')
        with open(log_path, errors='replace') as f:
            for line in f:
                m = pat.search(line)
                if m and m.group(1) in want:
                    took[m.group(1)] = float(m.group(2))
        if len(took) < len(want):
            self.errors.append('FakeDriver build times: %d of %d boots in %s' % (len(took), len(want), log_path))
        return list(took.values())

    def build_events(self, since):
        """Docker's create/start events (timeNano) of our host's containers
        since `since`, per instance uuid. Read after each boot: the engine
        keeps only its last 256 events, which a whole serial run outgrows."""
        events = {}
        out = sh(['docker', 'events', '--since', '%.3f' % since, '--until', '%.3f' % time.time(),
                  '--filter', 'type=container', '--filter', 'label=nova.host=' + HOST,
                  '--filter', 'event=create', '--filter', 'event=start', '--format', '{{json .}}'], timeout=60)
        for line in out.splitlines():
            ev = json.loads(line)
            inst = ev.get('Actor', {}).get('Attributes', {}).get('nova.instance')
            d = events.setdefault(inst, {})
            d.setdefault(ev.get('Action'), ev['timeNano'] / 1e9)
        return events

    def compute_phases(self, boots, events):
        """Per boot on our host: durations from /metrics deltas (exact), the
        moments from the JSON log (phase lines are logged when a phase ends)
        and Docker's create/start events (see build_events), so that spawn
        splits into Docker create, Docker start and the inspect after it.
        RPC received = 'instance built' line - build_and_run_instance RPC
        duration; ACTIVE saved = the active_saved phase line."""
        logs = {}
        for ev in self.ours.log_events():
            msg = ev.get('message') or ev.get('fields', {}).get('message')
            if msg not in ('build phase done', 'instance built', 'container create sent', 'container start sent'):
                continue
            inst = event_instance(ev)
            phase = ev.get('phase') or (ev.get('extra') or {}).get('phase')
            key = {'build phase done': phase, 'instance built': 'built',
                   'container create sent': 'create_sent', 'container start sent': 'start_sent'}[msg]
            logs.setdefault(inst, {})[key] = event_time(ev)
        rows = []
        for sid, m0, m1 in boots:
            d = {ph: op_delta(m0, m1, 'build', ph)[0] for ph in
                 ('claim', 'image_cached', 'image_download', 'network_allocate', 'spawn', 'network_plug',
                  'active_saved')}
            n = 'nova_docker_rpc_duration_seconds_sum'
            rpc = mval(m1, n, method='build_and_run_instance') - mval(m0, n, method='build_and_run_instance')
            t, ev = logs.get(sid, {}), events.get(sid, {})
            row = {'uuid': sid, 'rpc_s': rpc, 'image_s': d['image_cached'] + d['image_download'],
                   'network_s': d['network_allocate'] + d['network_plug'], 'spawn_s': d['spawn'],
                   'claim_s': d['claim'], 'active_save_s': d['active_saved']}
            if 'built' in t and 'active_saved' in t:
                received = t['built'] - rpc
                row['compute_s'] = t['active_saved'] - received
            else:
                row['compute_s'] = rpc  # log lines missing: the whole RPC
                self.errors.append('compute phases: no log lines for %s' % sid)
            if all(k in t for k in ('create_sent', 'start_sent', 'spawn')) and 'create' in ev and 'start' in ev:
                # Docker's own work: each request to its event; everything
                # else on the way to ACTIVE is ours
                row['create_s'] = ev['create'] - t['create_sent']
                row['start_s'] = ev['start'] - t['start_sent']
                row['after_start_s'] = t['spawn'] - ev['start']
                row['beyond_docker_s'] = row['compute_s'] - row['create_s'] - row['start_s']
            else:
                # without Docker's events the create cannot be split off:
                # it counts as ours
                row['beyond_docker_s'] = row['compute_s'] - row['spawn_s']
                self.warnings.append('compute phases: no Docker create/start events for %s' % sid)
            rows.append(row)
        return rows

    # -------------------------------------------------------------- parallel
    def many(self, host, n, tag, post_threads=None, networks='none', flavor=FLAVOR, timeout=600):
        """N POSTs (N threads, or POST_THREADS at a time) then one list GET
        every 250 ms until all are ACTIVE. Returns (seconds from the first
        POST to all ACTIVE, ids, errors)."""
        prefix = '%s%s-' % (PREFIX, tag)
        errors, ids = [], []
        lock = threading.Lock()

        def post(i):
            try:
                sid = self.api.create('%s%d' % (prefix, i), self.image, host, networks=networks, flavor=flavor)
                with lock:
                    ids.append(sid)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append('POST %d: %s' % (i, e))

        t0 = time.monotonic()
        if post_threads:
            with ThreadPoolExecutor(post_threads) as ex:
                list(ex.map(post, range(n)))
        else:
            ts = [threading.Thread(target=post, args=(i,)) for i in range(n)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        deadline = time.monotonic() + timeout
        while True:
            sv = {s['id']: s for s in self.api.servers(prefix)}
            now = time.monotonic()
            bad = [s for s in sv.values() if s['status'] == 'ERROR']
            if bad:
                errors.extend('%s ERROR: %s' % (s['id'], s.get('fault')) for s in bad)
                break
            if all(sv.get(i, {}).get('status') == 'ACTIVE' and sv[i].get('OS-EXT-STS:task_state') is None
                   for i in ids):
                break
            if now > deadline:
                errors.append('not all ACTIVE after %d s (%d of %d ACTIVE)' % (
                    timeout, sum(1 for s in sv.values() if s['status'] == 'ACTIVE'), n))
                break
            time.sleep(0.25)
        return now - t0, ids, errors

    def delete_all(self, ids, prefix):
        """Deletes, 10 at a time, until none is listed. A delete the control
        plane failed (the server in ERROR, e.g. SQLite's "database is
        locked" under concurrent deletes) is issued again, at most 3 times
        per server, and counted in self.redeleted (reported by the step)."""
        t0 = time.monotonic()
        with ThreadPoolExecutor(10) as ex:
            list(ex.map(self.api.delete, ids))
        tries = {}

        def gone():
            left = self.api.servers(prefix)
            for s in left:
                if s['status'] == 'ERROR' and s.get('OS-EXT-STS:task_state') is None \
                        and tries.get(s['id'], 0) < 3:
                    tries[s['id']] = tries.get(s['id'], 0) + 1
                    self.redeleted = getattr(self, 'redeleted', 0) + 1
                    log('delete of %s failed in the control plane (%s); issuing it again' % (
                        s['id'], (s.get('fault') or {}).get('message', '?')))
                    self.api.delete(s['id'])
            return not left
        wait_for('servers %s* gone' % prefix, gone, 600, poll=0.25)
        return time.monotonic() - t0

    def parallel(self):
        res = {}
        for n in self.cfg['parallel']:
            for host, who in ((HOST, 'ours'), (self.args.fake_host, 'fake')):
                tag = 'par%d-%s' % (n, who)
                dt, ids, errors = self.many(host, n, tag)
                dd = self.delete_all(ids, PREFIX + tag + '-')
                res['%s_%d' % (who, n)] = {'all_active_s': dt, 'errors': errors, 'delete_all_s': dd, 'n': n}
                if errors:
                    self.errors.extend('parallel %d on %s: %s' % (n, host, e) for e in errors[:5])
                log('%d at once on %s: all ACTIVE after %.2f s, %d error(s); deleted in %.2f s' % (
                    n, host, dt, len(errors), dd))
        self.r['parallel'] = res

    # -------------------------------------------------------------- N instances
    def loaded(self):
        """RSS and CPU of each compute with N instances running (booted 10
        POSTs at a time), sampled over the idle window once all are ACTIVE."""
        n = self.cfg['many']
        res = {}
        for host, who, pid in ((HOST, 'ours', self.ours.pid), (self.args.fake_host, 'fake', self.fake_pid)):
            tag = 'many-%s' % who
            dt, ids, errors = self.many(host, n, tag, post_threads=10)
            if errors:
                self.errors.extend('%d instances on %s: %s' % (n, host, e) for e in errors[:5])
            time.sleep(3)
            with Sampler(pid) as s:
                time.sleep(self.cfg['idle_s'])
            res[who] = dict(s.result, n=len(ids), boot_all_s=dt)
            res[who]['delete_all_s'] = self.delete_all(ids, PREFIX + tag + '-')
            log('%d instances on %s: %.1f MiB, %.2f%% CPU' % (n, host, s.result['rss_mib'], s.result['cpu_pct']))
        self.r['loaded'] = res

    # -------------------------------------------------------------- images
    def images(self):
        """A SIZE MB image (busybox + SIZE MB of /dev/urandom in one layer,
        `docker import`); per direction, ours vs the plain pipeline:
          upload:   `nova-docker image import` vs `docker save | curl -T -`
                    into a new Glance image (create untimed);
          download: our image_download build phase (Glance -> validator ->
                    docker load, first boot of the image) vs `curl | docker
                    load`, and vs the same pipeline with `tee` into
                    `sha512sum` (the Glance hash check ours does, compared
                    with Glance's os_hash_value), all with the image
                    removed from Docker first;
          snapshot: createImage -> Glance image active vs `docker commit` +
                    `docker save | curl -T -` of the same container.
        Disk I/O on these machines is noisy (the same pipeline took 7 s and
        21 s minutes apart), so each direction runs IMAGE_ROUNDS rounds, ours
        and plain alternating which goes first, after a `sync`; medians are
        reported. MB/s = Glance image size / wall time. Our RSS and CPU are
        sampled every 50 ms during the snapshots; the peak is also read as
        VmHWM after resetting it (echo 5 > /proc/PID/clear_refs). The import
        CLI's own CPU time is its rusage."""
        mb, rounds = self.cfg['image_mb'], self.cfg['image_rounds']
        tag = 'nd-bench-big:%d' % mb
        glance, tok = self.env['ND_GLANCE'], self.env['ND_TOKEN']
        curl_up = ("curl -sf -T - -H 'X-Auth-Token: %s' -H 'Content-Type: application/octet-stream' "
                   "%s/v2/images/%%s/file" % (tok, glance))
        work = tempfile.mkdtemp(prefix='nd-bench-img-', dir=BENCH_STATE)
        try:
            log('building %s (%d MB of random data)' % (tag, mb))
            sh('set -e; r=%s/rootfs; mkdir -p $r/bin $r/etc $r/tmp $r/proc $r/sys $r/dev $r/data; '
               'cp /bin/busybox $r/bin/; for a in $(/bin/busybox --list); do [ $a = busybox ] || '
               'ln -sf busybox $r/bin/$a; done; echo "root:x:0:0:root:/root:/bin/sh" > $r/etc/passwd; '
               'head -c %dM /dev/urandom > $r/data/random.bin; tar -C $r -c . | docker import -c %s '
               "-c 'ENV PATH=/bin' - %s >/dev/null" % (work, mb, shquote('CMD ' + BUSYBOX_CMD), tag))
        finally:
            sh(['rm', '-rf', work], check=False)
        self.docker_images.append(tag)
        res = {'mb': mb, 'rounds': rounds}
        for k in ('plain_upload', 'ours_upload', 'plain_download', 'plain_checked_download', 'ours_download',
                  'plain_snapshot', 'ours_snapshot'):
            res[k] = []  # [(seconds, bytes)] per round
        res['ours_upload_cpu_s'] = []

        def plain_upload():
            iid = self.api.image_create('nd-bench-plain-upload')
            self.created_images.append(iid)
            t0 = time.monotonic()
            sh('docker save %s | %s' % (tag, curl_up % iid))
            res['plain_upload'].append((time.monotonic() - t0, self.api.image(iid)['size']))
            return iid

        def ours_upload():
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            p = subprocess.Popen([self.args.binary, 'image', 'import', tag, '--name', 'nd-bench-import',
                                  '--config-file', self.ours.conf], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=dict(os.environ, OS_AUTH_TOKEN=tok))
            out, err = p.communicate()
            dt = time.monotonic() - t0
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode != 0:
                raise BenchError('nova-docker image import: %s' % err.decode()[-500:])
            iid = out.decode().strip().splitlines()[-1]
            self.created_images.append(iid)
            self.docker_images.append(glance_repo(iid))
            res['ours_upload'].append((dt, self.api.image(iid)['size']))
            res['ours_upload_cpu_s'].append(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
            return iid

        keep = set()

        def drop_image(iid):
            if iid not in keep:
                self.api.image_delete(iid)

        imported = None
        for n in range(rounds):
            order = (plain_upload, ours_upload) if n % 2 == 0 else (ours_upload, plain_upload)
            for step in order:
                sh('sync')
                iid = step()
                if step is ours_upload and imported is None:
                    imported = iid  # booted below
                    keep.add(iid)
                else:
                    drop_image(iid)
        log('images: upload rounds ours %s s, plain %s s' % (
            [round(x[0], 1) for x in res['ours_upload']], [round(x[0], 1) for x in res['plain_upload']]))
        size = self.api.image(imported)['size']
        plain_src = self.api.image_create('nd-bench-plain-src')
        self.created_images.append(plain_src)
        sh('docker save %s | %s' % (tag, curl_up % plain_src))
        sh(['docker', 'rmi', tag])
        ours_repo = glance_repo(imported)

        def plain_download():
            sh('sync')
            t0 = time.monotonic()
            sh("curl -sf -H 'X-Auth-Token: %s' %s/v2/images/%s/file | docker load >/dev/null" % (tok, glance, plain_src))
            res['plain_download'].append((time.monotonic() - t0, size))
            sh(['docker', 'rmi', tag])

        plain_hash = self.api.image(plain_src).get('os_hash_value')

        def plain_checked_download():
            # the plain pipeline doing the check ours does: Glance's
            # os_hash_value (sha512) computed over the bytes as they stream
            sh('sync')
            fifo = os.path.join(BENCH_STATE, 'nd-bench-sha.fifo')
            t0 = time.monotonic()
            got = sh('rm -f %s; mkfifo %s; sha512sum < %s > %s.sum & '
                     "curl -sf -H 'X-Auth-Token: %s' %s/v2/images/%s/file | tee %s | docker load >/dev/null; "
                     'wait $!; cut -d" " -f1 %s.sum' % (fifo, fifo, fifo, fifo, tok, glance, plain_src, fifo, fifo))
            res['plain_checked_download'].append((time.monotonic() - t0, size))
            sh(['rm', '-f', fifo, fifo + '.sum'])
            if got.strip() != plain_hash:
                raise BenchError('sha512 of the plain download %s is not Glance\'s %s' % (got.strip(), plain_hash))
            sh(['docker', 'rmi', tag])

        def ours_download():
            # a boot of the imported image on a host without it downloads it
            m0 = scrape(self.ours.metrics)
            sh('sync')
            sid = self.api.create(self.name('big'), imported, HOST)
            self.api.wait(sid, 'ACTIVE', timeout=900)
            m1 = self.build_done(m0)
            dt, cnt = op_delta(m0, m1, 'build', 'image_download')
            if cnt != 1:
                raise BenchError('the boot of the imported image did not download it (image_download count %s)'
                                 % cnt)
            res['ours_download'].append((dt, size))
            self.timed_delete(sid)
            # the host bound the loaded image to the Glance image (and only
            # that: the archive's own tag is never restored)
            rmi_all(ours_repo)
            sh(['docker', 'rmi', tag], check=False)

        for n in range(rounds):
            steps = [plain_download, plain_checked_download, ours_download]
            for step in steps if n % 2 == 0 else reversed(steps):
                step()
        # the server to snapshot (its boot downloads the image once more, untimed)
        sid = self.api.create(self.name('big'), imported, HOST)
        self.api.wait(sid, 'ACTIVE', timeout=900)
        cid = sh(['docker', 'ps', '-q', '--filter', 'label=nova.instance=' + sid]).strip()
        res['ours_snapshot_hwm_mib'] = 0.0
        res['ours_snapshot_sampled'] = []
        res['ours_snapshot_phases'] = []

        def ours_snapshot():
            with open('/proc/%d/clear_refs' % self.ours.pid, 'w') as f:
                f.write('5')
            sh('sync')
            m0 = scrape(self.ours.metrics)
            with Sampler(self.ours.pid, interval=0.05) as smp:
                t0 = time.monotonic()
                r = self.api.action(sid, {'createImage': {'name': 'nd-bench-snapshot'}})
                snap = r.json()['image_id']
                self.created_images.append(snap)
                wait_for('snapshot image active', lambda: (self.api.image(snap) or {}).get('status') == 'active',
                         900, poll=0.1)
                t1 = time.monotonic()
                self.api.wait(sid, 'ACTIVE', timeout=300)
            m1 = scrape(self.ours.metrics)
            res['ours_snapshot'].append((t1 - t0, self.api.image(snap)['size']))
            res['ours_snapshot_hwm_mib'] = max(res['ours_snapshot_hwm_mib'],
                                               status_kb(self.ours.pid, 'VmHWM') / 1024.0)
            res['ours_snapshot_sampled'].append(smp.result)
            res['ours_snapshot_phases'].append(
                {ph: op_delta(m0, m1, 'snapshot', ph)[0] for ph in ('commit', 'upload', 'total')})
            drop_image(snap)

        def plain_snapshot():
            iid = self.api.image_create('nd-bench-plain-snapshot')
            self.created_images.append(iid)
            self.docker_images.append('nd-bench-plain-commit:1')
            sh('sync')
            t0 = time.monotonic()
            sh('docker commit %s nd-bench-plain-commit:1 >/dev/null && docker save nd-bench-plain-commit:1 | %s' % (
                cid, curl_up % iid))
            res['plain_snapshot'].append((time.monotonic() - t0, self.api.image(iid)['size']))
            sh(['docker', 'rmi', 'nd-bench-plain-commit:1'])
            drop_image(iid)

        for n in range(rounds):
            order = (ours_snapshot, plain_snapshot) if n % 2 == 0 else (plain_snapshot, ours_snapshot)
            for step in order:
                step()
        self.timed_delete(sid)
        self.r['images'] = res

        def med(k):
            return p50([x[0] for x in res[k]])
        log('images (median of %d): upload ours %.2f s vs plain %.2f s; download ours %.2f s vs plain %.2f s; '
            'snapshot ours %.2f s vs plain %.2f s; peak RSS %.1f MiB' % (
                rounds, med('ours_upload'), med('plain_upload'), med('ours_download'), med('plain_download'),
                med('ours_snapshot'), med('plain_snapshot'), res['ours_snapshot_hwm_mib']))

    # -------------------------------------------------------------- net plug
    def netplug(self):
        """The ignored plug-latency test, `cargo test --release --test
        integration net::bench -- --ignored --nocapture` (50 plugs after 3
        warm-ups of each), parsed. tests/bench/run passes the test binary it
        built, which is run directly with the same arguments (no rebuild)."""
        if self.args.net_bench_exe:
            cmd = [self.args.net_bench_exe, 'net::bench', '--ignored', '--nocapture']
        else:
            cmd = ['cargo', 'test', '--release', '--test', 'integration', 'net::bench', '--', '--ignored',
                   '--nocapture']
        out = sh(cmd, timeout=1800, cwd=ROOT)
        res = {}
        for line in out.splitlines():
            m = re.match(r'^(.*?)\s+p50\s+(\S+)\s+p90\s+(\S+)\s+min\s+(\S+)\s+max\s+(\S+)', line)
            if m:
                res[m.group(1).strip()] = {'p50_s': dur(m.group(2)), 'p90_s': dur(m.group(3))}
        if not res:
            raise BenchError('net::bench printed no result:\n' + out[-1000:])
        self.r['netplug'] = res

    # -------------------------------------------------------------- run
    def cleanup(self):
        log('== cleanup')
        if self.rpc_server and self.rpc_server.poll() is None:
            os.kill(self.rpc_server.pid, signal.SIGCONT)
            self.rpc_server.kill()
            self.rpc_server.wait()
        if self.ours and self.ours.alive():
            os.kill(self.ours.pid, signal.SIGCONT)
        self.cleanup_servers()
        for iid in self.created_images:
            try:
                self.api.image_delete(iid)
            except Exception as e:  # noqa: BLE001
                self.errors.append('cleanup: image %s: %s' % (iid, e))
        for ref in self.docker_images:
            rmi_all(ref)
        if self.pyreg:
            self.pyreg.stop()
        if self.ours:
            self.broker_warnings()
            self.ours.stop()
            if self.ours.proc.returncode not in (0, None):
                self.errors.append('nova-docker exited with status %s (log: %s)' % (
                    self.ours.proc.returncode, self.ours.log))
        n = docker_rm_label('nova.host=' + HOST) + docker_rm_label('nd-bench=1')
        if n:
            log('cleanup: removed %d leftover container(s)' % n)
        for h in (HOST, PYREG_HOST):
            try:
                self.api.service_delete(h)
            except Exception as e:  # noqa: BLE001
                self.errors.append('cleanup: service record %s: %s' % (h, e))

    def run_port_density(self, t_start):
        """tests/bench/run --port / --density / --moves: port_density.py's
        step (moves.py's), its own block of BENCHMARKS.md, the raw results
        beside the others."""
        if self.mode == 'moves':
            import moves
            step = moves.MovesBench(self)
        else:
            import port_density
            step = port_density.PortBench(self) if self.mode == 'port' else port_density.DensityBench(self)
        try:
            self.step(self.mode, step.run, needs_ours=False)
        finally:
            step.cleanup()
        self.r['machine']['loadavg_end'] = open('/proc/loadavg').read().split()[:3]
        self.r['duration_s'] = time.monotonic() - t_start
        self.r['errors'], self.r['warnings'] = self.errors, self.warnings
        os.makedirs(BENCH_STATE, exist_ok=True)
        raw = os.path.join(BENCH_STATE, 'results-%s%s.json' % (
            self.mode, '-' + self.release if self.release != 'newest' else ''))
        with open(raw, 'w') as f:
            json.dump(self.r, f, indent=1)
        log('raw results: %s' % raw)
        step.write_report(os.path.join(ROOT, 'BENCHMARKS.md'))
        log('BENCHMARKS.md written; %d error(s); %.1f min' % (len(self.errors), self.r['duration_s'] / 60))
        for w in self.warnings:
            log('WARNING: %s' % w)
        for e in self.errors:
            log('ERROR: %s' % e)
        return 1 if self.errors else 0

    def broker_warnings(self):
        """The main RabbitMQ node is shared: when something restarts it
        during the run, our log says so; the figures around it are off."""
        try:
            lost = [event_time(e) for e in self.ours.log_events()
                    if e.get('message') == 'lost the connection to RabbitMQ; reconnecting']
        except OSError:
            return
        if lost:
            when = ', '.join(datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%H:%M:%S')
                             for t in lost)
            self.warnings.append('nova-docker lost its RabbitMQ connection %d time(s) during the run (at %s UTC): '
                                 'something restarted the shared broker; operations in flight then (an RPC call '
                                 'waits up to 60 s for its reply) make outliers' % (len(lost), when))

    def run(self):
        t_start = time.monotonic()
        self.machine()
        if self.mode in ('port', 'density', 'moves'):
            return self.run_port_density(t_start)
        try:
            self.step('preflight', self.preflight, needs_ours=False)
            if not self.errors and self.mode == 'rpc':
                self.step('start nova-docker', self.start_ours, needs_ours=False)
                self.step('RPC', self.rpc)
            elif not self.errors:
                self.step('start nova-docker', self.start_ours, needs_ours=False)
                self.step('python nova-compute registration', self.python_registration)
                self.step('idle RSS and CPU', self.idle)
                self.step('RPC', self.rpc)
                self.step('serial boots and lifecycle', self.serial)
                self.step('parallel boots', self.parallel)
                self.step('%d instances' % self.cfg['many'], self.loaded)
                self.step('images and snapshot', self.images)
            if self.mode != 'rpc':
                self.step('network plug latency', self.netplug, needs_ours=False)
        finally:
            self.cleanup()
        self.r['machine']['loadavg_end'] = open('/proc/loadavg').read().split()[:3]
        self.r['duration_s'] = time.monotonic() - t_start
        self.r['errors'] = self.errors
        self.r['warnings'] = self.warnings
        os.makedirs(BENCH_STATE, exist_ok=True)
        raw = os.path.join(BENCH_STATE, 'results-%s.json' % self.mode)
        with open(raw, 'w') as f:
            json.dump(self.r, f, indent=1)
        log('raw results: %s' % raw)
        if self.mode == 'rpc':
            write_rpc_report(self.r, self.errors, self.warnings, os.path.join(ROOT, 'BENCHMARKS.md'))
        else:
            try:
                plot(self.r, os.path.join(HERE, 'boot-latency.png'))
            except Exception as e:  # noqa: BLE001
                self.errors.append('plot: %s' % e)
                log('ERROR in plot: %s\n%s' % (e, traceback.format_exc()))
            write_report(self.r, self.errors, self.warnings, os.path.join(ROOT, 'BENCHMARKS.md'))
        log('BENCHMARKS.md written; %d error(s); %.1f min' % (len(self.errors), self.r['duration_s'] / 60))
        for w in self.warnings:
            log('WARNING: %s' % w)
        for e in self.errors:
            log('ERROR: %s' % e)
        return 1 if self.errors else 0


def shquote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def dur(s):
    """Rust's {:?} of a Duration: 1.234ms, 812.000µs, 1.002s, 950ns."""
    m = re.match(r'^([\d.]+)(ns|µs|us|ms|s)$', s)
    if not m:
        raise BenchError('cannot parse duration %r' % s)
    return float(m.group(1)) * {'ns': 1e-9, 'µs': 1e-6, 'us': 1e-6, 'ms': 1e-3, 's': 1.0}[m.group(2)]


# ------------------------------------------------------------------ plot
def plot(r, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - matplotlib.ticker.FuncFormatter below
    serial = r.get('serial')
    if not serial:
        return
    series = [('nova-docker: API → ACTIVE', serial['ours'], 'tab:blue'),
              ('Python nova-compute, FakeDriver: API → ACTIVE', serial['fake'], 'tab:orange'),
              ('nova-docker compute side: RPC → ACTIVE saved', [c['compute_s'] for c in r.get('compute', [])],
               'tab:cyan'),
              ('docker run -d (CLI)', serial['docker_run'], 'tab:green'),
              ('Docker Engine API create + start', serial['docker_api'], 'tab:olive')]
    series = [s for s in series if s[1]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={'width_ratios': [3, 2]})
    for label, v, color in series:
        s = sorted(v)
        xs = [s[0]] + s
        ys = [0.0] + [(i + 1) / len(s) for i in range(len(s))]
        ax1.step(xs, ys, where='post', label='%s (p50 %s)' % (label, fmt_s(p50(s))), color=color)
    ax1.set_xscale('log')
    ax1.set_xlabel('seconds (log scale)')
    ax1.set_ylabel('fraction of boots')
    ax1.set_title('Boot latency, %d serial boots each (ECDF)' % len(serial['ours']))
    ax1.grid(True, which='both', alpha=0.3)
    ax1.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=2)
    secs = matplotlib.ticker.FuncFormatter(lambda x, _: '%g' % x)
    ax1.xaxis.set_major_formatter(secs)
    ax1.xaxis.set_minor_formatter(secs)
    ax1.tick_params(axis='x', which='minor', labelsize=7)
    ax2.boxplot([v for _, v, _ in series], whis=(5, 95), showfliers=True)
    ax2.set_xticks(range(1, len(series) + 1))
    ax2.set_xticklabels(['nova-docker', 'FakeDriver', 'compute\nside', 'docker run', 'Engine\nAPI'][:len(series)]
                        if len(series) == 5 else [s[0][:12] for s in series], fontsize=8)
    ax2.set_yscale('log')
    ax2.set_ylabel('seconds (log scale)')
    ax2.yaxis.set_major_formatter(secs)
    ax2.yaxis.set_minor_formatter(secs)
    ax2.tick_params(axis='y', which='minor', labelsize=7)
    ax2.set_title('Box: p25-p75, whiskers p5-p95')
    ax2.grid(True, which='both', axis='y', alpha=0.3)
    m = r['machine']
    fig.suptitle('nova-docker boot latency, %s run, %s, commit %s (%s CPUs, %s)' % (
        r['mode'], r['date'], r['commit'].split()[0], m['nproc'], m['cpu']), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ report
def fmt_s(v):
    if v is None:
        return '—'
    if v < 1:
        return '%.0f ms' % (v * 1000) if v >= 0.0095 else '%.1f ms' % (v * 1000)
    return '%.2f s' % v


def fmt_ms(v):
    return '—' if v is None else ('%.2f ms' % v if v < 10 else '%.1f ms' % v)


def fmt_cpu(x):
    """CPU % of one core; with no tick counted, the bound the window gives."""
    if x.get('cpu_ticks', 1) == 0 or x['cpu_pct'] == 0:
        return '< %.2f %%' % (x.get('cpu_resolution_pct') or 100.0 / HZ / x['window_s'])
    return '%.2f %%' % x['cpu_pct']


def cpu_at_most(x, limit):
    """True/False, or None when the window is too short to tell."""
    if x.get('cpu_ticks', 1) == 0 or x['cpu_pct'] == 0:
        return True if (x.get('cpu_resolution_pct') or 100.0 / HZ / x['window_s']) <= limit else \
            'n/a (window too short)'
    return x['cpu_pct'] <= limit


def met(ok):
    if isinstance(ok, str):
        return ok
    if ok is None:
        return 'n/a'
    return 'met' if ok else '**not met**'


def fmt_us(seconds):
    if seconds is None:
        return '—'
    return '%.0f µs' % (seconds * 1e6) if seconds < 0.001 else fmt_ms(seconds * 1000)


def rpc_rows(rpc, row):
    """The RPC rows of the report (the full run's table and --rpc's)."""
    fake = rpc.get('fake_ms')
    o50, p50_ = p50(rpc['ours_ms']), p50(rpc['py_ms'])
    row('RPC ping round trip, Python oslo.messaging client, p50 (%d calls)' % len(rpc['ours_ms']), fmt_ms(o50),
        fmt_ms(p50_), 'nova-compute (FakeDriver) %s' % fmt_ms(p50(fake)) if fake else '—',
        '≤ half of Python (this client\'s own cost is in both)', o50 <= p50_ / 2)
    row('RPC ping round trip, Python client, p99', fmt_ms(pct(rpc['ours_ms'], .99)), fmt_ms(pct(rpc['py_ms'], .99)),
        'nova-compute (FakeDriver) %s' % fmt_ms(pct(fake, .99)) if fake else '—')
    if 'ours_rust_ms' in rpc:
        o, p = rpc['ours_rust_ms'], rpc['py_rust_ms']
        row('RPC ping round trip, Rust client (`examples/rpc_ping.rs`), p50 (%d calls)' % len(o), fmt_ms(p50(o)),
            fmt_ms(p50(p)), '—', '≤ half of Python with the same client', p50(o) <= p50(p) / 2)
        row('RPC ping round trip, Rust client, p99', fmt_ms(pct(o, .99)), fmt_ms(pct(p, .99)))
    # the server's own part: ours bucket-interpolated; Python's exact, and
    # read through our buckets too so that both are read the same way
    for key, client in (('rust_', 'Rust client'), ('', 'Python client')):
        ob = rpc.get('ours_%sserver_buckets' % key)
        ps = rpc.get('py_%sserver_s' % key)
        if not ob or ps is None:
            continue
        bounds = [le for le, _ in ob]
        pb = to_buckets(ps, bounds)
        n = ob[-1][1]
        floor = rpc.get('broker_confirm_ms') if key else None
        for q, name in ((.5, 'p50'), (.99, 'p99')):
            row('RPC server side of a ping call (delivery → reply confirmed), %s, %s (%d / %d calls)' % (
                client, name, n, len(ps)), '%s (from buckets)' % fmt_us(hist_pct(ob, q)),
                '%s exact, %s from the same buckets' % (fmt_us(pct(ps, q)), fmt_us(hist_pct(pb, q))),
                'the broker\'s part: a reply-like publish → its confirm, %s' % fmt_us(pct(floor, q) / 1000)
                if floor else '—')
        # the issue's span: delivery -> reply handed to the connection (ours
        # only: oslo's reply() returns after the broker's confirm)
        pub = rpc.get('ours_%spublished_buckets' % key)
        if pub:
            for q, name in ((.5, 'p50'), (.99, 'p99')):
                aim = '≤ 0.1 ms' if q == .5 and key else '—'
                row('RPC server side of a ping call (delivery → reply published, before the confirm), %s, %s '
                    '(%d calls)' % (client, name, pub[-1][1]), '%s (from buckets)' % fmt_us(hist_pct(pub, q)),
                    '—', '—', aim, (hist_pct(pub, q) or 1) <= 0.0001)
    oc, pc = rpc['casts'] / rpc['ours_casts_s'], rpc['casts'] / rpc['py_casts_s']
    row('RPC casts handled per second (%d queued)' % rpc['casts'], '%.0f /s' % oc, '%.0f /s' % pc, '—',
        '≥ 5× Python', oc >= 5 * pc)


def machine_line(r):
    m = r['machine']
    return ('Machine: %s CPUs (%s), %.1f GiB memory, kernel %s, Docker %s. Load average %s at the start, %s at the '
            'end. Run time %.1f min.' % (m['nproc'], m['cpu'], m['memory_gib'], m['kernel'], m['docker'],
                                         ' '.join(m['loadavg_start']), ' '.join(m.get('loadavg_end', ['?'])),
                                         r['duration_s'] / 60))


def load_note(r):
    """A warning line when the machine was busy with other work: the
    1-minute load average above the CPU count at the start or the end."""
    m = r['machine']
    loads = [float(x[0]) for x in (m.get('loadavg_start'), m.get('loadavg_end')) if x]
    if loads and max(loads) > m['nproc']:
        return ['**Loaded machine**: the 1-minute load average (%s) was above the CPU count (%s) during this run; '
                'its figures are noisy, to be rerun on a quiet machine before they are quoted.' % (
                    ' / '.join('%.2f' % x for x in loads), m['nproc']), '']
    return []


def replace_block(path, start, end, block, after=None):
    """Replaces START..END of PATH with BLOCK; a missing block goes right
    after the marker AFTER when there is one, else at the end."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = INTRO
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    elif after and after in text:
        i = text.index(after) + len(after)
        text = text[:i] + '\n\n' + block + text[i:]
    else:
        text = text.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(text)


def write_rpc_report(r, errors, warnings, path):
    """tests/bench/run --rpc: its own block of BENCHMARKS.md."""
    rows = []

    def row(what, ours, py='—', base='—', aim='—', ok=None):
        cells = [str(x).replace('|', '\\|') for x in (what, ours, py, base, aim, met(ok) if aim != '—' else '')]
        rows.append('| %s |' % ' | '.join(cells))

    if r.get('rpc'):
        rpc_rows(r['rpc'], row)
    lines = [RPC_MARK_START, '', '## Latest RPC run: `tests/bench/run --rpc`, %s, commit %s' % (
        r['date'], r['commit']), '', machine_line(r), ''] + load_note(r)
    if errors:
        lines += ['**%d error(s) in this run:**' % len(errors), ''] + ['- %s' % e.replace('\n', ' ')[:400]
                                                                      for e in errors] + ['']
    if warnings:
        lines += ['**Warning:**', ''] + ['- %s' % w for w in warnings] + ['']
    lines += ['| Measurement | nova-docker | Python oslo.messaging server | Baseline | Aim | Met |',
              '|---|---|---|---|---|---|'] + rows + ['', RPC_MARK_END]
    replace_block(path, RPC_MARK_START, RPC_MARK_END, '\n'.join(lines))


def write_report(r, errors, warnings, path):
    rows = []

    def row(what, ours, py='—', base='—', aim='—', ok=None):
        cells = [str(x).replace('|', '\\|') for x in (what, ours, py, base, aim, met(ok) if aim != '—' else '')]
        rows.append('| %s |' % ' | '.join(cells))

    cfg = r['config']
    s = r.get('serial')
    if s:
        n = len(s['ours'])
        o50, f50, o95, f95 = p50(s['ours']), p50(s['fake']), pct(s['ours'], .95), pct(s['fake'], .95)
        row('Boot API → ACTIVE, %d serial, p50' % n, fmt_s(o50), fmt_s(f50), '`docker run -d` %s' % fmt_s(
            p50(s['docker_run'])), "below the FakeDriver host's", o50 < f50)
        row('Boot API → ACTIVE, %d serial, p95' % n, fmt_s(o95), fmt_s(f95), '`docker run -d` %s' % fmt_s(
            pct(s['docker_run'], .95)), '≤ 3.0 s (anchors §6 #1)', o95 <= 3.0)
        row('Engine floor: Docker API create + start, p50 / p95', '—', '—', '%s / %s' % (
            fmt_s(p50(s['docker_api'])), fmt_s(pct(s['docker_api'], .95))))
        if s.get('docker_api_disabled_start'):
            own, disabled = p50(s['docker_api_start']), p50(s['docker_api_disabled_start'])
            row("Engine floor: Docker API start, network `none` set up by Docker (as `docker run`) / networking "
                "disabled (`NetworkDisabled`, as instances), p50", '—', '—', '%s / %s (Docker\'s network set-up: %s)'
                % (fmt_s(own), fmt_s(disabled), fmt_s(own - disabled)))
    c = r.get('compute')
    if c:
        comp = [x['compute_s'] for x in c]
        fb = r.get('fake_build')
        row('Compute side: RPC received → ACTIVE saved, p50 / p99', '%s / %s' % (
            fmt_s(p50(comp)), fmt_s(pct(comp, .99))), '%s / %s (its own "Took N seconds to build instance", '
            'which leaves out its first save)' % (fmt_s(p50(fb)), fmt_s(pct(fb, .99))) if fb else '—',
            'Docker API create + start p50 %s' % fmt_s(
            p50(s['docker_api'])) if s else '—', 'p50 ≤ 300 ms, p99 ≤ 1 s (anchors §6 #2)',
            p50(comp) <= 0.3 and pct(comp, .99) <= 1.0)
        beyond = [x['beyond_docker_s'] for x in c]
        row('Compute-side overhead beyond Docker create + start, p50', fmt_s(p50(beyond)), '—', '—', '< 50 ms',
            p50(beyond) < 0.05)
        hit = [x['image_s'] for x in c]
        row('Image-cache hit (image phase of a cached boot), p50', fmt_ms(p50(hit) * 1000), '—', '—',
            '≤ 10 ms (anchors §6 #7)', p50(hit) <= 0.010)
    par = r.get('parallel')
    if par:
        for i, n in enumerate(cfg['parallel']):
            o, f = par.get('ours_%d' % n), par.get('fake_%d' % n)
            if not o or not f:
                continue
            txt = lambda x: '%s%s' % (fmt_s(x['all_active_s']), ', %d error(s)' % len(x['errors']) if x['errors']
                                      else '')
            if i == 0:
                row('%d boots at once, until all ACTIVE' % n, txt(o), txt(f), '—', '≤ 8 s for 15 (anchors §6 #3)',
                    (o['all_active_s'] <= 8.0 and not o['errors']) if n == 15 else 'n/a (not 15)')
            else:
                row('%d boots at once, until all ACTIVE' % n, txt(o), txt(f), '—', 'all ACTIVE, no error',
                    not o['errors'])
    life = r.get('lifecycle')
    if life:
        aims = {'soft_reboot': ('≤ 1.0 s (anchors §6 #4)', 1.0), 'hard_reboot': ('≤ 0.5 s (anchors §6 #4)', 0.5),
                'stop': ('—', None), 'start': ('—', None), 'delete': ('≤ 1.0 s (anchors §6 #5)', 1.0)}
        names = {'soft_reboot': 'Soft reboot', 'hard_reboot': 'Hard reboot', 'stop': 'Stop', 'start': 'Start',
                 'delete': 'Delete (API → 404)'}
        for k in ('soft_reboot', 'hard_reboot', 'stop', 'start', 'delete'):
            o, f = life['ours'].get(k), life['fake'].get(k)
            if not o:
                continue
            aim, lim = aims[k]
            row('%s, p50 of %d' % (names[k], len(o)), fmt_s(p50(o)), fmt_s(p50(f)) if f else '—', '—', aim,
                None if lim is None else p50(o) <= lim)
    im = r.get('images')
    if im and isinstance(im.get('ours_upload'), list):
        def med(k):
            """(median MB/s, median seconds) over the rounds of one side."""
            return p50([b / 1e6 / t for t, b in im[k]]), p50([t for t, _ in im[k]])

        n = im['rounds']
        of_n = 'median of %d, ' % n if n > 1 else ''

        def cell(k):
            rate, secs = med(k)
            return rate, '%.0f MB/s (%.1f s' % (rate, secs)
        sz = p50([b for _, b in im['ours_snapshot']]) / 1e6
        for title, ours, plain, how, aim, share in (
                ('Snapshot of a %.0f MB container → Glance (MB/s)' % sz, 'ours_snapshot', 'plain_snapshot',
                 '`docker commit` + `docker save | curl -T -`', '≥ 90 % of the plain pipeline', 0.9),
                ('Import Docker → Glance, `nova-docker image import` (MB/s)', 'ours_upload', 'plain_upload',
                 '`docker save | curl -T -`', '≥ 90 % of the plain pipeline', 0.9),
                ('Load Glance → Docker, first boot of the image (MB/s)', 'ours_download', 'plain_download',
                 '`curl | docker load`', '≥ 80 % of raw docker load (anchors §6 #7)', 0.8),
                ('Load Glance → Docker, against a plain pipeline that checks Glance\'s hash too (MB/s)',
                 'ours_download', 'plain_checked_download', '`curl | tee >(sha512sum) | docker load`',
                 '≥ 95 % (issue 17: the checks cost no more than by hand)', 0.95)):
            if not im.get(plain):
                continue
            (o, otxt), (p_, ptxt) = cell(ours), cell(plain)
            extra = ''
            if ours == 'ours_upload' and im.get('ours_upload_cpu_s'):
                extra = ', CLI CPU %.1f s' % p50(im['ours_upload_cpu_s'])
            row(title, '%s, %s%.1f %%%s)' % (otxt, of_n, 100 * o / p_, extra), '—',
                '%s: %s%s)' % (how, ptxt, ', median of %d' % n if n > 1 else ''), aim, o >= share * p_)
        cpu = max(x['cpu_pct'] for x in im['ours_snapshot_sampled'])
        row('Peak RSS during the %.0f MB snapshots (VmHWM)' % sz, '%.1f MiB (CPU at most %.0f %% of a core)' % (
            im['ours_snapshot_hwm_mib'], cpu), '—', '—', '≤ 64 MiB (anchors §6 #6)', im['ours_snapshot_hwm_mib'] <= 64)
    idle = r.get('idle')
    if idle:
        o, f = idle['ours'], idle['fake']
        row('RSS idle, no instance', '%.1f MiB' % o['rss_mib'], '%.1f MiB' % f['rss_mib'], '—', '≤ 30 MiB',
            o['rss_mib'] <= 30)
        row('CPU idle (%% of one core, %.0f s)' % o['window_s'], fmt_cpu(o), fmt_cpu(f))
    ld = r.get('loaded')
    if ld and 'ours' in ld and 'fake' in ld:
        o, f = ld['ours'], ld['fake']
        row('RSS with %d instances' % o['n'], '%.1f MiB' % o['rss_mib'], '%.1f MiB' % f['rss_mib'], '—',
            '≤ 60 MiB with 100', o['rss_mib'] <= 60 if o['n'] >= 100 else 'n/a (fewer than 100)')
        row('CPU with %d instances (%% of one core, %.0f s)' % (o['n'], o['window_s']), fmt_cpu(o), fmt_cpu(f), '—',
            '≤ 0.1 % (anchors §6 #9, with 500)',
            cpu_at_most(o, 0.1) if o['n'] >= 500 else 'not measured (%d instances; the aim is for 500)' % o['n'])
    reg = r.get('register')
    if reg:
        row('Start-up: exec → "up" in os-services', fmt_s(reg['ours_up_s']), fmt_s(reg.get('py_up_s')), '—',
            '≤ 1 s', reg['ours_up_s'] <= 1.0)
    rpc = r.get('rpc')
    if rpc:
        rpc_rows(rpc, row)
    npl = r.get('netplug')
    if npl:
        ours = next((v for k, v in npl.items() if k.startswith('net::plug') and 'IPv4 + IPv6' not in k), None)
        old = next((v for k, v in npl.items() if k.startswith('old driver')), None)
        if ours:
            row('Plug one port (bridge VIF, IPv4), p50', fmt_ms(ours['p50_s'] * 1000), '—',
                'old driver ip/brctl/ethtool sequence %s' % (fmt_ms(old['p50_s'] * 1000) if old else '—'),
                '≤ 20 ms', ours['p50_s'] <= 0.020)

    m = r['machine']
    lines = [MARK_START, '', '## Latest run: `--%s`, %s, commit %s' % (r['mode'], r['date'], r['commit']), '',
             'Machine: %s CPUs (%s), %.1f GiB memory, kernel %s, Docker %s. Load average %s at the start, %s at the '
             'end. Run time %.1f min.' % (m['nproc'], m['cpu'], m['memory_gib'], m['kernel'], m['docker'],
                                          ' '.join(m['loadavg_start']), ' '.join(m.get('loadavg_end', ['?'])),
                                          r['duration_s'] / 60), ''] + load_note(r)
    if r['mode'] == 'quick':
        lines += ['**`--quick` run** (%d serial boots, %s at once, %d instances, %d MB image): a check of the '
                  'script, not figures to quote.' % (cfg['serial'], ' and '.join(map(str, cfg['parallel'])),
                                                     cfg['many'], cfg['image_mb']), '']
    if errors:
        lines += ['**%d error(s) in this run:**' % len(errors), ''] + ['- %s' % e.replace('\n', ' ')[:400]
                                                                      for e in errors] + ['']
    if warnings:
        lines += ['**Warning:**', ''] + ['- %s' % w for w in warnings] + ['']
    lines += ['| Measurement | nova-docker | Python (FakeDriver nova-compute / oslo.messaging) | Baseline | Aim | '
              'Met |', '|---|---|---|---|---|---|'] + rows + ['']
    if c:
        def ph(key):
            v = [x[key] for x in c if key in x]
            return fmt_ms(p50(v) * 1000) if v else '—'
        lines += ['Compute side of a boot on nova-docker (p50 over %d boots; each p50 is taken on its own, so they '
                  'do not add up exactly). The service overlaps work: for a server without ports, the claim, '
                  'block-device and spawning saves run in order beside the image lookup, Docker create and Docker '
                  'start. "Docker create" = our '
                  'create request (the `container create sent` log line) → Docker\'s create event; "Docker start" = '
                  'our start request → Docker\'s start event; "beyond Docker" = RPC → ACTIVE saved minus those two '
                  '(waiting for a task-state save, the ACTIVE save, our own work):'
                  % len(c), '',
                  '| RPC → ACTIVE saved | image (cache hit) | Docker create | Docker start | inspect after start | '
                  'network | beyond Docker | claim save (beside Docker) | ACTIVE save |',
                  '|---|---|---|---|---|---|---|---|---|',
                  '| %s |' % ' | '.join(ph(k) for k in ('compute_s', 'image_s', 'create_s', 'start_s', 'after_start_s',
                                                      'network_s', 'beyond_docker_s', 'claim_s', 'active_save_s')),
                  '']
    lines += ['![Boot latency distributions](tests/bench/boot-latency.png)', '', MARK_END]
    block = '\n'.join(lines)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = INTRO
    if MARK_START in text and MARK_END in text:
        text = text[:text.index(MARK_START)] + block + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(text)


INTRO = """# Benchmarks

nova-docker side by side with Python nova-compute (Nova's FakeDriver, which
starts nothing: the control plane's own floor) and raw Docker (the engine's
floor), on the test environment of `tests/env` (nova 34 control plane, one
RabbitMQ, SQLite). Reproduce with

    tests/bench/run            # --full: 20 serial boots, 15/50 at once, 100 instances, 500 MB image
    tests/bench/run --quick    # a short check of the script

which stands the environment up if needed, runs everything below and rewrites
the block between the markers. It exits non-zero only when something failed,
never because a number missed its aim.

How each figure is taken:

- **Boot API → ACTIVE**: `POST /servers` (flavor m1.nano, `networks: none`,
  `availability_zone nova:<host>`) to the first `GET /servers/<id>` (polled
  every 50 ms) showing ACTIVE with no task state. Rounds are interleaved (our
  host, the FakeDriver host, `docker run -d`, Engine API create + start), after
  one unmeasured warm-up boot per host.
- **Engine floor by network set-up**: in each round, one more Engine-API
  create + start, with networking disabled (`NetworkDisabled`, as our
  instances are created) beside the plain `none` one. Their difference is
  Docker's own network set-up, which disabled networking skips: a libnetwork
  sandbox and a `libnetwork-setkey` prestart hook that re-executes the 75 MB
  dockerd binary and calls back into the daemon. Both containers get a
  network namespace of their own.
- **Compute side**: from nova-docker's own `/metrics` (exact phase durations,
  scraped before and after each boot), its JSON log (the moment each phase
  ended) and Docker's `create`/`start` events (which split the spawn phase).
  RPC received = the `instance built` line minus the `build_and_run_instance`
  RPC duration; ACTIVE saved = the `active_saved` phase line. "Beyond Docker"
  = that total minus Docker's own create and start: from the `container
  create sent` line to Docker's start event.
- **Parallel**: N `POST /servers` from N threads at once; time from the first
  POST until one `GET /servers/detail` shows all ACTIVE (polled every 250 ms).
- **Reboot, stop/start, delete**: action POST (or DELETE) to the first GET
  showing the end state (ACTIVE / SHUTOFF / 404), polled every 50 ms.
- **Images**: a `docker import`ed image of busybox plus N MB of random data;
  MB/s = Glance image size / wall time, each against the plain pipeline doing
  the same move (`docker save | curl -T -`, `curl | docker load`, `docker
  commit` + `docker save | curl -T -`). Disk I/O here is noisy (one pipeline
  took 7 s and 21 s minutes apart), so `--full` runs 3 rounds per direction,
  ours and plain alternating which goes first, each after a `sync`, and
  reports medians.
- **RSS / CPU**: VmRSS of `/proc/<pid>/status` summed over the process group
  (median of 50 ms samples), CPU = utime + stime from `/proc/<pid>/stat` over
  the window; peak RSS during a snapshot is VmHWM after `echo 5 >
  /proc/<pid>/clear_refs`.
- **RPC**: sequential `baseapi` `ping` calls to our service, to a Python
  oslo.messaging server answering the same ping on the same broker
  (`tests/bench/rpc_peer.py`) and, with the Python client, to the FakeDriver
  nova-compute; from the Python oslo.messaging client and from a Rust client
  that speaks the wire format itself (`examples/rpc_ping.rs`). Server side:
  delivery to reply confirmed, ours from `nova_docker_rpc_server_seconds`
  (interpolated inside its buckets), the Python server's timed exactly by a
  wrapper of oslo's AMQP driver; beside them the broker's own part (a
  reply-like publish until its confirm, `rpc_ping --broker-floor`). Casts: the server is SIGSTOPped, N ping
  casts are queued, and the time from SIGCONT until it has handled all N is
  measured.
- **Start-up**: exec to state "up" in `os-services` (polled every 50 ms), for
  nova-docker and for a Python nova-compute (FakeDriver) started the same way
  as a second host.
- **Port plug**: the ignored test `cargo test --release --test integration
  net::bench -- --ignored --nocapture` (50 plugs after 3 warm-ups, ours vs the
  old driver's ip/brctl/ethtool sequence); `tests/bench/run` runs the test
  binary it built with those arguments, so nothing is rebuilt mid-run.

With the Python client its own cost is in every round trip to every
server; the Rust client's round trip minus the server side shows what is
left (the client and the broker's two hops). Raw results of the last run are in
`$ND_ENV_STATE/bench/results-<mode>.json`, our service's JSON log in
`$ND_ENV_STATE/bench/nd-bench/`.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--quick', action='store_true')
    g.add_argument('--full', action='store_true')
    g.add_argument('--rpc', action='store_true', help='the RPC step alone (about a minute)')
    g.add_argument('--port', action='store_true', help='boot with one Neutron port (port_density.py)')
    g.add_argument('--density', type=int, nargs='?', const=500, metavar='N',
                   help='N instances on one host, default 500 (port_density.py)')
    g.add_argument('--moves', action='store_true',
                   help='rebuild, shelve, unshelve, resize, cold migration of an instance with data (moves.py)')
    ap.add_argument('--serial', type=int, help='--port: serial boots per kind (default 10)')
    ap.add_argument('--at-once', type=int, help='--port: boots at once (default 50)')
    ap.add_argument('--release', choices=RELEASES + ('both',),
                    help='--port: the control plane(s), one after the other (default both: newest, then zed)')
    ap.add_argument('--moves-mb', type=int, help='--moves: MiB written in each moved instance (default 500)')
    ap.add_argument('--binary', default=os.path.join(ROOT, 'target', 'release', 'nova-docker'))
    ap.add_argument('--fake-host', default='nd-bench-fake')
    ap.add_argument('--net-bench-exe', help='the integration-test binary (else: cargo test)')
    ap.add_argument('--rpc-client', help='the Rust RPC client (target/release/examples/rpc_ping)')
    args = ap.parse_args()
    if args.release and not args.port:
        ap.error('--release goes with --port only')
    if not os.access(args.binary, os.X_OK):
        log('ERROR: %s missing (cargo build --release)' % args.binary)
        return 1
    def on_term(*_):
        raise KeyboardInterrupt('SIGTERM')
    signal.signal(signal.SIGTERM, on_term)
    # port_density.py and moves.py import this file as `bench`: one module, not two
    sys.modules.setdefault('bench', sys.modules[__name__])
    if not args.port:
        return Bench(args).run()
    # --port: each release its own run and block; a failed one does not stop
    # the next (an interrupt does: it propagates)
    rc = 0
    for release in (RELEASES if args.release in (None, 'both') else (args.release,)):
        log('=== --port on the %s control plane' % release)
        use_release(release)
        try:
            bench = Bench(args, release)
        except Exception as e:  # noqa: BLE001 - e.g. no env.sh, Keystone down: the next release still runs
            log('ERROR: --port on %s: cannot start (%s: %s)' % (release, type(e).__name__, e))
            rc = 1
            continue
        rc |= bench.run()
    return rc


if __name__ == '__main__':
    sys.exit(main())
