"""Objects of a mask: connected components and their boxes (the DETR targets).

SAM3's detector predicts a set of instances per prompt (200 queries), each with a box and a
mask; its targets are the separate objects of the class. Datasets that store instance ids
(COCO, instance maps) give them directly; semantic masks are split into connected
components (8-connectivity in 2D, so a thin diagonal vessel stays one object).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def connected_instances(mask: np.ndarray) -> np.ndarray:
    """Label map of the connected components of a 2D bool mask (0 = background, 1..N)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels.astype(np.int32, copy=False)


def split_instances(instance_map: torch.Tensor, max_instances: int | None = None
                    ) -> tuple[torch.Tensor, bool]:
    """``(N, H, W)`` bool masks of the ids in an instance map, largest first when truncated.

    Returns:
        the masks (ordered by id, or by area when more than ``max_instances`` exist and
        only the largest are kept) and whether instances were dropped.
    """
    ids = kept_instance_ids(instance_map, max_instances)
    truncated = max_instances is not None and len(ids) < int((torch.unique(instance_map) != 0).sum())
    if len(ids) == 0:
        return torch.zeros((0,) + tuple(instance_map.shape), dtype=torch.bool), truncated
    return instance_map[None] == ids[:, None, None], truncated


def kept_instance_ids(instance_map: torch.Tensor, max_instances: int | None = None) -> torch.Tensor:
    """The non-zero ids of an instance map in increasing order; with ``max_instances``,
    only that many, the largest by area (ties: the lower id)."""
    flat = instance_map.reshape(-1).to(torch.int64)
    areas = torch.bincount(flat)
    ids = torch.nonzero(areas[1:], as_tuple=True)[0] + 1
    if max_instances is not None and len(ids) > max_instances:
        keep = torch.argsort(areas[ids], descending=True, stable=True)[:max_instances]
        ids = ids[torch.sort(keep).values]
    return ids


def relabel(instance_map: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``instance_map`` with ``ids[k]`` renumbered ``k + 1`` and every other id set to 0."""
    lut = torch.zeros(int(instance_map.max().item()) + 1 if instance_map.numel() else 1, dtype=torch.int32)
    lut[ids] = torch.arange(1, len(ids) + 1, dtype=torch.int32)
    return lut[instance_map.to(torch.int64)]


def boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` pixel boxes ``x0, y0, x1, y1`` of ``(N, H, W)`` masks; ``x1``/``y1`` are
    exclusive (one past the last pixel), so a one-pixel object has width 1."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    h, w = masks.shape[1:]
    y0 = torch.argmax(rows.int(), dim=1)
    y1 = h - torch.argmax(rows.flip(1).int(), dim=1)
    x0 = torch.argmax(cols.int(), dim=1)
    x1 = w - torch.argmax(cols.flip(1).int(), dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)


def xyxy_to_cxcywh(boxes: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Pixel ``x0, y0, x1, y1`` -> ``cx, cy, w, h`` normalised by the canvas ``size``
    (``(height, width)`` or one number for a square canvas)."""
    h, w = (size, size) if isinstance(size, int) else size
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], dim=-1)
