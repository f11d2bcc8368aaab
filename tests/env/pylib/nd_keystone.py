#!/usr/bin/python3
"""Keystone for the test control planes (tests/env/controlplane.sh), stdlib only.

  nd_keystone.py token
      print a token for the user of the ND_OS_* variables below (default: the
      admin of env.sh's ND_ADMIN_* variables)
  nd_keystone.py seed
      the identity a deployment has, idempotently (see SEED below):
      project 'service' with users nova, glance, neutron and placement (roles
      admin and service), tenant projects nd-tenant-a / nd-tenant-b with one
      member each (nd-member-a / nd-member-b), and the catalog: compute,
      placement, image and network services with public and internal
      endpoints in one region. Users that exist keep their password.

Environment (controlplane.sh exports these; env.sh has the same values):
  ND_KEYSTONE          Keystone's URL (http://127.0.0.1:PORT/v3)
  ND_ADMIN_USER / ND_ADMIN_PASSWORD / ND_ADMIN_PROJECT   the cloud admin
  ND_SERVICE_PASSWORD  every service user's password
  ND_MEMBER_PASSWORD   the tenant members' password
  ND_REGION            the region of every endpoint (RegionOne)
  ND_ENDPOINTS         "type=url,type=url,..." for seed
  ND_OS_USER / ND_OS_PASSWORD / ND_OS_PROJECT   token: another user

Why not the openstack CLI: each run costs 1.5-3 s of CPU on a 2-core machine;
these are a handful of REST calls.
"""
import json
import os
import sys
import urllib.error
import urllib.request

SERVICE_USERS = ['nova', 'glance', 'neutron', 'placement']
SERVICE_ROLES = ['admin', 'service']
TENANTS = [('nd-tenant-a', 'nd-member-a'), ('nd-tenant-b', 'nd-member-b')]
SERVICES = {  # catalog type -> service name
    'compute': 'nova',
    'placement': 'placement',
    'image': 'glance',
    'network': 'neutron',
}


class HTTPError(Exception):
    def __init__(self, method, url, code, body):
        super().__init__('%s %s -> HTTP %s: %s' % (method, url, code,
                                                  body[:500]))
        self.code = code


def call(method, url, body=None, token=None, want_headers=False):
    h = {'Accept': 'application/json'}
    if token:
        h['X-Auth-Token'] = token
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h['Content-Type'] = 'application/json'
    r = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            text = resp.read().decode()
            doc = json.loads(text) if text.strip() else None
            return (doc, resp.headers) if want_headers else doc
    except urllib.error.HTTPError as e:
        raise HTTPError(method, url, e.code,
                        e.read().decode(errors='replace')) from None


def issue(keystone, user, password, project, domain='Default'):
    """A project-scoped token for user (password auth); returns the token."""
    body = {'auth': {
        'identity': {'methods': ['password'], 'password': {'user': {
            'name': user, 'password': password,
            'domain': {'name': domain}}}},
        'scope': {'project': {'name': project, 'domain': {'name': domain}}}}}
    _, headers = call('POST', keystone.rstrip('/') + '/auth/tokens', body,
                      want_headers=True)
    return headers['X-Subject-Token']


def env_token():
    """The token a helper script should send: ND_TOKEN if set, else one issued
    for ND_OS_* or ND_ADMIN_* (Keystone), else noauth's admin:admin."""
    if os.environ.get('ND_TOKEN'):
        return os.environ['ND_TOKEN']
    keystone = os.environ.get('ND_KEYSTONE')
    if not keystone:
        return 'admin:admin'
    e = os.environ
    return issue(keystone,
                 e.get('ND_OS_USER') or e['ND_ADMIN_USER'],
                 e.get('ND_OS_PASSWORD') or e['ND_ADMIN_PASSWORD'],
                 e.get('ND_OS_PROJECT') or e['ND_ADMIN_PROJECT'])


def log(msg):
    sys.stderr.write('  %s\n' % msg)


class Seeder:
    """Reads what exists once (a handful of GETs), then writes only what is
    missing: a second `up` costs a token and six GETs."""

    def __init__(self, keystone, token):
        self.k = keystone.rstrip('/')
        self.t = token
        self.roles = {r['name']: r['id'] for r in self.get('/roles')['roles']}
        self.projects = {p['name']: p['id'] for p in
                         self.get('/projects?domain_id=default')['projects']}
        self.users = {u['name']: u['id'] for u in
                      self.get('/users?domain_id=default')['users']}
        self.services = {s['type']: s['id'] for s in
                         self.get('/services')['services']}
        self.endpoints = self.get('/endpoints')['endpoints']
        self.grants = {(a['scope']['project']['id'], a['user']['id'],
                        a['role']['id'])
                       for a in self.get('/role_assignments')['role_assignments']
                       if 'project' in a.get('scope', {}) and 'user' in a}

    def get(self, path):
        return call('GET', self.k + path, token=self.t)

    def post(self, kind, key, body):
        return call('POST', '%s/%s' % (self.k, kind), {key: body},
                    token=self.t)[key]

    def project(self, name):
        if name not in self.projects:
            p = self.post('projects', 'project', {
                'name': name, 'domain_id': 'default', 'enabled': True})
            self.projects[name] = p['id']
            log('created project %s %s' % (name, p['id']))
        return self.projects[name]

    def user(self, name, password, default_project):
        # an existing user keeps its password (the script's are fixed)
        if name not in self.users:
            u = self.post('users', 'user', {
                'name': name, 'password': password, 'domain_id': 'default',
                'default_project_id': default_project, 'enabled': True})
            self.users[name] = u['id']
            log('created user %s %s' % (name, u['id']))
        return self.users[name]

    def grant(self, project, user, role):
        if role not in self.roles:
            # Zed's bootstrap makes admin, member and reader, not service
            self.roles[role] = self.post('roles', 'role', {'name': role})['id']
            log('created role %s' % role)
        key = (project, user, self.roles[role])
        if key not in self.grants:
            call('PUT', '%s/projects/%s/users/%s/roles/%s' % (
                self.k, project, user, self.roles[role]), token=self.t)
            self.grants.add(key)

    def service(self, stype, name):
        if stype not in self.services:
            s = self.post('services', 'service', {
                'type': stype, 'name': name, 'enabled': True})
            self.services[stype] = s['id']
            log('created service %s (%s)' % (name, stype))
        return self.services[stype]

    def endpoint(self, service_id, interface, url, region):
        mine = [e for e in self.endpoints if e['service_id'] == service_id
                and e['interface'] == interface
                and e.get('region_id') == region]
        if mine and mine[0]['url'] == url:
            return
        if mine:
            call('PATCH', '%s/endpoints/%s' % (self.k, mine[0]['id']),
                 {'endpoint': {'url': url}}, token=self.t)
        else:
            self.post('endpoints', 'endpoint', {
                'service_id': service_id, 'interface': interface,
                'url': url, 'region_id': region, 'enabled': True})
        log('endpoint %s %s %s' % (interface, url, region))


def seed():
    e = os.environ
    keystone = e['ND_KEYSTONE']
    token = issue(keystone, e['ND_ADMIN_USER'], e['ND_ADMIN_PASSWORD'],
                  e['ND_ADMIN_PROJECT'])
    s = Seeder(keystone, token)
    service = s.project('service')
    for name in SERVICE_USERS:
        uid = s.user(name, e['ND_SERVICE_PASSWORD'], service)
        for role in SERVICE_ROLES:
            s.grant(service, uid, role)
    for project, member in TENANTS:
        pid = s.project(project)
        uid = s.user(member, e['ND_MEMBER_PASSWORD'], pid)
        s.grant(pid, uid, 'member')
    region = e.get('ND_REGION', 'RegionOne')
    for item in e['ND_ENDPOINTS'].split(','):
        stype, url = item.split('=', 1)
        sid = s.service(stype, SERVICES[stype])
        for interface in ('public', 'internal'):
            s.endpoint(sid, interface, url, region)
    # the project ids, for the caller (neutron's per-project default groups)
    print(json.dumps({'admin': s.project(e['ND_ADMIN_PROJECT']),
                      'nd-tenant-a': s.project('nd-tenant-a'),
                      'nd-tenant-b': s.project('nd-tenant-b')}))


def main(argv):
    if len(argv) == 2 and argv[1] == 'token':
        print(env_token())
    elif len(argv) == 2 and argv[1] == 'seed':
        seed()
    else:
        raise SystemExit(__doc__)


if __name__ == '__main__':
    main(sys.argv)
