"""Drawing one phantom radiograph, with or without findings, and its finding masks."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from cxr.synth.anatomy import (
    PatientAnatomy,
    _dome,
    _heart,
    _lung_F,
    _ramp,
    _Scene,
    _smoothstep,
    _value_noise,
)
from cxr.synth.config import (
    ENLARGED_CTR,
    F32,
    MASS_DIAMETER,
    NODULE_DIAMETER,
    SYNTH_LABELS,
    _canonical_finding,
)


# the renderer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomRender:
    """One rendered phantom with the anatomy the checks need.

    Attributes:
        image: uint8 (size, size).
        masks: {label: bool (size, size)}, one per planted finding.
        lungs: bool (size, size), the two lung fields of the normal anatomy.
        heart: bool (size, size), the heart shadow as drawn (enlarged with Cardiomegaly).
        thorax: (first, last) image column of the lung fields.
        ctr: the cardiothoracic ratio drawn (heart width / thorax width).
        anatomy: the anatomy used.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    lungs: np.ndarray
    heart: np.ndarray
    thorax: tuple[int, int]
    ctr: float
    anatomy: PatientAnatomy


def render_phantom(
    rng: np.random.Generator,
    size: int,
    findings: Collection[str],
    anatomy: PatientAnatomy | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one phantom radiograph with the given findings.

    Args:
        rng: the random generator (advanced by the call).
        size: side in pixels (>= 16).
        findings: names from :data:`SYNTH_LABELS` (any :func:`cxr.labels.canonical_label`
            spelling); empty for a normal image.
        anatomy: the patient; None draws a new one from ``rng`` first.

    Returns:
        ``(image, masks)``: uint8 (size, size) and {label: bool (size, size)} with one
        non-empty mask per planted finding.
    """
    r = render_phantom_details(rng, size, findings, anatomy)
    return r.image, r.masks


def render_phantom_details(
    rng: np.random.Generator,
    size: int,
    findings: Collection[str],
    anatomy: PatientAnatomy | None = None,
) -> PhantomRender:
    """:func:`render_phantom`, returning also lung and heart masks and the drawn CTR."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    size = int(size)
    if isinstance(findings, str):
        findings = [findings]
    wanted = {_canonical_finding(f) for f in findings}
    an = anatomy if anatomy is not None else PatientAnatomy.sample(rng)
    seeds = rng.integers(0, 2**63, size=1 + len(SYNTH_LABELS))
    img_rng = np.random.default_rng(int(seeds[0]))
    lab_rng = {
        name: np.random.default_rng(int(s)) for name, s in zip(SYNTH_LABELS, seeds[1:], strict=True)
    }

    # grid in body coordinates
    c = (np.arange(size, dtype=F32) + 0.5) * F32(2.0 / size) - 1
    x = c[None, :] - F32(an.cx)
    y = c[:, None] - F32(an.cy)
    ct, st = F32(math.cos(an.tilt)), F32(math.sin(an.tilt))
    u = (x * ct + y * st) / F32(an.scale * an.aspect)
    v = (-x * st + y * ct) / F32(an.scale)
    px = 2.0 / size / an.scale  # one pixel in body units
    au = np.abs(u)

    # findings' geometry (each from its own generator) -------------------------------
    if "Cardiomegaly" in wanted:
        ctr = float(lab_rng["Cardiomegaly"].uniform(*ENLARGED_CTR))
    else:
        ctr = float(an.ctr)
    scene = _Scene(an, _heart(an, ctr))
    if "Pneumothorax" in wanted:
        g = lab_rng["Pneumothorax"]
        side = -1 if g.random() < 0.5 else 1
        f = g.uniform(0.70, 0.86)
        scene.pneumo = (
            side,
            f * g.uniform(0.97, 1.06),
            f,
            side * (an.lung_cx - 0.12),
            _dome(an, side, side * 0.3) - 0.08,
        )
    if "Effusion" in wanted:
        g = lab_rng["Effusion"]
        sides = [(-1, 1)[int(g.random() < 0.5)]]
        if g.random() < 0.3:
            sides = [-1, 1]
        for side in sides:
            scene.effusion[side] = (g.uniform(0.22, 0.4), g.uniform(0.0, 0.2))
    cons = None
    if "Consolidation" in wanted:
        g = lab_rng["Consolidation"]
        radius = g.uniform(0.17, 0.26)
        cu, cv = scene.place(g, radius * 0.45, 0.0, zone=(-0.45, 0.5))
        cons = (cu, cv, radius, g.uniform(0.65, 0.9), g)
        scene.discs.append((cu, cv, radius * 0.8))
    mass = None
    if "Mass" in wanted:
        g = lab_rng["Mass"]
        radius = max(g.uniform(*MASS_DIAMETER) / an.scale, 1.2 * px)
        cu, cv = scene.place(g, radius)
        mass = (cu, cv, radius, g.uniform(0.22, 0.32), g.uniform(0, 0.07, 2), g.uniform(0, 6.3, 2))
        scene.discs.append((cu, cv, radius))
    nodules = []
    if "Nodule" in wanted:
        g = lab_rng["Nodule"]
        for _ in range(1 if g.random() < 0.6 else 2):
            radius = max(g.uniform(*NODULE_DIAMETER) / an.scale, 0.8 * px)
            cu, cv = scene.place(g, radius, 0.04)
            nodules.append((cu, cv, radius, g.uniform(0.24, 0.36)))
            scene.discs.append((cu, cv, radius + 0.03))

    # normal anatomy ------------------------------------------------------------------
    fb = ((au / 0.93) ** 3.5 + np.abs((v - 0.2) / 1.3) ** 3.5) ** (1 / 3.5)
    body = np.sqrt(np.clip(1 - fb**4, 0, 1))
    dens = an.tissue * body
    # lungs
    lungF = {s: _lung_F(an, s, u, v) for s in (-1, 1)}
    lung_soft = {s: _ramp((1 - lungF[s]) * (0.33 / px)) for s in (-1, 1)}
    domes = np.where(u < 0, _dome(an, -1, u), _dome(an, 1, u))
    heart_F = scene.heart.F(u, v)
    heart_soft = _ramp((1 - heart_F) * (scene.heart.b / px)) * _ramp((domes + 0.03 - v) / px)
    not_heart = 1 - heart_soft
    tex_rng = np.random.default_rng(an.texture_seed)
    n1 = _value_noise(tex_rng, size, 13) + 0.5 * _value_noise(tex_rng, size, 27)
    n2 = _value_noise(tex_rng, size, 17)
    ridge = np.exp(-((n1 / 0.16) ** 2)) + 0.6 * np.exp(-((n2 / 0.12) ** 2))
    lung_var = 0.06 * _value_noise(tex_rng, size, 5)
    aer = {s: lung_soft[s].copy() for s in (-1, 1)}  # lung tissue present (0..1)
    gap = None
    if scene.pneumo is not None:
        s = scene.pneumo[0]
        cF = scene.collapsed_F(s, u, v)
        aer[s] = np.minimum(aer[s], _ramp((1 - cF) * (0.33 / px)))
        gap = np.clip(lung_soft[s] - aer[s], 0, 1)
    air = (aer[-1] + aer[1]) * not_heart
    marks = air.copy()
    hil: np.ndarray | np.float32 = np.float32(0)
    for s in (-1, 1):
        d2 = (u - s * 0.24) ** 2 / 0.5**2 + (v - 0.02) ** 2 / 0.6**2
        hil = hil + np.exp(-d2 * 2.5)
    # effusion and consolidation take the air out of the lung
    eff_masks = {}
    for s, _ in scene.effusion.items():
        m = scene.meniscus(s, u)
        eff = _ramp((v - m) / px) * (0.8 + 0.2 * _smoothstep((v - m) / 0.1))
        eff = eff * _ramp((u * s - (an.lung_cx - an.lung_a_med - 0.02)) / px)
        eff_masks[s] = (v > m) & (lungF[s] < 1) & (heart_F >= 1)
        air = air * (1 - 0.92 * eff)
        marks = marks * (1 - eff)
        dens = dens + 0.03 * eff * lung_soft[s] * not_heart * _smoothstep((v - m) / 0.15)
        if gap is not None and scene.pneumo is not None and s == scene.pneumo[0]:
            gap = gap * (1 - eff)
    cons_field = None
    if cons is not None:
        cu, cv, radius, sev, g = cons
        # an elongated, blotchy patch with ill-defined edges and air bronchograms
        ang, elong = g.uniform(0, np.pi), g.uniform(1.3, 1.9)
        du, dv = u - cu, v - cv
        a_ = (du * math.cos(ang) + dv * math.sin(ang)) / (radius * elong)
        b_ = (-du * math.sin(ang) + dv * math.cos(ang)) / (radius / elong**0.5)
        cells = max(6, int(round(2.5 / (radius * an.scale))))
        blotch = _value_noise(g, size, cells) + 0.4 * _value_noise(g, size, 2 * cells)
        patch = np.exp(-0.9 * (a_ * a_ + b_ * b_)) * (0.72 + 0.28 * np.tanh(1.5 * blotch))
        side = -1 if cu < 0 else 1
        cons_field = _smoothstep((patch - 0.14) / 0.4) * aer[side] * not_heart
        bronchi = np.exp(-((_value_noise(g, size, 2 * cells) / 0.12) ** 2))
        air = air * (1 - sev * cons_field * (1 - 0.45 * bronchi))
        marks = marks * (1 - 0.8 * cons_field)
    if gap is not None:
        air = air + 1.4 * gap * not_heart  # no lung tissue in the rim: darker
    # lower zones look denser (soft tissue in front), apices darker
    zone = 0.82 + 0.18 * _smoothstep((v + 0.2) / 0.8)
    dens = dens - an.air * air * (1.08 - 0.14 * zone + lung_var)
    dens = dens + an.marking * marks * ridge * (0.35 + 0.9 * hil) + 0.05 * hil * marks
    dens = dens + 0.04 * heart_soft * body
    # bones: spine, ribs, clavicles
    spine = _ramp((an.spine_w - au) / px)
    vert = np.mod((v - an.rib_top) / an.rib_spacing, 1.0)
    spine = spine * (0.85 + 0.15 * _smoothstep(np.minimum(vert, 1 - vert) * 8))
    dens = dens + 0.10 * spine * body
    q = (v - an.rib_curv * (au - 0.2) ** 2 - 0.12 * au - an.rib_top) / an.rib_spacing
    frac = np.mod(q, 1.0)
    wf = 0.42
    band = np.maximum(np.sin(np.pi * np.clip(frac / wf, 0, 1)), 0) ** 0.35
    below = np.maximum(v - domes, 0)
    rib_gate = _ramp((au - 0.06) / 0.02) * (q > 0) * np.exp(-((below / 0.12) ** 2))
    ribs = band * rib_gate * body
    if gap is not None:
        ribs = ribs * (1 - 0.6 * gap)
    dens = dens + an.rib_density * ribs
    clav: np.ndarray | np.float32 = np.float32(0)
    for s in (-1, 1):
        ax_, ay_, bx_, by_ = (
            s * 0.07,
            an.lung_cy - an.lung_b_up + 0.03,
            s * 0.68,
            an.lung_cy - an.lung_b_up - 0.12,
        )
        dx, dy = bx_ - ax_, by_ - ay_
        t = np.clip(((u - ax_) * dx + (v - ay_) * dy) / (dx * dx + dy * dy), 0, 1)
        dist = np.hypot(u - ax_ - t * dx, v - ay_ - t * dy)
        clav = clav + _ramp((0.032 - dist) / px)
    dens = dens + 0.12 * np.minimum(clav, 1) * body
    # trachea
    dens = dens - 0.10 * _ramp((0.035 - au) / px) * _smoothstep((-0.28 - v) / 0.1) * body

    # pleural line of the collapsed lung, lesions ----------------------------------------
    if scene.pneumo is not None:
        s = scene.pneumo[0]
        lw = max(0.6 * px, 0.006)
        line = np.exp(-((((1 - cF) * 0.33 - lw) / lw) ** 2))
        line = line * np.clip((1 - lungF[s]) / 0.06, 0, 1) * not_heart
        dens = dens + 0.16 * line
    if mass is not None:
        cu, cv, radius, amp, wob, phase = mass
        du, dv = u - cu, v - cv
        d = np.sqrt(du * du + dv * dv)
        theta = np.arctan2(dv, du)
        rad = radius * (
            1 + wob[0] * np.sin(3 * theta + phase[0]) + wob[1] * np.sin(5 * theta + phase[1])
        )
        dn = d / rad
        disc = _ramp((rad - d) / px)
        dens = dens + amp * disc * (0.8 + 0.2 * np.sqrt(np.clip(1 - dn * dn, 0, 1)))
        mass_mask = dn < 1
    nod_mask: np.ndarray | None = None
    if nodules:
        nod_mask = np.zeros((size, size), dtype=bool)
        for cu, cv, radius, amp in nodules:
            d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
            dens = dens + amp * _ramp((radius - d) / px)
            nod_mask |= d < radius

    # exposure, noise, quantisation ----------------------------------------------------
    r = img_rng.uniform
    # film-like characteristic curve: a sigmoid of the density, per-image exposure
    k, mid, gamma = r(5.0, 6.5), r(0.36, 0.41), r(0.9, 1.1)
    low = _value_noise(img_rng, size, 4) * F32(r(0.01, 0.025))
    lo, hi = 1 / (1 + math.exp(k * mid)), 1 / (1 + math.exp(-k * (1.05 - mid)))
    img = (1 / (1 + np.exp(-k * (dens + low - mid))) - lo) * F32(1 / (hi - lo))
    img = 0.03 + 0.95 * np.clip(img, 0, 1) ** gamma
    img = img + img_rng.standard_normal((size, size), dtype=F32) * F32(r(0.006, 0.016))
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)

    # masks -----------------------------------------------------------------------------
    lungs = (lungF[-1] < 1) | (lungF[1] < 1)
    heart = (heart_F < 1) & (v < domes + 0.03)
    masks: dict[str, np.ndarray] = {}
    if "Cardiomegaly" in wanted:
        masks["Cardiomegaly"] = heart
    if "Effusion" in wanted:
        masks["Effusion"] = np.logical_or.reduce(list(eff_masks.values()))
    if mass is not None:
        masks["Mass"] = mass_mask
    if nod_mask is not None:
        masks["Nodule"] = nod_mask
    if scene.pneumo is not None:
        s = scene.pneumo[0]
        pm = (lungF[s] < 1) & (cF >= 1) & ~heart
        if s in eff_masks:
            pm &= ~eff_masks[s]
        masks["Pneumothorax"] = pm
    if cons_field is not None:
        masks["Consolidation"] = (cons_field >= 0.08) & lungs
    for name, m in masks.items():
        if not m.any():  # a tiny image: keep the promise of a non-empty mask
            field_ = {"Consolidation": cons_field, "Pneumothorax": gap}.get(name)
            at = np.argmax(field_) if field_ is not None else (size // 2) * size + size // 2
            m[np.unravel_index(int(at), m.shape)] = True
    cols = np.flatnonzero(lungs.any(axis=0))
    thorax = (int(cols[0]), int(cols[-1])) if cols.size else (0, size - 1)
    return PhantomRender(image, masks, lungs, heart, thorax, ctr, an)
