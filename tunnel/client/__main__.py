"""``python -m tunnel.client`` and the ``hoody-tunnel`` console script.

gevent must patch the standard library before anything else imports it (docs/architecture.md
§4.1), so this module patches on its first lines and only then imports the CLI.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402  (after patching, on purpose)

from tunnel.client.cli import main as _main  # noqa: E402


def main() -> int:
    """Console-script entry point."""
    return _main()


if __name__ == "__main__":
    sys.exit(main())
