"""The preprocessing record and the one pixels-to-input path (cxr.preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.evaluation.localization import localization_report
from cxr.explain import explain
from cxr.inference import Predictor
from cxr.modelfile import save_model
from cxr.models import ModelSpec, build_model
from cxr.preprocessing import INTENSITY, MAX_SIZE, MIN_SIZE, Preprocessing, to_model_input
from cxr.synth import SynthConfig, generate_phantoms


def test_record_round_trip_and_limits():
    pre = Preprocessing(size=96, fit="crop", mean=(0.5, 0.5, 0.5), std=[0.25] * 3)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.to_dict() == {
        "size": 96,
        "fit": "crop",
        "intensity": INTENSITY,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    assert Preprocessing(size=MIN_SIZE).size == MIN_SIZE
    assert Preprocessing(size=MAX_SIZE).size == MAX_SIZE
    for size in (MIN_SIZE - 1, MAX_SIZE + 1, 50_000, True, 64.0):
        with pytest.raises(ValueError, match="input_size"):
            Preprocessing(size=size)
    with pytest.raises(ValueError, match="unknown field.*gamma"):
        Preprocessing.from_dict({"size": 64, "gamma": 2.2})
    with pytest.raises(ValueError, match="preprocessing must be a mapping"):
        Preprocessing.from_dict([64])  # type: ignore[arg-type]


def test_spec_resolves_normalisation_from_the_backbone():
    spec = ModelSpec(
        labels=("a",),
        backbone="efficientnet-lite0",
        preprocessing=Preprocessing(size=64, fit="crop"),
    )
    assert spec.preprocessing.mean == pytest.approx((127 / 255,) * 3)
    assert (spec.input_size, spec.fit) == (64, "crop")
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_numpy_and_torch_inputs_agree():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    from_numpy = to_model_input(pixels)
    from_torch = to_model_input(torch.from_numpy(pixels), "cpu")
    assert from_numpy.shape == (3, 1, 40, 40) and from_numpy.dtype == np.float32
    assert torch.equal(torch.from_numpy(from_numpy), from_torch)
    assert from_numpy.max() <= 1.0 and from_numpy[0, 0, 0, 0] == pixels[0, 0, 0] / np.float32(255)
    assert to_model_input(torch.from_numpy(pixels), "cpu", channels_last=True).is_contiguous(
        memory_format=torch.channels_last
    )


def test_prediction_explanation_and_localization_feed_identical_input(tmp_path):
    """The three places that turned pixels into model input (prediction, Grad-CAM, the
    localisation report) now give the model the same tensor for the same image."""
    phantoms = tmp_path / "phantoms"
    table = generate_phantoms(
        phantoms, SynthConfig(n_images=6, size=96, seed=3, prevalence=0.9), workers=1
    )
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(
            labels=table.pathologies,
            backbone="cxr-small-cnn",
            preprocessing=Preprocessing(size=48, fit="pad"),
        )
    )
    path = save_model(tmp_path / "m.safetensors", model)
    predictor = Predictor(path, channels_last=False)
    image = next(
        p
        for p, row in zip(table.paths, table.labels, strict=True)
        if row[table.pathologies.index("Mass")] == 1
    )
    pixels = predictor.preprocess(image)
    seen: list[torch.Tensor] = []

    def grab(_module, args):
        seen.append(args[0].detach().float().contiguous().clone())

    handle = predictor.model.register_forward_pre_hook(grab)
    try:
        predictor.predict_arrays(pixels[None])
        explain(predictor.model, pixels, labels=["Mass"])
    finally:
        handle.remove()
    from_predict, from_explain = seen[0], seen[-1]
    assert from_predict.shape == (1, 1, 48, 48)
    assert torch.equal(from_predict, from_explain)

    captured: list[torch.Tensor] = []
    original = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        if self.__class__.__name__ == "ChestClassifier":
            captured.append(args[0].detach().float().contiguous().clone())
        return original(self, *args, **kwargs)

    torch.nn.Module.__call__ = spy  # localization_report loads its own copy of the model
    try:
        localization_report(path, phantoms, labels=["Mass"], batch_size=1)
    finally:
        torch.nn.Module.__call__ = original
    assert any(t.shape == from_predict.shape and torch.equal(t, from_predict) for t in captured)
