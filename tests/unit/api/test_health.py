from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tunnel.api.health import HealthReport, MemoryUsage, local_ip
from tunnel.api.schemas import HealthSchema
from tunnel.app import create_app
from tunnel.config import Settings

HEALTH = "/api/v1/tunnel/health"
FIELDS = {"status", "service", "built", "started", "memory", "fds", "pid", "ip", "userAgent"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(tokens=("client-token",), admin_token="admin-token", state_dir=str(tmp_path))


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_health_reports_every_field_with_the_reference_types(client: FlaskClient) -> None:
    response = client.get(HEALTH, headers={"User-Agent": "hoody-cli/1.0.0"})

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == FIELDS
    assert body["status"] == "ok"
    assert body["service"] == "hoody-tunnel"
    assert body["built"] is None
    assert body["pid"] == os.getpid()
    assert body["userAgent"] == "hoody-cli/1.0.0"
    assert isinstance(body["ip"], str) and body["ip"]
    assert isinstance(body["fds"], int) and body["fds"] > 0
    assert set(body["memory"]) == {"heap", "rss"}
    assert isinstance(body["memory"]["rss"], int) and body["memory"]["rss"] > 0
    assert isinstance(body["memory"]["heap"], int) and body["memory"]["heap"] > 0


def test_started_is_the_process_start_in_iso_8601_utc(client: FlaskClient) -> None:
    started = client.get(HEALTH).get_json()["started"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", started)
    parsed = datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    create_time = psutil.Process().create_time()
    assert abs(parsed.timestamp() - create_time) < 1.0


def test_memory_and_fds_are_this_process(client: FlaskClient) -> None:
    body = client.get(HEALTH).get_json()
    info = psutil.Process().memory_info()
    # Same process, moments apart: the same order of magnitude.
    assert info.rss / 4 < body["memory"]["rss"] < info.rss * 4
    assert info.data / 4 < body["memory"]["heap"] < info.data * 4
    opened = [socket.socket() for _ in range(5)]
    try:
        more = client.get(HEALTH).get_json()["fds"]
    finally:
        for sock in opened:
            sock.close()
    assert more >= body["fds"] + 5


def test_built_comes_from_settings(settings: Settings) -> None:
    app = create_app(settings.replace(built="2024-01-15T10:30:00Z"))
    assert app.test_client().get(HEALTH).get_json()["built"] == "2024-01-15T10:30:00Z"


def test_status_is_draining_while_the_kit_shuts_down(app: Flask, client: FlaskClient) -> None:
    app.extensions["tunnel"].draining = True
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert response.get_json()["status"] == "draining"


def test_user_agent_is_empty_when_absent(app: Flask) -> None:
    environ = EnvironBuilder(path=HEALTH).get_environ()
    environ.pop("HTTP_USER_AGENT", None)
    app_iter, status, _headers = run_wsgi_app(app, environ, buffered=True)
    assert status.startswith("200")
    assert json.loads(b"".join(app_iter))["userAgent"] == ""


def test_health_needs_no_token(client: FlaskClient) -> None:
    assert client.get(HEALTH).status_code == 200


def test_other_methods_are_405_json(client: FlaskClient) -> None:
    response = client.post(HEALTH)
    assert response.status_code == 405
    assert response.get_json() == {"error": "Method Not Allowed"}
    assert "GET" in response.headers["Allow"]


def test_unknown_paths_are_404_json(client: FlaskClient) -> None:
    response = client.get("/api/v1/tunnel/nope")
    assert response.status_code == 404
    assert response.get_json() == {"error": "Not Found"}


# ---------------------------------------------------------------------------------------------
# ip: the local address of the connection, not SERVER_NAME


@pytest.fixture
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def test_ip_is_the_local_address_of_the_request_socket(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, _ = loopback_pair
    environ = {"gunicorn.sock": server_side, "SERVER_NAME": "example.invalid"}
    assert local_ip(environ) == "127.0.0.1"


def test_health_view_reads_the_socket_from_the_environ(
    client: FlaskClient, loopback_pair: tuple[socket.socket, socket.socket]
) -> None:
    server_side, _ = loopback_pair
    body = client.get(
        HEALTH, environ_overrides={"gunicorn.sock": server_side, "SERVER_NAME": "example.invalid"}
    ).get_json()
    assert body["ip"] == "127.0.0.1"


def test_ip_falls_back_to_server_name_without_a_socket() -> None:
    assert local_ip({"SERVER_NAME": "10.0.0.1"}) == "10.0.0.1"
    assert local_ip({"gunicorn.sock": object(), "SERVER_NAME": "10.0.0.1"}) == "10.0.0.1"
    assert local_ip({}) == ""


def test_ip_unmaps_ipv4_mapped_ipv6() -> None:
    class MappedSocket:
        def getsockname(self) -> tuple[str, int, int, int]:
            return ("::ffff:10.1.2.3", 8080, 0, 0)

    assert local_ip({"gunicorn.sock": MappedSocket()}) == "10.1.2.3"


def test_a_closed_socket_falls_back() -> None:
    sock = socket.socket()
    sock.close()
    assert local_ip({"gunicorn.sock": sock, "SERVER_NAME": "fallback"}) == "fallback"


# ---------------------------------------------------------------------------------------------
# the schema itself


def test_health_schema_uses_the_reference_field_names() -> None:
    report = HealthReport(
        status="ok",
        service="hoody-tunnel",
        built=None,
        started="2024-01-15T12:00:00Z",
        memory=MemoryUsage(heap=15728640, rss=41943040),
        fds=None,
        pid=12345,
        ip="10.0.0.1",
        user_agent="",
    )
    assert HealthSchema().dump(report) == {
        "status": "ok",
        "service": "hoody-tunnel",
        "built": None,
        "started": "2024-01-15T12:00:00Z",
        "memory": {"heap": 15728640, "rss": 41943040},
        "fds": None,
        "pid": 12345,
        "ip": "10.0.0.1",
        "userAgent": "",
    }
    assert set(HealthSchema().fields) == {f.replace("userAgent", "user_agent") for f in FIELDS}
