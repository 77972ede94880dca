"""``cxr serve`` under load, on a real uvicorn server on loopback: a bounded run of 16
concurrent clients with no errors and flat memory, micro-batches formed, and a full queue
answered 503 with Retry-After (never a crash). The long run is ``bench/serve_load.py``."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from cxr.serving import ServeSettings, create_app  # noqa: E402
from test_serving_api import (  # noqa: E402
    LiveServer,
    gray_image,
    parse_metrics,
    png_bytes,
    write_model,
)


def rss_mb() -> float:
    """Resident memory of this process (the server runs in a thread of it), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("load_model") / "model.safetensors")


def hammer(url: str, images: list[bytes], clients: int, requests: int) -> list[int]:
    """``requests`` predictions from ``clients`` concurrent keep-alive clients: status codes."""
    codes: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                data = images[(i + k) % len(images)]
                r = c.post("/v1/predict", files=[("files", (f"{i}.png", data))])
                if r.status_code == 200:
                    assert r.json()["n_predicted"] == 1
                with lock:
                    codes.append(r.status_code)

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client, k) for k in range(clients)]:
            f.result()
    return codes


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sixteen_clients_no_errors_flat_memory(model_file):
    images = [png_bytes(gray_image(256, 256, seed=s)) for s in range(4)]
    app = create_app(model_file, settings=ServeSettings(max_batch_size=16, max_queue=64))
    with LiveServer(app) as server:
        warm = hammer(server.url, images, clients=16, requests=160)
        before = rss_mb()
        t0 = time.perf_counter()
        codes = hammer(server.url, images, clients=16, requests=400)
        seconds = time.perf_counter() - t0
        after = rss_mb()
        metrics = parse_metrics(httpx.get(server.url + "/metrics").text)
    assert set(warm) == {200} and len(codes) == 400 and set(codes) == {200}, set(codes)
    assert after - before < 40, f"memory grew {after - before:.1f} MB over 400 requests"
    assert metrics["cxr_images_predicted_total"] >= 560
    # concurrent requests shared forward passes: fewer batches than images
    assert metrics["cxr_batch_size_count"] < metrics["cxr_images_predicted_total"]
    assert seconds < 120


def test_a_full_queue_answers_503_with_retry_after(model_file):
    from cxr.inference import Predictor

    predictor = Predictor(model_file)
    run = predictor.predict_arrays

    def slow(images: np.ndarray) -> np.ndarray:
        time.sleep(0.15)
        return run(images)

    predictor.predict_arrays = slow  # type: ignore[method-assign]
    settings = ServeSettings(max_batch_size=1, max_queue=2, max_wait_ms=0, retry_after_s=2)
    image = png_bytes(gray_image())
    with LiveServer(create_app(predictor, settings=settings)) as server:

        def one(_: int) -> httpx.Response:
            return httpx.post(
                server.url + "/v1/predict", files=[("files", ("a.png", image))], timeout=60
            )

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(one, range(12)))
        codes = [r.status_code for r in responses]
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "2"
        assert "busy" in busy.json()["detail"]
        # the service is fine afterwards
        assert one(0).status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200
        metrics = parse_metrics(httpx.get(server.url + "/metrics").text)
        assert metrics["cxr_queue_full_rejections_total"] == codes.count(503)
        assert metrics['cxr_http_errors_total{endpoint="/v1/predict",code="503"}'] == codes.count(
            503
        )
