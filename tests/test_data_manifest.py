"""The manifest file: round trip, header, validation with line numbers, atomic writes."""

from __future__ import annotations

import json

import pytest

from medsam3.data.manifest import FORMAT_NAME, ManifestItem, read_manifest, write_manifest
from medsam3.errors import ArgumentError, InputError


def item(**changes) -> ManifestItem:
    data = dict(id="ds/case1", dataset="ds", split="train", image="imagesTr/case1_0000.nii.gz",
                label="labelsTr/case1.nii.gz", label_format="map", labels={"1": "liver", "2": "liver tumor"},
                modality="CT", dim=3, shape=[4, 8, 8], spacing=[0.8, 0.8, 2.5])
    data.update(changes)
    return ManifestItem(**data)


def test_round_trip_and_header(tmp_path):
    items = [item(), item(id="ds/case2", split="val", regions={"whole": [1, 2]}, ignore_value=255),
             item(id="ds/rgb", image=["r.png", "g.png", "b.png"], dim=2, shape=[5, 6], spacing=[1, 1],
                  modality="RGB", rgb=True, label=None, labels={}, source={"note": "unlabelled"})]
    path = write_manifest(items, tmp_path / "m.jsonl", root=tmp_path / "data", layout="nnunet")
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {"format": FORMAT_NAME, "version": 1, "root": str((tmp_path / "data").resolve()),
                      "layout": "nnunet", "items": 3}
    first = json.loads(lines[1])
    assert "regions" not in first and "case" not in first and "rgb" not in first  # empty optionals left out
    m = read_manifest(path)
    assert [it.to_json() for it in m] == [it.to_json() for it in items]
    assert m.root == (tmp_path / "data").resolve() and m.layout == "nnunet"
    assert m.resolve("imagesTr/x.nii.gz") == (tmp_path / "data").resolve() / "imagesTr/x.nii.gz"
    assert [it.id for it in m.select(split="val")] == ["ds/case2"]
    assert [it.id for it in m.select(labelled=True)] == ["ds/case1", "ds/case2"]
    assert m[1].targets() == [("liver", (1,)), ("liver tumor", (2,)), ("whole", (1, 2))]
    assert read_manifest(path, root=tmp_path / "moved").root == tmp_path / "moved"
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary files left


def test_targets_merge_values_with_one_name_and_instance_maps():
    assert item(labels={"1": "tumor", "2": "tumor", "3": "cyst"}).targets() == [("tumor", (1, 2)), ("cyst", (3,))]
    assert item(labels={}, instance_class="cell nucleus").targets() == [("cell nucleus", None)]


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({"id": "x"}), "line 2: missing field"),
    (json.dumps({**item().to_json(), "colour": "red"}), "unknown field.*colour"),
    (json.dumps({**item().to_json(), "split": "holdout"}), "split 'holdout'"),
    (json.dumps({**item().to_json(), "modality": "PHOTO"}), "modality 'PHOTO'"),
    (json.dumps({**item().to_json(), "shape": [4, 8]}), "does not describe a 3D image"),
    (json.dumps({**item().to_json(), "spacing": [1, 1, 0]}), "positive numbers"),
    (json.dumps({**item().to_json(), "labels": {"one": "liver"}}), "not a whole number"),
    (json.dumps({**item().to_json(), "labels": {}}), "needs 'labels'"),
    (json.dumps({**item().to_json(), "label_format": "xml"}), "label_format 'xml'"),
    (json.dumps({**item().to_json(), "label_format": "coco"}), "coco_image_id"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"format": FORMAT_NAME, "version": 1, "root": str(tmp_path)}) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_manifest(tmp_path / "missing.jsonl")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(item().to_json()) + "\n")
    with pytest.raises(InputError, match="not a medsam3 manifest"):
        read_manifest(path)
    path.write_text(json.dumps({"format": FORMAT_NAME, "version": 7}) + "\n")
    with pytest.raises(InputError, match="version 7"):
        read_manifest(path)
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_manifest(path)
    header = json.dumps({"format": FORMAT_NAME, "version": 1, "root": "data"})
    path.write_text(header + "\n" + json.dumps(item().to_json()) + "\n" + json.dumps(item().to_json()) + "\n")
    with pytest.raises(InputError, match="line 3: duplicate id 'ds/case1'"):
        read_manifest(path)
    path.write_text(header + "\n")
    assert read_manifest(path).root == tmp_path / "data"  # a relative root is relative to the file


def test_write_refuses_bad_items_and_keeps_the_old_file(tmp_path):
    path = write_manifest([item()], tmp_path / "m.jsonl", root=tmp_path)
    before = path.read_text()
    with pytest.raises(ArgumentError, match="duplicate manifest id"):
        write_manifest([item(), item()], path, root=tmp_path)
    with pytest.raises(InputError, match="split 'x'"):
        write_manifest([item(split="x")], path, root=tmp_path)
    with pytest.raises(ArgumentError, match="must end in .jsonl"):
        write_manifest([item()], tmp_path / "m.json", root=tmp_path)
    assert path.read_text() == before
