"""Keystone's public WSGI application for gunicorn (tests/keystone/start.sh).

oslo.config parses sys.argv when Keystone configures itself, and gunicorn's own
command line (-b, --workers, this module's name) is not Keystone's: the worker
would exit with "unrecognized arguments". Clear it before Keystone loads. The
configuration comes from OS_KEYSTONE_CONFIG_DIR (its keystone.conf).
"""

import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402

__all__ = ["application"]
