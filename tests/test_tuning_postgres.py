"""Two ``cxr tune`` workers sharing a study in a real PostgreSQL server.

The server is started for the test in a temporary folder (initdb, pg_ctl) and stopped
after. Without the PostgreSQL binaries the test fails, saying to run ``make postgresql``;
set ``CXR_SKIP_POSTGRES=1`` to skip it instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from cxr.tuning import records
from cxr.tuning.storage import open_storage


def _binary(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or in Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 with an empty database; yields its URL."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CXR_SKIP_POSTGRES") == "1":
            pytest.skip("PostgreSQL not installed (CXR_SKIP_POSTGRES=1)")
        pytest.fail(
            "the PostgreSQL server programs (initdb, pg_ctl) are not installed: run "
            "`make postgresql` (or set CXR_SKIP_POSTGRES=1 to skip this test)"
        )
    # initdb and postgres refuse to run as root: then run them as the postgres user, in a
    # folder it owns (pytest's tmp_path is private to root)
    root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, sockets, port = root / "data", root / "sockets", _free_port()
    run = lambda *cmd: subprocess.run(  # noqa: E731
        [*as_user, *map(str, cmd)], check=True, capture_output=True, text=True, timeout=120
    )
    run("mkdir", sockets)
    started = False
    try:
        run(initdb, "-D", data, "-U", "cxr", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off"
        run(pg_ctl, "-D", data, "-l", root / "server.log", "-w", "-o", options, "start")
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="cxr", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE tune")
        conn.close()
        yield f"postgresql://cxr@127.0.0.1:{port}/tune"
    finally:
        if started:
            run(pg_ctl, "-D", data, "stop", "-m", "fast")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_study_in_postgresql(postgres_url, tmp_path, phantom_caches_300):
    caches = phantom_caches_300
    space = tmp_path / "space.yaml"
    space.write_text("replace: true\nparams:\n  phase2_lr: {low: 1e-3, high: 1e-2, log: true}\n")
    cmd = [
        sys.executable, "-m", "cxr", "tune", str(caches["train"]), str(caches["val"]),
        "--trials", "3", "--out", str(tmp_path / "study"), "--storage", postgres_url,
        "--space", str(space), "--pruner", "none", "--backbone", "cxr-small-cnn",
        "--phase1-epochs", "0", "--phase2-epochs", "1", "--batch-size", "32",
        "--calibration", "none", "--device", "cpu", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    storage, _ = open_storage(postgres_url, tmp_path)  # names the installed driver
    study = optuna.load_study(study_name="cxr", storage=storage)
    counts = records.count(study.trials)
    assert counts.counted == counts.complete == 3, counts
    assert (tmp_path / "study" / "best_config.yaml").is_file()
