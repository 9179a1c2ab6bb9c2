"""gunicorn settings: `gunicorn -c gunicorn.conf.py tunnel.wsgi:app` (Procfile, `make run`).

The settings themselves live in tunnel/gunicorn_conf.py, so that `hoody-tunnel serve` (which runs
`gunicorn -c python:tunnel.gunicorn_conf`) starts exactly the same server from an installed package.
Command-line options override them (tests pass ``--bind fd://N``).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # run from another directory without an installed package
    sys.path.insert(0, _HERE)

from tunnel.gunicorn_conf import *  # noqa: E402,F401,F403  (gunicorn reads the names it knows)
