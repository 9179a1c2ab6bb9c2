"""Real clients through the tunnel: ``python -m bench.clients_bench`` (also run by ``python -m
bench``, see __main__).

One redis-server and one PostgreSQL (initdb into the bench's temporary directory, fsync off,
loopback TCP only, no unix socket, run as the ``postgres`` user -- or ``nobody`` -- when the bench
is root) are reached five ways, all set up side by side before the first run: direct, through a
PULL binding (a tunnel client with ``--pull LOCAL:CONTAINER``), through an EXPOSE binding (a second
tunnel client with ``--expose CONTAINER:LOCAL``, one kit serves both), through ``ssh -L`` to a
throwaway loopback sshd, and through the gevent chain (bench/relay.py). The runs:

  redis-benchmark -h 127.0.0.1 -p PORT -t set,get -n N -c 1 -q     (and -c 20)
  pgbench -S -n -c 1 -T 3         (and -c 8 -j 2), after pgbench -i -s 1

N is set per path and concurrency by a short calibration run (which also warms the path up) so
that one run takes about BENCH_CLIENTS_REDIS_S seconds. Rounds: every run of every path once, the
paths in a rotated order each round, so a slow spell of the (shared) machine hits every path
alike. Per path it prints the median and every run, a ``!`` on a run below 0.8x of the path's
median, the ratio against ssh -L and against the gevent chain, and the CPU time (user + system)
per request of the path's processes (median over the runs): kit worker and tunnel client for PULL
and EXPOSE, sshd and ssh for ssh -L, relay B and relay A for the chain. Target: PULL and EXPOSE at
least 0.9x ssh -L on every test, and steady (no run below 0.8x of their median).

redis-server and redis-tools, and postgresql, are installed with apt-get when missing (as root);
a server that cannot be had gets its rows marked unavailable (like the ssh -L row of the main
bench), which is not a failure of the bench.

Environment (all optional):
  BENCH_CLIENTS_ROUNDS=5          interleaved rounds
  BENCH_CLIENTS_PATHS=direct,pull,expose,ssh,chain   the paths
  BENCH_CLIENTS_SERVERS=redis,pg  the servers (and so the clients) to run
  BENCH_CLIENTS_REDIS_S=2.5       seconds one redis-benchmark run (SET then GET) should take
  BENCH_CLIENTS_REDIS_N=          a fixed -n for every redis-benchmark run instead
  BENCH_CLIENTS_PG_S=3            pgbench -T
  BENCH_CLIENTS_JSON=path         also write the results there as JSON
  BENCH_NO_INSTALL=1              never apt-get install anything
  BENCH_KEEP_LOGS=1               keep the temporary directory with every process's logs
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from bench.monitor import CpuMeter, process_tree, worker_pids
from bench.paths import (
    LOOPBACK,
    KitCredentials,
    Unavailable,
    ensure_installed,
    ensure_openssh,
    gone,
    log,
    start_chain,
    start_kit_client_ports,
    start_kit_server,
    start_ssh_tunnel,
    start_sshd,
)
from bench.procs import BenchError, ConfigError, Managed, ProcessSet, env_number, unused_port, wait_until

PATHS = ("direct", "pull", "expose", "ssh", "chain")
PATH_NAME = {"direct": "direct", "pull": "pull", "expose": "expose", "ssh": "ssh -L",
             "chain": "gevent chain"}
SERVERS = ("redis", "pg")
TARGET_VS_SSH = 0.9  # PULL and EXPOSE against ssh -L, each test's median
STEADY_FLOOR = 0.8  # no run below this fraction of its path's median
PG_USER = "bench"
PG_DATABASE = "postgres"


@dataclass(frozen=True)
class ClientsConfig:
    rounds: int = 5
    paths: tuple[str, ...] = PATHS
    servers: tuple[str, ...] = SERVERS
    redis_s: float = 2.5
    redis_n: int | None = None
    pg_s: int = 3
    start_timeout_s: float = 30.0
    install_timeout_s: float = 300.0
    allow_install: bool = True
    json_path: str | None = None
    keep_logs: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientsConfig:
        def choice(name: str, allowed: tuple[str, ...], aliases: Mapping[str, str]) -> tuple[str, ...]:
            raw = env.get(name, "").strip()
            if not raw:
                return allowed
            chosen = [aliases.get(p.strip().lower(), p.strip().lower()) for p in raw.split(",")]
            unknown = [p for p in chosen if p not in allowed]
            if unknown or not chosen:
                raise ConfigError(f"{name}: unknown {unknown}; choose from {', '.join(allowed)}")
            return tuple(p for p in allowed if p in chosen)

        redis_n = env.get("BENCH_CLIENTS_REDIS_N", "").strip()
        return cls(
            rounds=int(env_number(env, "BENCH_CLIENTS_ROUNDS", 5, int)),
            paths=choice("BENCH_CLIENTS_PATHS", PATHS, {"ssh -l": "ssh", "gevent chain": "chain"}),
            servers=choice("BENCH_CLIENTS_SERVERS", SERVERS, {"postgres": "pg", "postgresql": "pg"}),
            redis_s=env_number(env, "BENCH_CLIENTS_REDIS_S", 2.5, float),
            redis_n=int(env_number(env, "BENCH_CLIENTS_REDIS_N", 1, int)) if redis_n else None,
            pg_s=int(env_number(env, "BENCH_CLIENTS_PG_S", 3, int)),
            start_timeout_s=env_number(env, "BENCH_START_TIMEOUT_S", 30.0, float),
            allow_install=env.get("BENCH_NO_INSTALL", "") in ("", "0"),
            json_path=env.get("BENCH_CLIENTS_JSON") or None,
            keep_logs=env.get("BENCH_KEEP_LOGS", "") not in ("", "0"),
        )


@dataclass(frozen=True)
class Job:
    """One client invocation, run once per path per round; it yields one value per metric."""

    key: str
    server: str  # "redis" or "pg"
    clients: int
    metrics: tuple[str, ...]
    unit: str

    def row_label(self, metric: str) -> str:
        if self.server == "redis":
            return f"redis {metric} -c {self.clients} ({self.unit})"
        return f"{self.key} ({self.unit})"


JOBS = (
    Job("redis -c 1", "redis", 1, ("SET", "GET"), "req/s"),
    Job("redis -c 20", "redis", 20, ("SET", "GET"), "req/s"),
    Job("pgbench -S -c 1", "pg", 1, ("tps",), "tps"),
    Job("pgbench -S -c 8", "pg", 8, ("tps",), "tps"),
)


@dataclass
class Run:
    round: int
    values: dict[str, float] = field(default_factory=dict)  # metric -> requests/s or tps
    requests: int = 0  # requests (SET + GET) or transactions of the run
    seconds: float = 0.0
    server_cpu_us: float | None = None  # per request: kit worker, sshd, relay B
    client_cpu_us: float | None = None  # per request: tunnel client, ssh, relay A
    error: str = ""


@dataclass
class PathState:
    """One path as set up for the whole bench: the port reaching each server, its processes."""

    key: str
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[Managed] = field(default_factory=list)
    cpu: tuple[Callable[[], list[int]], Callable[[], list[int]]] | None = None
    error: str | None = None
    unavailable: bool = False
    down: str | None = None  # set when its processes died midway
    redis_n: dict[int, int] = field(default_factory=dict)  # -c -> -n

    @property
    def name(self) -> str:
        return PATH_NAME[self.key]


@dataclass
class ClientsReport:
    config: dict[str, object]
    versions: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # server -> why
    path_errors: dict[str, str] = field(default_factory=dict)  # path name -> why (setup)
    path_unavailable: set[str] = field(default_factory=set)
    redis_n: dict[str, dict[int, int]] = field(default_factory=dict)  # path -> -c -> -n
    runs: dict[str, dict[str, list[Run]]] = field(default_factory=dict)  # job -> path -> runs
    notes: list[str] = field(default_factory=list)


# -- the servers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisBins:
    server: str
    benchmark: str


def _find_redis() -> RedisBins | None:
    server, benchmark = shutil.which("redis-server"), shutil.which("redis-benchmark")
    return RedisBins(server, benchmark) if server and benchmark else None


@dataclass(frozen=True)
class PgBins:
    initdb: str
    postgres: str
    pgbench: str
    pg_isready: str


def _find_postgres() -> PgBins | None:
    def version(directory: str) -> tuple[int, ...]:
        digits = re.findall(r"\d+", directory)
        return tuple(int(d) for d in digits)

    names = ("initdb", "postgres", "pgbench", "pg_isready")
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        paths = [os.path.join(directory, name) for name in names]
        if all(os.access(path, os.X_OK) for path in paths):
            return PgBins(*paths)
    found = [shutil.which(name) for name in names]
    if all(found):
        return PgBins(*(str(path) for path in found))
    return None


def _short_version(argv: list[str]) -> str:
    """The first version number ``argv`` prints ("7.0.15" from "Redis server v=7.0.15 sha=...")."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"\d+\.\d+(\.\d+)?", (done.stdout + done.stderr).decode("utf-8", "replace"))
    return match.group(0) if match else "unknown"


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def pg_ready(bins: PgBins, port: int) -> bool:
    try:
        done = subprocess.run([bins.pg_isready, "-q", "-h", LOOPBACK, "-p", str(port), "-U", PG_USER,
                               "-d", PG_DATABASE, "-t", "2"], capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def start_redis(procs: ProcessSet, bins: RedisBins, work_dir: Path, timeout_s: float) -> int:
    """redis-server on a free loopback port: no persistence, no unix socket."""
    directory = work_dir / "redis"
    directory.mkdir()
    last = ""
    for _attempt in range(3):  # the port was free a moment ago: retry on a clash
        port = unused_port()
        server = procs.start(
            "redis-server",
            [bins.server, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--daemonize", "no", "--loglevel", "warning"],
            cwd=str(directory), stop_grace_s=5.0)
        try:
            wait_until(lambda: redis_ping(port), timeout_s, "redis-server to answer PING", alive=server)
            return port
        except BenchError as exc:
            last = str(exc)
            procs.stop(server)
    raise BenchError(f"redis-server did not start:\n{last}")


PG_CONF = """
# hoody-tunnel bench: a throwaway server, loopback TCP only, nothing durable
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 40
shared_buffers = 64MB
logging_collector = off
log_min_messages = warning
"""


def start_postgres(procs: ProcessSet, bins: PgBins, work_dir: Path, timeout_s: float) -> int:
    """initdb into the bench's directory, the server on a free loopback port, ``pgbench -i -s 1``.

    As root, the server runs as ``postgres`` (or ``nobody``): PostgreSQL refuses root."""
    user: str | None = None
    if os.geteuid() == 0:
        for candidate in ("postgres", "nobody"):
            try:
                pwd.getpwnam(candidate)
                user = candidate
                break
            except KeyError:
                continue
        if user is None:
            raise BenchError("no postgres or nobody user to run PostgreSQL as (it refuses root)")
    root = work_dir / "postgres"
    root.mkdir(mode=0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(work_dir, 0o711)  # let that user reach its directory (nothing else is listed)
    data = root / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}
    group = pwd.getpwnam(user).pw_gid if user is not None else None
    try:
        done = subprocess.run(
            [bins.initdb, "-D", str(data), "-U", PG_USER, "--auth=trust", "--no-sync", "-E", "UTF8",
             "--locale=C"],
            capture_output=True, timeout=180, check=False, cwd=str(root), env=env, user=user,
            group=group, extra_groups=[] if user is not None else None)
    except subprocess.TimeoutExpired:
        raise BenchError("initdb did not finish in 180 s") from None
    if done.returncode != 0:
        raise BenchError(f"initdb failed (status {done.returncode}):\n"
                         f"{(done.stdout + done.stderr).decode('utf-8', 'replace')[-2000:]}")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(PG_CONF)
    last = ""
    for _attempt in range(3):
        port = unused_port()
        server = procs.start("postgres", [bins.postgres, "-D", str(data), "-p", str(port)], env=env,
                             cwd=str(root), user=user, stop_signal=signal.SIGINT, stop_grace_s=15.0)
        try:
            wait_until(lambda: pg_ready(bins, port), timeout_s, "PostgreSQL to accept connections",
                       alive=server, interval_s=0.2)
            break
        except BenchError as exc:
            last = str(exc)
            procs.stop(server)
    else:
        raise BenchError(f"PostgreSQL did not start:\n{last}")
    try:
        done = subprocess.run([bins.pgbench, "-i", "-s", "1", "-q", "-h", LOOPBACK, "-p", str(port),
                               "-U", PG_USER, PG_DATABASE], capture_output=True, timeout=300,
                              check=False)
    except subprocess.TimeoutExpired:
        raise BenchError("pgbench -i did not finish in 300 s") from None
    if done.returncode != 0:
        raise BenchError(f"pgbench -i failed (status {done.returncode}):\n"
                         f"{(done.stdout + done.stderr).decode('utf-8', 'replace')[-2000:]}")
    return port


# -- the runs ---------------------------------------------------------------------------------------


_REDIS_LINE = re.compile(r"^([A-Z]+): ([0-9.]+) requests per second")


def parse_redis_benchmark(output: str) -> dict[str, float]:
    """{"SET": requests/s, "GET": ...} from ``redis-benchmark -q`` (progress lines end in \\r)."""
    values: dict[str, float] = {}
    for line in re.split(r"[\r\n]+", output):
        if match := _REDIS_LINE.match(line.strip()):
            values[match.group(1)] = float(match.group(2))
    return values


def parse_pgbench(output: str) -> tuple[float | None, int]:
    """(tps without the initial connection time, transactions processed) from pgbench."""
    tps = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", output, re.MULTILINE)
    count = re.search(r"number of transactions actually processed: (\d+)", output)
    return (float(tps.group(1)) if tps else None), (int(count.group(1)) if count else 0)


class Runner:
    def __init__(self, cfg: ClientsConfig, redis: RedisBins | None, pg: PgBins | None) -> None:
        self.cfg = cfg
        self.redis = redis
        self.pg = pg

    def argv(self, job: Job, path: PathState, requests: int | None = None) -> list[str]:
        port = str(path.ports[job.server])
        if job.server == "redis":
            assert self.redis is not None
            n = requests if requests is not None else path.redis_n[job.clients]
            return [self.redis.benchmark, "-h", LOOPBACK, "-p", port, "-t", "set,get", "-n", str(n),
                    "-c", str(job.clients), "-q"]
        assert self.pg is not None
        seconds = self.cfg.pg_s if requests is None else requests
        return [self.pg.pgbench, "-h", LOOPBACK, "-p", port, "-U", PG_USER, "-S", "-n",
                "-c", str(job.clients), "-j", str(min(job.clients, 2)), "-T", str(seconds),
                PG_DATABASE]

    def run(self, job: Job, path: PathState, round_index: int, requests: int | None = None) -> Run:
        """One client invocation; ``requests`` overrides -n (redis) or -T (pgbench)."""
        argv = self.argv(job, path, requests)
        run = Run(round_index)
        meter = CpuMeter(*path.cpu) if path.cpu else None
        if job.server == "redis":
            n = int(argv[argv.index("-n") + 1])
            # generous: a path at a tenth of the calibrated rate still finishes
            timeout = max(60.0, 20 * self.cfg.redis_s)
        else:
            timeout = int(argv[argv.index("-T") + 1]) + 60.0
        if meter:
            meter.start()
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            run.error = f"{' '.join(argv[:1])} did not finish in {timeout:.0f} s"
            return run
        run.seconds = time.perf_counter() - started
        if meter:
            meter.stop()
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        if job.server == "redis":
            run.values = parse_redis_benchmark(output)
            run.requests = n * len(job.metrics)
            missing = [m for m in job.metrics if m not in run.values]
        else:
            tps, run.requests = parse_pgbench(output)
            if tps is not None:
                run.values["tps"] = tps
            missing = [] if tps is not None else ["tps"]
            if re.search(r"number of failed transactions: [1-9]", output):
                missing.append("failed transactions")
        if done.returncode != 0 or missing:
            lines = [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip()]
            run.error = (f"exit status {done.returncode}, no {', '.join(missing) or 'error'} in the "
                         f"output; last line: {lines[-1] if lines else '(none)'}")
        if meter and run.requests:
            server_s, client_s = meter.spent_s
            run.server_cpu_us = None if server_s is None else server_s / run.requests * 1e6
            run.client_cpu_us = None if client_s is None else client_s / run.requests * 1e6
        return run


# -- setting the paths up ---------------------------------------------------------------------------


def set_up_paths(cfg: ClientsConfig, procs: ProcessSet, work_dir: Path, targets: dict[str, int],
                 ready: Callable[[dict[str, int]], bool], report: ClientsReport) -> list[PathState]:
    servers = list(targets)
    target_ports = [targets[s] for s in servers]

    def as_map(ports: Sequence[int]) -> dict[str, int]:
        return dict(zip(servers, ports))

    def check(ports: Sequence[int]) -> bool:
        return ready(as_map(ports))

    states: list[PathState] = []
    kit: tuple[Managed, int] | None = None
    credentials = KitCredentials.generate()
    for key in cfg.paths:
        state = PathState(key)
        states.append(state)
        try:
            if key == "direct":
                state.ports = dict(targets)
            elif key == "ssh":
                try:
                    openssh = ensure_openssh(cfg.allow_install, cfg.install_timeout_s)
                except Unavailable as exc:
                    state.error, state.unavailable = f"unavailable: {exc}", True
                    continue
                log("clients: starting sshd and ssh -L")
                server = start_sshd(procs, openssh, work_dir, cfg.start_timeout_s)
                ports, client = start_ssh_tunnel(procs, openssh, server, target_ports, check,
                                                 cfg.start_timeout_s)
                state.ports, state.processes = as_map(ports), [server.managed, client]
                state.cpu = _cpu_groups(process_tree, server.managed.pid, client.pid)
            elif key == "chain":
                log("clients: starting the gevent chain")
                ports, relays = start_chain(procs, target_ports, cfg.start_timeout_s)
                state.ports, state.processes = as_map(ports), relays
                wait_until(lambda: check(ports), cfg.start_timeout_s, "a first exchange through "
                           "the gevent chain")
                state.cpu = _cpu_groups(lambda pid: [pid], relays[1].pid, relays[0].pid)
            else:
                if kit is None:
                    log("clients: starting the kit (gunicorn)")
                    kit = start_kit_server(procs, work_dir, credentials, cfg.start_timeout_s)
                server_managed, kit_port = kit
                log(f"clients: starting the tunnel client ({key})")
                client, ports = start_kit_client_ports(procs, kit_port, credentials.token, key,
                                                       target_ports, work_dir, cfg.start_timeout_s,
                                                       name=f"clients-{key}")
                state.ports, state.processes = as_map(ports), [server_managed, client]
                wait_until(lambda: check(ports), cfg.start_timeout_s,
                           f"a first exchange through {key}", alive=client)
                state.cpu = _cpu_groups(worker_pids, server_managed.pid, client.pid)
        except BenchError as exc:
            state.error = str(exc)
            log(f"clients: {state.name} did not come up: {exc.args[0].splitlines()[0]}")
    for state in states:
        if state.error:
            report.path_errors[state.name] = state.error
            if state.unavailable:
                report.path_unavailable.add(state.name)
    return states


def _cpu_groups(server_side: Callable[[int], list[int]], server_pid: int,
                client_pid: int) -> tuple[Callable[[], list[int]], Callable[[], list[int]]]:
    """The (server side, client side) pid functions of a CpuMeter, bound to these pids now."""
    return (lambda: server_side(server_pid)), (lambda: [client_pid])


def calibrate(cfg: ClientsConfig, runner: Runner, jobs: Sequence[Job], paths: Sequence[PathState],
              report: ClientsReport) -> None:
    """A short run of every job on every path: warms the paths up, and sets redis -n per path so
    that one run takes about ``cfg.redis_s`` seconds."""
    for path in paths:
        for job in jobs:
            if path.down:
                break
            if job.server == "redis" and cfg.redis_n is not None:
                path.redis_n[job.clients] = cfg.redis_n
            trial = 500 if job.clients == 1 else 5000
            run = runner.run(job, path, 0, requests=trial if job.server == "redis" else 1)
            if run.error:
                why = gone(path.processes)
                path.down = f"warm-up failed: {run.error}" + (f"; {why}" if why else "")
                log(f"clients: {path.name}: {path.down}")
                break
            if job.server == "redis" and cfg.redis_n is None:
                rate = statistics.mean(run.values[m] for m in job.metrics)
                n = rate * cfg.redis_s / len(job.metrics)
                digits = max(0, len(str(int(n))) - 2)
                path.redis_n[job.clients] = max(1000, int(round(n, -digits)))
        if path.redis_n:
            report.redis_n[path.name] = dict(path.redis_n)


def run_rounds(cfg: ClientsConfig, runner: Runner, jobs: Sequence[Job], paths: Sequence[PathState],
               report: ClientsReport) -> None:
    for job in jobs:
        report.runs[job.key] = {path.name: [] for path in paths}
    for round_index in range(1, cfg.rounds + 1):
        shift = (round_index - 1) % len(paths)
        order = list(paths[shift:]) + list(paths[:shift])
        log(f"clients: round {round_index} of {cfg.rounds} ({', '.join(p.name for p in order)})")
        for job in jobs:
            for path in order:
                if path.down:
                    continue
                run = runner.run(job, path, round_index)
                report.runs[job.key][path.name].append(run)
                if run.error:
                    why = gone(path.processes)
                    log(f"clients: {path.name} {job.key} run {round_index}: {run.error}"
                        + (f"; {why}" if why else ""))
                    if why:
                        path.down = why
                        report.notes.append(f"{path.name} went down in round {round_index}: {why}")


# -- the report -------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Cell:
    """One test's metric on one path: the median of its runs and everything around it."""

    median: float | None
    runs: list[float | None]  # every run's value, in round order (None: that run failed)
    errors: list[str]
    low_runs: list[int]  # 1-based rounds below STEADY_FLOOR x the median
    vs_ssh: float | None = None
    vs_chain: float | None = None
    server_cpu_us: float | None = None
    client_cpu_us: float | None = None


def summary(report: ClientsReport) -> dict[str, dict[str, Cell]]:
    """{row label: {path name: Cell}} in the order of JOBS."""
    out: dict[str, dict[str, Cell]] = {}
    for job in JOBS:
        by_path = report.runs.get(job.key)
        if by_path is None:
            continue
        for metric in job.metrics:
            row: dict[str, Cell] = {}
            for path, runs in by_path.items():
                values = [None if run.error else run.values.get(metric) for run in runs]
                median = _median(values)
                row[path] = Cell(
                    median, values, [run.error for run in runs if run.error],
                    [i + 1 for i, v in enumerate(values)
                     if v is not None and median is not None and v < STEADY_FLOOR * median],
                    server_cpu_us=_median([None if r.error else r.server_cpu_us for r in runs]),
                    client_cpu_us=_median([None if r.error else r.client_cpu_us for r in runs]))
            ssh, chain = row.get("ssh -L"), row.get("gevent chain")
            for path, cell in row.items():
                if cell.median is None:
                    continue
                if ssh is not None and ssh.median and path != "ssh -L":
                    cell.vs_ssh = cell.median / ssh.median
                if chain is not None and chain.median and path != "gevent chain":
                    cell.vs_chain = cell.median / chain.median
            out[job.row_label(metric)] = row
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def verdict(path: str, cell: Cell) -> str:
    """Against the target: at least TARGET_VS_SSH x ssh -L, and no run below STEADY_FLOOR x."""
    if cell.vs_ssh is None:
        return f"{path}: no ratio (no ssh -L median)"
    text = f"{path} {cell.vs_ssh:.2f}x {'meets' if cell.vs_ssh >= TARGET_VS_SSH else 'MISSES'}"
    if cell.errors:
        text += f", {len(cell.errors)} run(s) FAILED"
    if cell.low_runs and cell.median:
        lowest = min(v for v in cell.runs if v is not None)
        text += (f", UNSTEADY (run {', '.join(map(str, cell.low_runs))} below {STEADY_FLOOR:g}x "
                 f"the median; lowest {lowest / cell.median:.2f}x)")
    elif not cell.errors:
        text += ", steady"
    return text


def format_report(report: ClientsReport, cfg: ClientsConfig) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    lines = ["", f"Real clients ({versions or 'no server available'}): {cfg.rounds} interleaved "
             f"rounds; redis-benchmark -t set,get -q with -n per path for ~{cfg.redis_s:g} s a run, "
             f"pgbench -S -n -T {cfg.pg_s}; requests/s or transactions/s, higher is better"]
    for path, why in report.path_errors.items():
        state = "unavailable" if path in report.path_unavailable else "FAILED"
        lines.append(f"{path}: {state}: {why.strip().splitlines()[0][:200]}")
    if report.redis_n:
        lines.append("redis -n per path: " + "; ".join(
            f"{path} " + ", ".join(f"-c {c}: {n}" for c, n in sorted(ns.items()))
            for path, ns in report.redis_n.items()))
    table = summary(report)
    headings = ["test", "path", "median", "vs ssh -L", "vs chain", "srv µs/req", "cli µs/req",
                f"every run (! = below {STEADY_FLOOR:g}x the median)"]
    rows: list[list[str]] = []
    for label, by_path in table.items():
        for i, (path, cell) in enumerate(by_path.items()):
            every = " ".join("fail" if v is None else f"{v:.0f}" + ("!" if n + 1 in cell.low_runs else "")
                             for n, v in enumerate(cell.runs))
            if cell.errors:
                every += f"  ({len(cell.errors)} failed; first: {cell.errors[0][:120]})"
            rows.append([label if i == 0 else "", path, _fmt(cell.median, ".0f"),
                         _fmt(cell.vs_ssh, ".2f", "x"), _fmt(cell.vs_chain, ".2f", "x"),
                         _fmt(cell.server_cpu_us, ".1f"), _fmt(cell.client_cpu_us, ".1f"), every])
    short_rows: list[list[str]] = []  # [label, text]: a server that could not be had
    for job in JOBS:
        if job.server in report.unavailable and job.server in cfg.servers:
            why = report.unavailable[job.server].strip().splitlines()[0]
            short_rows.extend([job.row_label(m), f"unavailable: {why[:160]}"] for m in job.metrics)
    if rows or short_rows:
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headings)]
        widths[0] = max([widths[0]] + [len(r[0]) for r in short_rows])
        widths[-1] = 0
        left = {0, 1, len(headings) - 1}

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i])
                             for i, c in enumerate(cells)).rstrip()

        lines.append(line(headings))
        lines.append(line(["-" * (w or len(headings[-1])) for w in widths]))
        lines.extend(line(row) for row in rows)
        lines.extend(f"{label.ljust(widths[0])}  {text}" for label, text in short_rows)
        lines.append("(srv / cli µs/req: CPU time, user + system, per request, median over the runs: "
                     "kit worker / tunnel client, sshd / ssh, relay B / relay A; SET and GET share "
                     "one redis-benchmark run, so one figure for both)")
        verdicts = []
        for label, by_path in table.items():
            parts = [verdict(path, by_path[path]) for path in ("pull", "expose") if path in by_path]
            if parts:
                verdicts.append(f"  {label}: " + "; ".join(parts))
        if verdicts:
            lines.append(f"targets: PULL and EXPOSE >= {TARGET_VS_SSH:g}x ssh -L, and no run below "
                         f"{STEADY_FLOOR:g}x of their median:")
            lines.extend(verdicts)
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------


def run(cfg: ClientsConfig) -> tuple[ClientsReport, bool]:
    """Returns the report and whether the logs should be kept (something failed)."""
    config = asdict(cfg)
    config["paths"], config["servers"] = list(cfg.paths), list(cfg.servers)
    report = ClientsReport(config=config)
    work_dir = Path(tempfile.mkdtemp(prefix="hoody-clients-bench-"))
    procs = ProcessSet(work_dir)
    failed = False
    try:
        redis: RedisBins | None = None
        pg: PgBins | None = None
        targets: dict[str, int] = {}
        if "redis" in cfg.servers:
            try:
                redis = ensure_installed("redis-server/redis-benchmark", ("redis-server", "redis-tools"),
                                         _find_redis, cfg.allow_install, cfg.install_timeout_s)
                report.versions["redis"] = _short_version([redis.server, "--version"])
                targets["redis"] = start_redis(procs, redis, work_dir, cfg.start_timeout_s)
            except Unavailable as exc:
                report.unavailable["redis"] = str(exc)
                redis = None
            except BenchError as exc:
                report.notes.append(f"redis: {exc}")
                failed, redis = True, None
        if "pg" in cfg.servers:
            try:
                pg = ensure_installed("PostgreSQL", ("postgresql",), _find_postgres,
                                      cfg.allow_install, cfg.install_timeout_s)
                report.versions["PostgreSQL"] = _short_version([pg.pgbench, "--version"])
                log("clients: initdb and start PostgreSQL")
                targets["pg"] = start_postgres(procs, pg, work_dir, cfg.start_timeout_s)
            except Unavailable as exc:
                report.unavailable["pg"] = str(exc)
                pg = None
            except BenchError as exc:
                report.notes.append(f"PostgreSQL: {exc}")
                failed, pg = True, None
        if not targets:
            return report, failed
        pg_bins = pg

        def ready(ports: dict[str, int]) -> bool:
            if "redis" in ports and not redis_ping(ports["redis"]):
                return False
            return "pg" not in ports or (pg_bins is not None and pg_ready(pg_bins, ports["pg"]))

        paths = set_up_paths(cfg, procs, work_dir, targets, ready, report)
        failed = failed or any(p.error and not p.unavailable for p in paths)
        live = [p for p in paths if not p.error]
        jobs = [job for job in JOBS if job.server in targets]
        runner = Runner(cfg, redis, pg)
        log(f"clients: warm-up and redis -n calibration on {', '.join(p.name for p in live)}")
        calibrate(cfg, runner, jobs, live, report)
        for path in live:
            if path.down:
                report.path_errors[path.name] = path.down
                failed = True
        live = [p for p in live if not p.down]
        if live:
            run_rounds(cfg, runner, jobs, live, report)
        failed = failed or any(run.error for by_path in report.runs.values()
                               for runs in by_path.values() for run in runs)
    except BenchError as exc:
        report.notes.append(f"aborted: {exc}")
        failed = True
    finally:
        procs.close()
        if failed or cfg.keep_logs:
            log(f"clients: logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return report, failed


def main() -> int:
    try:
        cfg = ClientsConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report, failed = run(cfg)
    print(format_report(report, cfg), flush=True)
    if cfg.json_path:
        document = {"config": report.config, "versions": report.versions,
                    "unavailable": report.unavailable, "path_errors": report.path_errors,
                    "redis_n": report.redis_n,
                    "summary": {label: {path: asdict(cell) for path, cell in row.items()}
                                for label, row in summary(report).items()},
                    "runs": {job: {path: [asdict(run) for run in runs] for path, runs in by_path.items()}
                             for job, by_path in report.runs.items()},
                    "notes": report.notes}
        Path(cfg.json_path).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        log(f"clients: results written to {cfg.json_path}")
    log(f"clients bench done in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
