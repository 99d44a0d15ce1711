"""From dataset samples to detector batches: prompt rows, deterministic resumable order.

A sample of :class:`medsam3.data.PromptSegmentationDataset` is one image with one prompt
(and its negative prompts). The detector trains on *rows*: each image contributes its
prompt row plus up to ``negative_prompts`` rows of classes absent from it (empty targets,
presence "absent"); the vision backbone runs once per image
(:class:`medsam3.train.model.DetectorForTraining`).

The order of samples is a function of ``(seed, step)`` only: :class:`StreamBatchSampler`
lays epochs end to end (a fresh permutation, or balanced draw, per epoch) and global step
``s`` takes stream positions ``[s * G, (s + 1) * G)`` (``G`` = batch size x processes), so
resuming at step ``s`` continues exactly where the killed run would have been.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medsam3.model.geometry import PAD_BOX, PAD_BOX_LABEL
from medsam3.train.losses import RowTarget

MAX_TOKENS = 32


class EpochIndexedDataset(Dataset):
    """``dataset[(epoch, index)]`` = the dataset's sample ``index`` as drawn in ``epoch``
    (works in DataLoader worker processes, which hold their own copy of the dataset)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if getattr(self.dataset, "epoch", None) != epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def epoch_order(size: int, epoch: int, seed: int, weights: torch.Tensor | None = None) -> list[int]:
    """The indices of one epoch: a permutation, or ``size`` weighted draws with replacement."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    if weights is None:
        return torch.randperm(size, generator=generator).tolist()
    return torch.multinomial(weights, size, replacement=True, generator=generator).tolist()


class StreamBatchSampler:
    """Infinite batches of ``(epoch, index)`` for one process (see the module docstring).

    Args:
        size: dataset length.
        batch_size: samples per process and step.
        num_processes, process_index: this process's share of each global batch.
        seed: the order's seed.
        weights: sampling weights (balanced sampling) or ``None`` for permutations.
        start_step: the first global step to produce (resuming).
    """

    def __init__(self, size: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0, weights: torch.Tensor | None = None, start_step: int = 0):
        if size < 1:
            raise ValueError("empty dataset")
        self.size, self.batch_size = size, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.weights, self.start_step = seed, weights, start_step

    def positions(self, step: int) -> list[tuple[int, int]]:
        """``(epoch, index)`` of this process's samples at a global step (for tests)."""
        start = (step * self.num_processes + self.process_index) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.size)
            out.append((epoch, epoch_order(self.size, epoch, self.seed, self.weights)[offset]))
        return out

    def __iter__(self):
        step = self.start_step
        cached_epoch, order = -1, None
        while True:
            start = (step * self.num_processes + self.process_index) * self.batch_size
            batch = []
            for pos in range(start, start + self.batch_size):
                epoch, offset = divmod(pos, self.size)
                if epoch != cached_epoch:
                    cached_epoch, order = epoch, epoch_order(self.size, epoch, self.seed, self.weights)
                batch.append((epoch, order[offset]))
            yield batch
            step += 1


@dataclass
class RowBatch:
    """Detector inputs for ``B`` images and ``P`` prompt rows, and the rows' targets."""

    pixel_values: torch.Tensor
    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    input_boxes: torch.Tensor | None
    input_boxes_labels: torch.Tensor | None
    targets: list[RowTarget]
    prompts: list[str]
    images: int

    def model_inputs(self) -> dict[str, Any]:
        out = {"pixel_values": self.pixel_values, "image_index": self.image_index, "input_ids": self.input_ids,
               "attention_mask": self.attention_mask}
        if self.input_boxes is not None:
            out["input_boxes"] = self.input_boxes
            out["input_boxes_labels"] = self.input_boxes_labels
        return out

    def to(self, device, non_blocking: bool = False) -> RowBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)
        targets = [RowTarget(move(t.boxes), move(t.masks), move(t.semantic), t.present, move(t.loss_mask))
                   for t in self.targets]
        return RowBatch(move(self.pixel_values), move(self.image_index), move(self.input_ids),
                        move(self.attention_mask), move(self.input_boxes), move(self.input_boxes_labels),
                        targets, self.prompts, self.images)


class RowCollator:
    """``collate_fn``: samples -> :class:`RowBatch`.

    Args:
        tokenizer: SAM3's CLIP tokenizer (``processor.tokenizer``).
        negative_prompts: absent-class rows added per image (from ``negative_prompts``).
        use_box_prompts: give a sample's noisy ``box_prompt`` to the detector with its text.
    """

    def __init__(self, tokenizer, negative_prompts: int = 0, use_box_prompts: bool = True):
        self.tokenizer = tokenizer
        self.negative_prompts = int(negative_prompts)
        self.use_box_prompts = use_box_prompts

    def __call__(self, samples: Sequence[dict[str, Any]]) -> RowBatch:
        prompts, image_index, targets, boxes = [], [], [], []
        for i, s in enumerate(samples):
            size = s["image"].shape[-2:]
            prompts.append(s["prompt"])
            image_index.append(i)
            targets.append(RowTarget(torch.as_tensor(s["boxes"], dtype=torch.float32).reshape(-1, 4),
                                     torch.as_tensor(s["instance_masks"]).bool().reshape(-1, *size),
                                     torch.as_tensor(s["semantic_mask"]).bool(), bool(s["present"]),
                                     torch.as_tensor(s["loss_mask"]).bool()))
            boxes.append(s.get("box_prompt") if self.use_box_prompts else None)
            for row in s.get("positive_rows") or []:  # more classes of the same image, text only
                prompts.append(row["prompt"])
                image_index.append(i)
                targets.append(RowTarget(torch.as_tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4),
                                         torch.as_tensor(row["instance_masks"]).bool().reshape(-1, *size),
                                         torch.as_tensor(row["semantic_mask"]).bool(), True,
                                         torch.as_tensor(s["loss_mask"]).bool()))
                boxes.append(None)
            for text in list(s.get("negative_prompts") or [])[: self.negative_prompts]:
                prompts.append(text)
                image_index.append(i)
                targets.append(RowTarget(torch.zeros(0, 4), torch.zeros(0, *size, dtype=torch.bool),
                                         torch.zeros(size, dtype=torch.bool), False,
                                         torch.as_tensor(s["loss_mask"]).bool()))
                boxes.append(None)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                return_tensors="pt")
        input_boxes = labels = None
        if any(b is not None for b in boxes):
            input_boxes = torch.tensor(PAD_BOX).repeat(len(prompts), 1, 1)
            labels = torch.full((len(prompts), 1), PAD_BOX_LABEL, dtype=torch.long)
            for r, b in enumerate(boxes):
                if b is not None:
                    input_boxes[r, 0] = torch.as_tensor(np.asarray(b, dtype=np.float32))
                    labels[r, 0] = 1
        return RowBatch(torch.stack([torch.as_tensor(s["image"]) for s in samples]),
                        torch.tensor(image_index, dtype=torch.long), tokens["input_ids"],
                        tokens["attention_mask"], input_boxes, labels, targets, prompts, len(samples))


def validation_keys(size: int, count: int) -> list[tuple[int, int]]:
    """``count`` fixed ``(epoch, index)`` keys cycling through the dataset (a volume's item
    gives another slice in each epoch)."""
    return [(k // size, k % size) for k in range(count)]
