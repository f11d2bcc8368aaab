"""RPC benchmark peer: a Python oslo.messaging server and client.

Run with the nova 34 virtualenv's python (ND_PYTHON of env.sh), which has
oslo.messaging and nova. Used by bench.py; every mode prints JSON (or, for
the server, status lines) on stdout.

  rpc_peer.py server URL TOPIC SERVER
      an RPC server (threading executor) with Nova's baseapi endpoint:
      namespace "baseapi", version 1.1, ping(arg) -> {"service", "arg"}, the
      same method and answer as nova/baserpc.py. Prints READY once consuming.
      A control method expect(n) (default namespace) resets the ping counter;
      when n pings have been handled since, it prints "DONE <monotonic>".
      Runs until stdin closes. The server's own part of each ping call is
      timed the way nova-docker's nova_docker_rpc_server_seconds times it:
      from the moment oslo's listener is handed the broker's delivery
      (AMQPListener.__call__, in the consuming thread) to the return of
      AMQPIncomingMessage.reply, which has published the reply and had it
      confirmed by the broker (oslo's rabbit driver publishes with
      confirm_publish). A control method take_times() returns those
      durations (seconds) and starts a new list.
  rpc_peer.py times URL TOPIC SERVER
      calls take_times() on our Python server; prints {"s": [...]}
  rpc_peer.py calls URL TOPIC SERVER N
      N+WARMUP sequential baseapi ping calls; prints {"ms": [...]} (the last N)
  rpc_peer.py casts URL TOPIC SERVER N [--expect] [--stop-pid PID]
      with --expect: call expect(N) on the server first (our Python server
      only). With --stop-pid: SIGSTOP that process, publish N baseapi ping
      casts, SIGCONT it (always), so that the server finds N casts queued.
      Prints {"publish_s", "cont_monotonic"}.
"""
import json
import os
import signal
import sys
import threading
import time

import oslo_messaging as om
from oslo_config import cfg

WARMUP = 20


def transport(url):
    om.set_transport_defaults(control_exchange='nova')
    return om.get_rpc_transport(cfg.CONF, url=url)


def ctx():
    # what nova's RequestContext.to_dict() carries, as a plain dict; the
    # peer only pings (baseapi), which needs no token: none is sent rather
    # than a made-up one
    return {'user_id': 'u-bench', 'project_id': 'p-bench', 'is_admin': True,
            'roles': ['admin'], 'request_id': 'req-%s' % os.urandom(8).hex(),
            'auth_token': None, 'read_deleted': 'no'}


class BaseApi(object):
    target = om.Target(namespace='baseapi', version='1.1')

    def __init__(self, counter):
        self.counter = counter

    def ping(self, ctxt, arg):
        self.counter.hit()
        return {'service': 'bench', 'arg': arg}


class Control(object):
    target = om.Target(version='1.0')

    def __init__(self, counter, timings):
        self.counter = counter
        self.timings = timings

    def expect(self, ctxt, n):
        self.counter.expect(n)
        return n

    def take_times(self, ctxt):
        return self.timings.take()


class Counter(object):
    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.target = None

    def expect(self, n):
        with self.lock:
            self.n = 0
            self.target = n

    def hit(self):
        with self.lock:
            self.n += 1
            if self.target is not None and self.n >= self.target:
                self.target = None
                print('DONE %.6f' % time.monotonic(), flush=True)


class Timings(object):
    """Delivery -> reply confirmed, per ping call, by wrapping two methods
    of oslo.messaging's AMQP driver (the server's own code stays as is)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.s = []

    def install(self):
        from oslo_messaging._drivers import amqpdriver
        timings = self
        listener_call = amqpdriver.AMQPListener.__call__
        reply = amqpdriver.AMQPIncomingMessage.reply

        def timed_call(listener, message):
            t0 = time.perf_counter()
            before = len(listener.incoming)
            listener_call(listener, message)
            if len(listener.incoming) > before:
                listener.incoming[-1]._bench_t0 = t0

        def timed_reply(incoming, *a, **kw):
            r = reply(incoming, *a, **kw)
            t0 = getattr(incoming, '_bench_t0', None)
            if t0 is not None and incoming.message.get('method') == 'ping':
                d = time.perf_counter() - t0
                with timings.lock:
                    timings.s.append(d)
            return r

        amqpdriver.AMQPListener.__call__ = timed_call
        amqpdriver.AMQPIncomingMessage.reply = timed_reply

    def take(self):
        with self.lock:
            out, self.s = self.s, []
        return out


def serve(url, topic, server):
    timings = Timings()
    timings.install()
    t = transport(url)
    c = Counter()
    s = om.get_rpc_server(t, om.Target(topic=topic, server=server), [BaseApi(c), Control(c, timings)],
                          executor='threading', access_policy=om.DefaultRPCAccessPolicy)
    s.start()
    print('READY', flush=True)
    sys.stdin.read()
    s.stop()
    s.wait()
    t.cleanup()


def calls(url, topic, server, n):
    t = transport(url)
    c = om.get_rpc_client(t, om.Target(topic=topic, server=server, namespace='baseapi', version='1.1'),
                          timeout=30)
    out = []
    c_ctx = ctx()
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        r = c.call(c_ctx, 'ping', arg='bench')
        d = time.perf_counter() - t0
        if r.get('arg') != 'bench':
            raise SystemExit('unexpected ping answer %r' % (r,))
        if i >= WARMUP:
            out.append(d * 1000.0)
    print(json.dumps({'ms': out}), flush=True)
    t.cleanup()


def times(url, topic, server):
    t = transport(url)
    ctl = om.get_rpc_client(t, om.Target(topic=topic, server=server, version='1.0'), timeout=30)
    print(json.dumps({'s': ctl.call(ctx(), 'take_times')}), flush=True)
    t.cleanup()


def casts(url, topic, server, n, expect, stop_pid):
    t = transport(url)
    c = om.get_rpc_client(t, om.Target(topic=topic, server=server, namespace='baseapi', version='1.1'),
                          timeout=30)
    if expect:
        ctl = om.get_rpc_client(t, om.Target(topic=topic, server=server, version='1.0'), timeout=30)
        ctl.call(ctx(), 'expect', n=n)
    c_ctx = ctx()
    c.call(c_ctx, 'ping', arg='warm')  # connection and reply queue set up
    if expect:
        ctl.call(ctx(), 'expect', n=n)  # the warm-up ping is not counted
    stopped = False
    try:
        if stop_pid:
            os.kill(stop_pid, signal.SIGSTOP)
            stopped = True
        t0 = time.perf_counter()
        for _ in range(n):
            c.cast(c_ctx, 'ping', arg='cast')
        publish = time.perf_counter() - t0
        # let the broker route the last publishes before the consumer wakes
        time.sleep(0.2)
    finally:
        if stopped:
            os.kill(stop_pid, signal.SIGCONT)
    cont = time.monotonic()
    print(json.dumps({'publish_s': publish, 'cont_monotonic': cont}), flush=True)
    t.cleanup()


def main():
    mode, url, topic, server = sys.argv[1:5]
    rest = sys.argv[5:]
    if mode == 'server':
        serve(url, topic, server)
    elif mode == 'calls':
        calls(url, topic, server, int(rest[0]))
    elif mode == 'times':
        times(url, topic, server)
    elif mode == 'casts':
        n = int(rest[0])
        expect = '--expect' in rest
        stop_pid = int(rest[rest.index('--stop-pid') + 1]) if '--stop-pid' in rest else 0
        casts(url, topic, server, n, expect, stop_pid)
    else:
        raise SystemExit(__doc__)


if __name__ == '__main__':
    main()
