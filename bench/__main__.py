"""``python -m bench``: see the package docstring.

After the main table come the real-client bench (bench/clients_bench.py: redis-benchmark and
pgbench through every path, five interleaved rounds; about five minutes) and the HTTP bench
(bench/http_bench.py: wrk, direct vs tcp vs http bindings; about a minute and a half).
``BENCH_CLIENTS=0`` / ``BENCH_HTTP=0`` leave one out; ``BENCH_CLIENTS=only`` / ``BENCH_HTTP=only``
run only the parts marked ``only`` (no main table).
"""

from __future__ import annotations

import os
import sys

from bench.runner import main

ON = ("1", "only", "yes", "true")

if __name__ == "__main__":
    switches = {name: os.environ.get(f"BENCH_{name.upper()}", "1").strip().lower()
                for name in ("clients", "http")}
    only = {name for name, value in switches.items() if value == "only"}
    status = 0 if only else main()
    if "clients" in only or (not only and switches["clients"] in ON):
        from bench.clients_bench import main as clients_main

        status = max(status, clients_main())
    if "http" in only or (not only and switches["http"] in ON):
        from bench.http_bench import main as http_main

        status = max(status, http_main())
    sys.exit(status)
