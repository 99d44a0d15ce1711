"""Training samples for SAM3: one (image, text prompt, masks, boxes) per index.

:class:`PromptSegmentationDataset` turns a manifest into what a SAM3 trainer consumes,
independent of any model object except the input size. See its docstring for the sample
dict; :func:`collate_samples` batches samples; :class:`BalancedSampler` draws indices so
that modalities, then datasets, get equal shares.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from medsam3.data.augment import (
    BOX_NOISE,
    BOX_NOISE_MAX_PX,
    MIN_SCALE,
    allowed_flips,
    flip_arrays,
    jitter_intensity,
    noisy_box,
    random_side,
    resize_to_canvas,
)
from medsam3.data.cache import SampleCache, to_unit_float
from medsam3.data.instances import (
    boxes_xyxy,
    connected_instances,
    kept_instance_ids,
    relabel,
    xyxy_to_cxcywh,
)
from medsam3.data.loading import LoadedItem, load_item, target_mask
from medsam3.data.manifest import Manifest, check_files_exist, read_manifest
from medsam3.errors import ArgumentError
from medsam3.preprocess import context_offset, context_planes
from medsam3.prompts import UnknownConceptWarning, prompt_variants, resolve_prompt

#: SAM3's processor normalisation: ``(x - mean) / std`` with mean = std = 0.5 per channel.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


class PromptSegmentationDataset(Dataset):
    """Text-prompted segmentation samples from a manifest, 2D images and slices of volumes.

    The index runs over (item, class) pairs of the labelled items of ``split``: each index
    asks for one class of one image. For a volume, a slice is drawn that holds the class
    (foreground bias); with probability ``absent_probability`` a slice without it is drawn
    instead (in the image content, not padding) so that the presence head learns "absent".
    With ``small_slice_bias`` the present slice is drawn, that often, with weights
    ``1 / sqrt(area)`` of the class in the slice rather than uniformly: a structure's ends
    (the top of the brain, the skull base), where it is small and hard, come up more often.
    With ``near_absent_bias`` an absent slice is drawn, that often, from the slices within
    ``near_absent_mm`` of the nearest slice holding the class (hard negatives along the slicing
    axis: just above and below a structure) rather than from the whole volume.
    For a 2D image the absent case swaps the prompt for another class the item labels
    that is not in the image (BUSI "normal" images and empty masks are absent by themselves).
    Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``: a sample is
    reproducible, and :meth:`set_epoch` varies it between epochs.

    Args:
        manifest: a :class:`Manifest` or the path of one.
        image_size: the model's input size ``S`` (1008 for SAM3; a small config's size).
        split: which split(s) to use; ``datasets`` restricts to some datasets.
        augment: random scale/pad, flips where labels allow, intensity jitter and prompt
            synonyms (default: on for ``split="train"``).
        cache: a :class:`SampleCache` or its directory (default: read the files).
        window: CT window for CT items when reading without a cache (the cache's own
            window is used with a cache).
        absent_probability: share of samples whose class is absent.
        small_slice_bias: share of a volume's present samples whose slice is drawn with
            weights ``1 / sqrt(area)`` (0, the default: uniformly over the slices holding it).
        near_absent_bias, near_absent_mm: share of a volume's absent samples whose slice lies
            within ``near_absent_mm`` (default 20) of the class along the slicing axis (0, the
            default: uniformly over the volume's slices without it).
        box_prompt_probability: share of present samples that carry a noisy ground-truth
            box prompt (paper: 0.5); ``box_noise`` / ``box_noise_max_px`` as in the paper.
        max_negative_prompts: up to this many classes that the item labels and that are
            absent from the sample's image (classes of other items or datasets are never
            used: nobody checked that they are absent).
        prompt_variation: with augmentation, share of samples that use a synonym or
            template ("kidney, left") instead of the canonical prompt.
        min_scale: smallest random square side as a fraction of ``image_size``
            (paper: 480/1008).
        intensity_jitter: probability of each intensity jitter (0 turns it off).
        max_instances: keep at most this many instances, the largest (SAM3: 200 queries).
        instance_masks: return ``instance_masks``; ``False`` leaves it ``None`` and only the
            compact ``instance_map`` is returned (200 masks at 1008 px take 200 MB).
        memory_items: items kept in memory between samples (each DataLoader worker has its own).
        context_mm: 2.5D input for volumes: each slice goes in with its neighbours about this
            many millimetres before and after it on the red and blue channels
            (:func:`medsam3.preprocess.context_planes`; with augmentation the two neighbours
            swap places half the time). 0 (the default): the slice alone, grey. 2D images
            are always grey.

    Each sample is a dict:

    ``image``
        ``float32 (3, S, S)``: intensities normalised by modality
        (:func:`medsam3.preprocess.normalize_intensity`), resized to a square of side
        ``s`` (``s = S`` without augmentation; aspect not kept, as SAM3's processor),
        padded with black at the bottom and right, then ``(x - 0.5) / 0.5`` like
        ``Sam3Processor`` (so padding is -1). Grey images are repeated on 3 channels.
    ``prompt``
        ``str``: the text prompt (canonical, or a synonym/template with augmentation),
        at most 32 CLIP tokens.
    ``class_name``
        ``str``: the class as the manifest names it.
    ``present``
        ``bool``: the class has at least one pixel in ``semantic_mask``.
    ``semantic_mask``
        ``bool (S, S)``: the class's pixels (union of the instances).
    ``instance_masks``
        ``bool (N, S, S)``: one mask per object (connected components of the class, or
        the dataset's own instances); ``N = 0`` when absent. ``None`` with
        ``instance_masks=False``.
    ``instance_map``
        ``int32 (S, S)``: the same objects as one map, ``k`` on the pixels of the k-th
        instance (1-based, the order of ``instance_masks`` and ``boxes``), 0 elsewhere.
    ``boxes``
        ``float32 (N, 4)``: the instances' boxes ``cx, cy, w, h`` normalised by ``S``
        (the whole padded canvas, which is what the model sees).
    ``box_prompt``
        ``float32 (4,)`` noisy ground-truth box of one instance, ``cx, cy, w, h``
        normalised by ``S``, or ``None``.
    ``negative_prompts``
        ``list[str]``: prompts of classes the item labels that are absent from this image.
    ``loss_mask``
        ``bool (S, S)``: pixels that carry ground truth: the resized image, minus
        pixels labelled with the dataset's ``ignore`` value.
    ``meta``
        ``dict``: ``item_id``, ``dataset``, ``modality``, ``slice_index`` (``None`` for
        2D), ``source_shape`` (``(h, w)`` of the 2D image before resizing), ``side``
        (``s``), ``flipped`` (``(horizontal, vertical)``), ``instances_truncated``.
    """

    def __init__(self, manifest: Manifest | str | os.PathLike, image_size: int = 1008, *,
                 split: str | Sequence[str] | None = "train", datasets: Sequence[str] | None = None,
                 augment: bool | None = None, cache: SampleCache | str | os.PathLike | None = None,
                 window=None, absent_probability: float = 0.2, small_slice_bias: float = 0.0,
                 near_absent_bias: float = 0.0, near_absent_mm: float = 20.0,
                 box_prompt_probability: float = 0.5,
                 box_noise: float = BOX_NOISE, box_noise_max_px: float = BOX_NOISE_MAX_PX,
                 max_negative_prompts: int = 3, max_positive_prompts: int = 0, prompt_variation: float = 0.5,
                 min_scale: float = MIN_SCALE, intensity_jitter: float = 0.5, max_instances: int = 200,
                 instance_masks: bool = True, seed: int = 0, memory_items: int = 2, context_mm: float = 0.0):
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        if image_size < 16:
            raise ArgumentError(f"image_size {image_size} is too small")
        for name, p in (("absent_probability", absent_probability), ("small_slice_bias", small_slice_bias),
                        ("near_absent_bias", near_absent_bias),
                        ("box_prompt_probability", box_prompt_probability),
                        ("prompt_variation", prompt_variation), ("intensity_jitter", intensity_jitter)):
            if not 0.0 <= p <= 1.0:
                raise ArgumentError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 <= context_mm <= 100.0:
            raise ArgumentError(f"context_mm must be in [0, 100] mm, got {context_mm}")
        if not near_absent_mm > 0:
            raise ArgumentError(f"near_absent_mm must be > 0 mm, got {near_absent_mm}")
        if not 0.0 < min_scale <= 1.0:
            raise ArgumentError(f"min_scale must be in (0, 1], got {min_scale}")
        self.image_size = int(image_size)
        self.selected = self.manifest.select(split=split, datasets=datasets, labelled=True)
        if not len(self.selected):
            raise ArgumentError(f"no labelled items in split {split!r}"
                                + (f" of datasets {list(datasets)}" if datasets else "")
                                + f" in {self.manifest.path or 'the manifest'}")
        self.items = self.selected.items
        check_files_exist(self.selected)  # a missing file fails now, not when first sampled
        self.augment = (split == "train") if augment is None else bool(augment)
        self.cache = SampleCache(cache) if cache is not None and not isinstance(cache, SampleCache) else cache
        from medsam3.preprocess import parse_window

        self.window = parse_window(window)
        self.absent_probability = absent_probability
        self.small_slice_bias = small_slice_bias
        self.near_absent_bias, self.near_absent_mm = near_absent_bias, near_absent_mm
        self.box_prompt_probability = box_prompt_probability
        self.box_noise, self.box_noise_max_px = box_noise, box_noise_max_px
        self.max_negative_prompts = max_negative_prompts
        self.max_positive_prompts = max(0, int(max_positive_prompts))
        self.prompt_variation = prompt_variation
        self.min_scale = min_scale
        self.intensity_jitter = intensity_jitter
        self.max_instances = max_instances
        self.instance_masks = instance_masks
        self.seed = seed
        self.epoch = 0
        self.memory_items = max(1, memory_items)
        self.context_mm = float(context_mm)
        self._memory: OrderedDict[int, LoadedItem] = OrderedDict()
        self._presence: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        self._areas: dict[int, dict[str, np.ndarray]] = {}

        self.targets = [item.targets() for item in self.items]
        self.index = [(i, k) for i, t in enumerate(self.targets) for k in range(len(t))]
        if not self.index:
            raise ArgumentError("the selected items name no classes")
        self.dataset_classes: dict[str, list[str]] = {}
        for item in self.items:
            names = self.dataset_classes.setdefault(item.dataset, [])
            names.extend(n for n in item.class_names if n not in names)
        self._prompts: dict[str, str] = {}
        self.lateral = {ds: any(self._resolved(n).side for n in names) for ds, names in self.dataset_classes.items()}

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Draw different slices, scales and prompts in each epoch (same per epoch and index)."""
        self.epoch = int(epoch)

    def group_keys(self, by: Sequence[str] = ("modality", "dataset")) -> list[tuple]:
        """Per index, the item's values of ``by`` (for :class:`BalancedSampler`)."""
        out = []
        for i, _ in self.index:
            item = self.items[i]
            out.append(tuple(str(getattr(item, key) if getattr(item, key) is not None else "unknown")
                             for key in by))
        return out

    def index_classes(self) -> list[str]:
        """Per index, the class it asks for (as the manifest names it)."""
        return [self.targets[i][k][0] for i, k in self.index]

    def _resolved(self, name: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnknownConceptWarning)
            return resolve_prompt(name, warn=False, check_length=False)

    def prompt_for(self, name: str) -> str:
        """The canonical prompt of a class (warns once for a concept the vocabulary lacks;
        refuses one longer than SAM3's 32 tokens)."""
        if name not in self._prompts:
            self._prompts[name] = resolve_prompt(name, warn=True, check_length=True).prompt
        return self._prompts[name]

    def load_item(self, i: int) -> LoadedItem:
        """Item ``i`` loaded (from the cache or its files), kept in a small in-memory LRU."""
        if i in self._memory:
            self._memory.move_to_end(i)
            return self._memory[i]
        item = self.items[i]
        if self.cache is not None:
            loaded = self.cache.load(self.manifest, item)
            if i not in self._presence:
                self._presence[i] = self.cache.presence(item.id)
        else:
            loaded = load_item(self.manifest, item, self.window)
        self._memory[i] = loaded
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return loaded

    def presence(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Item ``i``'s slices per class and its non-empty slices (computed once)."""
        if i not in self._presence:
            loaded = self.load_item(i)
            if i not in self._presence:
                self._presence[i] = (loaded.presence(), loaded.nonempty_slices())
        return self._presence[i]

    def context_offset(self, i: int) -> int:
        """Slices between a slice of item ``i`` and each neighbour fed with it (0: the slice
        alone: no ``context_mm``, a 2D image or a colour volume)."""
        item = self.items[i]
        if not self.context_mm or item.dim != 3 or self.load_item(i).image.ndim != 3:
            return 0
        return context_offset(self.context_mm, item.spacing[-1] if item.spacing else 1.0)

    # ------------------------------------------------------------------ samples
    def _choose_slice(self, i: int, name: str, absent: bool, rng: np.random.Generator) -> int:
        per_class, nonempty = self.presence(i)
        fg = per_class.get(name, np.zeros(0, np.int64))
        if not absent and len(fg):
            if self.small_slice_bias and rng.random() < self.small_slice_bias:
                if i not in self._areas:
                    self._areas[i] = self.load_item(i).class_areas()
                weights = 1.0 / np.sqrt(self._areas[i][name][fg])
                return int(rng.choice(fg, p=weights / weights.sum()))
            return int(rng.choice(fg))
        background = np.setdiff1d(nonempty, fg) if len(nonempty) else np.setdiff1d(
            np.arange(self.load_item(i).image.shape[0]), fg)
        if len(background) and len(fg) and self.near_absent_bias and rng.random() < self.near_absent_bias:
            spacing = self.items[i].spacing[-1] if self.items[i].spacing else 1.0
            reach = max(1, int(self.near_absent_mm / spacing))
            gap = np.abs(background[:, None] - fg[None, :]).min(axis=1)
            near = background[gap <= reach]
            if len(near):
                return int(rng.choice(near))
        if len(background):
            return int(rng.choice(background))
        pool = fg if len(fg) else np.arange(self.load_item(i).image.shape[0])
        return int(rng.choice(pool))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.index):
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        i, k = self.index[index]
        item = self.items[i]
        name, values = self.targets[i][k]
        loaded = self.load_item(i)
        want_absent = rng.random() < self.absent_probability

        slice_index = None
        if item.dim == 3:
            slice_index = self._choose_slice(i, name, want_absent, rng)
            offset = self.context_offset(i)
            swap = bool(offset) and self.augment and rng.random() < 0.5
            image = to_unit_float(context_planes(loaded.image, slice_index, offset, swap))
            label = np.asarray(loaded.label[slice_index])
            instances = None if loaded.instances is None else np.asarray(loaded.instances[slice_index])
        else:
            image = to_unit_float(loaded.image)
            label = np.asarray(loaded.label)
            instances = None if loaded.instances is None else np.asarray(loaded.instances)

        present_values = set(np.unique(label).tolist()) - {item.ignore_value}
        item_targets = dict(self.targets[i])

        def in_image(class_name: str) -> bool:
            if class_name not in item_targets:
                return False
            vals = item_targets[class_name]
            return any(v > 0 for v in present_values) if vals is None else bool(present_values & set(vals))

        # only classes this item labels are known to be absent when their pixels are missing
        absent_classes = [n for n, _ in self.targets[i] if not in_image(n)] + list(item.absent)
        if want_absent and item.dim == 2 and in_image(name):
            swap = [n for n in absent_classes if n != name]
            if swap:
                name = swap[int(rng.integers(len(swap)))]

        ignore = (label == item.ignore_value) if item.ignore_value is not None else np.zeros(label.shape, bool)

        def objects_of(class_name) -> np.ndarray:
            m = target_mask(label, item_targets[class_name]) if class_name in item_targets else np.zeros(label.shape, bool)
            m &= ~ignore
            return np.where(m, instances, 0) if instances is not None else connected_instances(m)

        instance_map = objects_of(name)
        # more classes present in this image, each one more prompt row with its own targets
        others = [n for n, _ in self.targets[i] if n != name and in_image(n)]
        rng.shuffle(others)
        others = others[: self.max_positive_prompts]
        other_maps = [objects_of(n) for n in others]

        flipped = (False, False)
        if self.augment:
            h_ok, v_ok = allowed_flips(item.flips, item.modality, self.lateral[item.dataset])
            flipped = (h_ok and rng.random() < 0.5, v_ok and rng.random() < 0.5)
            if any(flipped):
                image, instance_map, ignore, *other_maps = flip_arrays([image, instance_map, ignore, *other_maps],
                                                                       *flipped)
            if self.intensity_jitter > 0:
                image = jitter_intensity(image, rng, self.intensity_jitter)
        canvas = self.image_size
        side = random_side(rng, canvas, self.min_scale) if self.augment else canvas
        pixels, (inst_t, ignore_t, *other_t) = resize_to_canvas(
            image, [instance_map.astype(np.int32), ignore, *[m.astype(np.int32) for m in other_maps]], side, canvas)

        def targets_of(inst: torch.Tensor):
            ids = kept_instance_ids(inst, self.max_instances)
            objects = relabel(inst, ids)
            masks = objects[None] == torch.arange(1, len(ids) + 1, dtype=torch.int32)[:, None, None]
            return ids, objects, masks, inst > 0, boxes_xyxy(masks)

        ids, objects, masks, semantic, boxes = targets_of(inst_t)
        truncated = len(ids) < len(kept_instance_ids(inst_t))
        present = bool(semantic.any())
        positive_rows = []
        for n, inst in zip(others, other_t):
            _, _, o_masks, o_semantic, o_boxes = targets_of(inst)
            if o_semantic.any():  # resizing can drop a class of a few pixels
                positive_rows.append({"prompt": self.prompt_for(n), "class_name": n, "semantic_mask": o_semantic,
                                      "instance_masks": o_masks, "boxes": xyxy_to_cxcywh(o_boxes, canvas)})

        box_prompt = None
        if present and rng.random() < self.box_prompt_probability:
            j = int(rng.integers(len(boxes)))
            noisy = noisy_box(boxes[j], rng, side, canvas, self.box_noise, self.box_noise_max_px)
            box_prompt = xyxy_to_cxcywh(noisy, canvas)

        prompt = self.prompt_for(name)
        if self.augment and self.prompt_variation > 0 and rng.random() < self.prompt_variation:
            variants = prompt_variants(prompt)
            prompt = variants[int(rng.integers(len(variants)))]
        negatives = [n for n in absent_classes if n != name]
        rng.shuffle(negatives)
        negative_prompts = [self.prompt_for(n) for n in negatives[: self.max_negative_prompts]]

        loss_mask = torch.zeros((canvas, canvas), dtype=torch.bool)
        loss_mask[:side, :side] = True
        loss_mask &= ~ignore_t

        return {
            "image": (pixels - PIXEL_MEAN) / PIXEL_STD,
            "prompt": prompt,
            "class_name": name,
            "present": present,
            "semantic_mask": semantic,
            "instance_masks": masks if self.instance_masks else None,
            "instance_map": objects,
            "boxes": xyxy_to_cxcywh(boxes, canvas),
            "box_prompt": box_prompt,
            "negative_prompts": negative_prompts,
            "positive_rows": positive_rows,
            "loss_mask": loss_mask,
            "meta": {"item_id": item.id, "dataset": item.dataset, "modality": item.modality,
                     "slice_index": slice_index, "source_shape": tuple(label.shape), "side": side,
                     "flipped": flipped, "instances_truncated": truncated},
        }


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: ``image`` ``(B, 3, S, S)``, ``semantic_mask`` and ``loss_mask``
    ``(B, S, S)``, ``instance_map`` ``(B, S, S)``, ``present`` ``(B,)`` bool; the
    per-sample lists ``prompt``,
    ``class_name``, ``instance_masks``, ``boxes``, ``box_prompt`` (tensor or ``None``),
    ``negative_prompts`` and ``meta``."""
    out: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in batch]),
        "semantic_mask": torch.stack([s["semantic_mask"] for s in batch]),
        "loss_mask": torch.stack([s["loss_mask"] for s in batch]),
        "present": torch.tensor([s["present"] for s in batch], dtype=torch.bool),
    }
    out["instance_map"] = torch.stack([s["instance_map"] for s in batch])
    for key in ("prompt", "class_name", "instance_masks", "boxes", "box_prompt", "negative_prompts", "meta"):
        out[key] = [s[key] for s in batch]
    return out


def balanced_weights(keys: Sequence[tuple], first_level: Mapping[str, float] | None = None) -> np.ndarray:
    """Sampling weights that give each value of the first key an equal share, within it
    each value of the second key an equal share, and so on; indices of one leaf share
    equally. ``first_level`` scales the shares of values of the first key (e.g. ``{"MR": 2}``:
    MR twice the share of each other modality; values not named keep 1). Returns weights
    summing to 1."""
    keys = [tuple(k) for k in keys]
    if not keys:
        return np.zeros(0)
    depth = len(keys[0])
    children: dict[tuple, set] = {}
    leaf_count: dict[tuple, int] = {}
    for k in keys:
        for level in range(depth):
            children.setdefault(k[:level], set()).add(k[level])
        leaf_count[k] = leaf_count.get(k, 0) + 1
    weights = np.empty(len(keys))
    for n, k in enumerate(keys):
        w = 1.0
        for level in range(depth):
            w /= len(children[k[:level]])
        if first_level:
            w *= float(first_level.get(k[0], 1.0))
        weights[n] = w / leaf_count[k]
    return weights / weights.sum()


def class_weighted(classes: Sequence[str], class_weights: Mapping[str, float],
                   weights: Sequence[float] | None = None) -> np.ndarray:
    """Sampling weights with each index's share scaled by its class's weight.

    ``classes``: per index, its class (:meth:`PromptSegmentationDataset.index_classes`);
    ``class_weights``: class -> factor (> 0; classes not named keep 1); ``weights``: the
    weights to scale (e.g. :func:`balanced_weights`; default uniform). Returns weights summing
    to 1. A name that no index has is an error (a typo would otherwise do nothing)."""
    unknown = sorted(set(class_weights) - set(classes))
    if unknown:
        raise ArgumentError(f"data.class_weights names {unknown}, which no training item labels; "
                            f"classes: {', '.join(sorted(set(classes)))}")
    bad = {name: w for name, w in class_weights.items() if not float(w) > 0}
    if bad:
        raise ArgumentError(f"data.class_weights must be > 0, got {bad}")
    base = np.ones(len(classes)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(base) != len(classes):
        raise ArgumentError(f"{len(base)} weights for {len(classes)} indices")
    scaled = base * np.array([float(class_weights.get(c, 1.0)) for c in classes])
    return scaled / scaled.sum()


class BalancedSampler(Sampler[int]):
    """Indices of a :class:`PromptSegmentationDataset` drawn so that modalities, then
    datasets within a modality, get equal shares (``by`` sets the levels).

    Args:
        dataset: the dataset.
        num_samples: indices per epoch (default: ``len(dataset)``).
        by: item fields, outermost first (default ``("modality", "dataset")``).
        replacement: draw with replacement (needed when small datasets are up-weighted).
        seed: with :meth:`set_epoch`, makes every epoch's order reproducible.
    """

    def __init__(self, dataset: PromptSegmentationDataset, num_samples: int | None = None,
                 by: Sequence[str] = ("modality", "dataset"), replacement: bool = True, seed: int = 0):
        self.weights = torch.as_tensor(balanced_weights(dataset.group_keys(by)), dtype=torch.float64)
        self.num_samples = int(num_samples) if num_samples is not None else len(dataset)
        if self.num_samples <= 0:
            raise ArgumentError(f"num_samples must be positive, got {num_samples}")
        if not replacement and self.num_samples > len(dataset):
            raise ArgumentError(f"cannot draw {self.num_samples} indices without replacement from {len(dataset)}")
        self.replacement = replacement
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.multinomial(self.weights, self.num_samples, self.replacement, generator=generator).tolist()
