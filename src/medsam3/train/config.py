"""The training configuration: one YAML file, read into :class:`TrainingConfig`.

Every section and key is optional except ``model``, ``output_dir`` and ``data.manifest``;
unknown keys are refused (a typo must not silently train with a default). Relative paths
are taken relative to the working directory. ``medsam3 train --set train.max_steps=20``
overrides single keys (the value is read as YAML). See ``configs/`` for complete examples::

    model: facebook/sam3            # model directory, hub id, or random:tiny|small|default
    output_dir: runs/sam3-medical
    seed: 42
    data:     {manifest: data/train.jsonl, batch_size: 1, ...}    # DataConfig
    train:    {max_steps: 100000, mode: full, ...}                 # TrainConfig
    optim:    {lr: {decoder: 3.0e-4, ...}, layer_decay: {...}}     # OptimConfig
    loss:     {class_weight: 20, ...}                              # medsam3.train.losses.LossWeights
    lora:     {r: 16, ...}                                         # LoraConfig (mode: lora)
    mix:      {datasets: {busi: {manifest: m.jsonl, weight: 2}}}   # MixConfig (replaces data.manifest)
    logging:  {tensorboard: true, csv: true, progress: true}       # LoggingConfig
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsam3.errors import ArgumentError, InputError
from medsam3.train.losses import O2M_RULES, LossWeights
from medsam3.train.tracker import TrackerConfig

#: Parameter groups of the detector (see :mod:`medsam3.train.optim`), and the tracker's one.
GROUPS = ("decoder", "geometry", "vision", "text", "tracker")
#: What a run trains: the concept detector, or the tracker on slice clips (medsam3.train.tracker).
TARGETS = ("detector", "tracker")
#: optim.lr.tracker when not given
DEFAULT_TRACKER_LR = 1e-4
MODES = ("full", "lora")
PRECISIONS = ("auto", "no", "bf16", "fp16")
BEST_METRICS = ("dice", "semantic_dice", "top1_dice")


@dataclass
class DataConfig:
    """Where the samples come from (:class:`medsam3.data.PromptSegmentationDataset`).

    ``batch_size`` is per process (images; each adds ``1 + positive_prompts + negative_prompts``
    prompt rows). ``positive_prompts``: rows per image for other classes present in it (text
    only, with their targets: more supervision per encoded image).
    ``negative_prompts``: rows per image with a class the item labels that is absent from it
    (trains presence toward "absent"). ``balanced``: modalities, then datasets, get equal
    shares; ``modality_weights`` (with ``balanced``) scales a modality's share, e.g.
    ``{MR: 2}`` draws MR items twice as often as each other modality (unnamed ones: 1).
    ``class_weights`` scales how often a class is the sample's prompt within its item, e.g.
    ``{hippocampus: 3}`` (unnamed classes: 1; a name no training item labels is an error).
    ``image_size``: ``null`` = the model's. ``max_instances``: ``null`` = the model's
    query count. ``val_samples`` fixed validation samples (text prompts only) drawn from
    ``val_split`` (``null``: no validation). ``small_slice_bias``: share of a volume's present
    samples whose slice is drawn with weights ``1 / sqrt(class area)`` (a structure's small ends
    come up more often; 0: uniformly). ``near_absent_bias``: share of a volume's absent samples
    whose slice lies within ``near_absent_mm`` (20) of the class along the slicing axis (hard
    negatives just above and below a structure; 0: anywhere). ``context_mm``: 2.5D input, each
    slice of a volume with its neighbours this many mm before and after it on the red and blue
    channels (``null``: the source model's, from its ``medsam3.json``; 0: single slices); the
    checkpoints record it so that inference feeds the same.
    """

    manifest: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    datasets: list[str] | None = None
    image_size: int | None = None
    cache: str | None = None
    window: str | None = None
    batch_size: int = 1
    num_workers: int = 2
    balanced: bool = True
    modality_weights: dict[str, float] | None = None
    class_weights: dict[str, float] | None = None
    augment: bool = True
    absent_probability: float = 0.2
    small_slice_bias: float = 0.0
    near_absent_bias: float = 0.0
    near_absent_mm: float = 20.0
    context_mm: float | None = None
    box_prompt_probability: float = 0.5
    negative_prompts: int = 1
    positive_prompts: int = 0
    max_instances: int | None = None
    min_scale: float | None = None
    val_samples: int = 64
    val_absent_probability: float = 0.2


@dataclass
class TrainConfig:
    """The run: length, what it trains, mode, precision, checkpoints, faults.

    ``target``: ``detector`` (text / exemplar prompts; the default) or ``tracker`` (the
    memory tracker on clips of consecutive slices, :mod:`medsam3.train.tracker`, configured
    in the ``tracker:`` section; its learning rate is ``optim.lr.tracker``). The two are
    separate runs: train the detector, then the tracker from its ``final`` directory.

    ``mode``: ``full`` (every parameter, the paper) or ``lora``. ``freeze``: parameter groups
    (``vision``, ``text``, ``geometry``, ``decoder``; ``vision`` is the ViT, ``neck`` its FPN
    neck) or dotted module prefixes of ``Sam3Model`` kept fixed. ``mixed_precision``: ``auto``
    = bf16 autocast on a GPU, fp32 on a CPU. ``max_nonfinite_steps``: this many steps in a
    row with a non-finite loss or gradient stop the run. ``checkpoint_every`` /
    ``validate_every``: in optimizer steps (0: only at the end). ``best_metric``: the
    validation number that picks ``OUTPUT/best`` (``dice``, ``semantic_dice``, ``top1_dice``;
    see :mod:`medsam3.train.validate`). ``one_to_many_queries``: run SAM3's one-to-many copies of
    the decoder queries in training (Meta's DAC, :mod:`medsam3.train.dac`) so the loss's
    ``o2m_*`` terms train them, as Meta does; off, those terms fall on the one-to-one queries.
    """

    max_steps: int = 1000
    target: str = "detector"
    mode: str = "full"
    freeze: list[str] = field(default_factory=list)
    activation_checkpointing: bool = True
    mixed_precision: str = "auto"
    grad_clip: float = 0.1
    max_nonfinite_steps: int = 5
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    validate_every: int = 500
    validate_at_start: bool = True
    best_metric: str = "dice"
    log_every: int = 10
    cpu_threads: int | None = None
    find_unused_parameters: bool = True
    one_to_many_queries: bool = False


@dataclass
class OptimConfig:
    """AdamW with parameter groups (see :mod:`medsam3.train.optim`).

    ``lr``: base learning rate per group; ``layer_decay``: the vision and text backbones' layer
    ``i`` of ``L`` gets ``lr * decay^(L + 1 - i)``. Schedule: linear warm-up over
    ``warmup_steps`` (default 5 % of the run), inverse square root with ``timescale`` (default:
    the warm-up), linear cool-down to 0 over the last ``cooldown_steps`` (default 10 %).
    """

    lr: dict[str, float] = field(default_factory=lambda: {"decoder": 3e-4, "geometry": 1e-4,
                                                          "vision": 5e-5, "text": 5e-5})
    layer_decay: dict[str, float] = field(default_factory=lambda: {"vision": 0.85, "text": 0.85})
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int | None = None
    cooldown_steps: int | None = None
    timescale: int | None = None


@dataclass
class LoraConfig:
    """LoRA through ``peft`` (``train.mode: lora``): adapters of rank ``r`` on the linear
    layers named in ``target_modules`` (module-name suffixes or one regular expression),
    plus ``train_modules`` (dotted prefixes) trained fully."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "out_proj"])
    train_modules: list[str] = field(default_factory=lambda: ["mask_decoder", "dot_product_scoring",
                                                              "detr_decoder.box_head",
                                                              "detr_decoder.presence_head"])


@dataclass
class LoggingConfig:
    """Progress bar, TensorBoard events (``OUTPUT/tensorboard``) and ``OUTPUT/metrics.csv``."""

    progress: bool = True
    tensorboard: bool = True
    csv: bool = True


@dataclass
class MixConfig:
    """The training mix (:mod:`medsam3.data.mix`): per-dataset manifests merged at the start
    of the run into ``data.manifest`` (default ``OUTPUT_DIR/mix.jsonl``).

    ``datasets``: ``{NAME: {manifest: PATH, weight: W}}``; NAME is a registry name (``medsam3
    data list``) or any name; W a number > 0 (the dataset's share of the draws is W / sum W)
    or ``size`` (its number of training items: every item equally often, as the paper's run).
    ``prompts``: ``paper`` renames classes to the paper's prompts (registry), ``as-is`` keeps
    the manifests' names. With a mix, its weights replace ``data.balanced`` (detector runs;
    a tracker run reads the merged manifest but draws its clips as without a mix).
    """

    datasets: dict[str, Any] | None = None
    prompts: str = "paper"


@dataclass
class TrainingConfig:
    model: str | None = None
    output_dir: str | None = None
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mix: MixConfig = field(default_factory=MixConfig)

    def validate(self) -> TrainingConfig:
        """Check values; raise :class:`ArgumentError` naming the key and what is accepted."""
        if not self.model:
            raise ArgumentError("config: 'model' is required (a model directory, hub id or random:NAME)")
        if not self.output_dir:
            raise ArgumentError("config: 'output_dir' is required")
        if self.mix.datasets:
            from medsam3.data.mix import PROMPT_MODES, sources_from_mapping

            sources_from_mapping(self.mix.datasets, "config: mix.datasets")  # names, paths, weights
            if self.mix.prompts not in PROMPT_MODES:
                raise ArgumentError(f"config: mix.prompts {self.mix.prompts!r} is not one of {', '.join(PROMPT_MODES)}")
            if not self.data.manifest:  # where the merged manifest is written
                self.data.manifest = str(Path(self.output_dir) / "mix.jsonl")
        if not self.data.manifest:
            raise ArgumentError("config: 'data.manifest' is required (a medsam3 manifest, see `medsam3 data`), "
                                "or a 'mix:' section of per-dataset manifests")
        t, d, o = self.train, self.data, self.optim
        if t.target not in TARGETS:
            raise ArgumentError(f"config: train.target {t.target!r} is not one of {', '.join(TARGETS)}")
        self.tracker.validate()
        if t.mode not in MODES:
            raise ArgumentError(f"config: train.mode {t.mode!r} is not one of {', '.join(MODES)}")
        if t.best_metric not in BEST_METRICS:
            raise ArgumentError(f"config: train.best_metric {t.best_metric!r} is not one of {', '.join(BEST_METRICS)}")
        if t.mixed_precision not in PRECISIONS:
            raise ArgumentError(f"config: train.mixed_precision {t.mixed_precision!r} is not one of "
                                f"{', '.join(PRECISIONS)}")
        for name, value in (("train.max_steps", t.max_steps), ("data.batch_size", d.batch_size),
                            ("train.max_nonfinite_steps", t.max_nonfinite_steps)):
            if value < 1:
                raise ArgumentError(f"config: {name} must be at least 1, got {value}")
        for name, value in (("train.checkpoint_every", t.checkpoint_every), ("train.validate_every", t.validate_every),
                            ("train.log_every", t.log_every), ("data.negative_prompts", d.negative_prompts),
                            ("data.num_workers", d.num_workers), ("data.val_samples", d.val_samples),
                            ("data.positive_prompts", d.positive_prompts),
                            ("train.keep_checkpoints", t.keep_checkpoints), ("train.grad_clip", t.grad_clip)):
            if value < 0:
                raise ArgumentError(f"config: {name} must not be negative, got {value}")
        if d.modality_weights is not None:
            if not d.balanced:
                raise ArgumentError("config: data.modality_weights needs data.balanced: true")
            for modality, weight in d.modality_weights.items():
                if not weight > 0:
                    raise ArgumentError(f"config: data.modality_weights.{modality} must be > 0, got {weight}")
        for name, weight in (d.class_weights or {}).items():
            if not weight > 0:
                raise ArgumentError(f"config: data.class_weights.{name} must be > 0, got {weight}")
        unknown = set(o.lr) - set(GROUPS)
        if unknown:
            raise ArgumentError(f"config: optim.lr names unknown group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
        for group, lr in o.lr.items():
            if not lr >= 0:
                raise ArgumentError(f"config: optim.lr.{group} must be >= 0, got {lr}")
        unknown = set(o.layer_decay) - {"vision", "text"}
        if unknown:
            raise ArgumentError(f"config: optim.layer_decay applies to vision and text only, got {sorted(unknown)}")
        for group, decay in o.layer_decay.items():
            if not 0 < decay <= 1:
                raise ArgumentError(f"config: optim.layer_decay.{group} must be in (0, 1], got {decay}")
        if len(o.betas) != 2:
            raise ArgumentError(f"config: optim.betas must be two numbers, got {o.betas}")
        for name, value in (("data.absent_probability", d.absent_probability),
                            ("data.small_slice_bias", d.small_slice_bias),
                            ("data.near_absent_bias", d.near_absent_bias),
                            ("data.box_prompt_probability", d.box_prompt_probability),
                            ("data.val_absent_probability", d.val_absent_probability)):
            if not 0 <= value <= 1:
                raise ArgumentError(f"config: {name} must be in [0, 1], got {value}")
        if not d.near_absent_mm > 0:
            raise ArgumentError(f"config: data.near_absent_mm must be > 0 mm, got {d.near_absent_mm}")
        if d.context_mm is not None and not 0 <= d.context_mm <= 100:
            raise ArgumentError(f"config: data.context_mm must be in [0, 100] mm or null, got {d.context_mm}")
        if self.loss.o2m_rule not in O2M_RULES:
            raise ArgumentError(f"config: loss.o2m_rule {self.loss.o2m_rule!r} is not one of {', '.join(O2M_RULES)}")
        if self.loss.mask_loss_size is not None and self.loss.mask_loss_size < 8:
            raise ArgumentError(f"config: loss.mask_loss_size must be >= 8 pixels or null, got {self.loss.mask_loss_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- reading
def _convert(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as the dataclass field type ``annotation`` (YAML reads ``3e-4`` as a string)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ArgumentError as exc:
                errors.append(str(exc))
        raise ArgumentError(errors[0] if errors else f"config: {where}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ArgumentError(f"config: {where} must be a mapping of keys, got {value!r}")
        return _build(annotation, value, where)
    if origin is list:
        if isinstance(value, (str, int, float)) and annotation is not str:
            value = [value]
        if not isinstance(value, list):
            raise ArgumentError(f"config: {where} must be a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ArgumentError(f"config: {where} must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ArgumentError(f"config: {where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ArgumentError(f"config: {where} must be a whole number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ArgumentError(f"config: {where} must be a whole number, got {value!r}") from None
        if number != int(number):
            raise ArgumentError(f"config: {where} must be a whole number, got {value!r}")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise ArgumentError(f"config: {where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ArgumentError(f"config: {where} must be a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ArgumentError(f"config: {where} must be text, got {value!r}")
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off (yes/on) as a boolean
            return "yes" if value else "no"
        return str(value)
    return value


def _build(cls, data: dict[str, Any], where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ArgumentError(f"config: unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; "
                            f"known{' in ' + where if where else ''}: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainingConfig:
    """A validated :class:`TrainingConfig` from nested dicts (the YAML's content)."""
    if not isinstance(data, dict):
        raise ArgumentError("config: expected a mapping of sections (model, output_dir, data, train, ...)")
    return _build(TrainingConfig, data).validate()


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``section.key=value`` pairs (values parsed as YAML) in nested dicts."""
    import yaml

    for item in overrides or []:
        if "=" not in item:
            raise ArgumentError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ArgumentError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ArgumentError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainingConfig:
    """Read a training YAML file (plus ``--set`` overrides).

    Raises:
        InputError: the file is missing or not valid YAML.
        ArgumentError: unknown keys or bad values (named).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read training config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"training config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"training config {path}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except ArgumentError as exc:
        raise ArgumentError(f"{path}: {exc}") from None


def save_config(config: TrainingConfig, path: str | os.PathLike) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
