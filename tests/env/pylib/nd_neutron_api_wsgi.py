"""gunicorn entry point for neutron 29's API server (API only, no agents).

neutron's boot_server() hands sys.argv[1:] to oslo.config; hide gunicorn's.
The config comes from $OS_NEUTRON_CONFIG_DIR / $OS_NEUTRON_CONFIG_FILES.
"""
import sys

sys.argv = ['neutron-api']

from neutron.wsgi.api import application  # noqa: E402,F401
