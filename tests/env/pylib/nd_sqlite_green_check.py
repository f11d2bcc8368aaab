#!/usr/bin/python3
"""Checks sitecustomize.py's lock wait in an eventlet process.

usage: PYTHONPATH=tests/env/pylib nd_sqlite_green_check.py DB_FILE

Under eventlet (as Zed's services run), one greenthread holds SQLite's write
lock while it yields (as Neutron does inside some transactions), and a
second greenthread of the same process wants to write. With SQLite's own
busy wait the second one freezes the process, the holder never commits,
and the second fails with "database is locked" once the busy timeout is
over. With the remedy it waits the holder's 0.5 s out. Exits 0 and prints
how long the second writer waited, or exits 1.
"""
import eventlet
eventlet.monkey_patch()

import sys  # noqa: E402
import time  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from oslo_db.sqlalchemy import enginefacade  # noqa: E402


class _Ctx:
    pass


def main():
    ctx = enginefacade.transaction_context()
    ctx.configure(connection='sqlite:///' + sys.argv[1])
    with ctx.writer.using(_Ctx()) as s:
        s.execute(sa.text('CREATE TABLE IF NOT EXISTS t (x INTEGER)'))
    result = {}

    def holder():
        with ctx.writer.using(_Ctx()) as s:
            s.execute(sa.text('INSERT INTO t VALUES (1)'))
            eventlet.sleep(0.5)

    def second():
        started = time.monotonic()
        try:
            with ctx.writer.using(_Ctx()) as s:
                s.execute(sa.text('INSERT INTO t VALUES (2)'))
            result['waited'] = time.monotonic() - started
        except Exception as e:
            result['failed'] = '%s after %.2fs' % (e, time.monotonic() - started)

    first = eventlet.spawn(holder)
    eventlet.sleep(0.05)
    other = eventlet.spawn(second)
    first.wait()
    other.wait()
    if 'waited' in result:
        print('the second writer waited %.2fs' % result['waited'])
        return 0
    print('the second writer failed: %s' % result['failed'])
    return 1


if __name__ == '__main__':
    sys.exit(main())
