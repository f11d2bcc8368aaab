"""gunicorn entry point for Keystone (newest, from its PyPI virtualenv).

keystone's WSGI module hands sys.argv to oslo.config, which would see
gunicorn's own arguments ("unrecognized arguments"): hide them. The config
comes from $OS_KEYSTONE_CONFIG_FILES. From shared/reference/keystone.md.
"""
import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402,F401
