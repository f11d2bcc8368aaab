"""gunicorn entry point for neutron 29's API server (API only, no agents).

neutron's boot_server() hands sys.argv[1:] to oslo.config; hide gunicorn's.
The config comes from $OS_NEUTRON_CONFIG_DIR / $OS_NEUTRON_CONFIG_FILES.

With ML2/OVN (the "ovn" control plane), one more thing, for SQLite only:
the OVN driver's OVSDB thread touches this worker's hash ring row from its
event handler (an UPDATE) while a request thread of the same worker can hold
SQLite's database-wide write lock and wait for that very thread to commit
its OVN transaction. With MySQL the two writes lock different rows; with
SQLite they deadlock until the 30 s busy timeout (the port create times out,
the touch fails). The touch is made in a thread of its own instead, so the
OVSDB thread goes on; it still lands once the lock is free, and the
maintenance worker touches the row every 15 s anyway.
"""
import sys
import threading

sys.argv = ['neutron-api']

from neutron.wsgi.api import application  # noqa: E402,F401
from neutron.db import ovn_hash_ring_db  # noqa: E402

_touch_node = ovn_hash_ring_db.touch_node


def _touch_node_aside(context, node_uuid):
    threading.Thread(target=_touch_node, args=(context, node_uuid),
                     name='nd-hash-ring-touch', daemon=True).start()


ovn_hash_ring_db.touch_node = _touch_node_aside
