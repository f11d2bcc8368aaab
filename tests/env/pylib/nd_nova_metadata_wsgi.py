"""gunicorn entry point for nova 34's metadata API (WSGI only).

As nd_nova_api_wsgi.py: oslo.config must not see gunicorn's arguments, and
the log file is $ND_NOVA_API_LOG (here nova-metadata.log). The config comes
from $OS_NOVA_CONFIG_DIR (nova.conf, api-paste.ini with the metadata
pipeline).
"""
import os
import sys

sys.argv = ['nova-api-metadata']
if os.environ.get('ND_NOVA_API_LOG'):
    sys.argv += ['--log-file', os.environ['ND_NOVA_API_LOG']]

from nova.wsgi.metadata import application  # noqa: E402,F401
