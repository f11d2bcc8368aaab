"""Paste filter standing in for keystonemiddleware's authtoken (nova 34, glance 33).

nova 34 removed [api] auth_strategy = noauth2, and glance 33's
unauthenticated-context has no roles (its secure-RBAC policies then deny it).
This filter turns "X-Auth-Token: user:project" into the headers authtoken
would set after validating a token, so the stock keystonecontext / context
filters build a normal RequestContext, auth_token included (nova-api passes
it on to glance and neutron). User "admin" gets the admin role.
From harness-newest.md (harness_noauth.py there).
"""
import webob.dec


class NoAuth(object):
    def __init__(self, app):
        self.app = app

    @webob.dec.wsgify
    def __call__(self, req):
        token = req.headers.get('X-Auth-Token') or 'admin:admin'
        user, _, project = token.partition(':')
        project = project or user
        roles = 'admin,member,reader' if user == 'admin' else 'member,reader'
        req.environ.update({
            'HTTP_X_AUTH_TOKEN': token,
            'HTTP_X_IDENTITY_STATUS': 'Confirmed',
            'HTTP_X_USER_ID': user, 'HTTP_X_USER_NAME': user,
            'HTTP_X_PROJECT_ID': project, 'HTTP_X_PROJECT_NAME': project,
            'HTTP_X_USER_DOMAIN_ID': 'default',
            'HTTP_X_PROJECT_DOMAIN_ID': 'default',
            'HTTP_X_ROLES': roles,
        })
        return req.get_response(self.app)


def filter_factory(global_conf, **local_conf):
    return NoAuth
