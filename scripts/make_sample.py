"""Build the bundled sample: Colin27 T1 (Debian mricron-data) resampled to 2 mm.

    apt-get install mricron-data && python scripts/make_sample.py

Writes src/medsam3/data/samples/colin27_t1_2mm.nii.gz (uint8, 90x108x90, ~0.5 MB),
keeping the template's physical space (origin and direction) exactly.
"""

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SOURCE = Path("/usr/share/mricron/templates/ch2.nii.gz")
TARGET = Path(__file__).resolve().parents[1] / "src/medsam3/data/samples/colin27_t1_2mm.nii.gz"


def main() -> None:
    image = sitk.ReadImage(str(SOURCE), sitk.sitkFloat32)
    spacing = (2.0, 2.0, 2.0)
    size = [int(round(sz * sp / 2.0)) for sz, sp in zip(image.GetSize(), image.GetSpacing())]
    smoothed = sitk.SmoothingRecursiveGaussian(image, 0.8)  # anti-alias before halving the resolution
    resampled = sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                              image.GetDirection(), 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(resampled)
    array = np.clip(array / np.percentile(array, 99.9) * 255.0, 0, 255).astype(np.uint8)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(resampled)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(TARGET), useCompression=True)
    print(TARGET, out.GetSize(), out.GetSpacing(), TARGET.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
