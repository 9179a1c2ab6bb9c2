"""Benchmark of hoody-tunnel: ``python -m bench`` (``make bench``).

Measures the same TCP target four ways -- direct, through a PULL binding, through an EXPOSE
binding, and through ``ssh -L`` to a throwaway loopback sshd -- and prints one table: single-stream
throughput each way, 64-byte round-trip latency, many concurrent echo connections, sequential
connection setups, and the kit's peak RSS.

Environment (all optional):
  BENCH_SIZE_MIB=256        bytes moved each way for the throughput columns
  BENCH_RTT_COUNT=2000      measured 64-byte round trips (after 200 warm-up ones)
  BENCH_CONNS=200           concurrent echo connections; BENCH_ECHO_KIB=256 bytes each
  BENCH_SETUP_MAX=500       sequential setups, or BENCH_SETUP_S=2 seconds, whichever ends first
  BENCH_TEST_TIMEOUT_S=60   bound of one measurement; BENCH_STALL_S=20 bound of one socket wait
  BENCH_START_TIMEOUT_S=30  bound of each start-up wait (kit health, client "ready", sshd)
  BENCH_PATHS=direct,pull,expose,ssh   the paths to run
  BENCH_JSON=path           also write the results there as JSON
  BENCH_NO_INSTALL=1        never apt-get install OpenSSH (the ssh -L row is then skipped)
  BENCH_KEEP_LOGS=1         keep the temporary directory with every process's logs
HOODY_TUNNEL_* variables in the environment reach the kit and the client unchanged, except the
ones the bench sets (tokens, state directory, expose host, PORT).
"""

from __future__ import annotations
