"""``python -m bench``: see the package docstring.

The HTTP bench (bench/http_bench.py: wrk, direct vs tcp vs http bindings) runs after the main
one; it takes about a minute. ``BENCH_HTTP=0`` leaves it out, ``BENCH_HTTP=only`` runs it alone.
"""

from __future__ import annotations

import os
import sys

from bench.runner import main

if __name__ == "__main__":
    http = os.environ.get("BENCH_HTTP", "1").strip().lower()
    status = 0 if http == "only" else main()
    if http in ("1", "only", "yes", "true"):
        from bench.http_bench import main as http_main

        status = max(status, http_main())
    sys.exit(status)
