#!/usr/bin/python3
"""Small REST helpers for tests/env (stdlib only; runs on any Python 3).

  nd_rest.py seed NOVA_URL NEUTRON_URL
      flavors m1.tiny (id 1), m1.small (id 2), m1.nano (id 42) and the shared
      flat network 'private' with subnets 10.99.0.0/24 (DNS 10.99.0.53, DHCP:
      the DHCP agent's port serves isolated metadata) and
      fd00:99::/64, port security on; the default security group of each
      project of $ND_PROJECT_IDS (admin, the tenants) exists.
      Idempotent: only what is missing (or a changed DNS server) is written.
  nd_rest.py image-ensure GLANCE_URL NAME
      an active image NAME (a 10 KiB tar, container_format=docker,
      disk_format=raw, public); prints its id
  nd_rest.py server-wait NOVA_URL SERVER STATUS [TIMEOUT]
      poll GET /servers/SERVER until status is STATUS (GONE = 404);
      fails at once on ERROR (prints the fault) and on any 5xx
  nd_rest.py server-field NOVA_URL SERVER FIELD
      print one field of GET /servers/SERVER (e.g. OS-EXT-SRV-ATTR:host)
  nd_rest.py server-actions NOVA_URL SERVER
      print the server's instance actions, oldest first, comma-separated;
      fails if any of them recorded an error message
  nd_rest.py agent-alive NEUTRON_URL HOST BINARY [SINCE]
      exit 0 iff neutron lists agent BINARY on HOST as alive (and, with SINCE
      = 'YYYY-MM-DD HH:MM:SS' UTC, it (re)started at or after SINCE)
  nd_rest.py dhcp-served NEUTRON_URL NETWORK_ID HOST
      exit 0 iff the DHCP agent of HOST hosts NETWORK_ID (it is added to the
      agent when it is not: a network whose subnet got DHCP after the agent's
      start is not scheduled by itself) and a DHCP port of it is ACTIVE
  nd_rest.py port-create NEUTRON_URL NETWORK_ID HOST DEVICE_ID [NAME]
      a port (device_owner compute:nova) bound to HOST; prints its id
  nd_rest.py port-show NEUTRON_URL PORT
      print the port as JSON (binding:vif_type, binding:vif_details, status...)
  nd_rest.py port-wait NEUTRON_URL PORT STATUS [TIMEOUT]
      poll until the port's status is STATUS (GONE = 404)
  nd_rest.py port-delete NEUTRON_URL PORT
      delete the port (404 is fine)

Why not the openstack CLI: each `openstack` run costs 1.5-3 s of CPU, which
adds up on a 2-core machine; nova/neutron/glance are reached directly.

The token: $ND_TOKEN if set, else one Keystone issues for the admin of
env.sh (ND_KEYSTONE, ND_ADMIN_*), else noauth's "admin:admin" (see
nd_keystone.env_token). Seed's project ids: $ND_PROJECT_IDS, the JSON that
`nd_keystone.py seed` prints (default: project id 'admin', noauth's).
"""
import io
import json
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request

_TOKEN = []


def token():
    if not _TOKEN:
        from nd_keystone import env_token
        _TOKEN.append(env_token())
    return _TOKEN[0]


def project_ids():
    return json.loads(os.environ.get('ND_PROJECT_IDS') or '{"admin": "admin"}')

FLAVORS = [  # (id, name, ram MB, vcpus, disk GB)
    ('1', 'm1.tiny', 512, 1, 1),
    ('2', 'm1.small', 1024, 1, 2),
    ('42', 'm1.nano', 128, 1, 1),
]
# Port security on, as in a real cloud: the agents enforce security groups
# (controlplane.sh), and every port gets its project's default group unless
# the server asks for others.
NETWORK = {
    'name': 'private',
    'shared': True,
    'port_security_enabled': True,
    'provider:network_type': 'flat',
    'provider:physical_network': 'private',
}
SUBNETS = [
    {'name': 'private-v4', 'ip_version': 4, 'cidr': '10.99.0.0/24',
     'gateway_ip': '10.99.0.1', 'enable_dhcp': True,
     'dns_nameservers': ['10.99.0.53']},
    {'name': 'private-v6', 'ip_version': 6, 'cidr': 'fd00:99::/64',
     'gateway_ip': 'fd00:99::1', 'enable_dhcp': False},
]


class HTTPError(Exception):
    def __init__(self, method, url, code, body):
        super().__init__('%s %s -> HTTP %s: %s' % (method, url, code,
                                                  body[:500]))
        self.code = code


def req(method, url, body=None, headers=None, raw=False):
    h = {'X-Auth-Token': token(), 'Accept': 'application/json'}
    data = None
    if body is not None:
        if raw:
            data = body
            h['Content-Type'] = 'application/octet-stream'
        else:
            data = json.dumps(body).encode()
            h['Content-Type'] = 'application/json'
    h.update(headers or {})
    r = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            text = resp.read().decode()
            return json.loads(text) if text.strip() else None
    except urllib.error.HTTPError as e:
        raise HTTPError(method, url, e.code,
                        e.read().decode(errors='replace')) from None


def log(msg):
    sys.stderr.write('  %s\n' % msg)


def seed(nova, neutron):
    nova = nova.rstrip('/')
    neutron = neutron.rstrip('/')
    for fid, name, ram, vcpus, disk in FLAVORS:
        try:
            f = req('GET', '%s/flavors/%s' % (nova, fid))['flavor']
            if f['name'] != name:
                raise SystemExit('flavor id %s exists as %r, expected %r'
                                 % (fid, f['name'], name))
        except HTTPError as e:
            if e.code != 404:
                raise
            req('POST', nova + '/flavors', {'flavor': {
                'id': fid, 'name': name, 'ram': ram, 'vcpus': vcpus,
                'disk': disk}})
            log('created flavor %s (id %s)' % (name, fid))

    nets = req('GET', neutron + '/v2.0/networks?name=private')['networks']
    if nets:
        net = nets[0]
        if not net.get('port_security_enabled', False):
            req('PUT', neutron + '/v2.0/networks/' + net['id'],
                {'network': {'port_security_enabled': True}})
            log('turned port security on on network private')
    else:
        net = req('POST', neutron + '/v2.0/networks', {'network': dict(
            NETWORK, project_id=project_ids()['admin'])})['network']
        log('created network private %s' % net['id'])
    have = {s['cidr']: s for s in req(
        'GET', neutron + '/v2.0/subnets?network_id=' + net['id'])['subnets']}
    for sn in SUBNETS:
        old = have.get(sn['cidr'])
        dns = sn.get('dns_nameservers', [])
        if old is not None and old.get('dns_nameservers', []) != dns:
            req('PUT', neutron + '/v2.0/subnets/' + old['id'],
                {'subnet': {'dns_nameservers': dns}})
            log('set dns_nameservers %s on subnet %s' % (dns, sn['cidr']))
        if old is not None and old.get('enable_dhcp') != sn['enable_dhcp']:
            # DHCP on v4: the DHCP agent's port there serves isolated metadata
            req('PUT', neutron + '/v2.0/subnets/' + old['id'],
                {'subnet': {'enable_dhcp': sn['enable_dhcp']}})
            log('set enable_dhcp %s on subnet %s' % (sn['enable_dhcp'], sn['cidr']))
        if old is None:
            body = dict(sn, network_id=net['id'], project_id=net['project_id'])
            s = req('POST', neutron + '/v2.0/subnets', {'subnet': body})
            log('created subnet %s %s' % (sn['cidr'], s['subnet']['id']))
    ensure_default_sg_rule_templates(neutron)
    for project in sorted(set(project_ids().values())):
        ensure_default_security_group(neutron, net['id'], project)
    print(net['id'])


# (direction, ethertype, remote group 'PARENT'?, used in default groups,
#  used in other groups): what neutron's own migration c33da356b165 writes
SG_RULE_TEMPLATES = [
    ('egress', 'IPv4', False, True, True),
    ('egress', 'IPv6', False, True, True),
    ('ingress', 'IPv4', True, True, False),
    ('ingress', 'IPv6', True, True, False),
]


def ensure_default_sg_rule_templates(neutron):
    """Neutron >= 2023.2 copies its default-security-group-rules into every
    new group. Its DB migration writes the classic four, but our schema is
    built from the models (nd_neutron_schema.py), which leaves them out: a new
    group would then have no rule at all (its members could not even talk to
    each other). Older neutron (Zed) has them built in (404 here)."""
    url = neutron + '/v2.0/default-security-group-rules'
    try:
        have = req('GET', url)['default_security_group_rules']
    except HTTPError as e:
        if e.code == 404:
            return
        raise
    for direction, ethertype, parent, in_default, in_other in SG_RULE_TEMPLATES:
        want = {'direction': direction, 'ethertype': ethertype,
                'remote_group_id': 'PARENT' if parent else None,
                'used_in_default_sg': in_default,
                'used_in_non_default_sg': in_other}
        if any(all(r.get(k) == v for k, v in want.items()) and
               not r.get('protocol') and not r.get('remote_ip_prefix') and
               not r.get('remote_address_group_id') for r in have):
            continue
        req('POST', url, {'default_security_group_rule': dict(
            want, description='nova-docker tests: neutron migration default')})
        log('created default security group rule template %s' % want)


def ensure_default_security_group(neutron, net_id, project):
    """Neutron creates a project's default group with its first port; do it
    now, so that the first servers booted at once do not race for it. A
    group created before the rule templates existed (see above) gets the
    four classic rules: all egress, ingress from the group's members."""
    sgs = req('GET', '%s/v2.0/security-groups?name=default&project_id=%s'
              % (neutron, project))['security_groups']
    if not sgs:
        port = req('POST', neutron + '/v2.0/ports', {'port': {
            'network_id': net_id, 'project_id': project,
            'name': 'nd-seed-default-sg'}})['port']
        req('DELETE', '%s/v2.0/ports/%s' % (neutron, port['id']))
        log('created the default security group of project %s' % project)
        sgs = req('GET', '%s/v2.0/security-groups?name=default&project_id=%s'
                  % (neutron, project))['security_groups']
    for sg in sgs:
        for direction, ethertype, parent, _, _ in SG_RULE_TEMPLATES:
            remote = sg['id'] if parent else None
            if any(r['direction'] == direction and r['ethertype'] == ethertype
                   and r.get('remote_group_id') == remote
                   and not r.get('protocol') and not r.get('remote_ip_prefix')
                   for r in sg.get('security_group_rules', [])):
                continue
            req('POST', neutron + '/v2.0/security-group-rules',
                {'security_group_rule': {
                    'security_group_id': sg['id'], 'direction': direction,
                    'ethertype': ethertype, 'remote_group_id': remote,
                    'project_id': project}})
            log('added rule %s %s%s to the default group of %s' % (
                direction, ethertype, ' from its members' if parent else '',
                project))


def image_ensure(glance, name):
    glance = glance.rstrip('/')
    imgs = req('GET', '%s/v2/images?name=%s' % (glance, name))['images']
    for img in imgs:
        if img['status'] == 'active':
            print(img['id'])
            return
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tar:
        data = b'hello from tests/env\n'
        ti = tarfile.TarInfo('hello.txt')
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    body = {'name': name, 'container_format': 'docker', 'disk_format': 'raw',
            'visibility': 'public'}
    try:
        img = req('POST', glance + '/v2/images', body)
    except HTTPError as e:
        # Zed's unauthenticated context is admin but has no roles, and
        # publicize_image needs role:admin; every request sees every image
        # there anyway
        if e.code != 403:
            raise
        del body['visibility']
        img = req('POST', glance + '/v2/images', body)
    req('PUT', '%s/v2/images/%s/file' % (glance, img['id']), buf.getvalue(),
        raw=True)
    img = req('GET', '%s/v2/images/%s' % (glance, img['id']))
    if img['status'] != 'active':
        raise SystemExit('image %s is %s after upload' % (img['id'],
                                                          img['status']))
    log('created image %s %s' % (name, img['id']))
    print(img['id'])


def server_wait(nova, server, want, timeout=120):
    nova = nova.rstrip('/')
    t0 = time.time()
    while True:
        try:
            s = req('GET', '%s/servers/%s' % (nova, server))['server']
            st = s['status']
        except HTTPError as e:
            if e.code == 404 and want == 'GONE':
                log('%s gone after %.1fs' % (server, time.time() - t0))
                return
            raise
        if st == want:
            log('%s %s after %.1fs' % (server, st, time.time() - t0))
            return
        if st == 'ERROR':
            raise SystemExit('server %s went ERROR: %s' % (
                server, json.dumps(s.get('fault'))))
        if time.time() - t0 > timeout:
            raise SystemExit('timeout (%ss) waiting for %s %s; last status %s'
                             ' task_state %s' % (timeout, server, want, st,
                                                 s.get('OS-EXT-STS:task_state')))
        time.sleep(0.5)


def server_field(nova, server, field):
    s = req('GET', '%s/servers/%s' % (nova.rstrip('/'), server))['server']
    print(s.get(field))


def server_actions(nova, server):
    acts = req('GET', '%s/servers/%s/os-instance-actions' % (
        nova.rstrip('/'), server))['instanceActions']
    acts.sort(key=lambda a: a['start_time'])
    bad = [a for a in acts if a.get('message')]
    if bad:
        raise SystemExit('failed actions: %s' % json.dumps(bad))
    print(','.join(a['action'] for a in acts))


def agent_alive(neutron, host, binary, since=None):
    agents = req('GET', '%s/v2.0/agents?host=%s&binary=%s' % (
        neutron.rstrip('/'), host, binary))['agents']
    ok = [a for a in agents if a.get('alive') and
          (not since or (a.get('started_at') or '') >= since)]
    raise SystemExit(0 if ok else 1)


def dhcp_served(neutron, network_id, host):
    neutron = neutron.rstrip('/')
    agents = req('GET', '%s/v2.0/agents?host=%s&agent_type=DHCP%%20agent'
                 % (neutron, host))['agents']
    if not agents or not agents[0].get('alive'):
        raise SystemExit(1)
    agent = agents[0]['id']
    hosted = req('GET', '%s/v2.0/agents/%s/dhcp-networks'
                 % (neutron, agent))['networks']
    if network_id not in [n['id'] for n in hosted]:
        try:
            req('POST', '%s/v2.0/agents/%s/dhcp-networks' % (neutron, agent),
                {'network_id': network_id})
            log('network %s added to the DHCP agent of %s' % (network_id, host))
        except HTTPError as e:
            if e.code != 409:   # 409: hosted meanwhile
                raise
        raise SystemExit(1)
    ports = req('GET', '%s/v2.0/ports?network_id=%s&device_owner=network:dhcp'
                % (neutron, network_id))['ports']
    raise SystemExit(0 if any(p['status'] == 'ACTIVE' for p in ports) else 1)


def port_create(neutron, network_id, host, device_id, name='nd-net-check'):
    p = req('POST', neutron.rstrip('/') + '/v2.0/ports', {'port': {
        'network_id': network_id, 'name': name,
        'project_id': project_ids()['admin'],
        'device_owner': 'compute:nova', 'device_id': device_id,
        'binding:host_id': host}})['port']
    print(p['id'])


def port_show(neutron, port):
    print(json.dumps(req('GET', '%s/v2.0/ports/%s' % (
        neutron.rstrip('/'), port))['port'], indent=1, sort_keys=True))


def port_wait(neutron, port, want, timeout=60):
    t0 = time.time()
    while True:
        try:
            st = req('GET', '%s/v2.0/ports/%s' % (
                neutron.rstrip('/'), port))['port']['status']
        except HTTPError as e:
            if e.code == 404 and want == 'GONE':
                log('port %s gone after %.1fs' % (port, time.time() - t0))
                return
            raise
        if st == want:
            log('port %s %s after %.1fs' % (port, st, time.time() - t0))
            return
        if time.time() - t0 > timeout:
            raise SystemExit('timeout (%ss) waiting for port %s %s; last '
                             'status %s' % (timeout, port, want, st))
        time.sleep(0.5)


def port_delete(neutron, port):
    try:
        req('DELETE', '%s/v2.0/ports/%s' % (neutron.rstrip('/'), port))
    except HTTPError as e:
        if e.code != 404:
            raise


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == 'seed' and len(args) == 2:
        seed(*args)
    elif cmd == 'image-ensure' and len(args) == 2:
        image_ensure(*args)
    elif cmd == 'server-wait' and len(args) in (3, 4):
        server_wait(args[0], args[1], args[2],
                    float(args[3]) if len(args) == 4 else 120)
    elif cmd == 'server-field' and len(args) == 3:
        server_field(*args)
    elif cmd == 'server-actions' and len(args) == 2:
        server_actions(*args)
    elif cmd == 'agent-alive' and len(args) in (3, 4):
        agent_alive(*args)
    elif cmd == 'dhcp-served' and len(args) == 3:
        dhcp_served(*args)
    elif cmd == 'port-create' and len(args) in (4, 5):
        port_create(*args)
    elif cmd == 'port-show' and len(args) == 2:
        port_show(*args)
    elif cmd == 'port-wait' and len(args) in (3, 4):
        port_wait(args[0], args[1], args[2],
                  float(args[3]) if len(args) == 4 else 60)
    elif cmd == 'port-delete' and len(args) == 2:
        port_delete(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == '__main__':
    main(sys.argv)
