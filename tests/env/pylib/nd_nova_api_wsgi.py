"""gunicorn entry point for nova 34's API (WSGI only, no nova-api script).

nova's init_global_data() hands sys.argv to oslo.config, so gunicorn's own
arguments must be hidden from it. The config comes from $OS_NOVA_CONFIG_DIR
(nova.conf, api-paste.ini). The log file is $ND_NOVA_API_LOG: with only
[DEFAULT] log_dir, oslo.log would name the file after the outermost script,
i.e. gunicorn.log.
"""
import os
import sys

sys.argv = ['nova-api']
if os.environ.get('ND_NOVA_API_LOG'):
    sys.argv += ['--log-file', os.environ['ND_NOVA_API_LOG']]

from nova.wsgi.osapi_compute import application  # noqa: E402,F401
