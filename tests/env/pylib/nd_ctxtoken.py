"""Paste filter for nova Zed's noauth2 pipeline.

noauth2 builds a RequestContext without auth_token, and nova-api's
keystoneauth-based glance client then refuses to send the request
("No valid authentication is available"). Copy the request's X-Auth-Token
into the context. From harness.md (harness_ctxtoken.py there).
"""
import webob.dec


class ContextToken(object):
    def __init__(self, app):
        self.app = app

    @webob.dec.wsgify
    def __call__(self, req):
        ctx = req.environ.get('nova.context')
        if ctx is not None and not ctx.auth_token:
            ctx.auth_token = req.headers.get('X-Auth-Token') or 'admin:admin'
        return req.get_response(self.app)


def filter_factory(global_conf, **local_conf):
    return ContextToken
