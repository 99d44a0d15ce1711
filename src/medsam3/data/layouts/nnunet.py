"""nnU-Net raw datasets, as users have them for nnU-Net v2 (and v1).

Layout (``DatasetXXX_Name/`` for v2, ``TaskXXX_Name/`` for v1)::

    dataset.json
    imagesTr/CASE_0000.nii.gz   CASE_0001.nii.gz ...   (one file per channel)
    labelsTr/CASE.nii.gz
    imagesTs/...                (labelsTs/ when the user has test labels)

``dataset.json`` v2: ``channel_names`` ({"0": "CT"}), ``labels`` (name -> value, or ->
list of values for region-based training), ``numTraining``, ``file_ending``, optionally
``dataset`` (explicit case -> files). v1: ``modality`` ({"0": "CT"}) and ``labels``
(value -> name). Each channel becomes its own manifest item (same label, same split);
three channels named R, G, B become one colour item.
"""

from __future__ import annotations

import re
from pathlib import Path

from medsam3.data.headers import check_pair, read_header
from medsam3.data.layouts.common import (
    check_modality,
    image_ending,
    is_hidden,
    listing,
    modality_from_name,
    progress,
    read_json,
    relative,
    require_directory,
)
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError, InputError

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def find_dataset_json(root: Path) -> Path:
    """The ``dataset.json`` of an nnU-Net / Decathlon dataset folder."""
    path = root / "dataset.json"
    if path.is_file():
        return path
    candidates = sorted(p.parent.name for p in root.glob("*/dataset.json"))
    if candidates:
        raise InputError(f"{root} holds several datasets ({listing(candidates)}); "
                         "convert one of them: -i " + str(root / candidates[0]))
    if (root / "imagesTr").is_dir():
        raise InputError(f"{root} has imagesTr/ but no dataset.json; nnU-Net and Decathlon datasets "
                         "describe their channels and labels there")
    raise InputError(f"{root} is not an nnU-Net dataset: expected dataset.json, imagesTr/ and labelsTr/")


def parse_labels(raw, path: Path) -> tuple[dict[str, str], dict[str, list[int]], int | None]:
    """nnU-Net v1/v2 ``labels`` -> (value -> name, region name -> values, ignore value)."""
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: 'labels' must be a non-empty mapping")
    labels: dict[str, str] = {}
    regions: dict[str, list[int]] = {}
    ignore = None
    keys_are_values = all(str(k).strip().lstrip("-").isdigit() for k in raw)
    for key, value in raw.items():
        if keys_are_values:  # v1 / Decathlon: {"0": "background", "1": "liver"}
            number, name = int(key), str(value)
            if number == 0:
                continue
            labels[str(number)] = name
            continue
        name = str(key)  # v2: {"background": 0, "liver": 1, "whole tumor": [1, 2, 3]}
        if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
            raise InputError(f"{path}: label {name!r} has value {value!r}; expected a whole number "
                             "or a list of them")
        if name.lower() == "ignore":
            ignore = int(value if isinstance(value, int) else value[0])
            continue
        if isinstance(value, int):
            if value != 0:
                labels[str(value)] = name
        else:
            values = [int(v) for v in value]
            if values == [0]:
                continue
            if len(values) == 1:
                labels[str(values[0])] = name
            else:
                regions[name] = values
    return labels, regions, ignore


def channel_modalities(meta: dict, path: Path) -> dict[int, str]:
    """``{channel index: modality}`` from a dataset.json's ``channel_names`` / ``modality``."""
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: needs 'channel_names' (nnU-Net v2) or 'modality' (v1, Decathlon), "
                         'e.g. {"0": "CT"}')
    try:
        return {int(k): str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))}
    except ValueError:
        raise InputError(f"{path}: channel keys must be numbers, got {list(channels)}") from None


def _scan_cases(images_dir: Path, ending: str, n_channels: int, layout_path: Path) -> dict[str, list[Path]]:
    cases: dict[str, dict[int, Path]] = {}
    wrong_ending, unmatched = [], []
    for path in sorted(images_dir.iterdir()):
        if is_hidden(path) or not path.is_file():
            continue
        if not path.name.endswith(ending):
            wrong_ending.append(path.name)
            continue
        m = _CHANNEL.match(path.name[: -len(ending)])
        if not m:
            unmatched.append(path.name)
            continue
        cases.setdefault(m["case"], {})[int(m["channel"])] = path
    if unmatched:
        raise InputError(f"{images_dir}: nnU-Net images are named CASE_XXXX{ending} (XXXX = channel), "
                         f"but found {listing(unmatched)}; Decathlon tasks without channel numbers "
                         "convert with --layout msd")
    if wrong_ending:
        raise InputError(f"{images_dir}: files {listing(wrong_ending)} do not end in {ending} "
                         f"(file_ending of {layout_path})")
    out = {}
    for case, channels in cases.items():
        missing = [c for c in range(n_channels) if c not in channels]
        extra = [c for c in channels if c >= n_channels]
        if missing or extra:
            raise InputError(f"{images_dir}: case {case!r} has channels {sorted(channels)}, but dataset.json "
                             f"declares {n_channels} (0..{n_channels - 1})")
        out[case] = [channels[c] for c in range(n_channels)]
    return out


def _pair_cases(images: dict[str, list[Path]], labels_dir: Path, ending: str) -> dict[str, Path]:
    labels = {p.name[: -len(ending)]: p for p in sorted(labels_dir.iterdir())
              if p.is_file() and not is_hidden(p) and p.name.endswith(ending)}
    others = [p.name for p in labels_dir.iterdir()
              if p.is_file() and not is_hidden(p) and not p.name.endswith(ending)]
    if others:
        raise InputError(f"{labels_dir}: files {listing(sorted(others))} do not end in {ending}")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label:
        raise InputError(f"{labels_dir}: no label for image case(s) {listing(no_label)} "
                         f"(expected {labels_dir / (no_label[0] + ending)})")
    if no_image:
        raise InputError(f"{labels_dir}: label(s) {listing([c + ending for c in no_image])} have no image "
                         f"in {labels_dir.parent / 'imagesTr'} (expected CASE_0000{ending})")
    return labels


def _explicit_cases(meta: dict, root: Path, path: Path) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    images, labels = {}, {}
    for case, entry in meta["dataset"].items():
        try:
            images[case] = [root / p for p in entry["images"]]
            labels[case] = root / entry["label"]
        except (KeyError, TypeError):
            raise InputError(f"{path}: 'dataset' entry {case!r} needs 'images' (list) and 'label'") from None
    return images, labels


def convert_nnunet(root: Path, *, dataset: str | None = None, modality: str | None = None,
                   check_geometry: bool = True, show_progress: bool = True,
                   channels: list[int] | None = None) -> list[ManifestItem]:
    """Manifest items of an nnU-Net raw dataset folder (training cases, plus labelled test cases).

    Args:
        root: the ``DatasetXXX_Name`` (or v1 ``TaskXXX_Name``) folder.
        dataset: name in the manifest (default: the folder name).
        modality: overrides the modality read from the channel names.
        channels: only these channel indices (default: all).

    Raises:
        InputError: no dataset.json, misnamed files, images without labels and labels
            without images, a case missing a channel, numTraining disagreeing with the
            files, a label off its image's grid.
    """
    root = require_directory(root, "nnU-Net")
    meta_path = find_dataset_json(root)
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object")
    dataset = dataset or root.name
    modality = check_modality(modality)
    channel_names = channel_modalities(meta, meta_path)
    n_channels = len(channel_names)
    labels, regions, ignore = parse_labels(meta.get("labels"), meta_path)
    ending = meta.get("file_ending")
    if ending is None:  # v1: take it from the training list, default NIfTI
        training = meta.get("training") or []
        first = training[0]["image"] if training and isinstance(training[0], dict) else "x.nii.gz"
        ending = image_ending(first) or ".nii.gz"
    if channels is not None:
        bad = [c for c in channels if c not in channel_names]
        if bad:
            raise ArgumentError(f"channel(s) {bad} not in {meta_path} (channels: {channel_names})")

    rgb_channels = [channel_names[c].strip().upper() for c in sorted(channel_names)] == ["R", "G", "B"]
    splits: list[tuple[str, dict[str, list[Path]], dict[str, Path]]] = []
    if isinstance(meta.get("dataset"), dict):
        images, label_files = _explicit_cases(meta, root, meta_path)
        splits.append(("train", images, label_files))
    else:
        for split, images_name, labels_name in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
            images_dir, labels_dir = root / images_name, root / labels_name
            if split == "train":
                for d in (images_dir, labels_dir):
                    if not d.is_dir():
                        raise InputError(f"{root} is not an nnU-Net dataset: {d.name}/ is missing")
            elif not (images_dir.is_dir() and labels_dir.is_dir()):
                continue  # unlabelled test images are not training data
            # nnU-Net's natural-image reader takes one RGB PNG for channels R, G, B
            one_file_rgb = rgb_channels and not any(images_dir.glob(f"*_0001{ending}"))
            images = _scan_cases(images_dir, ending, 1 if one_file_rgb else n_channels, meta_path)
            label_files = _pair_cases(images, labels_dir, ending)
            if split == "train" and "numTraining" in meta and int(meta["numTraining"]) != len(images):
                raise InputError(f"{meta_path}: numTraining is {meta['numTraining']} but {images_dir} holds "
                                 f"{len(images)} cases")
            if split == "train" and not images:
                raise InputError(f"{images_dir}: no images ending in {ending}")
            splits.append((split, images, label_files))

    selected = sorted(channel_names) if channels is None else list(channels)
    items: list[ManifestItem] = []
    total = sum(len(images) for _, images, _ in splits)
    bar = progress(((s, c, im, lab) for s, images, lab in splits for c, im in sorted(images.items())),
                   f"nnU-Net {dataset}", total=total, enabled=show_progress)
    for split, case, channel_files, label_files in bar:
        label_path = label_files[case]
        label_header = read_header(label_path)
        headers = [read_header(p) for p in channel_files]
        for h in headers:
            check_pair(h, label_header, geometry=check_geometry)
        common = dict(dataset=dataset, split=split, case=case, label=relative(label_path, root),
                      label_format="map", labels=labels, regions=regions, dim=label_header.ndim,
                      shape=list(label_header.shape), spacing=list(label_header.spacing),
                      ignore_value=ignore)
        if rgb_channels and channels is None:
            image = ([relative(p, root) for p in channel_files] if len(channel_files) == 3
                     else relative(channel_files[0], root))
            items.append(ManifestItem(id=f"{dataset}/{case}", image=image, modality=modality or "RGB",
                                      rgb=True, **common))
            continue
        for c in selected:
            name = channel_names[c]
            suffix = f"/{c}" if n_channels > 1 else ""
            items.append(ManifestItem(
                id=f"{dataset}/{case}{suffix}", image=relative(channel_files[c], root),
                modality=modality or modality_from_name(name), channel_name=name,
                rgb=headers[c].components == 3, **common))
    return items
