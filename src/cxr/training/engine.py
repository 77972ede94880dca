"""One model being trained: its optimiser per phase, mixed precision, EMA, DDP and state.

:class:`Engine` owns everything that changes during training and everything that must
be saved to resume it. :mod:`cxr.training.loop` drives it epoch by epoch.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cxr.cache.batches import CacheBatches
from cxr.devices import autocast_dtype
from cxr.losses import build_loss
from cxr.models import (
    ChestClassifier,
    HeadConfig,
    ModelSpec,
    build_model,
    freeze_backbone,
    parameter_groups,
    unfreeze_backbone,
)
from cxr.preprocessing import Preprocessing, to_model_input
from cxr.training import distributed as dd
from cxr.training.augment import augment_batch
from cxr.training.config import TrainConfig
from cxr.training.ema import ModelEMA
from cxr.training.schedule import LRSchedule

#: Steps of an epoch counted as warm-up (first-call kernel choice and memory allocation,
#: a new phase's optimiser state) and left out of its steady-state images/s.
WARMUP_STEPS = 2


@dataclass
class EpochStats:
    """Mean training loss, last learning rate, images/s and seconds of one epoch.

    ``images_per_second`` is the whole epoch's rate, warm-up included;
    ``images_per_second_steady`` leaves out the first :data:`WARMUP_STEPS` steps (the whole
    epoch's rate when it has no more steps than that), and ``warmup_seconds`` is how long
    those steps took.
    """

    loss: float
    lr: float
    images_per_second: float
    seconds: float
    images: int
    images_per_second_steady: float = float("nan")
    warmup_seconds: float = 0.0


class Engine:
    """The model, loss, optimiser, schedule, scaler, EMA and RNGs of a run.

    Args:
        config: the run's settings.
        names: the L label names the model predicts.
        preprocessing: how the cache's images were made (its size and fit), stored in the
            model's spec.
        train_labels: float (N, L) training labels (NaN unknown), for the loss weights.
        info: this process's place in a DDP job.
        steps_per_epoch: optimiser steps per epoch (batches / accumulate, rounded up).
    """

    def __init__(
        self,
        config: TrainConfig,
        names: Sequence[str],
        preprocessing: Preprocessing,
        train_labels: np.ndarray,
        info: dd.Dist,
        steps_per_epoch: int,
    ):
        self.config, self.info, self.device = config, info, info.device
        self.steps_per_epoch = steps_per_epoch
        spec = ModelSpec(
            labels=tuple(names),
            backbone=config.backbone,
            head=HeadConfig(pool=config.pool, dropout=config.dropout, hidden=config.hidden),
            preprocessing=preprocessing,
        )
        self.model = build_model(spec, pretrained=config.pretrained).to(self.device)
        if config.channels_last:
            # Module.to takes memory_format (torch's stubs for Module.to omit it)
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        gamma = {"gamma": config.focal_gamma} if config.loss == "focal" else {}
        self.loss_fn = build_loss(config.loss, train_labels, label_names=None, **gamma).to(
            self.device
        )
        self.amp_dtype = autocast_dtype(config.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.ema = ModelEMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.augment_rng = torch.Generator().manual_seed(config.seed * 7919 + info.rank)
        self.phase = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: LRSchedule | None = None
        self.forward_model: Callable[..., torch.Tensor] = self.model
        self.ddp: nn.parallel.DistributedDataParallel | None = None

    # phases -------------------------------------------------------------------------
    def enter_phase(self, phase: int) -> None:
        """Phase 1: backbone frozen (weights and BatchNorm statistics), head at phase1_lr.
        Phase 2: all trainable, backbone at phase2_lr, head at phase2_lr * head_lr_factor.
        A new optimiser and schedule start with each phase."""
        if phase == self.phase:
            return
        c = self.config
        if phase == 1:
            freeze_backbone(self.model)
            groups = [
                {
                    "params": [p for p in self.model.parameters() if p.requires_grad],
                    "lr": c.phase1_lr,
                }
            ]
            epochs = c.phase1_epochs
        else:
            unfreeze_backbone(self.model)
            groups = parameter_groups(
                self.model, lr_backbone=c.phase2_lr, lr_head=c.phase2_lr * c.head_lr_factor
            )
            epochs = c.phase2_epochs
        if epochs is None:
            raise ValueError(
                f"phase{phase}_epochs is not decided: give the Engine config.sized(steps_per_epoch)"
            )
        self.optimizer = _make_optimizer(c, groups)
        self.schedule = LRSchedule(
            self.optimizer,
            c.schedule,
            epochs * self.steps_per_epoch,
            round(c.warmup_epochs * self.steps_per_epoch),
            c.plateau_patience,
            c.plateau_factor,
        )
        wrapped: nn.Module = self.model
        self.ddp = None
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.forward_model = torch.compile(wrapped) if c.compile else wrapped
        self.phase = phase

    # training -----------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(
        self, batches: CacheBatches, epoch: int, progress: bool, callbacks: Sequence = ()
    ) -> EpochStats:
        """One pass over this rank's shard; returns the epoch's statistics."""
        c, model, opt = self.config, self.forward_model, self.optimizer
        assert opt is not None and self.schedule is not None, "enter_phase() first"
        self.model.train()
        n_batches = len(batches)
        loss_sum = torch.zeros((), device=self.device)
        images = warm_images = 0
        warm_steps = WARMUP_STEPS if n_batches > WARMUP_STEPS else 0
        start = warm_end = time.perf_counter()
        bar = tqdm(
            total=n_batches,
            disable=not progress,
            unit="batch",
            leave=False,
            desc=f"epoch {epoch + 1}/{c.epochs}",
        )
        opt.zero_grad(set_to_none=True)
        for i, (pixels, labels) in enumerate(batches):
            x = to_model_input(pixels, self.device, c.channels_last)
            x = augment_batch(x, c.augment, self.augment_rng)
            y = labels.to(self.device, non_blocking=True)
            last_micro = (i + 1) % c.accumulate == 0 or i + 1 == n_batches
            sync = (
                self.ddp.no_sync() if (self.ddp is not None and not last_micro) else nullcontext()
            )
            with sync:
                with self._autocast():
                    logits = model(x)
                loss = self.loss_fn(logits.float(), y)
                self.scaler.scale(loss / c.accumulate).backward()
            if last_micro:
                if c.grad_clip > 0:
                    self.scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.scaler.step(opt)
                self.scaler.update()
                opt.zero_grad(set_to_none=True)
                self.schedule.step()
                if self.ema is not None:
                    self.ema.update(self.model)
            loss_sum += loss.detach()
            images += x.shape[0]
            if i + 1 == warm_steps:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                warm_end, warm_images = time.perf_counter(), images
            for cb in callbacks:
                cb.on_step({"epoch": epoch, "step": i})
            if progress and (i % 10 == 0 or i + 1 == n_batches):
                rate = images * self.info.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.4f}", img_s=f"{rate:.0f}")
            bar.update(1)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        seconds = end - start
        world = self.info.world_size
        return EpochStats(
            loss=float(loss_sum.item() / max(n_batches, 1)),
            lr=float(opt.param_groups[-1]["lr"]),
            images_per_second=images * world / max(seconds, 1e-9),
            seconds=seconds,
            images=images,
            images_per_second_steady=(images - warm_images) * world / max(end - warm_end, 1e-9),
            warmup_seconds=warm_end - start,
        )

    # inference ----------------------------------------------------------------------
    def eval_model(self) -> ChestClassifier:
        """The model to validate and save: the EMA average when enabled."""
        if self.ema is None:
            return self.model
        module = self.ema.module
        assert isinstance(module, ChestClassifier)  # the EMA is a copy of self.model
        return module

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still counts versions)
    def predict(
        self,
        batches: CacheBatches,
        model: nn.Module | None = None,
        with_loss_on: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float]:
        """Probabilities (N, L) float64 of every row of the batches' cache, on every rank,
        and the loss against ``with_loss_on`` (N, L) labels (NaN when not given)."""
        model = model if model is not None else self.eval_model()
        was_training = model.training
        model.eval()
        chunks = []
        for pixels, _ in batches:
            x = to_model_input(pixels, self.device, self.config.channels_last)
            with self._autocast():
                chunks.append(model(x).float())  # kept on the device: no wait per batch
        model.train(was_training)
        logits = torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, 0), np.float32)
        logits = dd.gather_shards(self.info, logits, len(batches.cache))
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        loss = float("nan")
        if with_loss_on is not None:
            cpu_loss = copy.deepcopy(self.loss_fn).cpu()
            loss = float(
                cpu_loss(
                    torch.from_numpy(logits),
                    torch.from_numpy(np.asarray(with_loss_on, dtype=np.float32)),
                )
            )
        return probs, loss

    # resume -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain values only (loadable with ``weights_only=True``)."""
        state = {
            "phase": self.phase,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "schedule": self.schedule.state_dict() if self.schedule else None,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng_torch": torch.get_rng_state(),
            "rng_augment": self.augment_rng.get_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if state["phase"]:
            self.enter_phase(int(state["phase"]))
            assert self.optimizer is not None and self.schedule is not None  # set by enter_phase
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng_torch"])
        self.augment_rng.set_state(state["rng_augment"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])


def _make_optimizer(c: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if c.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=c.weight_decay)
    if c.optimizer == "sgd":
        return torch.optim.SGD(
            groups, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.momentum > 0
        )
    return torch.optim.RMSprop(groups, momentum=c.momentum, weight_decay=c.weight_decay)
