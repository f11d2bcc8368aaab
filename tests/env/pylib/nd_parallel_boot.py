#!/usr/bin/python3
"""Load check for a control plane: boot N servers at once, wait, delete all.

usage: nd_parallel_boot.py NOVA_URL IMAGE_ID HOST N [FLAVOR_ID]
  (source $ND_ENV_STATE/RELEASE/env.sh; HOST = the fake compute)

Sends N POST /servers concurrently (microversion 2.37, networks "none",
forced onto HOST), waits until all are ACTIVE, then sends N DELETEs
concurrently and waits until all are gone. Reports every HTTP error (e.g.
500 "database is locked") and every server that went ERROR; exits 1 if any.
Used to check the SQLite remedies of controlplane.sh (pylib/sitecustomize.py).
"""
import sys
import threading
import time

from nd_rest import HTTPError, req


def main():
    nova, image, host, n = sys.argv[1:5]
    flavor = sys.argv[5] if len(sys.argv) > 5 else '42'
    n = int(n)
    hdr = {'OpenStack-API-Version': 'compute 2.37',
           'X-OpenStack-Nova-API-Version': '2.37'}
    errors, ids = [], []
    lock = threading.Lock()
    tag = 'nd-load-%d' % int(time.time())

    def run_all(fn, items):
        ts = [threading.Thread(target=fn, args=(i,)) for i in items]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def boot(i):
        try:
            s = req('POST', nova + '/servers', {'server': {
                'name': '%s-%d' % (tag, i), 'imageRef': image,
                'flavorRef': flavor, 'networks': 'none',
                'availability_zone': 'nova:' + host}}, headers=hdr)
            with lock:
                ids.append(s['server']['id'])
        except Exception as e:
            with lock:
                errors.append('boot %d: %s' % (i, e))

    t0 = time.time()
    run_all(boot, range(n))
    t_req = time.time() - t0
    pending = set(ids)
    while pending and time.time() - t0 < 300:
        for sid in list(pending):
            try:
                st = req('GET', '%s/servers/%s' % (nova, sid))['server']
            except HTTPError as e:
                errors.append('show %s: %s' % (sid, e))
                pending.discard(sid)
                continue
            if st['status'] == 'ACTIVE':
                pending.discard(sid)
            elif st['status'] == 'ERROR':
                errors.append('%s ERROR: %s' % (sid, st.get('fault')))
                pending.discard(sid)
        time.sleep(0.5)
    t_active = time.time() - t0
    if pending:
        errors.append('not ACTIVE after 300 s: %s' % sorted(pending))
    print('%d/%d boot requests accepted in %.1fs, all settled after %.1fs'
          % (len(ids), n, t_req, t_active))

    def delete(sid):
        try:
            req('DELETE', '%s/servers/%s' % (nova, sid))
        except Exception as e:
            with lock:
                errors.append('delete %s: %s' % (sid, e))

    t1 = time.time()
    run_all(delete, ids)
    pending = set(ids)
    while pending and time.time() - t1 < 300:
        for sid in list(pending):
            try:
                req('GET', '%s/servers/%s' % (nova, sid))
            except HTTPError as e:
                if e.code == 404:
                    pending.discard(sid)
                else:
                    errors.append('show %s: %s' % (sid, e))
                    pending.discard(sid)
        time.sleep(0.5)
    if pending:
        errors.append('not deleted after 300 s: %s' % sorted(pending))
    print('%d deletes done after %.1fs' % (len(ids), time.time() - t1))
    for e in errors:
        print('ERROR', str(e)[:400])
    print('errors: %d' % len(errors))
    sys.exit(1 if errors else 0)


if __name__ == '__main__':
    main()
