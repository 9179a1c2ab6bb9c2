"""Setting up the paths under test: the target, ``ssh -L`` through a throwaway sshd, and the kit
(gunicorn) with one tunnel client carrying both the PULL and the EXPOSE bindings.

Everything listens on 127.0.0.1 only and lives in the bench's temporary directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from bench.load import Endpoint, MeasureError, probe
from bench.procs import (
    BenchError,
    Managed,
    ProcessSet,
    listening_socket,
    tail,
    unused_port,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/api/v1/tunnel/health"

T = TypeVar("T")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the target ---------------------------------------------------------------------------------

def start_target(procs: ProcessSet, timeout_s: float) -> Endpoint:
    """The sink/source/echo server in its own process, on sockets bound here (no port race)."""
    listeners = [listening_socket() for _ in range(3)]
    try:
        ports = [sock.getsockname()[1] for sock in listeners]
        fds = [sock.fileno() for sock in listeners]
        managed = procs.start(
            "target", [sys.executable, "-m", "bench.target", *map(str, fds)],
            cwd=str(REPO_ROOT), pass_fds=fds, read_stdout_lines=True, stdin_pipe=True,
            stop_grace_s=3.0)
    finally:
        for sock in listeners:
            sock.close()
    managed.wait_for_line(lambda line: "serving" in line, timeout_s)
    return Endpoint(LOOPBACK, ports[0], ports[1], ports[2])


# --- the gevent relay chain ----------------------------------------------------------------------

def start_relay(procs: ProcessSet, name: str, next_ports: Sequence[int],
                timeout_s: float) -> tuple[Managed, list[int]]:
    """One ``bench.relay`` process relaying a listener of its own to each of ``next_ports``
    (on 127.0.0.1); returns it and its listening ports, in the same order."""
    listeners = [listening_socket() for _ in next_ports]
    try:
        ports = [sock.getsockname()[1] for sock in listeners]
        specs = [f"{sock.fileno()}:{LOOPBACK}:{port}" for sock, port in zip(listeners, next_ports)]
        managed = procs.start(
            name, [sys.executable, "-m", "bench.relay", *specs], cwd=str(REPO_ROOT),
            pass_fds=[sock.fileno() for sock in listeners], read_stdout_lines=True, stdin_pipe=True,
            stop_grace_s=3.0)
    finally:
        for sock in listeners:
            sock.close()
    managed.wait_for_line(lambda line: "serving" in line, timeout_s)
    return managed, ports


def start_chain(procs: ProcessSet, target_ports: Sequence[int], timeout_s: float,
                name: str = "relay") -> tuple[list[int], list[Managed]]:
    """client -> relay A -> relay B -> ``target_ports``: two plain gevent relay processes.

    Returns the ports the client dials (relay A's, in the order of ``target_ports``) and the
    processes [relay A, relay B] (A beside the client, as the tunnel client is for PULL; B beside
    the target, as the kit is)."""
    relay_b, b_ports = start_relay(procs, f"{name}-b", target_ports, timeout_s)
    relay_a, a_ports = start_relay(procs, f"{name}-a", b_ports, timeout_s)
    return a_ports, [relay_a, relay_b]


# --- ssh -L -------------------------------------------------------------------------------------

class Unavailable(Exception):
    """A path cannot be set up on this machine (e.g. no OpenSSH); the row says why."""


@dataclass(frozen=True)
class OpenSsh:
    sshd: str
    ssh: str
    keygen: str
    version: str


def _find_openssh() -> OpenSsh | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
    ssh = shutil.which("ssh")
    keygen = shutil.which("ssh-keygen")
    if not (sshd and ssh and keygen):
        return None
    try:
        out = subprocess.run([ssh, "-V"], capture_output=True, timeout=10, check=False)
        version = (out.stderr or out.stdout).decode("utf-8", "replace").strip()
    except (OSError, subprocess.TimeoutExpired):
        version = "unknown"
    return OpenSsh(os.path.abspath(sshd), ssh, keygen, version)


def ensure_openssh(allow_install: bool, timeout_s: float) -> OpenSsh:
    """sshd, ssh and ssh-keygen; installs openssh-server/-client with apt-get when missing,
    allowed and running as root. Raises Unavailable with the reason otherwise."""
    return ensure_installed("OpenSSH server", ("openssh-server", "openssh-client"), _find_openssh,
                            allow_install, timeout_s)


def ensure_installed(what: str, packages: Sequence[str], find: Callable[[], T | None],
                     allow_install: bool, timeout_s: float) -> T:
    """``find()``, after ``apt-get install -y --no-install-recommends PACKAGES`` when it finds
    nothing, installing is allowed (no BENCH_NO_INSTALL) and we are root with apt-get (a failed
    install is retried once after ``apt-get update``). Raises Unavailable with the reason."""
    found = find()
    if found is not None:
        return found
    if not allow_install:
        raise Unavailable(f"{what} not installed (BENCH_NO_INSTALL set)")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"{what} not installed, and cannot install it (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Wait for another apt/dpkg run (the machine is shared) instead of failing at once.
    argv = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends",
            *packages]
    output = ""
    for attempt in range(2):
        log(f"{what} not found: apt-get install -y {' '.join(packages)}"
            + (" (after apt-get update)" if attempt else ""))
        try:
            done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"apt-get install {' '.join(packages)} did not finish in "
                              f"{timeout_s:.0f} s") from None
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        if done.returncode == 0:
            break
        if attempt == 0:  # stale package lists are the usual cause
            try:
                subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "update"], env=env,
                               capture_output=True, timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                break
    found = find()
    if found is None:
        raise Unavailable(f"apt-get install {' '.join(packages)} failed:\n{output[-2000:]}")
    return found


SSHD_CONFIG = """\
# Throwaway sshd for the bench: loopback only, one generated key, no PAM.
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
PrintMotd no
UseDNS no
LogLevel ERROR
"""


def _keygen(openssh: OpenSsh, path: Path) -> None:
    done = subprocess.run([openssh.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "hoody-bench",
                           "-f", str(path)], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise BenchError(f"ssh-keygen failed: {done.stderr.decode('utf-8', 'replace')}")


def _sshd_answers(port: int) -> bool:
    """sshd sends its identification line; ours goes back so it logs no aborted handshake."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            banner = sock.recv(256)
            sock.sendall(b"SSH-2.0-hoody-bench-probe\r\n")
            return banner.startswith(b"SSH-")
    except OSError:
        return False


def _probe_ok(ep: Endpoint) -> bool:
    try:
        probe(ep, 2.0)
        return True
    except MeasureError:
        return False


@dataclass(frozen=True)
class SshServer:
    """A running throwaway sshd and what a client needs to log in to it."""

    managed: Managed
    port: int
    ssh_dir: Path
    user: str


def start_sshd(procs: ProcessSet, openssh: OpenSsh, work_dir: Path, timeout_s: float,
               name: str = "sshd") -> SshServer:
    """sshd on a free loopback port, with a host key and a client key made for it."""
    ssh_dir = work_dir / name
    ssh_dir.mkdir(mode=0o700)
    _keygen(openssh, ssh_dir / "host_ed25519")
    _keygen(openssh, ssh_dir / "client_ed25519")
    shutil.copyfile(ssh_dir / "client_ed25519.pub", ssh_dir / "authorized_keys")
    if os.geteuid() == 0:
        # sshd refuses to start without its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    user = pwd.getpwuid(os.geteuid()).pw_name

    last_error = ""
    for _attempt in range(3):  # the port was only free a moment ago: retry on a clash
        port = unused_port()
        config = ssh_dir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, dir=ssh_dir))
        done = subprocess.run([openssh.sshd, "-t", "-f", str(config)], capture_output=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            raise BenchError(f"sshd -t rejected the config: {done.stderr.decode('utf-8', 'replace')}")
        candidate = procs.start(name, [openssh.sshd, "-D", "-e", "-f", str(config)], stop_grace_s=3.0)
        try:
            wait_until(lambda: _sshd_answers(port), timeout_s, "sshd to answer", alive=candidate)
            return SshServer(candidate, port, ssh_dir, user)
        except BenchError as exc:
            last_error = str(exc)
            procs.stop(candidate)
    raise BenchError(f"sshd did not start:\n{last_error}")


def start_ssh_tunnel(procs: ProcessSet, openssh: OpenSsh, server: SshServer,
                     target_ports: Sequence[int], ready: Callable[[list[int]], bool],
                     timeout_s: float, name: str = "ssh") -> tuple[list[int], Managed]:
    """``ssh -N -L`` through ``server``: a local loopback port for each of ``target_ports``
    (in the same order); returns once ``ready(local_ports)`` is true."""
    last_error = ""
    for _attempt in range(3):
        local = [unused_port() for _ in target_ports]
        forwards: list[str] = []
        for lport, tport in zip(local, target_ports):
            forwards += ["-L", f"{LOOPBACK}:{lport}:{LOOPBACK}:{tport}"]
        argv = [openssh.ssh, "-N", "-F", "/dev/null", *forwards,
                "-i", str(server.ssh_dir / "client_ed25519"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
                "-p", str(server.port), f"{server.user}@{LOOPBACK}"]
        client = procs.start(name, argv, stop_grace_s=3.0)
        try:
            wait_until(lambda: ready(local), timeout_s, f"a first exchange through {name} -L",
                       alive=client)
            return local, client
        except BenchError as exc:
            last_error = f"{exc}\n{server.managed.describe_output()}"
            procs.stop(client)
    raise BenchError(f"ssh -L did not come up:\n{last_error}")


def start_ssh_forward(procs: ProcessSet, openssh: OpenSsh, target: Endpoint, work_dir: Path,
                      timeout_s: float) -> tuple[Endpoint, list[Managed]]:
    """sshd on a free loopback port plus ``ssh -N -L`` for the three target ports."""
    server = start_sshd(procs, openssh, work_dir, timeout_s)
    local, client = start_ssh_tunnel(
        procs, openssh, server, (target.sink_port, target.source_port, target.echo_port),
        lambda ports: _probe_ok(Endpoint(LOOPBACK, *ports)), timeout_s)
    return Endpoint(LOOPBACK, *local), [server.managed, client]


# --- the kit ------------------------------------------------------------------------------------

def gone(processes: list[Managed]) -> str | None:
    """Why a path's processes are no longer all running (None while they are)."""
    for managed in processes:
        if not managed.alive():
            lines = [line for line in tail(managed.stderr_path, 1500).splitlines() if line.strip()]
            last = f"last stderr line: {lines[-1].strip()}" if lines else "stderr empty"
            return f"{managed.name} exited with status {managed.popen.returncode} ({last})"
    return None


@dataclass(frozen=True)
class KitCredentials:
    token: str
    admin_token: str

    @classmethod
    def generate(cls) -> KitCredentials:
        return cls("bench-" + os.urandom(12).hex(), "bench-admin-" + os.urandom(12).hex())


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def start_kit_server(procs: ProcessSet, work_dir: Path, credentials: KitCredentials,
                     timeout_s: float) -> tuple[Managed, int]:
    """gunicorn with the repo's gunicorn.conf.py on a socket bound here (``--bind fd://N``);
    returns once the health endpoint answers 200."""
    gunicorn = REPO_ROOT / ".venv" / "bin" / "gunicorn"
    if not gunicorn.exists():
        gunicorn = Path(sys.executable).parent / "gunicorn"
    state_dir = work_dir / "kit-state"
    state_dir.mkdir(mode=0o700, exist_ok=True)
    listener = listening_socket()
    port: int = listener.getsockname()[1]
    env = dict(os.environ)
    env.update({
        "PORT": str(port),
        "HOODY_TUNNEL_TOKENS": credentials.token,
        "HOODY_TUNNEL_ADMIN_TOKEN": credentials.admin_token,
        "HOODY_TUNNEL_STATE_DIR": str(state_dir),
        "HOODY_TUNNEL_EXPOSE_HOST": LOOPBACK,
    })
    # A short drain so stopping the kit at the end does not wait the production default.
    env.setdefault("HOODY_TUNNEL_GRACEFUL_TIMEOUT_S", "3")
    # The 200-connection echo holds 200 streams open at once in one session; with the default
    # maxStreams (100) the other 100 rightly wait for a slot that the bench never frees.
    env.setdefault("HOODY_TUNNEL_MAX_STREAMS", "256")
    try:
        server = procs.start(
            "kit", [str(gunicorn), "-c", "gunicorn.conf.py", "--bind", f"fd://{listener.fileno()}",
                    "tunnel.wsgi:app"],
            env=env, cwd=str(REPO_ROOT), pass_fds=[listener.fileno()], stop_grace_s=10.0)
    finally:
        listener.close()
    url = f"http://{LOOPBACK}:{port}{HEALTH_PATH}"
    wait_until(lambda: _health_ok(url), timeout_s, f"GET {HEALTH_PATH} to answer 200", alive=server,
               interval_s=0.1)
    return server, port


def start_kit_client(procs: ProcessSet, kit_port: int, token: str, kind: str, target: Endpoint,
                     work_dir: Path, timeout_s: float) -> tuple[Managed, Endpoint]:
    """``tunnel.client connect`` with three bindings of one ``kind`` ("pull" or "expose"), one per
    target mode; returns once it prints its "ready" line.

    One client per kind, so a failure that ends the PULL session cannot take EXPOSE with it.
    """
    client, ports = start_kit_client_ports(
        procs, kit_port, token, kind, (target.sink_port, target.source_port, target.echo_port),
        work_dir, timeout_s)
    return client, Endpoint(LOOPBACK, *ports)


def start_kit_client_ports(procs: ProcessSet, kit_port: int, token: str, kind: str,
                           target_ports: Sequence[int], work_dir: Path, timeout_s: float,
                           name: str | None = None) -> tuple[Managed, list[int]]:
    """``tunnel.client connect`` with a binding of ``kind`` ("pull" or "expose") for each of
    ``target_ports``; returns it, once it printed "ready", and the port that reaches each target
    (in the same order). Each client has a state directory of its own."""
    name = name or f"client-{kind}"
    last_error = ""
    for _attempt in range(2):  # PULL and EXPOSE take port numbers: retry on a clash
        ports = [unused_port() for _ in target_ports]
        specs: list[str] = []
        for port, target_port in zip(ports, target_ports):
            # --pull LOCAL_PORT:CONTAINER_PORT ; --expose CONTAINER_PORT:LOCAL_PORT
            specs += [f"--{kind}", f"{port}:{target_port}"]
        env = dict(os.environ)
        env["HOODY_TUNNEL_STATE_DIR"] = str(work_dir / f"{name}-state")
        client = procs.start(
            name,
            [sys.executable, "-m", "tunnel.client", "connect", f"ws://{LOOPBACK}:{kit_port}",
             "--token", token, *specs],
            env=env, cwd=str(REPO_ROOT), read_stdout_lines=True, stop_signal=signal.SIGINT,
            stop_grace_s=8.0)
        try:
            client.wait_for_line(lambda line: "ready" in line.lower(), timeout_s)
        except BenchError as exc:
            last_error = str(exc)
            procs.stop(client)
            continue
        return client, ports
    raise BenchError(f"tunnel client ({kind}) did not become ready:\n{last_error}")
