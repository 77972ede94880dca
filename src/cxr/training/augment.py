"""Per-batch augmentation on the training device: one affine warp and an intensity change.

All images of a batch are warped in one ``grid_sample`` call (rotation, zoom, shift and
an optional left-right flip, each drawn per image), then their brightness and contrast
are changed. The random numbers come from a CPU :class:`torch.Generator`, so a seed gives
the same augmentation on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxr.training.config import AugmentConfig


def random_affine(batch: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Affine matrices (batch, 2, 3) in the normalised coordinates of ``affine_grid``.

    Each maps output to input positions: rotation uniform in ``±config.rotate`` degrees,
    zoom ``s`` uniform in ``1 ± config.scale`` (s > 1 enlarges the content), shift uniform
    in ``±config.translate`` of the side, flip left-right with probability 0.5 if enabled.
    """

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    angle = uniform(-config.rotate, config.rotate) * (math.pi / 180.0)
    zoom = uniform(1.0 - config.scale, 1.0 + config.scale)
    shift = torch.stack(
        [
            uniform(-config.translate, config.translate) * 2.0,
            uniform(-config.translate, config.translate) * 2.0,
        ],
        dim=1,
    )
    flip = torch.ones(batch)
    if config.hflip:
        flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * flip, -sin, shift[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * flip, cos, shift[:, 1]
    return theta


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Augmented copy of a batch.

    Args:
        images: float (B, 1, H, W), intensities in [0, 1], on any device.
        config: what to vary and by how much; ``enabled=False`` returns ``images``.
        generator: a CPU generator; it decides every random choice.

    Returns:
        float (B, 1, H, W) in [0, 1], same device and dtype; areas moved in from outside
        the image are black, as the padding of the cache is.
    """
    if not config.enabled:
        return images
    b = images.shape[0]
    theta = random_affine(b, config, generator)
    gain = 1.0 + config.contrast * (2.0 * torch.rand(b, generator=generator) - 1.0)
    bias = config.brightness * (2.0 * torch.rand(b, generator=generator) - 1.0)
    # drawn on the CPU (the same choices on any device), sent in one copy; from pinned
    # memory that copy does not wait for the GPU's queued work, a pageable one would
    params = torch.cat([theta.reshape(b, 6), gain[:, None], bias[:, None]], dim=1)
    if images.is_cuda:
        params = params.pin_memory()
    params = params.to(images.device, images.dtype, non_blocking=True)
    theta = params[:, :6].view(b, 2, 3)
    gain, bias = params[:, 6].view(b, 1, 1, 1), params[:, 7].view(b, 1, 1, 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * gain + mean + bias).clamp_(0.0, 1.0)
