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
    grid = affine_grid(theta, images.shape[-2], images.shape[-1])
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # contrast around each image's mean, then brightness: out * gain + mean * (1 - gain) + bias
    mean = out.mean(dim=(2, 3), keepdim=True)
    return out.mul_(gain).add_(mean * (1.0 - gain) + bias).clamp_(0.0, 1.0)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The sampling grid (B, H, W, 2) of ``F.affine_grid(theta, (B, C, H, W),
    align_corners=False)``, built as two outer sums per coordinate instead of a batched
    product with an expanded base grid (several times faster on CPUs, same numbers to
    float rounding).

    Args:
        theta: (B, 2, 3) affine matrices in normalised coordinates, any device and dtype.
    """
    device, dtype = theta.device, theta.dtype
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1  # pixel centres
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1  # in [-1, 1]
    grid = torch.empty(theta.shape[0], height, width, 2, device=device, dtype=dtype)
    for k in range(2):  # output x (k = 0) and y (k = 1)
        along_x = theta[:, k, 0, None] * xs  # (B, W)
        along_y = theta[:, k, 1, None] * ys + theta[:, k, 2, None]  # (B, H)
        torch.add(along_x[:, None, :], along_y[:, :, None], out=grid[..., k])
    return grid
