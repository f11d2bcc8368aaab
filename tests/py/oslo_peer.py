"""A real oslo.messaging peer for nova-docker's integration tests.

Runs with either release's Python: Debian's /usr/bin/python3 (Zed,
oslo.messaging 14) or the nova 34 virtualenv (oslo.messaging 18).

  oslo_peer.py client URL TOPIC SERVER   run the client scenarios against a
                                         server at TOPIC.SERVER; print one
                                         JSON object with every outcome
  oslo_peer.py ping URL TOPIC SERVER     one baseapi ping; print the result
  oslo_peer.py pinger URL TOPIC SERVER   print READY once connected, then one
                                         ping per stdin line, each result printed
  oslo_peer.py server URL TOPIC SERVER   run an RPC server (print READY when
                                         consuming) until stdin closes

ND_OSLO_RABBIT="opt=value;..." sets [oslo_messaging_rabbit] options (e.g.
rabbit_quorum_queue=true), as the same lines in nova.conf would.
"""
import json
import os
import sys
import time

import oslo_messaging as om
from oslo_config import cfg

from nova import context as nova_context
from nova import exception as nova_exception


def rabbit_overrides():
    """[oslo_messaging_rabbit] options from ND_OSLO_RABBIT="opt=value;opt=value"
    (e.g. rabbit_quorum_queue=true), set as nova.conf would set them."""
    from oslo_messaging._drivers import impl_rabbit
    spec = os.environ.get('ND_OSLO_RABBIT', '')
    if not spec:
        return
    cfg.CONF.register_opts(impl_rabbit.rabbit_opts, group='oslo_messaging_rabbit')
    for item in filter(None, spec.split(';')):
        name, value = item.split('=', 1)
        opt = {o.name: o for o in impl_rabbit.rabbit_opts}[name]
        cfg.CONF.set_override(name, opt.type(value), group='oslo_messaging_rabbit')


def transport(url):
    om.set_transport_defaults(control_exchange='nova')
    rabbit_overrides()
    return om.get_rpc_transport(cfg.CONF, url=url, allowed_remote_exmods=['nova.exception'])


def ctx():
    return nova_context.RequestContext(
        user_id='u-test', project_id='p-test', is_admin=False, roles=['member'],
        auth_token='tok-secret', request_id='req-11111111-2222-3333-4444-555555555555')


def outcome(fn):
    """Result or exception, as plain data the Rust test can assert on."""
    try:
        return {'result': fn()}
    except Exception as e:  # noqa: BLE001 - every exception is data here
        d = {'exception': type(e).__name__, 'module': type(e).__module__, 'str': str(e).split('\n')[0]}
        if isinstance(e, om.RemoteError):
            d['exc_type'] = e.exc_type
        if isinstance(e, nova_exception.NovaException):
            d['nova_class'] = [c.__name__ for c in type(e).__mro__ if c.__module__ == 'nova.exception'][0]
            d['code'] = e.kwargs.get('code')
            d['is_instance_not_found'] = isinstance(e, nova_exception.InstanceNotFound)
        if isinstance(e, NotImplementedError):
            d['is_not_implemented'] = True
        return d


def client(url, topic, server):
    t = transport(url)
    c = om.get_rpc_client(t, om.Target(topic=topic, server=server, version='6.0'), timeout=20)
    c2 = c.prepare(namespace='baseapi', version='1.1')
    out = {}
    out['ping'] = outcome(lambda: c2.call(ctx(), 'ping', arg='1.21 GigaWatts'))
    out['echo'] = outcome(lambda: c.call(ctx(), 'echo', value={'a': [1, 2, 'x'], 'b': None}))
    out['context'] = outcome(lambda: c.call(ctx(), 'whoami'))
    out['nova_error'] = outcome(lambda: c.call(ctx(), 'fail_nova', uuid='6f1b2c1e-0000-4000-8000-000000000001'))
    out['not_implemented'] = outcome(lambda: c.call(ctx(), 'fail_not_implemented'))
    out['no_such_method'] = outcome(lambda: c.call(ctx(), 'no_such_thing'))
    out['unsupported_version'] = outcome(lambda: c.prepare(version='7.0').call(ctx(), 'echo', value=1))
    out['newer_minor'] = outcome(lambda: c.prepare(version='6.9').call(ctx(), 'echo', value=1))
    c.cast(ctx(), 'record', value='cast-1')
    c.cast(ctx(), 'record', value='cast-2')
    # Casts are handled concurrently: wait until both are in.
    for _ in range(50):
        out['recorded'] = outcome(lambda: c.call(ctx(), 'recorded'))
        if len(out['recorded'].get('result') or []) >= 2:
            break
        time.sleep(0.1)
    # A call longer than its call-monitor timeout survives only through
    # the server's ending=false heartbeats.
    slow = c.prepare(timeout=30, call_monitor_timeout=2)
    out['slow_with_heartbeats'] = outcome(lambda: slow.call(ctx(), 'sleep', seconds=5))
    print(json.dumps(out), flush=True)
    t.cleanup()


def ping(url, topic, server):
    t = transport(url)
    c = om.get_rpc_client(t, om.Target(topic=topic, server=server, namespace='baseapi', version='1.1'), timeout=30)
    print(json.dumps(outcome(lambda: c.call(ctx(), 'ping', arg='hello'))), flush=True)
    t.cleanup()


def pinger(url, topic, server):
    """Connects, prints READY, then one ping (5 s timeout) per line read from
    stdin; prints each outcome with its elapsed seconds."""
    t = transport(url)
    c = om.get_rpc_client(t, om.Target(topic=topic, server=server, namespace='baseapi', version='1.1'), timeout=5)
    outcome(lambda: c.call(ctx(), 'ping', arg='warm-up'))
    print('READY', flush=True)
    for _ in sys.stdin:
        started = time.time()
        out = outcome(lambda: c.call(ctx(), 'ping', arg='hello'))
        out['elapsed'] = time.time() - started
        print(json.dumps(out), flush=True)
    t.cleanup()


def slowcall(url, topic, server):
    """A call that takes 10 s on the server; prints STARTED when sent."""
    t = transport(url)
    c = om.get_rpc_client(t, om.Target(topic=topic, server=server, version='6.0'), timeout=120)
    print('STARTED', flush=True)
    started = time.time()
    out = outcome(lambda: c.call(ctx(), 'sleep', seconds=10))
    out['elapsed'] = time.time() - started
    print(json.dumps(out), flush=True)
    t.cleanup()


class TestEndpoint(object):
    target = om.Target(version='3.5')

    def __init__(self):
        self.recorded = []

    def echo(self, ctxt, value):
        return value

    def whoami(self, ctxt):
        return ctxt

    def fail(self, ctxt, uuid):
        raise nova_exception.InstanceNotFound(instance_id=uuid)

    def fail_plain(self, ctxt):
        raise ValueError('plain failure')

    def record(self, ctxt, value):
        self.recorded.append(value)

    def get_recorded(self, ctxt):
        return self.recorded


def serve(url, topic, server):
    t = transport(url)
    s = om.get_rpc_server(t, om.Target(topic=topic, server=server), [TestEndpoint()],
                          executor='threading', access_policy=om.DefaultRPCAccessPolicy)
    s.start()
    print('READY', flush=True)
    sys.stdin.read()
    s.stop()
    s.wait()
    t.cleanup()


if __name__ == '__main__':
    mode, url, topic, server = sys.argv[1:5]
    {'client': client, 'ping': ping, 'pinger': pinger, 'slowcall': slowcall, 'server': serve}[mode](url, topic, server)
