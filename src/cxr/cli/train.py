"""``cxr train``: the command-line face of :mod:`cxr.training`.

Every field of :class:`~cxr.training.TrainConfig` is an option (``--phase2-lr 3e-5``,
``--augment-rotate 5``, ``--channels-last``); ``--config FILE`` reads a saved
``config.yaml`` first and the options given on the command line override it.

``--mlflow`` (or ``$MLFLOW_TRACKING_URI`` set, or ``--mlflow-uri URI``) logs the run to
MLflow (:mod:`cxr.tracking.mlflow`; needs the ``tune`` extra): by default into
``mlflow.db`` in the working folder, experiment ``cxr`` (``--mlflow-experiment``).
``--resume`` continues a tracked run's MLflow run (its ``mlflow.json``) without the flag;
``--no-mlflow`` turns tracking off.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.choices import DEVICE_HELP, POOLS, PRECISIONS
from cxr.cli._common import EXIT_OK, CLIError, parse_list
from cxr.cli.options import (
    add_command,
    add_config,
    add_mlflow_experiment,
    add_progress,
    add_threads,
    add_train_caches,
)
from cxr.training.config import (
    LOSSES,
    NONE_DEFAULT_TYPES,
    OPTIMIZERS,
    SCHEDULES,
    AugmentConfig,
    TrainConfig,
)

if TYPE_CHECKING:
    from cxr.tracking.mlflow import MLflowCallback

_HELP = {
    "recipe": "auto (default): decided by the training set's size (probe on a small set, "
    "finetune on a large one; the plan line says which and why); finetune: train the network "
    "in two phases; probe: fit one L2-penalised logistic "
    "regression per label on the frozen pretrained backbone's pooled features (original and "
    "mirrored image averaged), the penalty chosen by patient-level cross-validation on the "
    "training set: minutes on a CPU, and often better on a few hundred images (needs "
    "--pretrained; the phase, optimiser, loss and augmentation settings do not apply)",
    "folds": "with --recipe probe: K >= 2 writes one model of K members, each fitted on K-1 of "
    "K patient folds, whose probabilities are averaged (cross-fitting); 1: one probe "
    "refitted on the whole training set",
    "backbone": "backbone from the registry: densenet121, densenet169, densenet201, "
    "efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, cxr-small-cnn; auto "
    "(default): decided by the training set's size (the small-data backbone below 10,000 "
    "training images, densenet121 above)",
    "pretrained": "'imagenet' (a local file in the torch hub cache, $CXR_WEIGHTS_DIR, or "
    "downloaded by you), a path to a weights file, or none (random init); auto (default): "
    "imagenet when the backbone's weights are found locally, else none",
    "pool": f"head pooling: {', '.join(POOLS)}",
    "dropout": "dropout before the output layer",
    "hidden": "widths of dense layers before the output layer, comma-separated (e.g. 512,128)",
    "labels": "labels to learn, comma-separated (default: all labels of the training cache)",
    "phase1_epochs": "epochs of phase 1: backbone frozen, head trained (default: sized by the "
    "training set: 2, or more to reach --phase1-min-steps optimiser steps)",
    "phase1_min_steps": "when --phase1-epochs is not given: run phase 1 for at least this many "
    "optimiser steps (more epochs on small training sets; 0 = just the 2 epochs)",
    "phase2_min_steps": "when --phase2-epochs is not given: run phase 2 for at least this many "
    "optimiser steps (more epochs on small training sets; 0 = just the 8 epochs)",
    "phase1_lr": "learning rate of phase 1",
    "phase2_epochs": "epochs of phase 2: everything fine-tuned (default: sized by the "
    "training set: 8, or more to reach --phase2-min-steps optimiser steps)",
    "phase2_lr": "learning rate of the backbone in phase 2",
    "head_lr_factor": "phase-2 learning rate of the head = phase2_lr x this",
    "optimizer": f"one of {', '.join(OPTIMIZERS)}",
    "schedule": f"one of {', '.join(SCHEDULES)} (each with linear warm-up)",
    "warmup_epochs": "warm-up length in epochs at the start of each phase (fractions allowed)",
    "loss": f"one of {', '.join(LOSSES)}; NaN (unknown) labels are masked",
    "batch_size": "images per optimiser micro-step per process",
    "accumulate": "micro-steps per optimiser step (gradient accumulation)",
    "grad_clip": "clip the gradient norm to this (0 = off)",
    "calibration": "probability calibration fitted on validation with the best model: "
    "platt (default), temperature, isotonic (large validation sets) or none",
    "ema_decay": "keep an EMA of the weights with this decay and validate/save it (0 = off)",
    "early_stopping": "stop a phase after this many epochs without a better val AUC (0 = off)",
    "precision": f"one of {', '.join(PRECISIONS)} (mixed precision with autocast)",
    "device": DEVICE_HELP,
    "loader_threads": "batches read ahead from the cache",
    "deterministic": "deterministic kernels, cuDNN's autotuner off: the same seed repeats the "
    "run (on a CPU: with the same CPU thread count). --no-deterministic lets cuDNN pick the "
    "fastest kernels (GPU results then vary in the last digits). Default: on for CPUs (it costs "
    "nothing there), off for GPUs",
    "channels_last": "feed the model channels-last (NHWC) tensors, faster for the convolutional "
    "backbones; --no-channels-last turns it off",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: Augmentation flags, with their units.
_AUGMENT_HELP = {
    "rotate": "largest rotation, in degrees (uniform in [-ROTATE, ROTATE])",
    "scale": "largest relative zoom, a fraction (uniform in [1 - SCALE, 1 + SCALE])",
    "translate": "largest shift, a fraction of the image side",
    "hflip": "flip left-right with probability 0.5 (off by default: the heart is on the left)",
    "brightness": "largest additive change of the [0, 1] intensities",
    "contrast": "largest relative change of the contrast around the image mean, a fraction",
    "enabled": "augmentation on (--no-augment-enabled turns all of it off)",
}


def _add_fields(p: argparse._ArgumentGroup, cls: type, prefix: str = "") -> None:
    defaults = cls()
    helps = _AUGMENT_HELP if prefix == "augment_" else _HELP
    for f in dataclasses.fields(cls):
        if f.name == "augment":
            continue
        dest = prefix + f.name
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = helps.get(f.name, f.name.replace("_", " "))
        if default is not None:  # None defaults are described in the help text itself
            text += f" (default: {shown})"
        if isinstance(default, bool) or f.name == "deterministic":
            p.add_argument(
                _flag(dest),
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        elif f.name in ("hidden", "labels"):
            p.add_argument(_flag(dest), dest=dest, default=None, metavar="A,B,...", help=text)
        else:
            kind = type(default) if default is not None else NONE_DEFAULT_TYPES.get(f.name, str)
            p.add_argument(_flag(dest), dest=dest, type=kind, default=None, help=text)


def add_training_settings(p: argparse.ArgumentParser, of: str = "") -> None:
    """Every field of :class:`TrainConfig` and :class:`AugmentConfig` as an option, in two
    groups; ``of`` (e.g. ``"base "``) starts their titles (``cxr tune``'s base config)."""
    if of:
        g = p.add_argument_group(f"{of}training settings (as for cxr train)")
        a = p.add_argument_group(f"{of}augmentation settings (as for cxr train)")
    else:
        g = p.add_argument_group("training settings")
        a = p.add_argument_group("augmentation (per batch, on the training device)")
    _add_fields(g, TrainConfig)
    _add_fields(a, AugmentConfig, prefix="augment_")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cxr train`` on the top-level sub-command parser."""
    p = add_command(
        sub,
        "train",
        run_train,
        help="train a model on prepared caches (the probe or two-phase fine-tuning, chosen "
        "by the training set's size unless --recipe says)",
        description="Train on TRAIN_CACHE, validate on VAL_CACHE, and write the run folder "
        "(config.yaml, history.csv, best.safetensors, last.safetensors, and state.pt for "
        "fine-tuning). Without --recipe, --backbone and --pretrained, a training set under "
        "10,000 images gets the probe on efficientnet-lite0 (ImageNet), a larger one "
        "densenet121 fine-tuned; a line says which and why. Continue an interrupted "
        "fine-tuning run with --resume RUN. Several GPUs: "
        "torchrun --nproc-per-node N -m cxr train ...",
    )
    add_train_caches(p)
    p.add_argument("--out", type=Path, help="new run folder (default: runs/<backbone>)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue the run in RUN from its last completed epoch",
    )
    add_config(p)
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_progress(p)
    add_threads(
        p, "; with --resume: the run's own count, for results identical to an uninterrupted run"
    )
    t = p.add_argument_group("experiment tracking (MLflow; needs the tune extra)")
    t.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log params, per-epoch metrics, tags and the run's files to MLflow (default: on "
        "when MLFLOW_TRACKING_URI is set or --mlflow-uri is given, and with --resume when the "
        "run was tracked: it continues its MLflow run); --no-mlflow turns it off",
    )
    t.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="tracking store: sqlite:///FILE.db, or http(s)://HOST:PORT of a tracking server "
        "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder, with "
        "artifacts in mlartifacts/ beside it; view: mlflow ui --backend-store-uri URI)",
    )
    add_mlflow_experiment(t, "a new run")
    add_training_settings(p)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``--config`` (or the defaults) with the given options applied."""
    base = TrainConfig.load(args.config) if args.config else TrainConfig()
    changes: dict = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None or f.name == "augment":
            continue
        if f.name in ("hidden", "labels"):
            value = tuple(parse_list(value, _flag(f.name)) or ())
            if f.name == "hidden":
                try:
                    value = tuple(int(v) for v in value)
                except ValueError:
                    raise CLIError(
                        f"--hidden: {args.hidden!r} is not a list of widths like 512,128"
                    ) from None
        changes[f.name] = value
    aug = {
        f.name: getattr(args, "augment_" + f.name)
        for f in dataclasses.fields(AugmentConfig)
        if getattr(args, "augment_" + f.name, None) is not None
    }
    if aug:
        changes["augment"] = dataclasses.replace(base.augment, **aug)
    return base.replace(**changes) if changes else base


def _threads(args: argparse.Namespace) -> int | None:
    """The thread count asked for: --threads, else OMP_NUM_THREADS, else None."""
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be at least 1, got {args.threads}")
        return int(args.threads)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise CLIError(f"OMP_NUM_THREADS={env!r} is not a number of threads") from None
    if value < 1:
        raise CLIError(f"OMP_NUM_THREADS={env!r} must be at least 1")
    return value


def _mlflow_callback(args: argparse.Namespace) -> MLflowCallback | None:
    """The MLflow callback when tracking is on (see --mlflow), else None."""
    from cxr.tracking import MLflowCallback, MLflowNotInstalled, run_link, tracking_requested

    if args.mlflow is False:
        return None
    linked = args.resume is not None and run_link(args.resume) is not None
    if not (tracking_requested(bool(args.mlflow) or bool(args.mlflow_uri)) or linked):
        return None
    try:
        return MLflowCallback(tracking_uri=args.mlflow_uri, experiment=args.mlflow_experiment)
    except MLflowNotInstalled as err:
        why = ""
        if not (args.mlflow or args.mlflow_uri or linked):
            why = " (tracking is on because MLFLOW_TRACKING_URI is set; or add --no-mlflow)"
        elif linked:
            why = f" (the run in {args.resume} was tracked; or add --no-mlflow)"
        raise CLIError(f"{err}{why}") from None


def run_train(args: argparse.Namespace) -> int:
    from cxr.training import resume, run_summary, train

    threads = _threads(args)

    if args.resume:
        given = [n for n in ("train_cache", "val_cache", "config", "out") if getattr(args, n)]
        if given:
            raise CLIError(
                "--resume continues a run with its saved settings; drop "
                + ", ".join(_flag(n) if n in ("config", "out") else n.upper() for n in given)
            )
        tracker = _mlflow_callback(args)
        result = resume(
            args.resume,
            progress=not args.no_progress,
            threads=threads,
            callbacks=[tracker] if tracker else [],
        )
    else:
        if args.train_cache is None or args.val_cache is None:
            raise CLIError(
                "give TRAIN_CACHE and VAL_CACHE (folders made by `cxr prepare`), or --resume RUN"
            )
        config = config_from_args(args)
        tracker = _mlflow_callback(args)
        out = args.out or Path("runs") / (config.backbone if config.backbone != "auto" else "cxr")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        result = train(
            config,
            args.train_cache,
            args.val_cache,
            out,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            callbacks=[tracker] if tracker else [],
        )
    if os.environ.get("RANK", "0") == "0":  # one summary from a torchrun job
        print(run_summary(result))
        where = tracker.describe() if tracker else None
        if where:
            print(where)
    return EXIT_OK
