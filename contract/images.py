"""Product images as the vision tower reads them: one preprocessing, offline and online.

The teacher's tower trains on these pixels, distillation computes the student's
image vectors from them, and the service's product encoder reads new products'
images the same way. Pillow is imported only when an image is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pixels(path: str | Path, size: int) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1]: RGB, bilinear resize."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) / 127.5 - 1.0, dtype=np.float32)
