"""Overlay pictures: exact blending, orientation and aspect of the slices, valid PNG files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.overlay import (
    blend_labels,
    label_colors,
    orthogonal_slices,
    render_overlay,
)


# --- colours ------------------------------------------------------------------------------

def test_label_colors_are_distinct_stable_and_start_with_tab10():
    colors = label_colors(40)
    assert len(colors) == 40 and len(set(colors)) == 40
    assert colors[0] == (0x1F, 0x77, 0xB4) and colors[1] == (0xFF, 0x7F, 0x0E)
    assert label_colors(3) == colors[:3]  # a label's colour does not depend on n
    assert all(0 <= c <= 255 for color in colors for c in color)
    assert all(len(set(color)) > 1 for color in colors)  # no greys
    assert label_colors(0) == []


# --- blending -----------------------------------------------------------------------------

def test_blend_labels_exact_values():
    grey = np.float32([[0.0, 1.0, 0.0], [1.0, 0.2, 0.6]])
    labels = np.array([[1, 1, 0], [2, 2, 0]])
    colors = {1: (255, 0, 0), 2: (0, 0, 255)}
    out = blend_labels(grey, labels, colors, alpha=0.4)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [102, 0, 0])      # 0.4 * 255 red on black
    np.testing.assert_array_equal(out[0, 1], [255, 153, 153])  # 0.6 * 255 + 0.4 * 255
    np.testing.assert_array_equal(out[0, 2], [0, 0, 0])        # background untouched
    np.testing.assert_array_equal(out[1, 0], [153, 153, 255])
    np.testing.assert_array_equal(out[1, 1], [31, 31, 133])    # 0.6*51=30.6, +102
    np.testing.assert_array_equal(out[1, 2], [153, 153, 153])  # round(0.6 * 255)


def test_blend_labels_rgb_alpha_extremes_and_uncoloured_labels():
    rgb = np.zeros((1, 3, 3), dtype=np.float32)
    rgb[0, :, 1] = 1.0  # green image
    labels = np.array([[1, 7, 0]])
    out = blend_labels(rgb, labels, {1: (255, 0, 0)}, alpha=1.0)
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [0, 255, 0]])
    out = blend_labels(rgb, labels, {1: (255, 0, 0)}, alpha=0.0)
    np.testing.assert_array_equal(out[0], [[0, 255, 0]] * 3)


def test_blend_labels_rejects_bad_input():
    with pytest.raises(ArgumentError, match="shape"):
        blend_labels(np.zeros((2, 2)), np.zeros((3, 2), int), {}, 0.5)
    with pytest.raises(ArgumentError, match="alpha"):
        blend_labels(np.zeros((2, 2)), np.zeros((2, 2), int), {}, 1.5)


# --- slices through a volume --------------------------------------------------------------

def test_orthogonal_slices_go_through_the_centre_of_mass_with_physical_pixel_sizes():
    volume = np.zeros((6, 20, 30), dtype=np.float32)  # z, y, x
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[4, 5:8, 20:23] = 1  # centre of mass z=4, y=6, x=21
    volume[4, 6, 21] = 1.0
    views = orthogonal_slices(volume, labels, spacing=(0.5, 0.8, 4.0),
                              direction=np.eye(3).ravel())
    axial, coronal, sagittal = views
    assert [v.name for v in views] == ["axial", "coronal", "sagittal"]
    assert [v.sides for v in views] == [("R", "L"), ("R", "L"), ("A", "P")]
    assert axial.labels.shape == (20, 30) and axial.pixel_mm == (0.5, 0.8)
    assert axial.extent_mm == (15.0, 16.0)
    assert coronal.labels.shape == (6, 30) and coronal.pixel_mm == (0.5, 4.0)
    assert coronal.extent_mm == (15.0, 24.0)  # 6 slices x 4 mm, not 6 pixels
    assert sagittal.labels.shape == (6, 20) and sagittal.pixel_mm == (0.8, 4.0)
    # every view contains the centre voxel; superior (high z) at the top
    assert axial.image[6, 21] == 1.0
    assert coronal.image[6 - 1 - 4, 21] == 1.0
    assert sagittal.image[6 - 1 - 4, 6] == 1.0
    assert (axial.labels.sum(), coronal.labels.sum(), sagittal.labels.sum()) == (9, 3, 3)


def test_orthogonal_slices_of_an_empty_label_map_use_the_middle():
    volume = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
    axial, coronal, sagittal = orthogonal_slices(volume, np.zeros((5, 4, 6), int),
                                                 (1, 1, 1), np.eye(3).ravel())
    np.testing.assert_array_equal(axial.image, volume[2])
    np.testing.assert_array_equal(coronal.image, volume[::-1, 2, :])
    np.testing.assert_array_equal(sagittal.image, volume[::-1, :, 3])


def test_orthogonal_slices_undo_flipped_and_permuted_axes():
    # the same anatomy stored with x flipped (index x runs to patient right) ...
    volume = np.random.default_rng(1).random((4, 5, 6)).astype(np.float32)
    labels = np.zeros((4, 5, 6), int)
    reference = orthogonal_slices(volume, labels, (1, 2, 3), np.eye(3).ravel())
    flipped = orthogonal_slices(volume[:, :, ::-1], labels, (1, 2, 3),
                                np.diag([-1.0, 1.0, 1.0]).ravel())
    for a, b in zip(reference, flipped):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.pixel_mm == b.pixel_mm
    # ... and stored sagittally: index x -> P, y -> S, z -> L (array [L, S, P])
    stored = volume.transpose(2, 0, 1)  # [x(L), z(S), y(P)]
    direction = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float).ravel()
    permuted = orthogonal_slices(stored, labels.transpose(2, 0, 1), (2, 3, 1), direction)
    for a, b in zip(reference, permuted):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.pixel_mm == b.pixel_mm
    # a grid at exactly 45 degrees has no nearest L/P/S axes: shown as stored, no letters
    c = np.sqrt(0.5)
    oblique = np.array([[c, -c, 0], [c, c, 0], [0, 0, 1]]).ravel()
    oblique_views = orthogonal_slices(volume, labels, (1, 1, 1), oblique)
    assert all(v.sides is None for v in oblique_views)
    np.testing.assert_array_equal(oblique_views[0].image, volume[2])


@pytest.mark.parametrize("direction", [
    np.eye(3),
    np.diag([-1.0, 1.0, 1.0]),
    np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float),
    # oblique: tilted 40/35/35 degrees (zyx Euler angles); index x's largest cosine is along P and
    # both y and z lean most to S, so a per-axis argmax has no one-to-one answer (the overlay
    # once showed it as stored while volumes were sliced along their nearest axes)
    np.array([[0.6275, -0.5265, 0.5736], [0.7786, 0.4160, -0.4698], [0.0088, 0.7414, 0.6710]]),
])
def test_overlay_panels_are_the_slices_volumes_are_cut_into(direction):
    """One physical-axis rule (medsam3.orientation): each overlay panel through a voxel is the
    slice of that plane through the voxel that the volume predictor shows the model."""
    from medsam3.orientation import choose_orientation, physical_axes_unique

    volume = np.random.default_rng(3).random((4, 5, 6)).astype(np.float32)
    labels = np.zeros(volume.shape, int)
    voxel = (1, 3, 2)
    labels[voxel] = 1
    views = orthogonal_slices(volume, labels, (1, 1, 1), direction.ravel())
    assert physical_axes_unique(direction) and all(v.sides is not None for v in views)
    for view in views:
        cut = choose_orientation(direction.ravel(), view.name)
        expected = cut.stack(volume)[voxel[cut.slice_axis]]
        np.testing.assert_array_equal(view.image, expected)
        np.testing.assert_array_equal(view.labels, cut.stack(labels)[voxel[cut.slice_axis]])


# --- PNG files ----------------------------------------------------------------------------

def _read_png(path):
    with PILImage.open(path) as png:
        assert png.format == "PNG"
        assert png.mode in ("RGB", "RGBA")
        assert png.width > 0 and png.height > 0
        return np.asarray(png.convert("RGB"))


def _count_near(rgb, color, tol=2):
    return int(np.all(np.abs(rgb.astype(int) - np.asarray(color)) <= tol, axis=-1).sum())


def test_render_2d_paints_each_label_with_its_colour(tmp_path):
    grey = np.zeros((80, 120), dtype=np.uint8)  # black image: fill = alpha * colour
    labels = np.zeros(grey.shape, dtype=np.uint8)
    labels[10:40, 10:50] = 1
    labels[45:75, 60:110] = 2
    image = Image.from_array(grey, modality="XR")
    image.path = "/data/chest.png"
    out = render_overlay(image, labels, {1: "lung", 2: "heart"}, tmp_path / "o.png",
                         alpha=0.5, absent=["tumour"])
    assert out == tmp_path / "o.png"
    rgb = _read_png(out)
    colors = label_colors(2)
    fill1 = np.rint(0.5 * np.asarray(colors[0])).astype(int)
    fill2 = np.rint(0.5 * np.asarray(colors[1])).astype(int)
    # the image is scaled up in the figure: each region covers many output pixels
    assert _count_near(rgb, fill1) > 30 * 40
    assert _count_near(rgb, fill2) > 30 * 50
    # the contours and legend patches use the full colour
    assert _count_near(rgb, colors[0], tol=10) > 0 and _count_near(rgb, colors[1], tol=10) > 0
    # the label-1 fill lies left of and above the label-2 fill, as in the array
    ys1, xs1 = np.nonzero(np.all(np.abs(rgb.astype(int) - fill1) <= 2, axis=-1))
    ys2, xs2 = np.nonzero(np.all(np.abs(rgb.astype(int) - fill2) <= 2, axis=-1))
    assert np.median(xs1) < np.median(xs2) and np.median(ys1) < np.median(ys2)


def test_render_2d_rgb_and_empty_labels(tmp_path):
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    image = Image.from_array(rgb, rgb=True)
    out = render_overlay(image, np.zeros((30, 40), np.uint8), {}, tmp_path / "rgb.png")
    pixels = _read_png(out)
    assert _count_near(pixels, (200, 0, 0)) > 30 * 40


def test_render_3d_montage_of_an_anisotropic_volume(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, (8, 40, 50)).astype(np.float32)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[2:6, 10:25, 10:30] = 1
    labels[3:5, 28:35, 35:45] = 3
    image = Image.from_array(volume, spacing=(0.7, 0.7, 5.0), modality="MR")
    image.path = "/data/case_001.nii.gz"
    out = render_overlay(image, labels, {1: "liver", 3: "kidney"}, tmp_path / "m.png")
    rgb = _read_png(out)
    assert rgb.shape[1] > rgb.shape[0]  # three panels side by side
    assert _count_near(rgb, label_colors(1)[0], tol=10) > 0


def test_render_uses_the_given_normalized_image(tmp_path):
    image = Image.from_array(np.zeros((20, 20), np.int16), modality="CT")
    normalized = np.ones((20, 20), np.float32)  # white, although the raw image is -> 0
    out = render_overlay(image, np.zeros((20, 20), int), {}, tmp_path / "w.png",
                         normalized=normalized)
    rgb = _read_png(out)
    assert _count_near(rgb, (255, 255, 255)) > 0
    with pytest.raises(ArgumentError, match="normalized"):
        render_overlay(image, np.zeros((20, 20), int), {}, tmp_path / "x.png",
                       normalized=np.ones((10, 20)))


def test_mismatched_labels_raise_and_write_nothing(tmp_path):
    image = Image.from_array(np.zeros((20, 20)), modality="MR")
    with pytest.raises(ArgumentError, match="shape"):
        render_overlay(image, np.zeros((21, 20), int), {}, tmp_path / "bad.png")
    with pytest.raises(ArgumentError, match="whole numbers"):
        render_overlay(image, np.full((20, 20), 0.5), {}, tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    image = Image.from_array(np.zeros((20, 20)), modality="MR")
    target = tmp_path / "o.png"
    with pytest.raises(RuntimeError, match="disk full"):
        render_overlay(image, np.zeros((20, 20), int), {}, target)
    assert list(tmp_path.iterdir()) == []
    # an existing picture is not replaced by a broken one
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        render_overlay(image, np.zeros((20, 20), int), {}, target)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
