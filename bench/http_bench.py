"""HTTP bench: ``python -m bench.http_bench`` (also run by ``python -m bench``, see __main__).

wrk drives keep-alive GET requests at an HTTP/1.1 server three ways: direct, through an EXPOSE
binding in mode ``tcp``, and through one in mode ``http`` (the kit parses every request and
response, adds the forwarding headers, logs one access line). It prints requests/s and latency
(p50, p99) per path, and the http/tcp ratio against the target (at least 70 %).

Two servers: ``raw``, a minimal responder (so the paths are compared on the tunnel's own cost),
and ``wsgi``, a hello-world WSGI app under gevent's pywsgi (closer to a real app).

wrk comes from the Debian package ``wrk``; when missing it is installed (``apt-get update`` and
``apt-get install -y wrk``, as root). If that fails, the table says why and the exit status is 1:
nothing is skipped silently.

Environment (all optional):
  BENCH_HTTP_DURATION_S=10   measured seconds per path (after BENCH_HTTP_WARMUP_S=2 of warm-up)
  BENCH_HTTP_REPEAT=3        tcp and http runs, interleaved; each path's median run is reported
  BENCH_HTTP_CONNS=32        concurrent keep-alive connections; BENCH_HTTP_THREADS=2 wrk threads
  BENCH_HTTP_BODY=64         response body size in bytes
  BENCH_HTTP_TARGETS=raw,wsgi  the servers to measure
  BENCH_HTTP_JSON=path       also write the results there as JSON
  BENCH_NO_INSTALL=1         never apt-get install wrk
HOODY_TUNNEL_* variables reach the kit unchanged (the access log is on at the default level).

``python -m bench.http_bench --target FD`` is the HTTP server itself (internal): gevent, a
minimal keep-alive HTTP/1.1 responder writing each response in one send, so the server is not
what the paths are compared on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import psutil

from bench.paths import REPO_ROOT, KitCredentials, log, start_kit_server
from bench.procs import BenchError, Managed, ProcessSet, listening_socket, tail, unused_port, wait_until

TARGET_RATIO = 0.70
PATHS = ("direct", "tcp", "http")
TARGETS = ("raw", "wsgi")


@dataclass(frozen=True)
class HttpConfig:
    duration_s: int = 10
    warmup_s: int = 2
    repeat: int = 3
    conns: int = 32
    threads: int = 2
    body_bytes: int = 64
    json_path: str | None = None
    allow_install: bool = True
    start_timeout_s: float = 30.0
    targets: tuple[str, ...] = TARGETS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpConfig:
        def number(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit() or int(raw) <= 0:
                raise BenchError(f"{name}: must be a positive integer, got {raw!r}")
            return int(raw)

        raw_targets = env.get("BENCH_HTTP_TARGETS", "").strip()
        targets = tuple(t.strip() for t in raw_targets.split(",") if t.strip()) if raw_targets else TARGETS
        if not targets or any(t not in TARGETS for t in targets):
            raise BenchError(f"BENCH_HTTP_TARGETS: choose from {', '.join(TARGETS)}, got {raw_targets!r}")
        return cls(
            targets=targets,
            duration_s=number("BENCH_HTTP_DURATION_S", 10),
            warmup_s=number("BENCH_HTTP_WARMUP_S", 2),
            repeat=number("BENCH_HTTP_REPEAT", 3),
            conns=number("BENCH_HTTP_CONNS", 32),
            threads=number("BENCH_HTTP_THREADS", 2),
            body_bytes=number("BENCH_HTTP_BODY", 64),
            json_path=env.get("BENCH_HTTP_JSON") or None,
            allow_install=env.get("BENCH_NO_INSTALL", "") in ("", "0"),
        )


@dataclass
class WrkResult:
    path: str
    target: str = "raw"
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    non_2xx: int = 0
    socket_errors: str = ""
    error: str = ""
    kit_cpu_us: float | None = None  # the kit worker's CPU per request (user + system)
    spread: list[int] = field(default_factory=list)  # requests/s of every run, when repeated
    client_cpu_us: float | None = None  # the tunnel client's CPU per request


@dataclass
class HttpReport:
    config: dict[str, object]
    wrk: str = ""
    results: dict[str, WrkResult] = field(default_factory=dict)  # "target/path"
    notes: list[str] = field(default_factory=list)

    def ratio(self, target: str) -> float | None:
        http = self.results.get(f"{target}/http")
        tcp = self.results.get(f"{target}/tcp")
        if http and tcp and http.requests_per_s and tcp.requests_per_s:
            return http.requests_per_s / tcp.requests_per_s
        return None


# -- wrk ----------------------------------------------------------------------------------------


def ensure_wrk(allow_install: bool) -> str:
    """The wrk binary; installs the Debian package when missing. Raises BenchError with why not."""
    found = shutil.which("wrk")
    if found:
        return found
    if not allow_install:
        raise BenchError("wrk is not installed (BENCH_NO_INSTALL is set)")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError("wrk is not installed, and cannot be (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    output = ""
    for attempt in range(2):
        log("wrk not found: apt-get install -y wrk" + (" (after apt-get update)" if attempt else ""))
        if attempt:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True, timeout=300, check=False)
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError(f"apt-get install wrk failed:\n{output[-1500:]}")


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(path: str, output: str) -> WrkResult:
    """Requests/s, p50/p99 (``--latency``), counts and errors from wrk's text output."""
    result = WrkResult(path)
    if match := re.search(r"Requests/sec:\s+([0-9.]+)", output):
        result.requests_per_s = float(match.group(1))
    for label, attribute in (("50%", "p50_ms"), ("99%", "p99_ms")):
        if match := re.search(rf"^\s+{re.escape(label)}\s+(\S+)", output, re.MULTILINE):
            setattr(result, attribute, _ms(match.group(1)))
    if match := re.search(r"(\d+) requests in", output):
        result.requests = int(match.group(1))
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        result.non_2xx = int(match.group(1))
    if match := re.search(r"Socket errors:(.*)", output):
        result.socket_errors = match.group(1).strip()
    if result.requests_per_s is None:
        result.error = f"no result in wrk's output:\n{output[-800:]}"
    return result


def cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` (None when one is gone)."""
    try:
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)
    except psutil.Error:
        return None


def run_wrk(wrk: str, path: str, port: int, cfg: HttpConfig, *, kit_pids: Sequence[int] = (),
            client_pids: Sequence[int] = ()) -> WrkResult:
    """One wrk run after a warm-up; with pids, also the CPU those processes spent per request
    (a number that, unlike requests/s, barely moves with what else the machine runs)."""
    url = f"http://127.0.0.1:{port}/"
    base = [wrk, f"-t{cfg.threads}", f"-c{cfg.conns}", "--latency", url]
    subprocess.run([*base[:3], f"-d{cfg.warmup_s}s", *base[3:]], capture_output=True, timeout=cfg.warmup_s + 60,
                   check=False)
    before = [cpu_s(list(kit_pids)), cpu_s(list(client_pids))]
    done = subprocess.run([*base[:3], f"-d{cfg.duration_s}s", *base[3:]], capture_output=True,
                          timeout=cfg.duration_s + 60, check=False)
    after = [cpu_s(list(kit_pids)), cpu_s(list(client_pids))]
    output = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    result = parse_wrk(path, output)
    if done.returncode != 0 and not result.error:
        result.error = f"wrk exited with status {done.returncode}: {output[-500:]}"
    if result.requests:
        spent = [None if a is None or b is None else (b - a) / result.requests * 1e6 for a, b in zip(before, after)]
        if kit_pids:
            result.kit_cpu_us = spent[0]
        if client_pids:
            result.client_cpu_us = spent[1]
    return result


# -- the processes -----------------------------------------------------------------------------------


def start_http_target(procs: ProcessSet, cfg: HttpConfig, kind: str) -> int:
    listener = listening_socket()
    try:
        port: int = listener.getsockname()[1]
        managed = procs.start(
            f"http-target-{kind}",
            [sys.executable, "-m", "bench.http_bench", "--target", str(listener.fileno()), str(cfg.body_bytes), kind],
            cwd=str(REPO_ROOT), pass_fds=[listener.fileno()], read_stdout_lines=True, stdin_pipe=True,
            stop_grace_s=3.0)
    finally:
        listener.close()
    managed.wait_for_line(lambda line: "serving" in line, cfg.start_timeout_s)
    return port


def start_client(procs: ProcessSet, kit_port: int, token: str, target_port: int, work_dir: Path,
                 timeout_s: float, kind: str) -> tuple[Managed, int, int]:
    """One client with two EXPOSE bindings of the same target: mode http and mode tcp."""
    last = ""
    for _attempt in range(3):  # the container ports were free a moment ago: retry on a clash
        http_port, tcp_port = unused_port(), unused_port()
        env = dict(os.environ, HOODY_TUNNEL_STATE_DIR=str(work_dir / "client-state"))
        client = procs.start(
            f"http-client-{kind}",
            [sys.executable, "-m", "tunnel.client", "connect", f"ws://127.0.0.1:{kit_port}", "--token", token,
             "--expose", f"{http_port}:{target_port}/http", "--expose", f"{tcp_port}:{target_port}/tcp"],
            env=env, cwd=str(REPO_ROOT), read_stdout_lines=True, stop_signal=signal.SIGINT, stop_grace_s=8.0)
        try:
            client.wait_for_line(lambda line: "ready" in line.lower(), timeout_s)
            return client, http_port, tcp_port
        except BenchError as exc:
            last = str(exc)
            procs.stop(client)
    raise BenchError(f"the tunnel client did not become ready:\n{last}")


def probe_http(port: int, timeout_s: float) -> None:
    import http.client

    def ok() -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
            connection.request("GET", "/")
            status = connection.getresponse().status
            connection.close()
            return status == 200
        except (OSError, http.client.HTTPException):
            return False

    wait_until(ok, timeout_s, f"an HTTP 200 on port {port}")


# -- the report --------------------------------------------------------------------------------------


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: HttpReport) -> str:
    lines = ["", f"HTTP bench ({report.wrk or 'wrk unavailable'}): keep-alive GET, "
             f"{report.config['conns']} connections, {report.config['threads']} threads, "
             f"{report.config['duration_s']} s per run, {report.config['body_bytes']} B bodies; "
             f"tcp and http: median of {report.config['repeat']} interleaved runs",
             f"{'server':<6} {'path':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'requests':>10} "
             f"{'non-2xx':>8} {'kit µs/req':>10} {'client µs/req':>13}  errors"]
    for key, result in report.results.items():
        target, _, name = key.partition("/")
        lines.append(f"{target:<6} {name:<8} {_cell(result.requests_per_s, '.0f'):>10} "
                     f"{_cell(result.p50_ms, '.2f'):>8} {_cell(result.p99_ms, '.2f'):>8} {result.requests:>10} "
                     f"{result.non_2xx:>8} {_cell(result.kit_cpu_us, '.0f'):>10} "
                     f"{_cell(result.client_cpu_us, '.0f'):>13}  "
                     f"{result.error.splitlines()[0] if result.error else result.socket_errors or '-'}")
    for target in report.config["targets"]:  # type: ignore[attr-defined]
        ratio = report.ratio(str(target))
        if ratio is not None:
            verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
            lines.append(f"{target}: http/tcp requests/s {ratio:.0%} ({verdict} the {TARGET_RATIO:.0%} target)")
            spreads = {name: report.results[f"{target}/{name}"].spread for name in ("tcp", "http")
                       if f"{target}/{name}" in report.results}
            if any(spreads.values()):
                lines.append(f"{target}: every run's requests/s: "
                             + "; ".join(f"{name} {', '.join(map(str, values))}" for name, values in spreads.items()))
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def run(cfg: HttpConfig) -> HttpReport:
    config = asdict(cfg)
    config["targets"] = list(cfg.targets)
    report = HttpReport(config=config)
    work_dir = Path(tempfile.mkdtemp(prefix="hoody-http-bench-"))
    procs = ProcessSet(work_dir)
    try:
        try:
            wrk = ensure_wrk(cfg.allow_install)
        except BenchError as exc:
            report.notes.append(f"wrk unavailable: {exc}")
            for target in cfg.targets:
                for name in PATHS:
                    report.results[f"{target}/{name}"] = WrkResult(name, target, error=f"wrk unavailable: {exc}")
            return report
        done = subprocess.run([wrk, "--version"], capture_output=True, timeout=10, check=False)
        report.wrk = (done.stdout + done.stderr).decode("utf-8", "replace").split("\n")[0].strip()[:60]
        credentials = KitCredentials.generate()
        server, kit_port = start_kit_server(procs, work_dir, credentials, cfg.start_timeout_s)
        for target in cfg.targets:
            target_port = start_http_target(procs, cfg, target)
            log(f"measuring {target} direct (port {target_port})")
            report.results[f"{target}/direct"] = _measured(run_wrk(wrk, "direct", target_port, cfg), target)
            client, http_port, tcp_port = start_client(procs, kit_port, credentials.token, target_port, work_dir,
                                                       cfg.start_timeout_s, target)
            # tcp and http alternate, so a slow spell of the (shared) machine hits both alike;
            # each path's median run (by requests/s) is the one reported.
            runs: dict[str, list[WrkResult]] = {"tcp": [], "http": []}
            for attempt in range(cfg.repeat):
                for name, port in (("tcp", tcp_port), ("http", http_port)):
                    key = f"{target}/{name}"
                    if key in report.results:
                        continue  # failed before: not again
                    try:
                        probe_http(port, cfg.start_timeout_s)
                    except BenchError as exc:
                        report.results[key] = WrkResult(name, target, error=str(exc))
                        continue
                    log(f"measuring {target} {name} (port {port}), run {attempt + 1} of {cfg.repeat}")
                    kit_pids = [child.pid for child in psutil.Process(server.popen.pid).children()]
                    runs[name].append(_measured(
                        run_wrk(wrk, name, port, cfg, kit_pids=kit_pids, client_pids=[client.popen.pid]), target))
            for name, results in runs.items():
                if results and f"{target}/{name}" not in report.results:
                    report.results[f"{target}/{name}"] = median_run(results)
            if any(r.error for r in report.results.values()):
                report.notes.append(f"kit stderr tail:\n{tail(server.stderr_path, 1500)}")
                report.notes.append(f"client output tail:\n{tail(client.stdout_path, 800)}")
            procs.stop(client)
    except BenchError as exc:
        report.notes.append(f"aborted: {exc}")
    finally:
        procs.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    return report


def median_run(results: list[WrkResult]) -> WrkResult:
    """The run with the median requests/s (a failed run wins: errors are never hidden), with
    the spread of all runs in ``spread``."""
    failed = [result for result in results if result.error]
    if failed:
        return failed[0]
    ordered = sorted(results, key=lambda result: result.requests_per_s or 0.0)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.spread = [round(result.requests_per_s or 0.0) for result in ordered]
    return chosen


def _measured(result: WrkResult, target: str) -> WrkResult:
    result.target = target
    return result


def main() -> int:
    try:
        cfg = HttpConfig.from_env(os.environ)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report = run(cfg)
    print(format_report(report), flush=True)
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps(
            {"config": report.config, "wrk": report.wrk,
             "ratios": {target: report.ratio(target) for target in cfg.targets},
             "results": {k: asdict(v) for k, v in report.results.items()}, "notes": report.notes}, indent=2))
    log(f"http bench done in {time.monotonic() - started:.0f} s")
    failed = len(report.results) < len(PATHS) * len(cfg.targets) or any(r.error for r in report.results.values())
    return 1 if failed else 0


# -- the target server (a subprocess) ---------------------------------------------------------------


def serve_target(fd: int, body_size: int, kind: str) -> int:
    """Keep-alive HTTP/1.1: every request (GET, no body) gets 200 with ``body_size`` bytes.

    ``raw``: a minimal responder (one send per response); ``wsgi``: the same answer from a WSGI
    app under gevent's pywsgi."""
    from gevent import socket as gsocket
    from gevent.pywsgi import WSGIServer
    from gevent.server import StreamServer

    body = b"x" * body_size
    response = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body_size}\r\n\r\n").encode() + body

    def handle(conn: gsocket.socket, _address: object) -> None:
        conn.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        buffer = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                count = buffer.count(b"\r\n\r\n")  # GETs without bodies: one head, one response
                if count:
                    buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4:]
                    conn.sendall(response * count)
        except OSError:
            return  # the client went away
        finally:
            conn.close()

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(body_size))])
        return [body]

    class NoDelayWSGIServer(WSGIServer):
        # pywsgi writes a response's head and body in two sends: without TCP_NODELAY, Nagle and
        # the peer's delayed ACK add ~40 ms to every response.
        def handle(self, sock: gsocket.socket, address: str) -> None:
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            super().handle(sock, address)

    listener = gsocket.socket(fileno=fd)
    server = NoDelayWSGIServer(listener, app, log=None) if kind == "wsgi" else StreamServer(listener, handle)
    server.start()
    print("serving", flush=True)
    # Exit when the bench that started us goes away (stdin EOF), even if it was SIGKILLed.
    import gevent

    gevent.get_hub().threadpool.spawn(sys.stdin.read).get()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--target":
        sys.exit(serve_target(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 64,
                              sys.argv[4] if len(sys.argv) > 4 else "raw"))
    sys.exit(main())
