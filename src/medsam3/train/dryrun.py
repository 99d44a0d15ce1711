"""``medsam3 train --dry-run``: what a training config would do, on any machine.

Reads the manifests (or merges the ``mix:``; nothing is written), the model's configuration
(no weights: the model is built on PyTorch's ``meta`` device) and prints:

* the mix: datasets, items per split, cases, weights, shares and the prompt of every class;
* the step budget: optimizer steps, images drawn (steps x batch x processes) and what that
  is in epochs of the training split;
* a memory estimate per process: parameters, gradients and AdamW state in fp32, plus an
  activation estimate (:func:`activation_bytes`). It is an estimate, not a measurement.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from medsam3.train.config import TrainingConfig

GIB = 1024 ** 3


@dataclass
class MemoryEstimate:
    """Bytes per process. ``assumed`` says what the numbers rest on."""

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    assumed: list[str]

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def model_config(source: str):
    """``(Sam3VideoConfig, how it was found)`` for a model source, without loading weights or
    contacting the hub: a local directory's ``config.json``, a ``random:NAME`` size, else
    SAM3's published configuration (what ``facebook/sam3`` and Medical SAM3 use)."""
    from medsam3.model.configs import build_config
    from medsam3.model.loader import RANDOM_PREFIX

    if source.startswith(RANDOM_PREFIX):
        return build_config(source[len(RANDOM_PREFIX):]), f"configuration {source}"
    if Path(source).is_dir():
        from medsam3.model.weights import load_config

        return load_config(source), f"{Path(source) / 'config.json'}"
    return build_config("default"), f"SAM3's published configuration (assumed for {source!r}; hub not contacted)"


def _detector_on_meta(config):
    import torch
    from transformers import Sam3Model

    with torch.device("meta"):  # shapes only: nothing is allocated
        return Sam3Model(config.detector_config)


def trainable_parameters(model, cfg: TrainingConfig) -> int:
    """Parameters the run updates: all (``full``) or the LoRA adapters plus ``lora.train_modules``."""
    import re

    from torch import nn

    total = sum(p.numel() for p in model.parameters())
    if cfg.train.mode == "full":
        frozen = 0
        if cfg.train.freeze:
            from medsam3.train.optim import parameter_group

            for name, p in model.named_parameters():
                if any(parameter_group(name) == g or name.startswith(g) for g in cfg.train.freeze):
                    frozen += p.numel()
        return total - frozen
    targets = cfg.lora.target_modules
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        hit = (re.fullmatch(targets, name) is not None) if isinstance(targets, str) else \
            any(name == t or name.endswith("." + t) for t in targets)
        if hit:
            count += cfg.lora.r * (module.in_features + module.out_features)
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in cfg.lora.train_modules):
            count += p.numel()
    return count


def activation_bytes(config, image_size: int, rows: int, checkpointing: bool) -> tuple[int, list[str]]:
    """Activation memory of one image in 16-bit precision (bytes) and the assumptions.

    ViT layers: ``T * W * 34 + 5 * heads * T * T_att`` bytes per layer (Korthikanti et al.
    2022, attention scores materialised; ``T`` tokens, ``W`` width, ``T_att`` the window's
    or all tokens); with activation checkpointing only each layer's input (``2 T W``) is
    kept plus one layer recomputed. Per prompt row: the fusion encoder and decoder layers
    (d=256) on ``T`` tokens and the mask head's feature maps at 4x the token grid.
    """
    vision = config.detector_config.vision_config.backbone_config
    detr = config.detector_config
    grid = image_size // vision.patch_size
    t, w, heads = grid * grid, vision.hidden_size, vision.num_attention_heads
    window = vision.window_size * vision.window_size
    layers = []
    for i in range(vision.num_hidden_layers):
        t_att = t if i in (vision.global_attn_indexes or []) else window
        layers.append(t * w * 34 + 5 * heads * t * t_att)
    vit = (vision.num_hidden_layers * 2 * t * w + max(layers)) if checkpointing else sum(layers)
    d_model = detr.detr_encoder_config.hidden_size
    enc_layers, dec_layers = detr.detr_encoder_config.num_layers, detr.detr_decoder_config.num_layers
    fusion = (enc_layers + dec_layers) * t * d_model * 34
    mask_head = 10 * (4 * grid) ** 2 * d_model * 2
    per_row = fusion + mask_head
    assumed = [f"activations at {image_size} px: ViT {vision.num_hidden_layers} layers x {t} tokens x {w} "
               f"({'checkpointed' if checkpointing else 'all kept'}), {rows} prompt row(s) per image through "
               f"{enc_layers}+{dec_layers} fusion layers and the mask head; bf16; attention scores "
               "materialised (SDPA kernels need less)"]
    return vit + rows * per_row, assumed


def estimate_memory(cfg: TrainingConfig, config) -> MemoryEstimate:
    """Per-process memory of a detector run (see the module docstring)."""
    model = _detector_on_meta(config)
    params = sum(p.numel() for p in model.parameters())
    trainable = trainable_parameters(model, cfg)
    image_size = cfg.data.image_size or config.detector_config.vision_config.backbone_config.image_size
    rows = 1 + cfg.data.negative_prompts + cfg.data.positive_prompts
    act, assumed = activation_bytes(config, image_size, rows, cfg.train.activation_checkpointing)
    assumed = ["weights, gradients and AdamW moments (2 per parameter) in fp32 (bf16 is autocast)"] + assumed
    return MemoryEstimate(parameters=params, trainable=trainable, weights=4 * params, gradients=4 * trainable,
                          optimizer=8 * trainable, activations=act * cfg.data.batch_size, assumed=assumed)


def _manifest_summary(cfg: TrainingConfig):
    """``(per-dataset counts in the training split, Mix or None)`` without writing anything."""
    from medsam3.data.mix import mix_from_config

    if cfg.mix.datasets:
        mix = mix_from_config(cfg.mix, cfg.data.train_split)
        return mix.train_items(cfg.data.train_split), mix
    from medsam3.data.manifest import read_manifest

    manifest = read_manifest(cfg.data.manifest)
    items = manifest.select(split=cfg.data.train_split, datasets=cfg.data.datasets, labelled=True)
    return len(items), manifest


def dry_run(cfg: TrainingConfig, processes: int | None = None) -> str:
    """The dry-run report of a validated config (text; see the module docstring)."""
    from medsam3.data.mix import Mix, describe_mix

    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    lines = [f"dry run of a {cfg.train.target} training ({cfg.train.mode}) of {cfg.model} -> {cfg.output_dir}"]
    n_train, source = _manifest_summary(cfg)
    if isinstance(source, Mix):
        lines.append(describe_mix(source, cfg.data.train_split))
        lines.append(f"  merged manifest: {cfg.data.manifest} (written when training starts)")
    else:
        counts: dict[str, int] = {}
        for item in source.select(split=cfg.data.train_split, datasets=cfg.data.datasets, labelled=True):
            counts[item.dataset] = counts.get(item.dataset, 0) + 1
        rule = "balanced by modality, then dataset" if cfg.data.balanced else "every item equally often"
        lines.append(f"data: {cfg.data.manifest}: {len(counts)} dataset(s), {n_train} items in "
                     f"{cfg.data.train_split!r}; sampling: {rule}")
        for name, n in sorted(counts.items()):
            lines.append(f"  {name[:40]:40s} {n:7d}")
    steps, batch = cfg.train.max_steps, cfg.data.batch_size
    images = steps * batch * processes
    epochs = images / n_train if n_train else math.inf
    lines.append(f"steps: {steps} optimizer steps x batch {batch} x {processes} process(es) = {images} images "
                 f"= {epochs:.2f} epochs of {n_train} training items")
    if cfg.train.target != "detector":
        lines.append("memory: estimated for detector runs only")
        return "\n".join(lines)
    config, found = model_config(cfg.model)
    mem = estimate_memory(cfg, config)
    lines.append(f"memory estimate per process (model from {found}):")
    lines.append(f"  parameters {mem.parameters / 1e6:.1f}M, trainable {mem.trainable / 1e6:.1f}M")
    for label, value in (("weights (fp32)", mem.weights), ("gradients (fp32)", mem.gradients),
                         ("AdamW state (fp32)", mem.optimizer),
                         (f"activations (batch {batch})", mem.activations)):
        lines.append(f"  {label:26s} {value / GIB:8.2f} GiB")
    lines.append(f"  {'total (estimate)':26s} {mem.total / GIB:8.2f} GiB")
    for note in mem.assumed:
        lines.append(f"  assumes {note}")
    lines.append("  an estimate, not a measurement: allocator overhead, CUDA context (~0.5-1 GiB) and "
                 "data-dependent instance counts are not included")
    return "\n".join(lines)
