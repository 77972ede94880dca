"""Device and precision settings (cxr.devices)."""

from __future__ import annotations

import pytest
import torch

from cxr.devices import autocast_dtype, resolve_device, resolve_precision


def test_auto_is_the_cpu_without_a_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_is_named():
    with pytest.raises(RuntimeError, match="'cuda:1' was asked for, but torch sees no CUDA GPU"):
        resolve_device("cuda:1")


def test_bad_names_and_precisions():
    with pytest.raises(ValueError, match="not a torch device name"):
        resolve_device("gpu0")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", torch.device("cpu"))
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
