"""Every error a user can cause derives from :class:`cxr.errors.CxrError`, caught once.

The first test walks every module of ``src/cxr`` and inspects each exception class defined
there, so that a new error class that forgets the base fails here instead of reaching a user
as a traceback (the way ``PretrainedWeightsError`` once did from ``cxr train --pretrained``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch

import cxr
from cxr.cli import main
from cxr.errors import CxrError

#: Exceptions that are not user errors, each with the reason. Keep this list short: an
#: exception a user's file, flag or data can raise belongs under CxrError instead.
INTERNAL = {
    # KeyboardInterrupt carrying the "run the same command to continue" message of an
    # interrupted training run: control flow for Ctrl-C, reported by the CLI's own handler.
    "cxr.training.loop.TrainingInterrupted",
    # the service's micro-batcher: a full queue (server load, answered 503 with Retry-After)
    # and a stopped batcher (shutting down); both turned into HTTP answers by the service.
    "cxr.serving.batching.QueueFull",
    "cxr.serving.batching.BatcherStopped",
}


def _modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(cxr.__path__, "cxr.")
        if info.name.rsplit(".", 1)[-1] != "__main__"  # running it would start the CLI
    ]


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError as err:  # an optional extra (onnx, mlflow, ...) not installed
            if getattr(err, "name", None) and str(err.name).split(".")[0] != "cxr":
                continue
            raise
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not issubclass(value, Warning)  # warnings are not errors
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_every_error_class_derives_from_cxr_error():
    classes = _exception_classes()
    assert "cxr.models.pretrained.PretrainedWeightsError" in classes  # the walk found them
    stray = sorted(
        name
        for name, cls in classes.items()
        if name not in INTERNAL and not issubclass(cls, CxrError)
    )
    assert not stray, f"user errors must derive from cxr.errors.CxrError: {stray}"
    stale = sorted(INTERNAL - set(classes))
    assert not stale, f"allow-listed classes that no longer exist (remove them): {stale}"


def test_errors_keep_their_builtin_bases():
    """``except ValueError`` code written before the base class keeps working."""
    from cxr.datasets import DatasetError
    from cxr.models.pretrained import PretrainedWeightsError, WeightsNotFoundError

    assert issubclass(DatasetError, ValueError)
    assert issubclass(PretrainedWeightsError, RuntimeError)
    assert issubclass(WeightsNotFoundError, FileNotFoundError)


class NotATensor:
    pass


def test_train_with_a_pickled_pretrained_file_is_one_line(
    phantom_caches_small, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("CXR_DEBUG", raising=False)
    weights = tmp_path / "pickle.pth"
    torch.save({"conv.weight": NotATensor()}, weights)
    code = main(
        [
            "train",
            str(phantom_caches_small["train"]),
            str(phantom_caches_small["val"]),
            "--out",
            str(tmp_path / "run"),
            "--backbone",
            "cxr-small-cnn",
            "--pretrained",
            str(weights),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("cxr train: error: ") and "could not read" in lines[-1], err
    assert str(weights) in lines[-1]


class _Fixed:
    """A parser that returns the given namespace (to inject a failing command)."""

    def __init__(self, args):
        self.args = args

    def parse_args(self, argv):
        return self.args


@pytest.mark.parametrize("error", [CxrError, ValueError, OSError, FileNotFoundError])
def test_the_cli_reports_user_errors_as_one_line(error, monkeypatch, capsys):
    import cxr.cli as cli

    monkeypatch.delenv("CXR_DEBUG", raising=False)
    args = cli.build_parser().parse_args(["data", "inspect", "somewhere"])

    def fail(_args):
        raise error("a bad input")

    args.func = fail
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args))
    assert main(["data", "inspect", "somewhere"]) == 2
    assert capsys.readouterr().err.strip() == "cxr data: error: a bad input"


def test_a_bug_is_not_hidden(monkeypatch):
    import cxr.cli as cli

    args = cli.build_parser().parse_args(["data", "inspect", "somewhere"])

    def fail(_args):
        raise TypeError("a bug in cxr")

    args.func = fail
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args))
    with pytest.raises(TypeError):
        main(["data", "inspect", "somewhere"])
