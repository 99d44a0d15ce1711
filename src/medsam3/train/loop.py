"""The training engine: accelerate, checkpoints, exact resume, a guard against NaNs, validation.

:func:`train` runs one :class:`~medsam3.train.config.TrainingConfig` on whatever
``accelerate`` was launched with: one CPU, one GPU, several GPUs (DDP) or FSDP
(``accelerate launch --config_file configs/accelerate/...``), or ``torchrun`` (the
``torch.distributed`` environment variables are read by accelerate; gloo on CPUs).

The output directory::

    OUTPUT/
      config.yaml                 the resolved configuration of the run
      train.log, metrics.csv      the log and every logged number (step, tag, value, time)
      tensorboard/                TensorBoard events (when the tensorboard package is installed)
      checkpoints/step-0000100/   every ``checkpoint_every`` steps, the last ``keep_checkpoints``
        model/                    a complete model directory (MedSAM3.from_pretrained, segment --model)
        state/                    optimizer, scheduler, grad scaler, RNG states of every process
                                  (accelerate's save_state), adapter.safetensors for LoRA
        trainer.json              step, best validation Dice, skipped steps, source model
      best/                       model directory with the best validation Dice (+ best.json)
      final/                      model directory after the last step (+ training.json)
      source_model/               only for ``model: random:NAME``

A checkpoint is written under ``checkpoints/.step-N.tmp`` and renamed into place when
complete, so a killed run leaves either a whole checkpoint or none; ``resume`` continues
from the newest one with the same weights, optimizer moments, learning-rate schedule, RNG
states and position in the sample stream (see :mod:`medsam3.train.batch`) - the weights
then match an uninterrupted run.

Non-finite loss or gradients: the step is skipped (no optimizer update, logged with the
offending loss terms); ``train.max_nonfinite_steps`` such steps in a row stop the run with
:class:`TrainingError`. A checkpoint whose weights are not all finite is never written.

Checkpoint files, the source model and the metrics log live in :mod:`medsam3.train.checkpoints`,
:mod:`medsam3.train.source` and :mod:`medsam3.train.metrics_log`. This module stays over 500
lines because :class:`Trainer` is one state machine (accelerate set-up, the step loop with its
NaN guard, validation, checkpoint writing and resume) shared by detector and tracker runs; the
seam to cut next is a detector trainer and a tracker trainer over a common loop.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medsam3.data import PromptSegmentationDataset, balanced_weights, class_weighted
from medsam3.errors import ArgumentError, InputError, MedSAM3Error
from medsam3.model.directory import save_model_directory
from medsam3.model.info import INFO_NAME, ModelInfo
from medsam3.model.weights import check_finite, check_weights, load_config, load_detector
from medsam3.train.batch import EpochIndexedDataset, RowCollator, StreamBatchSampler, validation_keys
from medsam3.train.checkpoints import (
    CHECKPOINTS,
    checkpoint_dirs,
    find_checkpoint,
    read_trainer_state,
    restore_training_state,
    source_tensors,
    weights_digest,
)
from medsam3.train.config import DEFAULT_TRACKER_LR, TrainingConfig, save_config
from medsam3.train.lora import apply_lora, merge_lora_state, trainable_state_dict
from medsam3.train.losses import SetCriterion
from medsam3.train.metrics_log import MetricsLog
from medsam3.train.model import DetectorForTraining, enable_activation_checkpointing
from medsam3.train.optim import build_optimizer, build_scheduler, build_simple_optimizer
from medsam3.train.source import resolve_source_model
from medsam3.train.tracker import ClipDataset, build_tracker_for_training, collate_clips
from medsam3.train.validate import DiceTally

log = logging.getLogger("medsam3.train")

FREEZE_PRESETS = {
    "vision": ("vision_encoder.backbone",),
    "neck": ("vision_encoder.neck",),
    "text": ("text_encoder", "text_projection"),
    "geometry": ("geometry_encoder",),
    "decoder": ("detr_encoder", "detr_decoder", "mask_decoder", "dot_product_scoring"),
}


class TrainingError(MedSAM3Error):
    """Training cannot go on: repeated non-finite losses or gradients, non-finite weights
    at a checkpoint, or replicas whose weights differ."""


@dataclass
class TrainingResult:
    output_dir: Path
    final_model: Path
    best_model: Path | None
    steps: int
    skipped_steps: int
    validation: list[dict] = field(default_factory=list)
    rank_digests: list[str] = field(default_factory=list)


def freeze_parameters(detector: torch.nn.Module, names: list[str]) -> int:
    """Freeze presets (:data:`FREEZE_PRESETS`) or dotted prefixes; returns frozen tensors."""
    prefixes: list[str] = []
    for name in names:
        prefixes.extend(FREEZE_PRESETS.get(name, (name,)))
    params = dict(detector.named_parameters())
    frozen = 0
    for prefix in prefixes:
        hits = [n for n in params if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise ArgumentError(f"config: train.freeze: {prefix!r} names no parameters; presets: "
                                f"{', '.join(FREEZE_PRESETS)}, or a module prefix such as vision_encoder.neck")
        for n in hits:
            if params[n].requires_grad:
                params[n].requires_grad = False
                frozen += 1
    return frozen


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run (see the module docstring); :meth:`run` does the work."""

    def __init__(self, config: TrainingConfig, resume: bool | str | os.PathLike = False):
        self.cfg = config.validate()
        self.resume = resume

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed
        from transformers import Sam3Processor

        cfg = self.cfg
        if cfg.train.cpu_threads:
            torch.set_num_threads(int(cfg.train.cpu_threads))
        precision = cfg.train.mixed_precision
        if precision == "auto":  # accelerate launch's --mixed_precision / config file, else bf16 on GPUs only
            precision = None if os.environ.get("ACCELERATE_MIXED_PRECISION") else (
                "bf16" if torch.cuda.is_available() else "no")
        # accelerate treats torchrun's processes as CPU workers (gloo) only when told so
        on_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = acc = Accelerator(
            cpu=on_cpu, mixed_precision=precision, step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)])
        self.is_main = acc.is_main_process
        from accelerate.utils import DistributedType

        if cfg.train.mode == "lora" and acc.distributed_type == DistributedType.FSDP:
            raise ArgumentError("config: train.mode lora is not supported with FSDP; use DDP (adapters are small)")
        self.output_dir = Path(cfg.output_dir)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CHECKPOINTS).mkdir(exist_ok=True)
            for stale in (self.output_dir / CHECKPOINTS).glob(".step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)  # a run killed while writing a checkpoint
        acc.wait_for_everyone()
        self._log_to_file()

        checkpoint = find_checkpoint(self.output_dir, self.resume)
        if checkpoint is None and self.resume not in (False, None):
            log.info("resume: no checkpoint in %s yet, starting from the beginning", self.output_dir)
        if checkpoint is None and checkpoint_dirs(self.output_dir):
            raise ArgumentError(f"{self.output_dir} already holds checkpoints of a run: pass --resume to continue "
                                "it, or choose another output_dir")
        self.checkpoint = checkpoint
        state = read_trainer_state(checkpoint) if checkpoint else {}
        self.start_step = int(state.get("step", 0))
        self.best_score = float(state.get("best_score", -1.0))
        self.skipped_total = int(state.get("skipped_steps", 0))
        self.validation_history: list[dict] = list(state.get("validation", []))

        set_seed(cfg.seed)
        self.source_dir = resolve_source_model(cfg.model, self.output_dir, cfg.seed, self.is_main, acc.wait_for_everyone)
        self.video_config = load_config(self.source_dir)
        check_weights(self.source_dir, self.video_config)  # its untrained tensors go into every saved model
        self.processor = Sam3Processor.from_pretrained(self.source_dir)
        self.model_info = _inference_info(self.source_dir, cfg.data.context_mm)
        lora = cfg.train.mode == "lora"
        weights_dir = checkpoint / "model" if checkpoint is not None and not lora else self.source_dir
        self.target = cfg.train.target
        if self.target == "tracker":
            model, optimizer = self._setup_tracker(weights_dir, checkpoint)
            self.criterion = None
        else:
            model, optimizer = self._setup_detector(weights_dir, checkpoint)
            self.criterion = SetCriterion(cfg.loss)
        o = cfg.optim
        scheduler = build_scheduler(optimizer, cfg.train.max_steps, o.warmup_steps, o.cooldown_steps, o.timescale)
        fresh_schedule = copy.copy(scheduler.lr_lambdas[0])  # this run's schedule, kept past load_state
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)

        if checkpoint is not None:
            restore_training_state(acc, checkpoint)
            # the schedule follows this run's config (a resumed run may train longer than planned)
            inner = self.scheduler.scheduler
            for fn in inner.lr_lambdas:
                fn.__dict__.update(vars(fresh_schedule))
            for group, base, fn in zip(self.optimizer.param_groups, inner.base_lrs, inner.lr_lambdas):
                group["lr"] = base * fn(inner.last_epoch)  # what LambdaLR computes, under this schedule
            if int(state.get("num_processes", acc.num_processes)) != acc.num_processes:
                log.warning("resuming a run of %s processes with %d: it goes on from step %d, but draws other "
                            "samples than the uninterrupted run would have", state.get("num_processes"),
                            acc.num_processes, self.start_step)
            log.info("resumed from %s at step %d", checkpoint, self.start_step)
        self._build_data()
        if self.is_main:
            save_config(cfg, self.output_dir / "config.yaml")
        self.metrics = MetricsLog(self.output_dir, cfg.logging.csv, cfg.logging.tensorboard, self.start_step,
                                  self.is_main)

    def _load_adapters(self, module: torch.nn.Module, checkpoint: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = checkpoint / "state" / "adapter.safetensors"
        try:
            adapters = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise InputError(f"cannot resume from {checkpoint}: {path} is not a readable safetensors file "
                             f"({' '.join(str(exc).split())})") from None
        check_finite(adapters.items(), path)
        missing = set(adapters) - set(dict(module.named_parameters()))
        if missing:
            raise InputError(f"{checkpoint}: adapter tensors {sorted(missing)[:3]} do not fit this LoRA config")
        module.load_state_dict(adapters, strict=False)

    def _setup_tracker(self, weights_dir: Path, checkpoint: Path | None):
        """The tracker (neck + video tracker) on the frozen detector ViT, and its optimiser."""
        cfg = self.cfg
        # the neck copy is part of the starting weights: a resumed full run has it in its
        # checkpoint; LoRA (neck frozen, weights from the source) makes it again
        copy_neck = cfg.tracker.neck_from_detector and (checkpoint is None or cfg.train.mode == "lora")
        module = build_tracker_for_training(weights_dir, cfg.tracker.loss, neck_from_detector=copy_neck)
        self.image_size = cfg.data.image_size or int(module.video.image_size)
        if self.image_size != int(module.video.image_size):
            raise ArgumentError(f"config: data.image_size {self.image_size} differs from the tracker's input size "
                                f"{module.video.image_size}; leave it null")
        self.num_queries = 1
        if cfg.train.freeze:
            n = freeze_parameters(module, cfg.train.freeze)
            log.info("froze %d parameter tensors (%s)", n, ", ".join(cfg.train.freeze))
        if cfg.train.mode == "lora":
            l = cfg.lora
            n = apply_lora(module.video, l.r, l.alpha, l.dropout, l.target_modules,
                           [m for m in l.train_modules if m in dict(module.video.named_modules())])
            for p in module.neck.parameters():
                p.requires_grad_(False)
            log.info("LoRA on the tracker: %d adapted layers (r=%d, alpha=%g)", n, l.r, l.alpha)
            if checkpoint is not None:
                self._load_adapters(module.video, checkpoint)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in module.parameters())
        log.info("trainable parameters: %d of %d (tracker, %s)", trainable, total, cfg.train.mode)
        o = cfg.optim
        optimizer = build_simple_optimizer(module, o.lr.get("tracker", DEFAULT_TRACKER_LR), o.weight_decay,
                                           o.betas, o.eps, name="tracker")
        return module, optimizer

    def _setup_detector(self, weights_dir: Path, checkpoint: Path | None):
        cfg = self.cfg
        lora = cfg.train.mode == "lora"
        detector = load_detector(weights_dir, torch.float32)  # strict: a broken checkpoint/model is refused
        model_size = int(detector.config.vision_config.backbone_config.image_size)
        self.image_size = cfg.data.image_size or model_size
        if self.image_size != model_size:
            raise ArgumentError(f"config: data.image_size {self.image_size} differs from the model's input size "
                                f"{model_size} ({self.source_dir}); leave it null or build a model of that size")
        self.num_queries = int(detector.config.detr_decoder_config.num_queries)
        if cfg.train.freeze:
            n = freeze_parameters(detector, cfg.train.freeze)
            log.info("froze %d parameter tensors (%s)", n, ", ".join(cfg.train.freeze))
        if lora:
            l = cfg.lora
            n = apply_lora(detector, l.r, l.alpha, l.dropout, l.target_modules, l.train_modules)
            log.info("LoRA: %d adapted layers (r=%d, alpha=%g)", n, l.r, l.alpha)
            if checkpoint is not None:
                self._load_adapters(detector, checkpoint)
        if cfg.train.activation_checkpointing:
            n = enable_activation_checkpointing(detector)
            log.info("activation checkpointing on %d backbone blocks", n)
        trainable = sum(p.numel() for p in detector.parameters() if p.requires_grad)
        total = sum(p.numel() for p in detector.parameters())
        log.info("trainable parameters: %d of %d (%s)", trainable, total, cfg.train.mode)

        model = DetectorForTraining(detector, one_to_many=cfg.train.one_to_many_queries)
        o = cfg.optim
        optimizer, infos = build_optimizer(model, o.lr, o.layer_decay, o.weight_decay, o.betas, o.eps)
        for info in infos:
            log.debug("param group %s: %d parameters, lr %.3g", info.name, info.count, info.lr)
        return model, optimizer

    def _log_to_file(self) -> None:
        if not self.is_main:
            return
        path = self.output_dir / "train.log"
        for h in log.handlers:
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve():
                return
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._file_handler = handler

    def _dataset(self, split: str, train: bool):
        d = self.cfg.data
        kwargs = {"split": split, "datasets": d.datasets, "cache": d.cache, "window": d.window,
                  "seed": self.cfg.seed, "max_instances": d.max_instances or self.num_queries}
        if train:
            kwargs.update(augment=d.augment, absent_probability=d.absent_probability,
                          small_slice_bias=d.small_slice_bias, near_absent_bias=d.near_absent_bias,
                          near_absent_mm=d.near_absent_mm, context_mm=self.model_info.get("context_mm", 0.0),
                          box_prompt_probability=d.box_prompt_probability,
                          max_negative_prompts=max(d.negative_prompts, 0),
                          max_positive_prompts=max(d.positive_prompts, 0))
            if d.min_scale is not None:
                kwargs["min_scale"] = d.min_scale
        else:
            kwargs.update(augment=False, absent_probability=d.val_absent_probability, box_prompt_probability=0.0,
                          max_negative_prompts=0, context_mm=self.model_info.get("context_mm", 0.0))
        return PromptSegmentationDataset(d.manifest, self.image_size, **kwargs)

    def _build_data(self) -> None:
        from torch.utils.data import DataLoader

        d, acc = self.cfg.data, self.accelerator
        mix = None
        if self.cfg.mix.datasets:  # merge the per-dataset manifests into data.manifest (medsam3.data.mix)
            from medsam3.data.mix import mix_from_config, mix_sampling_weights, write_mix

            mix = mix_from_config(self.cfg.mix, d.train_split)
            if acc.is_main_process:
                write_mix(mix, d.manifest)
            acc.wait_for_everyone()
        if self.target == "tracker":
            self._build_clip_data()
            return
        self.train_set = self._dataset(d.train_split, train=True)
        weights = None
        if mix is not None:  # the mix's dataset shares replace the modality/dataset balance
            datasets = [key[0] for key in self.train_set.group_keys(("dataset",))]
            shares = {k: w for k, w in mix.weights.items() if not d.datasets or k in d.datasets}
            weights = torch.as_tensor(mix_sampling_weights(datasets, shares), dtype=torch.float64)
        elif d.balanced:
            weights = torch.as_tensor(balanced_weights(self.train_set.group_keys(), d.modality_weights),
                                      dtype=torch.float64)
        if d.class_weights:
            weights = torch.as_tensor(class_weighted(self.train_set.index_classes(), d.class_weights, weights),
                                      dtype=torch.float64)
        self.sampler = StreamBatchSampler(len(self.train_set), d.batch_size, acc.num_processes, acc.process_index,
                                          self.cfg.seed, weights, start_step=self.start_step)
        tokenizer = self.processor.tokenizer
        self.train_loader = DataLoader(
            EpochIndexedDataset(self.train_set), batch_sampler=self.sampler,
            collate_fn=RowCollator(tokenizer, d.negative_prompts), num_workers=d.num_workers,
            pin_memory=acc.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed))  # never draw from the global RNG
        self.val_set = None
        if d.val_split and d.val_samples > 0:
            try:
                self.val_set = self._dataset(d.val_split, train=False)
            except ArgumentError as exc:
                log.warning("no validation: %s", exc)
        self.val_collate = RowCollator(tokenizer, 0, use_box_prompts=False)

    def _build_clip_data(self) -> None:
        from torch.utils.data import DataLoader

        d, acc = self.cfg.data, self.accelerator
        self.train_set = ClipDataset(d.manifest, self.image_size, self.cfg.tracker, split=d.train_split,
                                     datasets=d.datasets, cache=d.cache, window=d.window, augment=d.augment,
                                     seed=self.cfg.seed, context_mm=self.model_info.get("context_mm", 0.0))
        self.sampler = StreamBatchSampler(len(self.train_set), d.batch_size, acc.num_processes, acc.process_index,
                                          self.cfg.seed, None, start_step=self.start_step)
        self.train_loader = DataLoader(EpochIndexedDataset(self.train_set), batch_sampler=self.sampler,
                                       collate_fn=collate_clips, num_workers=d.num_workers,
                                       generator=torch.Generator().manual_seed(self.cfg.seed))
        self.val_set = None
        if d.val_split:
            log.info("tracker runs do not validate during training; score propagation afterwards "
                     "(medsam3 evaluate --volume-mode propagate)")

    def _losses(self, batch):
        """The step's :class:`LossOutput` (the tracker computes its own)."""
        acc = self.accelerator
        if self.target == "tracker":
            return self.model(batch)
        outputs = self.model(**batch.model_inputs())
        num_boxes = torch.tensor([float(sum(len(x.boxes) for x in batch.targets))], device=acc.device)
        if acc.num_processes > 1:
            num_boxes = acc.reduce(num_boxes, reduction="mean")
        return self.criterion(outputs, batch.targets, num_boxes=float(num_boxes))

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from accelerate.utils import DistributedType

        acc = self.accelerator
        keys = validation_keys(len(self.val_set), self.cfg.data.val_samples)
        world, rank = acc.num_processes, acc.process_index
        per_rank = math.ceil(len(keys) / world)
        mine = [keys[i] if i < len(keys) else None for i in range(rank, per_rank * world, world)]
        fsdp = acc.distributed_type == DistributedType.FSDP
        model = self.model if fsdp else acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        data = EpochIndexedDataset(self.val_set)
        tally = DiceTally()
        bs = self.cfg.data.batch_size
        for start in range(0, len(mine), bs):
            chunk = mine[start:start + bs]
            real = [k for k in chunk if k is not None]
            samples = [data[k] for k in (real or [keys[0]])]
            batch = self.val_collate(samples).to(acc.device)
            with acc.autocast():
                out = model(**batch.model_inputs())
            if real:  # padding keys only keep FSDP's collective forwards in step
                tally.add(out, batch)
        model.train(was_training)
        values = tally.values.to(acc.device)
        if world > 1:
            values = acc.reduce(values, reduction="sum")
        tally.values = values.cpu()
        return tally.result()

    def _record_validation(self, step: int) -> dict:
        result = self.validate()
        result["step"] = step
        self.validation_history.append(result)
        self.metrics.scalars(step, {f"val/{k}": v for k, v in result.items() if k != "step" and v is not None})
        log.info("validation at step %d: %s", step, ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "step"))
        dice = result[self.cfg.train.best_metric]
        if step > 0 and dice is not None and dice > self.best_score:
            self.best_score = dice
            self._save_model_directory(self.output_dir / "best", extra={"best.json": {"step": step, **result}})
        self.accelerator.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ saving
    def _trained_module(self) -> torch.nn.Module:
        """The module whose weights this run changes (the detector, or the video tracker)."""
        inner = self.accelerator.unwrap_model(self.model)
        return inner.video if self.target == "tracker" else inner.detector

    def _detector_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors under their model-directory names (``detector_model.*``, or
        ``tracker_model.*`` and ``tracker_neck.*``), LoRA merged (collective under FSDP)."""
        state = self.accelerator.get_state_dict(self.model)
        if self.target == "tracker":
            prefixes = {"video.": "tracker_model.", "neck.": "tracker_neck."}
            state = {prefixes[p] + k[len(p):]: v for k, v in state.items() for p in prefixes if k.startswith(p)}
        else:
            state = {"detector_model." + k.removeprefix("detector."): v for k, v in state.items()}
        if self.cfg.train.mode == "lora":
            state = merge_lora_state(state, self.cfg.lora.alpha / self.cfg.lora.r)
        return state

    def _check_finite(self) -> None:
        bad = []
        for n, p in self.accelerator.unwrap_model(self.model).named_parameters():
            t = p.detach()
            t = t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 shard: this rank's part
            if not bool(torch.isfinite(t).all()):
                bad.append(n)
        flag = torch.tensor([float(len(bad))], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if float(flag) > 0:
            raise TrainingError(f"refusing to write a checkpoint: {int(float(flag))} weight tensors are not finite "
                                f"(e.g. {bad[:3]}); the last good checkpoint is "
                                f"{checkpoint_dirs(self.output_dir)[-1][1] if checkpoint_dirs(self.output_dir) else 'none'}")

    def _save_model_directory(self, target: Path, state: dict | None = None, extra: dict | None = None) -> None:
        """Main process: a model directory (detector + the source's tracker tensors), atomically."""
        state = self._detector_state() if state is None else state
        if not self.is_main:
            return
        full = dict(state)
        full.update(source_tensors(self.source_dir, skip=full))
        save_model_directory(full, self.video_config, target, processor=self.processor,
                             extra_files={INFO_NAME: json.dumps(self.model_info, indent=2)} if self.model_info else None)
        for name, content in (extra or {}).items():
            (target / name).write_text(json.dumps(content, indent=2, default=_json_default))

    def save_checkpoint(self, step: int) -> Path:
        acc = self.accelerator
        self._check_finite()
        root = self.output_dir / CHECKPOINTS
        final = root / f"step-{step:07d}"
        tmp = root / f".step-{step:07d}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()

        def drop_weights(models, weights, output_dir):  # the model lives in model/, not twice
            weights.clear()

        handle = acc.register_save_state_pre_hook(drop_weights)
        acc.save_state(str(tmp / "state"))
        handle.remove()
        state = self._detector_state()
        if self.is_main:
            self._save_model_directory(tmp / "model", state=state)
            if self.cfg.train.mode == "lora":
                from safetensors.torch import save_file

                adapters = trainable_state_dict(self._trained_module())
                save_file({k: v.to("cpu").contiguous() for k, v in adapters.items()},
                          str(tmp / "state" / "adapter.safetensors"))
            trainer_state = {"step": step, "best_score": self.best_score, "best_metric": self.cfg.train.best_metric, "skipped_steps": self.skipped_total,
                             "validation": self.validation_history, "source_model": str(self.source_dir),
                             "num_processes": acc.num_processes, "mode": self.cfg.train.mode}
            (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2, default=_json_default))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            keep = self.cfg.train.keep_checkpoints
            if keep:
                for _, old in checkpoint_dirs(self.output_dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint: %s", final)
        acc.wait_for_everyone()
        return final

    # ------------------------------------------------------------------ the loop
    def _undo_setup(self, before: set[str] | None) -> None:
        """After a failed start, remove what this start created in ``output_dir`` (all of it when
        the folder is new; else only new entries), so a bad config leaves no half-made run."""
        handler = getattr(self, "_file_handler", None)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            self._file_handler = None
        if not getattr(self, "is_main", False):  # only the main process created files
            return
        output_dir = Path(self.cfg.output_dir)
        if not output_dir.is_dir():
            return
        if before is None:
            shutil.rmtree(output_dir, ignore_errors=True)
            return
        for entry in output_dir.iterdir():
            if entry.name not in before:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() \
                    else entry.unlink(missing_ok=True)

    def run(self) -> TrainingResult:
        output_dir = Path(self.cfg.output_dir)
        before = {e.name for e in output_dir.iterdir()} if output_dir.is_dir() else None
        try:
            self._setup()
        except BaseException:
            self._undo_setup(before)
            raise
        cfg, acc = self.cfg, self.accelerator
        t = cfg.train
        if self.val_set is not None and t.validate_at_start and self.start_step == 0:
            self._record_validation(0)
        progress = None
        if self.is_main and cfg.logging.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=t.max_steps, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        consecutive_bad = 0
        first_bad = None
        last_saved = self.checkpoint is not None and self.start_step or -1
        last_validated = self.start_step if self.start_step else 0
        iterator = iter(self.train_loader)
        self.model.train()
        step = self.start_step
        try:
            while step < t.max_steps:
                tic = time.perf_counter()
                batch = next(iterator).to(acc.device, non_blocking=True)
                losses = self._losses(batch)
                acc.backward(losses.total)
                max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
                grad_norm = acc.clip_grad_norm_(params, max_norm)
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                loss_value = losses.total.detach().reshape(1)
                if acc.num_processes > 1:
                    loss_value = acc.reduce(loss_value, reduction="mean")
                loss_value = float(loss_value)
                finite = math.isfinite(loss_value) and (math.isfinite(grad_norm) or acc.scaler is not None)
                if finite:
                    self.optimizer.step()
                    consecutive_bad = 0
                else:
                    consecutive_bad += 1
                    self.skipped_total += 1
                    first_bad = step + 1 if consecutive_bad == 1 else first_bad
                    bad_terms = [k for k, v in losses.terms.items() if not torch.isfinite(v.detach())]
                    log.warning("step %d skipped: loss %s, gradient norm %s%s (%d in a row)", step + 1, loss_value,
                                grad_norm, f", non-finite terms {bad_terms}" if bad_terms else "", consecutive_bad)
                    self.metrics.scalars(step + 1, {"train/skipped_step": 1.0})
                self.optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # a skipped first step is not an ordering mistake
                    warnings.filterwarnings("ignore", message=r".*lr_scheduler.step\(\)` before `optimizer.step")
                    self.scheduler.step()
                step += 1
                if consecutive_bad >= t.max_nonfinite_steps:
                    saved = checkpoint_dirs(self.output_dir)
                    raise TrainingError(
                        f"stopping at step {step}: the loss or gradients were not finite in {consecutive_bad} steps in a "
                        f"row (steps {first_bad}-{step}); last good checkpoint: "
                        f"{saved[-1][1] if saved else 'none'}. Lower the learning rates (optim.lr), check the data "
                        "for NaN or empty images, or train in fp32 (train.mixed_precision: no)")
                elapsed = time.perf_counter() - tic
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss_value:.3f}",
                                         img_s=f"{batch.images * acc.num_processes / max(elapsed, 1e-9):.2f}")
                if t.log_every and (step % t.log_every == 0 or step == t.max_steps):
                    terms = {k: v.detach().float().reshape(1) for k, v in losses.terms.items()}
                    if acc.num_processes > 1:
                        stacked = acc.reduce(torch.cat(list(terms.values())), reduction="mean")
                        terms = dict(zip(terms, stacked))
                    values = {f"loss/{k}": float(v) for k, v in terms.items()}
                    values.update({"train/loss": loss_value, "train/grad_norm": grad_norm,
                                   "train/lr_decoder": self._group_lr("decoder"),
                                   "train/images_per_s": batch.images * acc.num_processes / max(elapsed, 1e-9),
                                   "train/rows": float(len(getattr(batch, "targets", None) or batch.clips))})
                    self.metrics.scalars(step, values)
                    if not cfg.logging.progress:
                        log.info("step %d/%d loss %.4f grad-norm %.3g %.2f img/s", step, t.max_steps, loss_value,
                                 grad_norm, values["train/images_per_s"])
                if self.val_set is not None and t.validate_every and step % t.validate_every == 0 \
                        and step < t.max_steps:
                    self._record_validation(step)
                    last_validated = step
                if t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.max_steps:
                    self.save_checkpoint(step)
                    last_saved = step
        finally:
            if progress is not None:
                progress.close()
            del iterator
        if self.val_set is not None and last_validated != step:
            self._record_validation(step)
        if last_saved != step:
            self.save_checkpoint(step)
        return self._finish(step)

    def _group_lr(self, group: str) -> float:
        for g in self.optimizer.param_groups:
            if g.get("name", "").startswith(group + "."):
                return float(g["lr"])
        return float(self.optimizer.param_groups[0]["lr"])

    def _finish(self, step: int) -> TrainingResult:
        from accelerate.utils import DistributedType, gather_object

        acc = self.accelerator
        digests: list[str] = []
        if acc.distributed_type != DistributedType.FSDP:
            own = weights_digest(self._trained_module().state_dict())
            digests = gather_object([own]) if acc.num_processes > 1 else [own]
        final = self.output_dir / "final"
        summary = {"steps": step, "skipped_steps": self.skipped_total, "best_score": self.best_score,
                   "validation": self.validation_history, "num_processes": acc.num_processes,
                   "rank_weight_digests": digests, "source_model": str(self.source_dir),
                   "config": self.cfg.to_dict()}
        self._save_model_directory(final, extra={"training.json": summary})
        self.metrics.close()
        acc.wait_for_everyone()
        if len(set(digests)) > 1:
            raise TrainingError(f"the {len(digests)} processes ended with different weights ({digests}); "
                                "the distributed setup did not synchronise gradients")
        best = self.output_dir / "best"
        handler = getattr(self, "_file_handler", None)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        return TrainingResult(self.output_dir, final, best if best.is_dir() else None, step, self.skipped_total,
                              self.validation_history, digests)


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return str(value)


def train(config: TrainingConfig, resume: bool | str | os.PathLike = False) -> TrainingResult:
    """Run a training configuration (see the module docstring); ``resume=True`` continues
    from the newest checkpoint in ``output_dir``, a path from that checkpoint."""
    return Trainer(config, resume).run()


def _inference_info(source_dir, context_mm: float | None) -> dict:
    """What a checkpoint's ``medsam3.json`` must tell inference: the source model's mask source
    and 2.5D context (``data.context_mm`` overrides the context; ``null`` keeps the model's)."""
    source = ModelInfo.read(source_dir)
    info = {k: source[k] for k in ("masks", "context_mm") if k in source}  # as the source's file has them
    if context_mm is not None:
        info["context_mm"] = float(context_mm)
    if not info.get("context_mm"):
        info.pop("context_mm", None)
    return info
