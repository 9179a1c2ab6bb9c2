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
"""

from __future__ import annotations
