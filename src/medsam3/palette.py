"""Label colours: one palette for overlays, the web app and DICOM SEG / RT Structure Set files,
so a label has the same colour everywhere."""

from __future__ import annotations

import colorsys

from medsam3.errors import ArgumentError

# tab10 then the light tab20 shades, without the two greys (invisible on grey images).
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
)

_GOLDEN = 0.618033988749895


def label_colors(n: int) -> list[tuple[int, int, int]]:
    """Colours for labels ``1..n`` as 0-255 RGB tuples; entry ``k - 1`` is label ``k``.

    The first 18 come from matplotlib's tab10/tab20 palettes (greys left out); further
    labels get hues spaced by the golden ratio. A label's colour depends only on its value,
    never on ``n``, so it is the same in every picture.
    """
    if n < 0:
        raise ArgumentError(f"number of labels must be >= 0, got {n}")
    colors = []
    for k in range(n):
        if k < len(_PALETTE):
            hexcode = _PALETTE[k].lstrip("#")
            colors.append(tuple(int(hexcode[i:i + 2], 16) for i in (0, 2, 4)))
        else:
            j = k - len(_PALETTE)
            hue = (0.05 + j * _GOLDEN) % 1.0
            saturation = (0.85, 0.6)[j % 2]
            value = (0.95, 0.75)[(j // 2) % 2]
            r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
            colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors
