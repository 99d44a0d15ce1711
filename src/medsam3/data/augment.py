"""Training augmentations: random square scale and pad, intensity jitter, label-safe flips,
noisy box prompts.

The recipe follows the paper's configs (../docs/paper.md): a random square resize of
480-1008 px padded to 1008 (scaled here to the model's input size), and half of the
steps with a ground-truth box prompt jittered by a normal noise of 0.1 x the box size,
at most 20 px (at 1008). Flips are used only where they keep the labels true: never for
datasets with left/right classes, and by default not for radiology (CT, MR, PET, X-ray),
whose images have a fixed orientation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Paper recipe: random square side 480..1008 at input size 1008.
MIN_SCALE = 480 / 1008
#: Box prompt noise: std as a fraction of the box size, and its cap in pixels at 1008 px.
BOX_NOISE = 0.1
BOX_NOISE_MAX_PX = 20.0

#: Flips that keep labels true, by modality, when the manifest item does not say.
DEFAULT_FLIPS = {"CT": "none", "MR": "none", "PT": "none", "XR": "none", "US": "horizontal",
                 "OTHER": "horizontal", "RGB": "both", None: "none"}


def allowed_flips(flips: str | None, modality: str | None, lateral_classes: bool) -> tuple[bool, bool]:
    """``(horizontal, vertical)`` flips allowed for an item.

    Args:
        flips: the item's ``flips`` field (``none``, ``horizontal``, ``vertical``, ``both``)
            or ``None`` for the modality default (:data:`DEFAULT_FLIPS`).
        lateral_classes: the dataset names left/right structures: a flip would make the
            "left kidney" label lie on the right kidney, so nothing is flipped.
    """
    if lateral_classes:
        return False, False
    rule = flips or DEFAULT_FLIPS.get(modality, "none")
    return rule in ("horizontal", "both"), rule in ("vertical", "both")


def flip_arrays(arrays: list[np.ndarray], horizontal: bool, vertical: bool) -> list[np.ndarray]:
    """Flip ``[y, x(, c)]`` arrays: horizontal reverses x, vertical reverses y."""
    out = []
    for a in arrays:
        if horizontal:
            a = a[:, ::-1]
        if vertical:
            a = a[::-1]
        out.append(np.ascontiguousarray(a))
    return out


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, probability: float = 0.5) -> np.ndarray:
    """Random gamma (0.7-1.5), contrast (x0.85-1.15) and brightness (+-0.1) on ``[0, 1]``
    intensities; each applied with ``probability``; the result is clipped to ``[0, 1]``."""
    out = np.asarray(image, dtype=np.float32)
    if rng.random() < probability:
        out = np.power(np.clip(out, 0.0, 1.0), np.float32(rng.uniform(0.7, 1.5)))
    if rng.random() < probability:
        out = out * np.float32(rng.uniform(0.85, 1.15)) + np.float32(rng.uniform(-0.1, 0.1))
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def random_side(rng: np.random.Generator, canvas: int, min_scale: float = MIN_SCALE) -> int:
    """A square side in ``[round(min_scale * canvas), canvas]`` pixels."""
    low = max(1, int(round(min_scale * canvas)))
    return int(rng.integers(low, canvas + 1))


def resize_to_canvas(image: np.ndarray, maps: list[np.ndarray], side: int, canvas: int
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Resize to ``side x side`` (aspect not kept, as SAM3's processor does) and pad to
    ``canvas x canvas`` at the bottom and right.

    Args:
        image: ``[y, x]`` or ``[y, x, 3]`` intensities in ``[0, 1]``.
        maps: integer or bool ``[y, x]`` arrays (labels, instance ids): resized by nearest
            neighbour, padded with 0.

    Returns:
        ``(3, canvas, canvas)`` float32 image (padding 0) and the maps as
        ``(canvas, canvas)`` tensors of their dtype.
    """
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    img = img[None].repeat(3, 1, 1) if img.ndim == 2 else img.permute(2, 0, 1)[:3]
    resized = F.interpolate(img[None], size=(side, side), mode="bilinear", align_corners=False,
                            antialias=side < max(img.shape[1:]))[0].clamp_(0.0, 1.0)
    out = torch.zeros((3, canvas, canvas), dtype=torch.float32)
    out[:, :side, :side] = resized
    out_maps = []
    for m in maps:
        t = torch.from_numpy(np.ascontiguousarray(m))
        dtype = t.dtype
        r = F.interpolate(t[None, None].to(torch.float32), size=(side, side), mode="nearest-exact")[0, 0]
        padded = torch.zeros((canvas, canvas), dtype=dtype)
        padded[:side, :side] = r.to(dtype)
        out_maps.append(padded)
    return out, out_maps


def noisy_box(box: torch.Tensor, rng: np.random.Generator, limit: int, canvas: int,
              noise: float = BOX_NOISE, max_px: float = BOX_NOISE_MAX_PX) -> torch.Tensor:
    """A ground-truth ``x0, y0, x1, y1`` pixel box with each side moved by
    ``N(0, noise x box size)``, clipped to ``max_px x canvas / 1008`` and to ``[0, limit]``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cap = max_px * canvas / 1008.0
    d = rng.normal(0.0, noise, size=4) * np.array([w, h, w, h])
    d = np.clip(d, -cap, cap)
    nx0, ny0 = np.clip([x0 + d[0], y0 + d[1]], 0, limit)
    nx1, ny1 = np.clip([x1 + d[2], y1 + d[3]], 0, limit)
    if nx1 - nx0 < 1:
        nx0, nx1 = min(nx0, limit - 1), min(nx0, limit - 1) + 1
    if ny1 - ny0 < 1:
        ny0, ny1 = min(ny0, limit - 1), min(ny0, limit - 1) + 1
    return torch.tensor([nx0, ny0, nx1, ny1], dtype=torch.float32)
