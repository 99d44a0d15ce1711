"""AdamW parameter groups with layer-wise decay, and the inverse-square-root schedule.

Groups of :class:`transformers.Sam3Model` parameters (names relative to the model):

``vision``
    ``vision_encoder.backbone`` (the ViT; patch/position embeddings are layer 0, block ``i``
    is layer ``i + 1``) and ``vision_encoder.neck`` (layer ``L + 1``).
``text``
    ``text_encoder`` (token/position embeddings layer 0, block ``i`` layer ``i + 1``, final
    norm and projection ``L + 1``) and ``text_projection`` (``L + 1``).
``geometry``
    ``geometry_encoder`` (box / exemplar prompts).
``decoder``
    everything else: the DETR fusion encoder and decoder, the mask head and the scoring
    (class embedding) head.

Layer-wise decay: layer ``i`` of a backbone with ``L`` blocks learns at
``lr * decay ** (L + 1 - i)`` (the top of the backbone at ``lr``, the embeddings at
``lr * decay ** (L + 1)``). Parameters with at most one dimension (biases, norm weights,
layer scales) get no weight decay. Paper recipe: decoder 3e-4, geometry 1e-4, backbones
5e-5 with decay 0.85, weight decay 0.05.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def parameter_group(name: str) -> str:
    """The group (``vision``, ``text``, ``geometry``, ``decoder``) of a ``Sam3Model`` parameter."""
    if name.startswith("vision_encoder."):
        return "vision"
    if name.startswith(("text_encoder.", "text_projection.")):
        return "text"
    if name.startswith("geometry_encoder."):
        return "geometry"
    return "decoder"


def layer_id(name: str, num_layers: int) -> int:
    """The depth of a backbone parameter: 0 for embeddings, ``i + 1`` for block ``i``,
    ``num_layers + 1`` for what follows the blocks."""
    block = _BLOCK.search(name)
    if name.startswith("vision_encoder.backbone."):
        if block:
            return int(block.group(1)) + 1
        return 0  # patch / position embeddings and the pre-block norm
    if name.startswith("text_encoder."):
        if block:
            return int(block.group(1)) + 1
        if ".embeddings." in name:
            return 0
    return num_layers + 1


def _strip_peft(name: str) -> str:
    """``base_model.model.x.base_layer.weight`` / ``x.lora_A.default.weight`` -> model-relative names."""
    name = re.sub(r"^(base_model\.model\.)", "", name)
    return name.replace(".base_layer.", ".")


def backbone_depths(model: nn.Module) -> dict[str, int]:
    from medsam3.train.model import base_detector

    core = base_detector(model)
    return {"vision": int(core.config.vision_config.backbone_config.num_hidden_layers),
            "text": int(core.config.text_config.num_hidden_layers)}


@dataclass
class GroupInfo:
    name: str
    group: str
    layer: int
    decay: bool
    lr: float
    count: int


def parameter_groups(model: nn.Module, lr: dict[str, float], layer_decay: dict[str, float],
                     weight_decay: float) -> tuple[list[dict], list[GroupInfo]]:
    """AdamW parameter groups of the trainable parameters of a ``Sam3Model`` (or a wrapper).

    Returns the groups (``params``, ``lr``, ``weight_decay``, ``name``) and a summary of each.
    ``lr`` misses a group -> that group's parameters are an error to train (pass 0 to freeze).
    """
    from medsam3.train.model import base_detector

    core = base_detector(model)
    depths = backbone_depths(core)
    buckets: dict[tuple, list] = {}
    for raw, param in core.named_parameters():
        if not param.requires_grad:
            continue
        name = _strip_peft(raw)
        group = parameter_group(name)
        if group not in lr:
            raise KeyError(f"no learning rate for parameter group {group!r} ({name})")
        layer = layer_id(name, depths[group]) if group in depths else 0
        decay = param.ndim > 1
        buckets.setdefault((group, layer, decay), []).append(param)
    groups, infos = [], []
    for (group, layer, decay), params in sorted(buckets.items()):
        rate = lr[group]
        if group in depths and group in layer_decay:
            rate = rate * layer_decay[group] ** (depths[group] + 1 - layer)
        name = f"{group}.layer{layer}.{'decay' if decay else 'no_decay'}"
        groups.append({"params": params, "lr": rate, "weight_decay": weight_decay if decay else 0.0, "name": name})
        infos.append(GroupInfo(name, group, layer, decay, rate, sum(p.numel() for p in params)))
    return groups, infos


def build_optimizer(model: nn.Module, lr: dict[str, float], layer_decay: dict[str, float],
                    weight_decay: float = 0.05, betas=(0.9, 0.999), eps: float = 1e-8
                    ) -> tuple[torch.optim.AdamW, list[GroupInfo]]:
    groups, infos = parameter_groups(model, lr, layer_decay, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, betas=tuple(betas), eps=eps, fused=fused or None), infos


def build_simple_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.999),
                           eps: float = 1e-8, name: str = "tracker") -> torch.optim.AdamW:
    """AdamW over a module's trainable parameters at one rate (the tracker's): two groups,
    ``NAME.decay`` (matrices) and ``NAME.no_decay`` (biases, norms, embeddings of one dimension)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    if not decay and not plain:
        raise ValueError("no trainable parameters")
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{name}.decay"},
              {"params": plain, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"}]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(betas), eps=eps, fused=fused or None)


class InverseSqrtSchedule:
    """Learning-rate factor at optimizer step ``t`` (0-based)::

        warm-up   min(1, (t + 1) / warmup)
        decay     1 / sqrt(1 + max(0, t - warmup) / timescale)
        cool-down min(1, (total - t) / cooldown)

    the product of the three; the factor is 1 when warm-up ends and reaches 0 at ``total``.
    A picklable callable, so ``LambdaLR.state_dict`` keeps it.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, cooldown_steps: int = 0,
                 timescale: int | None = None):
        self.total = int(total_steps)
        self.warmup = max(0, int(warmup_steps))
        self.cooldown = max(0, int(cooldown_steps))
        self.timescale = max(1, int(timescale if timescale is not None else max(self.warmup, 1)))

    def __call__(self, step: int) -> float:
        factor = 1.0
        if self.warmup:
            factor *= min(1.0, (step + 1) / self.warmup)
        factor /= math.sqrt(1.0 + max(0, step - self.warmup) / self.timescale)
        if self.cooldown:
            factor *= max(0.0, min(1.0, (self.total - step) / self.cooldown))
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int | None = None,
                    cooldown_steps: int | None = None, timescale: int | None = None
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """:class:`InverseSqrtSchedule` on every group; ``None`` warm-up / cool-down = 5 % / 10 %
    of the run."""
    if warmup_steps is None:
        warmup_steps = math.ceil(0.05 * total_steps)
    if cooldown_steps is None:
        cooldown_steps = math.ceil(0.10 * total_steps)
    schedule = InverseSqrtSchedule(total_steps, warmup_steps, cooldown_steps, timescale)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
