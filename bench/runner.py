"""``python -m bench``: sets up every path, measures it, prints the table, writes JSON.

Order: the target, then direct, ssh -L, the gevent relay chain, and the kit (PULL, then EXPOSE,
each through a client of its own).
A path that cannot be set up, or dies midway, gets its reason in the table and the run goes on.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Mapping

from bench.load import (
    Endpoint,
    Limits,
    MeasureError,
    concurrent_echo,
    connection_setups,
    download,
    probe,
    round_trips,
    upload,
)
from bench.monitor import MIB, CpuMeter, RssMonitor, process_tree, worker_pids
from bench.paths import (
    REPO_ROOT,
    KitCredentials,
    Unavailable,
    ensure_openssh,
    gone,
    log,
    start_chain,
    start_kit_client,
    start_kit_server,
    start_ssh_forward,
    start_target,
)
from bench.procs import BenchError, ConfigError, Managed, ProcessSet, env_number, tail
from bench.report import PathResult, Report, format_table, write_json

ALL_PATHS = ("direct", "pull", "expose", "ssh", "chain")
ROW_NAME = {"direct": "direct", "pull": "pull", "expose": "expose", "ssh": "ssh -L",
            "chain": "gevent chain"}


@dataclass(frozen=True)
class Config:
    size_mib: int = 256
    rtt_count: int = 2000
    rtt_warmup: int = 200
    rtt_payload_bytes: int = 64
    conns: int = 200
    echo_kib: int = 256
    setup_max: int = 500
    setup_s: float = 2.0
    test_timeout_s: float = 60.0
    stall_s: float = 20.0
    start_timeout_s: float = 30.0
    install_timeout_s: float = 240.0
    allow_install: bool = True
    paths: tuple[str, ...] = ALL_PATHS
    json_path: str | None = None
    keep_logs: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        raw_paths = env.get("BENCH_PATHS", "").strip()
        paths: tuple[str, ...] = ALL_PATHS
        if raw_paths:
            chosen = tuple(p.strip().lower().replace("ssh -l", "ssh").replace("gevent chain", "chain")
                           for p in raw_paths.split(","))
            unknown = [p for p in chosen if p not in ALL_PATHS]
            if unknown:
                raise ConfigError(f"BENCH_PATHS: unknown {unknown}; choose from {', '.join(ALL_PATHS)}")
            paths = tuple(p for p in ALL_PATHS if p in chosen)
        return cls(
            size_mib=int(env_number(env, "BENCH_SIZE_MIB", 256, int)),
            rtt_count=int(env_number(env, "BENCH_RTT_COUNT", 2000, int)),
            conns=int(env_number(env, "BENCH_CONNS", 200, int)),
            echo_kib=int(env_number(env, "BENCH_ECHO_KIB", 256, int)),
            setup_max=int(env_number(env, "BENCH_SETUP_MAX", 500, int)),
            setup_s=env_number(env, "BENCH_SETUP_S", 2.0, float),
            test_timeout_s=env_number(env, "BENCH_TEST_TIMEOUT_S", 60.0, float),
            stall_s=env_number(env, "BENCH_STALL_S", 20.0, float),
            start_timeout_s=env_number(env, "BENCH_START_TIMEOUT_S", 30.0, float),
            allow_install=env.get("BENCH_NO_INSTALL", "") in ("", "0"),
            paths=paths,
            json_path=env.get("BENCH_JSON") or None,
            keep_logs=env.get("BENCH_KEEP_LOGS", "") not in ("", "0"),
        )


def measure_path(result: PathResult, ep: Endpoint, cfg: Config,
                 alive: Callable[[], str | None] = lambda: None, cpu: CpuMeter | None = None) -> None:
    """Every measurement in turn; after a failure, a probe decides whether to go on.

    ``alive`` returns why the path's processes have exited (or None while they run). ``cpu``
    measures the path's processes across the measured round trips of the RTT phase.
    """
    limits = Limits(stall_s=cfg.stall_s, test_timeout_s=cfg.test_timeout_s)
    name = result.name
    started = time.monotonic()
    try:
        probe(ep, cfg.start_timeout_s)
    except MeasureError as exc:
        why = alive()
        result.row_error = f"{exc}; {why}" if why else str(exc)
        log(f"{name}: FAILED before measuring: {result.row_error}")
        return
    size = cfg.size_mib * MIB

    def do_up() -> None:
        result.up_mb_s = upload(ep, size, limits)
        log(f"{name}: upload {cfg.size_mib} MiB: {result.up_mb_s:.1f} MB/s")

    def do_down() -> None:
        result.down_mb_s = download(ep, size, limits)
        log(f"{name}: download {cfg.size_mib} MiB: {result.down_mb_s:.1f} MB/s")

    def do_rtt() -> None:
        p50, p99 = round_trips(ep, cfg.rtt_count, cfg.rtt_warmup, cfg.rtt_payload_bytes, limits,
                               on_start=cpu.start if cpu else None, on_end=cpu.stop if cpu else None)
        result.rtt_p50_us, result.rtt_p99_us = p50, p99
        cpu_text = ""
        if cpu is not None:
            server_s, client_s = cpu.spent_s
            if server_s is None or client_s is None:
                result.rtt_cpu_error = "a process of the path was gone when its CPU time was read"
            else:
                result.rtt_server_cpu_us = server_s / cfg.rtt_count * 1e6
                result.rtt_client_cpu_us = client_s / cfg.rtt_count * 1e6
                cpu_text = (f"; CPU per round trip {result.rtt_server_cpu_us:.1f} µs server side, "
                            f"{result.rtt_client_cpu_us:.1f} µs client side")
        log(f"{name}: rtt {cfg.rtt_payload_bytes} B x {cfg.rtt_count}: p50 {p50:.0f} µs, p99 {p99:.0f} µs"
            + cpu_text)

    def do_echo() -> None:
        echo = concurrent_echo(ep, cfg.conns, cfg.echo_kib * 1024, limits)
        result.echo_s, result.echo_errors, result.echo_first_error = echo.wall_s, echo.errors, echo.first_error
        result.echo_ok_s = echo.ok_wall_s
        log(f"{name}: {cfg.conns} x {cfg.echo_kib} KiB echo: {echo.wall_s:.2f} s, {echo.errors} errors"
            + (f" (first: {echo.first_error})" if echo.first_error else ""))

    def do_setups() -> None:
        setups = connection_setups(ep, cfg.setup_s, cfg.setup_max, limits)
        result.setups_per_s, result.setups_count = setups.per_s, setups.count
        result.setups_errors, result.setups_first_error = setups.errors, setups.first_error
        log(f"{name}: setups: {setups.per_s:.0f}/s ({setups.count} ok, {setups.errors} failed)")

    steps: list[tuple[tuple[str, ...], Callable[[], None]]] = [
        (("up_mb_s",), do_up),
        (("down_mb_s",), do_down),
        (("rtt_p50_us", "rtt_p99_us"), do_rtt),
        (("echo_s",), do_echo),
        (("setups_per_s",), do_setups),
    ]
    down_reason: str | None = None
    for keys, step in steps:
        if down_reason is not None:
            for key in keys:
                result.failures[key] = f"skipped: path down ({down_reason})"
            continue
        try:
            step()
        except MeasureError as exc:
            reason = str(exc)
            why = alive()
            if why:
                reason += f"; {why}"
            for key in keys:
                result.failures[key] = reason
            log(f"{name}: {reason}")
            down_reason = why
            if down_reason is None:
                try:
                    probe(ep, 10.0)
                except MeasureError as probe_exc:
                    down_reason = str(probe_exc)
            if down_reason is not None:
                log(f"{name}: path is down ({down_reason}); skipping the rest of this row")
    result.duration_s = time.monotonic() - started


def run_kit(cfg: Config, procs: ProcessSet, target: Endpoint, work_dir: Path, report: Report) -> None:
    """PULL, then EXPOSE, each through its own client; one kit server, restarted if it died."""
    wanted = [p for p in ("pull", "expose") if p in cfg.paths]
    credentials = KitCredentials.generate()
    server: Managed | None = None
    port = 0
    monitor: RssMonitor | None = None
    kit_peak = client_peak = 0
    phase_peaks: dict[str, int] = {}

    def stop_monitor() -> None:
        nonlocal monitor, kit_peak, client_peak
        if monitor is None:
            return
        monitor.stop()
        kit_peak = max(kit_peak, monitor.kit_peak_bytes)
        client_peak = max(client_peak, monitor.client_peak_bytes)
        for phase, peak in monitor.kit_phase_peak_bytes.items():
            phase_peaks[phase] = max(phase_peaks.get(phase, 0), peak)
        report.environment.setdefault("kit_worker_pids", []).extend(sorted(monitor.worker_pids))
        if monitor.errors:
            report.notes.append(f"RSS sampling errors: {monitor.errors}")
        monitor = None

    try:
        for path in wanted:
            name = ROW_NAME[path]
            if server is not None and not server.alive():
                report.notes.append(f"the kit exited during the previous path; restarting it for {path}")
                stop_monitor()
                procs.stop(server)
                server = None
            if server is None:
                log("starting the kit (gunicorn)")
                try:
                    server, port = start_kit_server(procs, work_dir, credentials, cfg.start_timeout_s)
                except BenchError as exc:
                    report.paths[name] = PathResult(name, row_error=str(exc))
                    report.notes.append(f"the kit did not start for {path}:\n{exc}")
                    log("the kit did not start (its output follows the table)")
                    continue
                monitor = RssMonitor(server.pid)
                monitor.start()
                if report.kit_idle_rss_mib is None and monitor.kit_peak_bytes:
                    report.kit_idle_rss_mib = monitor.kit_peak_bytes / MIB
            assert monitor is not None
            log(f"starting the tunnel client ({path})")
            try:
                client, ep = start_kit_client(procs, port, credentials.token, path, target, work_dir,
                                              cfg.start_timeout_s)
            except BenchError as exc:
                report.paths[name] = PathResult(name, row_error=str(exc))
                report.notes.append(f"the tunnel client ({path}) did not start:\n{exc}\n"
                                    f"{server.describe_output()}")
                log(f"the tunnel client ({path}) did not start (its output follows the table)")
                continue
            result = report.paths[name] = PathResult(name)
            monitor.set_phase(path)
            monitor.set_client(client.pid)
            log(f"measuring {path} ({ep.host}:{ep.sink_port},{ep.source_port},{ep.echo_port})")
            kit_server = server
            cpu = CpuMeter(lambda: worker_pids(kit_server.pid), lambda: [client.pid])
            try:
                measure_path(result, ep, cfg, alive=lambda: gone([kit_server, client]), cpu=cpu)
            finally:
                monitor.set_phase("idle")
                monitor.set_client(None)
                status = procs.stop(client)
            if status != 0:
                report.notes.append(f"tunnel client ({path}) exited with status {status} on SIGINT "
                                    f"(expected 0); stderr tail:\n{tail(client.stderr_path, 1500)}")
            if result.row_error or result.failures:
                report.notes.append(f"{path} failed; kit and client logs:\n"
                                    f"{server.describe_output()}\n{client.describe_output()}")
    finally:
        stop_monitor()
        if server is not None:
            procs.stop(server)
        if kit_peak:
            report.kit_peak_rss_mib = kit_peak / MIB
            report.kit_phase_peak_rss_mib = {k: v / MIB for k, v in phase_peaks.items()}
        if client_peak:
            report.client_peak_rss_mib = client_peak / MIB


def run_ssh(cfg: Config, procs: ProcessSet, target: Endpoint, work_dir: Path, report: Report) -> None:
    name = ROW_NAME["ssh"]
    try:
        openssh = ensure_openssh(cfg.allow_install, cfg.install_timeout_s)
        report.environment["openssh"] = openssh.version
        log(f"starting sshd and ssh -L ({openssh.version})")
        ep, processes = start_ssh_forward(procs, openssh, target, work_dir, cfg.start_timeout_s)
    except Unavailable as exc:
        report.paths[name] = PathResult(name, row_error=f"unavailable: {exc}", unavailable=True)
        log(f"ssh -L unavailable: {exc}")
        return
    except BenchError as exc:
        report.paths[name] = PathResult(name, row_error=str(exc))
        log(f"ssh -L unavailable: {exc}")
        return
    result = report.paths[name] = PathResult(name)
    log(f"measuring ssh -L ({ep.host}:{ep.sink_port},{ep.source_port},{ep.echo_port})")
    sshd, ssh = processes
    cpu = CpuMeter(lambda: process_tree(sshd.pid), lambda: [ssh.pid])
    measure_path(result, ep, cfg, alive=lambda: gone(processes), cpu=cpu)
    if result.row_error or result.failures:
        report.notes.append("ssh -L failed; sshd and ssh logs:\n"
                            + "\n".join(m.describe_output() for m in processes))
    for managed in reversed(processes):
        procs.stop(managed)


def run_chain(cfg: Config, procs: ProcessSet, target: Endpoint, report: Report) -> None:
    """The reference two-process gevent relay chain: client -> relay A -> relay B -> target."""
    name = ROW_NAME["chain"]
    log("starting the gevent relay chain")
    try:
        ports, processes = start_chain(
            procs, (target.sink_port, target.source_port, target.echo_port), cfg.start_timeout_s)
    except BenchError as exc:
        report.paths[name] = PathResult(name, row_error=str(exc))
        log(f"the gevent chain did not start: {exc}")
        return
    ep = Endpoint(target.host, *ports)
    result = report.paths[name] = PathResult(name)
    log(f"measuring the gevent chain ({ep.host}:{ep.sink_port},{ep.source_port},{ep.echo_port})")
    relay_a, relay_b = processes
    cpu = CpuMeter(lambda: [relay_b.pid], lambda: [relay_a.pid])
    measure_path(result, ep, cfg, alive=lambda: gone(processes), cpu=cpu)
    if result.row_error or result.failures:
        report.notes.append("gevent chain failed; relay logs:\n"
                            + "\n".join(m.describe_output() for m in processes))
    for managed in processes:
        procs.stop(managed)


def environment() -> dict[str, object]:
    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # kit settings passed through from this environment (never the tokens)
        "kit_env": {k: v for k, v in sorted(os.environ.items())
                    if k.startswith("HOODY_TUNNEL_") and "TOKEN" not in k},
    }
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        # The kit measured is the working tree; its last commit, and whether it differs from it.
        done = subprocess.run([*git, "log", "-1", "--format=%h %s", "--", "tunnel"],
                              capture_output=True, timeout=10, check=False)
        info["kit_commit"] = done.stdout.decode("utf-8", "replace").strip() or None
        done = subprocess.run([*git, "status", "--porcelain", "--", "tunnel", "gunicorn.conf.py"],
                              capture_output=True, timeout=10, check=False)
        info["kit_uncommitted_changes"] = bool(done.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        info["kit_commit"] = None
    return info


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C (clean up, print what was measured)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def main() -> int:
    try:
        cfg = Config.from_env(os.environ)
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    work_dir = Path(tempfile.mkdtemp(prefix="hoody-bench-"))
    procs = ProcessSet(work_dir)
    atexit.register(procs.close)
    config = asdict(cfg)
    config["paths"] = list(cfg.paths)
    report = Report(config=config, paths={}, environment=environment())
    started = time.monotonic()
    exit_status: int | None = None
    try:
        log(f"work dir {work_dir}; {cfg.size_mib} MiB each way, {cfg.rtt_count} round trips, "
            f"{cfg.conns} x {cfg.echo_kib} KiB echo; paths: {', '.join(cfg.paths)}")
        target = start_target(procs, cfg.start_timeout_s)
        if "direct" in cfg.paths:
            result = report.paths["direct"] = PathResult("direct")
            log("measuring direct")
            measure_path(result, target, cfg)
        if "ssh" in cfg.paths:
            run_ssh(cfg, procs, target, work_dir, report)
        if "chain" in cfg.paths:
            run_chain(cfg, procs, target, report)
        if "pull" in cfg.paths or "expose" in cfg.paths:
            run_kit(cfg, procs, target, work_dir, report)
    except BenchError as exc:
        report.notes.append(f"bench aborted: {exc}")
        log(f"aborted: {exc}")
    except KeyboardInterrupt:
        exit_status = 128 + signal.SIGINT
        report.notes.append("interrupted (SIGINT): partial results")
    except Terminated as exc:
        exit_status = 128 + exc.signum
        report.notes.append(f"interrupted ({exc}): partial results")
    finally:
        procs.close()
    report.environment["bench_duration_s"] = round(time.monotonic() - started, 1)
    print(format_table(report), flush=True)
    if cfg.json_path:
        write_json(report, Path(cfg.json_path))
        log(f"results written to {cfg.json_path}")
    failed = any((r.row_error and not r.unavailable) or r.failures for r in report.paths.values())
    if failed or cfg.keep_logs:
        log(f"logs kept in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    if exit_status is not None:
        return exit_status
    return 1 if failed or any("aborted" in n for n in report.notes) else 0
