"""The decoded-size limit: an image is measured from its header before any pixel is decoded.

A few hundred kilobytes of PNG, gzip'ed NIfTI or compressed DICOM can announce billions of
pixels (a decompression bomb). Every reader asks :func:`check_decoded_size` with the size the
header announces, and refuses the file before allocating anything when it is over the limit.

The limit counts values: pixels (or voxels) times samples per pixel (3 for RGB). The default,
:data:`DEFAULT_MAX_PIXELS` = 2**29 (about 537 million), holds a 512 x 512 x 2048 CT or a
1024 x 1024 x 512 micro-CT, and refuses a 30000 x 30000 picture. Raise it with the environment
variable ``MEDSAM3_MAX_PIXELS`` or ``read_image(..., max_pixels=N)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from medsam3.errors import ArgumentError, InputError

#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS`.
MAX_PIXELS_ENV = "MEDSAM3_MAX_PIXELS"

#: Most values (pixels x samples per pixel) an image may announce; 2**29 ~ 537 million.
DEFAULT_MAX_PIXELS = 2**29


def max_pixels(override: int | None = None) -> int:
    """The limit in force: ``override``, else ``$MEDSAM3_MAX_PIXELS``, else the default.

    Raises:
        ArgumentError: the override or the environment variable is not a positive integer.
    """
    if override is not None:
        source, raw = "max_pixels", override
    elif os.environ.get(MAX_PIXELS_ENV, "").strip():
        source, raw = MAX_PIXELS_ENV, os.environ[MAX_PIXELS_ENV].strip()
    else:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw)) if isinstance(raw, str) else int(raw)
    except (TypeError, ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise ArgumentError(f"{source} must be a positive whole number of pixels, got {raw!r}")
    return value


def check_decoded_size(path, dims: Sequence[int], samples: int = 1, limit: int | None = None,
                       what: str = "pixels") -> None:
    """Refuse ``path`` when ``prod(dims) * samples`` is over the limit.

    Args:
        path: the file named in the message.
        dims: the sizes the header announces, in the order a user reads them (e.g. x, y, z).
        samples: values per pixel (3 for RGB).
        limit: the limit; ``None`` takes :func:`max_pixels`.
        what: the word for one element ("pixels", "voxels").

    Raises:
        InputError: over the limit; the message names the file, its size, the limit and
            how to raise it.
    """
    limit = max_pixels() if limit is None else limit
    dims = [int(d) for d in dims]
    count = math.prod(dims) * max(int(samples), 1)
    if count <= limit:
        return
    shape = " x ".join(str(d) for d in dims)
    per = f" x {samples} samples" if samples > 1 else ""
    raise InputError(
        f"cannot read {path}: its header announces {shape} {what}{per} ({count:,} values), over "
        f"the limit of {limit:,} values; if the file is genuine, raise the limit with "
        f"{MAX_PIXELS_ENV}={count} (or read_image(..., max_pixels={count}))"
    )
