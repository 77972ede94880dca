"""`cxr serve` under load (issue 13): throughput and latency of the REST API on loopback
beside the in-process batched `Predictor`, and a soak run for errors and memory.

Usage:
    python bench/serve_load.py [--backbone densenet121] [--size 224] [--seconds 20]
                               [--levels 1,4,16] [--backends torch,onnx] [--soak 2000]
                               [--images 16] [--out results.json]

A model file of the backbone (random weights: the same arithmetic as trained ones; no
ImageNet weights are needed) is saved to a temporary folder, and exported to ONNX when the
onnx backend is asked for. The images are NIH originals (1024x1024 PNG) from
../shared/datasets/nih14-fullres when present, else 1024x1024 phantoms. Per backend:

  in-process, 1 image : `Predictor.predict_images([file])`, one file at a time: decode,
                        resize, one forward pass (p50/p95/p99 over the images, repeated);
  in-process, batched : `Predictor(batch_size=16).predict_images(files)`: images/s;
  served, N clients   : `cxr serve MODEL` in its own process; N client threads (another
                        process) POST one image per request to /v1/predict over keep-alive
                        connections for --seconds after a warm-up: requests/s and
                        p50/p95/p99 latency, errors;
  soak (first backend): 16 clients for --seconds, then --soak requests in all; errors and
                        the server's resident memory (VmRSS) after warm-up and at the end.

Everything runs on this machine: server and clients share its cores, as they would on a
workstation. Prints Markdown tables for BENCHMARKS.md (and JSON with --out).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import cpu_model, percentiles_ms  # bench/ is on sys.path as a script

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "datasets" / "nih14-fullres" / "images"
BOUNDARY = "cxr-bench-boundary-7d1f"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def make_images(root: Path, n: int) -> list[Path]:
    from PIL import Image

    if NIH.is_dir():
        found = sorted(NIH.glob("*.png"))[:n]
        if found:
            return found
    from cxr.synth import render_phantom

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image, _ = render_phantom(rng, 1024, ["Effusion"] if i % 2 else [])
        path = root / f"phantom{i:02d}.png"
        Image.fromarray(image).save(path)
        out.append(path)
    return out


def make_models(root: Path, backbone: str, size: int, backends: list[str]) -> dict[str, Path]:
    import torch

    from cxr import NIH14_LABELS
    from cxr.modelfile import save_model
    from cxr.models import ModelSpec, Preprocessing, build_model

    torch.manual_seed(0)
    spec = ModelSpec(labels=NIH14_LABELS, backbone=backbone, preprocessing=Preprocessing(size=size))
    path = save_model(
        root / f"{backbone}.safetensors", build_model(spec).eval(), training={"bench": True}
    )
    out = {"torch": path}
    if "onnx" in backends:
        from cxr.export import export_onnx

        export_onnx(path, root / f"{backbone}.onnx")
        out["onnx"] = root / f"{backbone}.onnx"
    return out


def in_process(model: Path, backend: str, files: list[Path], repeat: int) -> dict:
    from cxr.inference import Predictor

    predictor = Predictor(model, backend=backend, batch_size=16)
    predictor.predict_images(files[:2])  # warm-up
    single = []
    for _ in range(repeat):
        for f in files:
            t = time.perf_counter()
            predictor.predict_images([f])
            single.append(time.perf_counter() - t)
    # predict_images lists each file once (repeats of a path are dropped), so the batched
    # figure is taken over passes of the distinct files, 16 per batch
    passes = max(1, 64 // len(files))
    t = time.perf_counter()
    for _ in range(passes):
        result = predictor.predict_images(files)
        assert result.all_succeeded and len(result.items) == len(files)
    seconds = time.perf_counter() - t
    return {
        "single_ms": percentiles_ms(single),
        "batched_images_per_s": passes * len(files) / seconds,
        "batched_images": passes * len(files),
    }


class Server:
    def __init__(self, model: Path, backend: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        env.pop("CXR_API_KEY", None)
        cmd = [sys.executable, "-m", "cxr", "serve", str(model), "--backend", backend]
        cmd += ["--port", str(self.port), "--no-access-log", "--log-level", "warning"]
        cmd += ["--max-batch-size", "16", "--queue-size", "256"]
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("cxr serve stopped: " + self.proc.stderr.read())
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cxr serve did not become ready")
            time.sleep(0.5)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(
    port: int,
    bodies: list[bytes],
    clients: int,
    seconds: float | None = None,
    requests: int | None = None,
) -> dict:
    """``clients`` threads POSTing until ``seconds`` pass or ``requests`` are done."""
    lock = threading.Lock()
    latencies: list[float] = []
    codes: dict[int, int] = {}
    issued = [0]
    stop_at = time.perf_counter() + seconds if seconds else None

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        i = k
        while True:
            with lock:
                if requests is not None and issued[0] >= requests:
                    break
                issued[0] += 1
            if stop_at is not None and time.perf_counter() >= stop_at:
                break
            body = bodies[i % len(bodies)]
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            elapsed = time.perf_counter() - t
            with lock:
                codes[status] = codes.get(status, 0) + 1
                if status == 200:
                    latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = codes.get(200, 0)
    return {
        "clients": clients,
        "seconds": wall,
        "requests": sum(codes.values()),
        "errors": sum(n for c, n in codes.items() if c != 200),
        "codes": {str(c): n for c, n in sorted(codes.items())},
        "requests_per_s": ok / wall,
        "latency_ms": percentiles_ms(latencies),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--soak", type=int, default=2000, help="requests of the soak run (0: none)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="in-process passes over the images")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from cxr.inference import BACKENDS

    backends = [b for b in args.backends.split(",") if b]
    missing = [b for b in backends if b not in BACKENDS]
    if missing:
        sys.exit(f"backends {missing} are not available here (this cxr has {list(BACKENDS)})")
    levels = [int(x) for x in args.levels.split(",")]
    results: dict = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_images(root, args.images)
        results["images"] = f"{len(files)} x {'NIH' if NIH.is_dir() else 'phantom'} PNG"
        bodies = [multipart(f.name, f.read_bytes()) for f in files]
        models = make_models(root, args.backbone, args.size, backends)
        for n, backend in enumerate(backends):
            row: dict = {"in_process": in_process(models[backend], backend, files, args.repeat)}
            print(f"{backend} in-process: {json.dumps(row['in_process'])}", file=sys.stderr)
            server = Server(models[backend], backend)
            try:
                load(server.port, bodies, 4, requests=32)  # warm-up
                row["served"] = []
                for clients in levels:
                    r = load(server.port, bodies, clients, seconds=args.seconds)
                    row["served"].append(r)
                    print(f"{backend} {clients} clients: {json.dumps(r)}", file=sys.stderr)
                if n == 0 and args.soak:
                    # warm-up: the 16-client runs above (every batch size met); then 16
                    # clients for --seconds, then --soak requests in quarters, RSS after each
                    rss = [server.rss_mb()]
                    a = load(server.port, bodies, 16, seconds=args.seconds)
                    rss.append(server.rss_mb())
                    parts = []
                    for _ in range(4):
                        parts.append(load(server.port, bodies, 16, requests=args.soak // 4))
                        rss.append(server.rss_mb())
                    b = {
                        "requests": sum(p["requests"] for p in parts),
                        "errors": sum(p["errors"] for p in parts),
                        "seconds": sum(p["seconds"] for p in parts),
                    }
                    b["requests_per_s"] = b["requests"] / b["seconds"]
                    row["soak"] = {"timed": a, "counted": b, "rss_mb": rss}
                    print(f"{backend} soak: {json.dumps(row['soak'])}", file=sys.stderr)
            finally:
                server.stop()
            results["backends"][backend] = row
    results["machine"]["load_after"] = os.getloadavg()
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; load average before "
        f"{m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}. Images: "
        f"{results['images']}.",
        "",
        "| backend | mode | requests/s (images/s) | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, row in results["backends"].items():
        ip = row["in_process"]
        s = ip["single_ms"]
        lines.append(
            f"| {backend} | in-process, 1 image at a time | {1000 / s['p50']:.1f} | "
            f"{s['p50']:.0f} | {s['p95']:.0f} | {s['p99']:.0f} | - |"
        )
        lines.append(
            f"| {backend} | in-process, batches of 16 | {ip['batched_images_per_s']:.1f} | "
            "- | - | - | - |"
        )
        for r in row.get("served", []):
            lat = r["latency_ms"]
            lines.append(
                f"| {backend} | served, {r['clients']} client(s) | {r['requests_per_s']:.1f} | "
                f"{lat['p50']:.0f} | {lat['p95']:.0f} | {lat['p99']:.0f} | {r['errors']} |"
            )
        served = {r["clients"]: r for r in row.get("served", [])}
        if 16 in served:
            ratio = served[16]["requests_per_s"] / ip["batched_images_per_s"]
            lines.append(f"| {backend} | 16 clients / in-process batched | {ratio:.2f} | | | | |")
        if 1 in served:
            gap = served[1]["latency_ms"]["p50"] - s["p50"]
            lines.append(f"| {backend} | p50 at 1 client - in-process p50 | | {gap:+.0f} | | | |")
        if "soak" in row:
            soak = row["soak"]
            rss = " -> ".join(f"{x:.0f}" for x in soak["rss_mb"])
            lines += [
                "",
                f"Soak ({backend}): 16 clients for {soak['timed']['seconds']:.0f} s "
                f"({soak['timed']['requests']} requests, {soak['timed']['errors']} errors), "
                f"then {soak['counted']['requests']} requests "
                f"({soak['counted']['errors']} errors, {soak['counted']['requests_per_s']:.1f}/s);"
                f" server RSS (MB) after the warm-up, the timed run and each quarter: {rss}.",
                "",
            ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
