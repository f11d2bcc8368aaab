"""SQLite tuning for the test control planes (tests/env/controlplane.sh).

Python imports this module at start-up when tests/env/pylib is on PYTHONPATH,
which controlplane.sh sets for every OpenStack process it runs (services,
nova-manage, DB initialisation).

Why: nova, placement, glance and neutron run on SQLite here. With several
boots/deletes at once (tests boot 10-50 servers in parallel), nova-api and
nova-conductor fail with "database is locked" (harness.md, "Under parallel
load"). The remedy, applied to every SQLite connection any SQLAlchemy engine
opens:

* PRAGMA busy_timeout = 30000: wait for a lock for up to 30 s instead of
  failing (pysqlite's default is 5 s);
* PRAGMA journal_mode = WAL (persistent in the DB file): readers no longer
  block the writer, nor the writer the readers;
* PRAGMA synchronous = OFF: no fsync (throw-away test databases);
* every *writer* transaction starts with BEGIN IMMEDIATE, i.e. takes the
  write lock up front. With a deferred BEGIN, a transaction that reads and
  then writes fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT,
  no busy wait) when another writer committed in between. With IMMEDIATE,
  writers queue on the lock (up to the busy timeout).
* oslo.db *reader* transactions (enginefacade reader / async_reader) keep a
  plain deferred BEGIN: in WAL mode they never wait for the writer. This
  matters: placement retries an allocation write after a generation conflict
  by reading the provider in a `reader.independent` transaction *inside* its
  writer transaction; if that reader also wanted the write lock, the thread
  would wait for itself for the whole busy timeout (seen: 30 s stalls, then
  HTTP 500 and NoValidHost for most of 20 parallel boots). The mode of the
  innermost enginefacade transaction is tracked in a (green)thread-local
  stack by wrapping oslo.db's _TransactionContext._produce_block. Code not
  using enginefacade (e.g. glance's legacy sessions) always gets IMMEDIATE.

oslo.db already switches pysqlite's own transaction handling off
(isolation_level = None) and emits a plain BEGIN from an engine-level "begin"
listener unless conn.info["in_transaction"] is set. Our listeners are
registered on the Engine *class*, and SQLAlchemy runs class-level listeners
before an engine's own, so we emit BEGIN IMMEDIATE first and set that marker.
For engines not made by oslo.db (e.g. neutron's schema creation), we do the
isolation_level switch and the marker bookkeeping ourselves.

In eventlet services (Zed's) the wait for the write lock must not be SQLite's
own busy handler: it sleeps in C and freezes the whole process, including
the greenthread that holds the lock and would commit as soon as it ran again
(seen: Zed's neutron-server stalled 30 s, then "database is locked" for a
port create). There BEGIN IMMEDIATE runs with no busy timeout and is retried with
eventlet's sleep, up to the same 30 s (other statements keep SQLite's wait:
a write outside a transaction, e.g. SQLAlchemy 1.4's autocommit, would fail
at once otherwise). ND_SQLITE_GREEN=0 turns this part off.

The hooks are installed lazily, right after 'sqlalchemy' (and
'oslo_db.sqlalchemy.enginefacade') finish importing, so processes that never
use them pay nothing and nothing is imported before eventlet's monkey-patching.
ND_SQLITE_TUNE=0 in the environment disables all of this.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import sys

BUSY_TIMEOUT_MS = int(os.environ.get('ND_SQLITE_BUSY_TIMEOUT_MS', '30000'))
_MARK = 'in_transaction'  # the conn.info key oslo.db uses
_READER_MODES = ()        # enginefacade's reader sentinels, once imported
_tls = None


def _mode_stack():
    # created on first use, i.e. after eventlet (if any) patched threading,
    # so that it is greenthread-local in eventlet services
    global _tls
    if _tls is None:
        import threading
        _tls = threading.local()
    st = getattr(_tls, 'stack', None)
    if st is None:
        st = _tls.stack = []
    return st


def _green():
    """Whether eventlet patched this process (its sleeps yield, C ones do not)."""
    if os.environ.get('ND_SQLITE_GREEN', '1') == '0':
        return False
    patcher = sys.modules.get('eventlet.patcher')
    try:
        return patcher is not None and patcher.is_monkey_patched('time')
    except Exception:
        return False


def _green_begin_immediate(conn):
    """BEGIN IMMEDIATE, waiting for the write lock with eventlet's sleep so
    the other greenthreads (the lock's holder among them) keep running."""
    import sqlite3
    import time
    fairy = conn.connection
    raw = getattr(fairy, 'dbapi_connection', None) or fairy.connection
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000.0
    pause = 0.002
    raw.execute('PRAGMA busy_timeout = 0').close()
    try:
        while time.monotonic() < deadline:
            try:
                raw.execute('BEGIN IMMEDIATE').close()
                return
            except sqlite3.OperationalError as e:
                if 'locked' not in str(e) and 'busy' not in str(e):
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    finally:
        raw.execute('PRAGMA busy_timeout = %d' % BUSY_TIMEOUT_MS).close()
    conn.exec_driver_sql('BEGIN IMMEDIATE')  # fails as before, error wrapped


def _install_sqlalchemy(module):
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_con, con_record):
        if not isinstance(dbapi_con, sqlite3.Connection):
            return
        dbapi_con.execute('PRAGMA busy_timeout = %d' % BUSY_TIMEOUT_MS).close()
        dbapi_con.isolation_level = None   # we (or oslo.db) emit BEGIN
        try:
            cur = dbapi_con.execute('PRAGMA journal_mode')
            mode = cur.fetchone()[0]
            cur.close()
            if mode.lower() not in ('wal', 'memory'):
                dbapi_con.execute('PRAGMA journal_mode = WAL').close()
        except sqlite3.Error:
            pass   # e.g. locked by a writer: the next connection retries
        dbapi_con.execute('PRAGMA synchronous = OFF').close()

    def on_begin(conn):
        if conn.dialect.name != 'sqlite' or _MARK in conn.info:
            return
        st = _mode_stack()
        if st and st[-1] in _READER_MODES:
            conn.exec_driver_sql('BEGIN')
        elif _green():
            _green_begin_immediate(conn)
        else:
            conn.exec_driver_sql('BEGIN IMMEDIATE')
        conn.info[_MARK] = True

    def on_end(conn):
        if conn.dialect.name == 'sqlite':
            conn.info.pop(_MARK, None)

    def on_checkin(dbapi_con, con_record):
        # the pool's reset-on-return rolls back without a "rollback" event
        if con_record is not None:
            con_record.info.pop(_MARK, None)

    event.listen(Engine, 'connect', on_connect)
    event.listen(Engine, 'begin', on_begin)
    event.listen(Engine, 'commit', on_end)
    event.listen(Engine, 'rollback', on_end)
    event.listen(Engine, 'checkin', on_checkin)


def _install_enginefacade(ef):
    global _READER_MODES
    _READER_MODES = (ef._READER, ef._ASYNC_READER)
    tc_cls = ef._TransactionContext
    orig = tc_cls._produce_block

    @contextlib.contextmanager
    def _scoped(cm, tc):
        st = _mode_stack()
        st.append(tc.mode)    # the transaction's effective mode
        try:
            with cm as resource:
                yield resource
        finally:
            st.pop()

    def _produce_block(self, *args, **kwargs):
        return _scoped(orig(self, *args, **kwargs), self)

    tc_cls._produce_block = _produce_block


_HOOKS = {
    'sqlalchemy': _install_sqlalchemy,
    'oslo_db.sqlalchemy.enginefacade': _install_enginefacade,
}


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Calls _HOOKS[name](module) right after module `name` was executed."""

    def find_spec(self, name, path=None, target=None):
        hook = _HOOKS.pop(name, None)
        if hook is None:
            return None
        if not _HOOKS:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            try:
                hook(module)
            except Exception as e:  # never break the service over tuning
                sys.stderr.write('nd sitecustomize: %s hook failed: %r\n'
                                 % (name, e))

        spec.loader.exec_module = exec_module
        return spec


def _chain_shadowed_sitecustomize():
    """Run the sitecustomize.py this one shadows (Debian ships one)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for d in sys.path:
        f = os.path.join(d or '.', 'sitecustomize.py')
        if os.path.abspath(d or '.') != here and os.path.isfile(f):
            try:
                with open(f) as fh:
                    code = compile(fh.read(), f, 'exec')
                exec(code, {'__name__': 'sitecustomize', '__file__': f})
            except Exception:
                pass
            return


if os.environ.get('ND_SQLITE_TUNE', '1') != '0':
    for _m in list(_HOOKS):
        if _m in sys.modules:       # too late for this one
            _HOOKS.pop(_m)
    if _HOOKS:
        sys.meta_path.insert(0, _PostImportHook())
_chain_shadowed_sitecustomize()
