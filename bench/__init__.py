"""Benchmark of hoody-tunnel: ``python -m bench`` (``make bench``).

Measures the same TCP target five ways -- direct, through a PULL binding, through an EXPOSE
binding, through ``ssh -L`` to a throwaway loopback sshd, and through the ``gevent chain`` (two
plain gevent relay processes, client -> relay A -> relay B -> target, one greenlet per direction
and no framing: the floor of any two-process gevent tunnel; bench/relay.py) -- and prints one
table: single-stream throughput each way, 64-byte round-trip latency, many concurrent echo
connections, sequential connection setups, and the kit's peak RSS. For every path with processes
of its own it also prints the CPU time (user + system) per measured round trip of the RTT phase,
server side (kit worker, sshd, relay B) and client side (tunnel client, ssh, relay A), and the
ratios against direct, ssh -L and the gevent chain (RTT p50 target: at most 1.2x the chain's).

Environment (all optional):
  BENCH_SIZE_MIB=256        bytes moved each way for the throughput columns
  BENCH_RTT_COUNT=2000      measured 64-byte round trips (after 200 warm-up ones)
  BENCH_CONNS=200           concurrent echo connections; BENCH_ECHO_KIB=256 bytes each
  BENCH_SETUP_MAX=500       sequential setups, or BENCH_SETUP_S=2 seconds, whichever ends first
  BENCH_TEST_TIMEOUT_S=60   bound of one measurement; BENCH_STALL_S=20 bound of one socket wait
  BENCH_START_TIMEOUT_S=30  bound of each start-up wait (kit health, client "ready", sshd)
  BENCH_PATHS=direct,pull,expose,ssh,chain   the paths to run
  BENCH_JSON=path           also write the results there as JSON
  BENCH_NO_INSTALL=1        never apt-get install OpenSSH (the ssh -L row is then skipped)
  BENCH_KEEP_LOGS=1         keep the temporary directory with every process's logs
HOODY_TUNNEL_* variables in the environment reach the kit and the client unchanged, except the
ones the bench sets (tokens, state directory, expose host, PORT).

Then two more benches run (bench/__main__.py), each printing its own table:
  BENCH_CLIENTS=1           real clients (bench/clients_bench.py): redis-benchmark SET/GET at -c 1
                            and -c 20, and pgbench -S at -c 1 and -c 8, against a throwaway
                            redis-server and PostgreSQL through direct, PULL, EXPOSE, ssh -L and
                            the gevent chain, all up side by side; 5 interleaved rounds, the median
                            and every run per path, ratios against ssh -L and the chain, CPU per
                            request. About five minutes. 0 leaves it out, ``only`` runs it alone.
                            redis-server, redis-tools and postgresql are installed with apt-get
                            when missing; a server that cannot be had gets its rows marked
                            unavailable. Its own settings:
    BENCH_CLIENTS_ROUNDS=5              interleaved rounds
    BENCH_CLIENTS_PATHS=direct,pull,expose,ssh,chain   the paths
    BENCH_CLIENTS_SERVERS=redis,pg      the servers (and so the clients)
    BENCH_CLIENTS_REDIS_S=2.5           seconds of one redis-benchmark run (-n set per path by a
                                        short calibration run); BENCH_CLIENTS_REDIS_N=N fixes -n
    BENCH_CLIENTS_PG_S=3                pgbench -T
    BENCH_CLIENTS_JSON=path             also write its results there as JSON
  BENCH_HTTP=1              the HTTP bench (bench/http_bench.py: wrk through tcp and http EXPOSE
                            bindings; its settings are in its docstring). About a minute and a
                            half. 0 leaves it out, ``only`` runs it alone.
  With BENCH_CLIENTS=only and/or BENCH_HTTP=only, only those run (no main table).
BENCH_NO_INSTALL and BENCH_KEEP_LOGS apply to all three.
"""

from __future__ import annotations
