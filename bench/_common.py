"""What the bench scripts share: the machine they ran on, timing, and writing results.

A script in bench/ imports these by name (``python bench/x.py`` puts bench/ on sys.path)::

    from _common import machine_line, markdown, percentiles_ms, timings, write_json

    seconds = timings(lambda: model(x), repeat=30, warmup=3)     # (30,) seconds per call
    print(machine_line(torch=torch.__version__))                 # what ran it, load average
    print(markdown(["median (ms)"], [[f"{1000 * np.median(seconds):.0f}"]]))
    write_json(Path("result.json"), {"machine": machine(), "ms": percentiles_ms(seconds)})

Nothing here imports torch or cxr until :func:`machine` is called, so a script that times
its own imports (start-up) can use it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "command_times",
    "cpu_model",
    "load_average",
    "machine",
    "machine_line",
    "markdown",
    "median_time",
    "percentiles_ms",
    "timings",
    "write_json",
]


# the machine -------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``lscpu``, else /proc/cpuinfo, else ``platform``), or ``?``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, e.g. ``"0.52 0.40 0.31"`` (a busy machine
    makes every figure slower: report it beside them)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "?"


def machine(device: Any = None) -> dict[str, Any]:
    """What ran the benchmark, for a JSON result: ``machine`` (the GPU's name for a CUDA
    ``device``, else ``CPU (model)``), ``cpu``, ``cpu_cores``, ``load_average`` and the
    versions of Python, torch, CUDA, cxr and MONAI (imports torch and cxr)."""
    import torch

    import cxr

    try:
        import monai
    except ImportError:
        monai = None
    cpu = cpu_model()
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return {
        "machine": torch.cuda.get_device_name(device) if on_gpu else f"CPU ({cpu})",
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "load_average": load_average(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cxr": cxr.__version__,
        "monai": monai.__version__ if monai else "not installed",
        "python": platform.python_version(),
    }


def machine_line(**versions: str) -> str:
    """One line for a printed report: CPU model, cores, load average, Python and the given
    package versions, e.g. ``machine_line(torch=torch.__version__)``."""
    packages = "".join(f", {name} {version}" for name, version in versions.items())
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {load_average()}; "
        f"Python {platform.python_version()}{packages}"
    )


# timing ------------------------------------------------------------------------------------
def timings(fn: Callable[[], object], repeat: int, warmup: int = 3) -> np.ndarray:
    """Seconds of each of ``repeat`` calls of ``fn`` (``time.perf_counter``), after
    ``warmup`` untimed calls (caches, lazy initialisation, autotuning). Returns (repeat,)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)


def command_times(cmd: Sequence[str], repeat: int) -> np.ndarray:
    """Wall seconds of ``repeat`` runs of ``cmd``, each in a fresh process (a cold start:
    interpreter, imports, files read); a failing command raises. Returns (repeat,)."""
    run = lambda: subprocess.run(list(cmd), check=True, capture_output=True)  # noqa: E731
    return timings(run, repeat, warmup=0)


def median_time(fn: Callable[[], object], repeat: int, warmup: int = 0) -> float:
    """The median of :func:`timings`, in seconds."""
    return statistics.median(timings(fn, repeat, warmup).tolist())


def percentiles_ms(seconds: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` in milliseconds (NaN for no times)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if not len(ms):
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(np.percentile(ms, q)) for q in qs}


# reporting ---------------------------------------------------------------------------------
def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (no trailing newline) of ``rows`` of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as indented JSON (its folder made if missing), say so, return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"written {path}")
    return path
