"""The ``cxr serve`` command (cxr.cli.serve): options, refusals, the loopback warning, and
a real server started as a user starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from cxr.cli import build_parser  # noqa: E402
from cxr.cli import main as cxr_main  # noqa: E402
from cxr.cli.serve import is_loopback  # noqa: E402
from cxr.serving import API_KEY_ENV  # noqa: E402
from test_serving_api import gray_image, png_bytes, write_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("cli_model") / "model.safetensors")


@pytest.fixture
def fake_uvicorn(monkeypatch):
    """uvicorn.run recorded instead of run: {"app": ..., "host": ..., ...}."""
    import uvicorn

    calls: list[dict] = []

    def run(app, **kwargs):
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr(uvicorn, "run", run)
    return calls


def test_defaults_bind_to_loopback():
    args = build_parser().parse_args(["serve", "m.safetensors"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.backend == "auto"
    assert args.max_request_mb == 20 and args.api_key is None and args.cors_origin == []


def test_is_loopback():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "cxr.example.org"):
        assert not is_loopback(host), host


def test_serve_runs_uvicorn_with_the_app(model_file, fake_uvicorn, monkeypatch, capsys):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    code = cxr_main(
        ["serve", str(model_file), "--port", "8123", "--max-batch-size", "4", "--queue-size", "9"]
        + ["--cors-origin", "https://a.example", "--max-request-mb", "2"]
    )
    assert code == 0
    (call,) = fake_uvicorn
    assert call["host"] == "127.0.0.1" and call["port"] == 8123
    settings = call["app"].state.service.settings
    assert settings.max_batch_size == 4 and settings.max_queue == 9
    assert settings.max_request_bytes == 2 * 2**20
    assert settings.cors_origins == ("https://a.example",) and settings.api_key is None
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123/" in err and "Research use only" in err
    assert "warning" not in err


def test_binding_elsewhere_without_a_key_warns(model_file, fake_uvicorn, monkeypatch, capsys):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert cxr_main(["serve", str(model_file), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "cxr serve: warning: listening on 0.0.0.0 without an API key" in err
    monkeypatch.setenv(API_KEY_ENV, "from-the-environment")
    assert cxr_main(["serve", str(model_file), "--host", "0.0.0.0"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert fake_uvicorn[-1]["app"].state.service.settings.api_key == "from-the-environment"
    assert cxr_main(["serve", str(model_file), "--host", "::", "--api-key", "k"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert fake_uvicorn[-1]["app"].state.service.settings.api_key == "k"


def test_bad_usage_is_one_line_and_exit_2(model_file, fake_uvicorn, tmp_path, capsys):
    cases = {
        ("--backend", "tensorrt"): "--backend 'tensorrt' is not available in this cxr; it has",
        ("--port", "70000"): "--port must be from 0 to 65535",
        ("--queue-size", "0"): "max_queue must be an integer >= 1",
        ("--max-request-mb", "0"): "--max-request-mb must be > 0",
    }
    for extra, message in cases.items():
        assert cxr_main(["serve", str(model_file), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert cxr_main(["serve", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not fake_uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cxr_serve_as_a_user_runs_it(model_file):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop(API_KEY_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr", "serve", str(model_file), "--port", str(port)]
        + ["--no-access-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "cxr serve did not become ready"
            time.sleep(0.2)
        r = httpx.post(
            url + "/v1/predict",
            files=[("files", ("scan.png", png_bytes(gray_image())))],
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["images"][0]["path"] == "scan.png"
        assert "server" not in r.headers  # no software banner
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in err
    assert "scan.png" not in err  # file names are never logged
