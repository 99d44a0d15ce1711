"""Exemplar boxes on volumes (issue #31 item 5): drawn on one slice of the input array's plane,
they reach the detector on that slice only, on the same anatomy, whatever the file's storage
order (real rotated / mirrored volumes), and start the pass there in tracking modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import medsam3
from medsam3.cli import main
from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.io import read_image
from medsam3.predict import ImagePredictor
from medsam3.predict.orientation import choose_orientation
from medsam3.predict.volume import EXEMPLAR_RULE, segment_volume

ITK_KMEANS = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1RawSkullStrip.nii.gz")
COLIN = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"


def _real(path: Path) -> Image:
    if not path.exists():
        pytest.fail(f"{path} missing (insighttoolkit5-examples / the bundled sample)")
    return read_image(path)


def _marked(image: Image, axis: str | None, k: int, box, keep: int = 3) -> tuple[Image, int]:
    """``keep`` slices around slice ``k`` of ``image`` (along the slicing axis), intensities in
    [0, 0.5], with the pixels of ``box`` on slice ``k``'s array plane set to 1; returns the block
    and ``k``'s index in it."""
    o = choose_orientation(image.direction, axis)
    s = o.slice_axis
    lo = k - keep // 2
    array = np.take(image.array.astype(np.float32), range(lo, lo + keep), axis=s)
    array = 0.5 * (array - array.min()) / max(float(np.ptp(array)), 1e-6)
    index = [slice(None)] * 3
    index[s] = k - lo
    plane = array[tuple(index)]  # a view: writes go into the block
    x0, y0, x1, y1 = box
    plane[y0:y1, x0:x1] = 1.0
    return Image(np.ascontiguousarray(array), image.spacing, image.origin, image.direction, modality=image.modality), k - lo


class _Spy:
    """Records the image each detector call sees and the prompts it gets."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[np.ndarray, list]] = []
        preprocess, set_pixels, detect = ImagePredictor.preprocess, ImagePredictor.set_pixel_values, ImagePredictor.detect
        spy = self
        images = {}  # id of the pixel tensor -> the image it was made from (prepared ahead of the model)

        def recording_preprocess(predictor, image):
            pixels = preprocess(predictor, image)
            images[id(pixels)] = (pixels, np.asarray(image).copy())
            return pixels

        def recording_set_pixels(predictor, pixels, size, features=None):
            predictor._spy_image = images.pop(id(pixels))[1]
            return set_pixels(predictor, pixels, size, features=features)

        def recording_detect(predictor, prompts):
            spy.calls.append((predictor._spy_image, [(p.text, [list(b) for b in p.exemplar_boxes],
                                                      list(p.exemplar_labels)) for p in prompts]))
            return detect(predictor, prompts)

        monkeypatch.setattr(ImagePredictor, "preprocess", recording_preprocess)
        monkeypatch.setattr(ImagePredictor, "set_pixel_values", recording_set_pixels)
        monkeypatch.setattr(ImagePredictor, "detect", recording_detect)

    def with_boxes(self):
        return [(img, prompts) for img, prompts in self.calls if any(p[1] for p in prompts)]


@pytest.mark.parametrize("path, axis, k", [(ITK_KMEANS, None, 40), (ITK_KMEANS, "axial", 30), (COLIN, None, 45)],
                         ids=["itk-coronal-file", "itk-coronal-file-axial", "colin27-mirrored"])
def test_exemplar_boxes_land_on_the_drawn_pixels_of_their_slice(tiny_model, monkeypatch, path, axis, k):
    box = (10, 20, 30, 40)
    image, k_block = _marked(_real(path), axis, k, box)
    spy = _Spy(monkeypatch)
    seg = medsam3.segment(image, prompts=["brain"], exemplars=[list(box), [40, 20, 50, 30]],
                          exemplar_labels=[1, 0], slice_index=k_block, model=tiny_model, mode="slices", axis=axis,
                          window=(0.5, 1.0), progress=False)
    assert len(spy.calls) == 3  # one detector call per slice
    boxed = spy.with_boxes()
    assert len(boxed) == 1, "exemplars go to the detector on their own slice only"
    seen, [(text, boxes, labels)] = boxed[0]
    assert text == "brain" and labels == [1, 0]
    # the box the detector gets covers exactly the marked pixels of the image it is given
    grey = seen[..., 0] if seen.ndim == 3 else seen
    bx0, by0, bx1, by1 = (int(round(v)) for v in boxes[0])
    assert (bx1 - bx0, by1 - by0) == (20, 20)
    assert np.all(grey[by0:by1, bx0:bx1] == 1.0)
    assert int((grey == 1.0).sum()) == 400, "the marked square lies entirely inside the converted box"
    # the negative exemplar moved the same way: same offset relative to the positive one in the model's view
    o = choose_orientation(image.direction, axis)
    assert boxes[1] == o.plane_box_to_slice([40, 20, 50, 30], image.shape)
    # the other slices are detected from the text alone, and the sidecar states the rule
    assert all(not any(p[1] for p in prompts) for _, prompts in spy.calls if _ is not seen)
    assert seg.sidecar["volume"]["exemplars"] == {"slice": k_block, "rule": EXEMPLAR_RULE}


def test_a_mirrored_volume_no_longer_gets_the_box_of_the_unmirrored_plane(tiny_model, monkeypatch):
    """The issue's example: on the bundled sample (direction diag(-1, -1, 1)) ``10 20 30 40``
    reached the predictor unconverted, i.e. on the mirrored pixels."""
    image = _real(COLIN)
    block, k = _marked(image, None, 45, (10, 20, 30, 40))
    spy = _Spy(monkeypatch)
    medsam3.segment(block, prompts=["brain"], exemplars=[[10, 20, 30, 40]], slice_index=k, model=tiny_model,
                    mode="slices", window=(0.5, 1.0), progress=False)
    (_, [(_, boxes, _)]), = spy.with_boxes()
    h, w = block.shape[1:]
    assert boxes[0] == [w - 30, h - 40, w - 10, h - 20] != [10, 20, 30, 40]


def test_tracking_modes_start_the_pass_on_the_exemplar_slice(tiny_model, monkeypatch):
    image = _real(COLIN)
    block, k = _marked(image, None, 45, (10, 20, 30, 40), keep=5)
    volume = block.array
    spy = _Spy(monkeypatch)
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0)
    prompt = medsam3.predict.TextPrompt("brain", [[10, 20, 30, 40]], [1])
    result = segment_volume(predictor, volume, [prompt], direction=block.direction, mode="merged",
                            exemplar_slice=k, empty_slices=None, progress=False)
    order = [int(np.argmax([np.array_equal(img, result.orientation.stack(volume)[z]) for z in range(5)]))
             for img, _ in spy.calls]
    assert order == [2, 3, 4, 1, 0]  # from the exemplar slice forwards, then back
    assert [bool(any(p[1] for p in prompts)) for _, prompts in spy.calls] == [True, False, False, False, False]


def test_bad_exemplars_on_volumes(tiny_model, tiny_model_dir, tmp_path, capsys):
    block, k = _marked(_real(COLIN), None, 45, (10, 20, 30, 40))
    with pytest.raises(ArgumentError, match="exemplar boxes need --slice"):
        medsam3.segment(block, prompts=["brain"], exemplars=[[10, 20, 30, 40]], model=tiny_model,
                        mode="slices", progress=False)
    with pytest.raises(ArgumentError, match=r"exemplar box 10 20 300 40 is not inside slice 1 \(width 90"):
        medsam3.segment(block, prompts=["brain"], exemplars=[[10, 20, 300, 40]], slice_index=k, model=tiny_model,
                        mode="slices", progress=False)
    out = tmp_path / "labels.nii.gz"
    code = main(["segment", "-i", str(COLIN), "-o", str(out), "-p", "brain", "--exemplar", "10", "20", "30", "40",
                 "--model", str(tiny_model_dir), "--mode", "slices"])
    assert code == 2 and not out.exists()
    assert "exemplar boxes need --slice" in capsys.readouterr().err
