"""The gate's stored form (cxr.gate): a numpy-only record below the fitting code (cxr.ood)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cxr import gate, ood
from cxr.gate import OOD_METHOD, OOD_PERCENTILE, OodGate


def _gate(channels: int = 6, k: int = 3, seed: int = 0) -> OodGate:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(channels, channels)))
    return OodGate(
        mean=rng.normal(size=channels),
        components=q[:k],
        variances=np.linspace(2.0, 0.5, k),
        residual_variance=0.1,
        threshold=1.5,
        n_train=40,
        n_val=10,
    )


def test_the_fitting_module_re_exports_the_record():
    assert ood.OodGate is OodGate and ood.OOD_METHOD == OOD_METHOD
    assert ood.OOD_PERCENTILE == OOD_PERCENTILE == 99.0
    fitted = ood.fit_ood_gate(np.random.default_rng(1).normal(size=(30, 4)), np.ones((5, 4)))
    assert isinstance(fitted, OodGate)


def test_the_stored_form_round_trips_through_json():
    g = _gate()
    stored = json.loads(json.dumps(g.to_dict()))
    assert stored["method"] == OOD_METHOD and stored["channels"] == 6
    back = OodGate.from_dict(stored)
    x = np.random.default_rng(2).normal(size=(5, 6))
    np.testing.assert_allclose(back.score(x), g.score(x), rtol=1e-5)  # float32 arrays
    assert (back.threshold, back.percentile, back.n_train, back.n_val) == (1.5, 99.0, 40, 10)
    assert "3 of 6 feature axes from 40 training images" in back.describe()


def test_scores_and_flags():
    g = _gate()
    assert g.score(g.mean)[0] == pytest.approx(0.0)
    far = g.mean + 100 * g.components[0]
    bad = np.full(6, np.nan)
    scores = g.score(np.stack([g.mean, far, bad]))
    assert scores[1] > g.threshold and np.isinf(scores[2])
    assert g.flags(scores).tolist() == [False, True, True]
    assert g.flags(np.array([np.nan])).tolist() == [True]  # NaN counts as flagged
    with pytest.raises(ValueError, match="fitted for another model"):
        g.score(np.zeros((2, 5)))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "knn"}, "ood method must be 'pca-mahalanobis'"),
        ({"mean": "nonsense"}, r"ood\.mean must be an object"),
        ({"threshold": -1}, r"ood\.threshold must be finite and > 0"),
        ({"n_train": True}, "n_train and n_val must be counts"),
        ({"channels": 7}, "ood channels 7 != its mean's 6"),
    ],
)
def test_a_damaged_stored_form_is_refused_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        OodGate.from_dict({**_gate().to_dict(), **change})


def test_the_record_imports_neither_torch_nor_the_fitting_code():
    code = (
        "import sys, cxr.gate; "
        "print(sorted(m for m in ('torch', 'cxr.ood', 'cxr.inference') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert gate.__all__ == ["OOD_METHOD", "OOD_PERCENTILE", "OodGate"]
