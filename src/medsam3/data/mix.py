"""The training mix: per-dataset manifests merged into one, with sampling weights and prompts.

``medsam3 data merge`` and the ``mix:`` section of a training config both call
:func:`build_mix`. Each source is one dataset's manifest (written by ``data prepare`` or
``data convert``) with a weight:

* a number: the dataset's share of the training draws is ``weight / sum(weights)``
  (items within a dataset are drawn uniformly);
* ``"size"``: the weight is the dataset's number of training items, so every training
  item is drawn equally often: the paper's public run concatenated its datasets this way
  (``ConcatDataset``, multiplier 1).

``prompts: paper`` renames every class the registry knows a paper prompt for
(:attr:`medsam3.data.registry.DatasetInfo.prompts`, e.g. BUSI's "breast tumor" ->
"Breast Ultrasound Lesion"); the other classes keep their names and are listed as such.
``prompts: as-is`` keeps the manifests' class names.

The merged manifest has one item per source item; ids are prefixed with the dataset name
(unique across sources), paths are resolved against each source's root, and ``dataset`` is
the source's name, which :func:`mix_sampling_weights` keys the weights on.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medsam3.errors import ArgumentError, InputError

PROMPT_MODES = ("paper", "as-is")
SIZE = "size"


@dataclass
class MixSource:
    """One dataset of the mix: its name (a registry key, or any name for other data), the
    manifest that lists it, and its weight (a number > 0, or ``"size"``)."""

    dataset: str
    manifest: str
    weight: float | str = SIZE


@dataclass
class MixPart:
    """One merged dataset: what it contributed and how it is drawn.

    ``share``: its fraction of the training draws (0-1). ``prompts``: class as the source
    manifest names it -> prompt in the merged manifest. ``paper_prompt``: per class, whether
    that prompt is the paper's (from the registry) or the manifest's own name.
    """

    dataset: str
    manifest: str
    weight: float
    weight_rule: str
    splits: dict[str, int]
    cases: int
    prompts: dict[str, str]
    paper_prompt: dict[str, bool]
    registered: bool
    share: float = 0.0


@dataclass
class Mix:
    """The merged items, their common root and one :class:`MixPart` per source."""

    parts: list[MixPart]
    items: list
    root: Path
    prompt_mode: str = "paper"
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> dict[str, float]:
        """Dataset name -> resolved weight (what :func:`mix_sampling_weights` takes)."""
        return {p.dataset: p.weight for p in self.parts}

    def train_items(self, split: str = "train") -> int:
        return sum(p.splits.get(split, 0) for p in self.parts)


def parse_source(text: str) -> MixSource:
    """``NAME=MANIFEST`` or ``NAME=MANIFEST@WEIGHT`` (``--add`` of ``data merge``)."""
    if "=" not in text:
        raise ArgumentError(f"--add {text!r} must be NAME=MANIFEST or NAME=MANIFEST@WEIGHT, "
                            "e.g. --add busi=data/busi.jsonl@2")
    name, rest = text.split("=", 1)
    manifest, _, weight = rest.rpartition("@") if "@" in rest else (rest, "", SIZE)
    return MixSource(name.strip(), manifest.strip(), _weight(weight.strip(), f"--add {text!r}"))


def _weight(value: Any, where: str) -> float | str:
    if isinstance(value, str) and value.strip().lower() == SIZE:
        return SIZE
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{where}: weight {value!r} must be a number > 0 or 'size'") from None
    if not number > 0 or not np.isfinite(number):
        raise ArgumentError(f"{where}: weight {value!r} must be a number > 0 or 'size'")
    return number


def sources_from_mapping(datasets: Mapping[str, Any], where: str = "mix.datasets") -> list[MixSource]:
    """Sources from the config form ``{NAME: {manifest: PATH, weight: W}}`` (or ``{NAME: PATH}``)."""
    if not isinstance(datasets, Mapping) or not datasets:
        raise ArgumentError(f"{where} must map dataset names to {{manifest: PATH, weight: W}}")
    sources = []
    for name, spec in datasets.items():
        if isinstance(spec, str):
            spec = {"manifest": spec}
        if not isinstance(spec, Mapping) or "manifest" not in spec:
            raise ArgumentError(f"{where}.{name} must be a manifest path or {{manifest: PATH, weight: W}}")
        unknown = sorted(set(spec) - {"manifest", "weight"})
        if unknown:
            raise ArgumentError(f"{where}.{name}: unknown key(s) {', '.join(unknown)}; known: manifest, weight")
        sources.append(MixSource(str(name), str(spec["manifest"]),
                                 _weight(spec.get("weight", SIZE), f"{where}.{name}")))
    return sources


def _rebase(path, manifest) -> Any:
    if path is None:
        return None
    if isinstance(path, list):
        return [_rebase(p, manifest) for p in path]
    return str(manifest.resolve(path))


def _relative_to(path, root: Path) -> Any:
    if path is None:
        return None
    if isinstance(path, list):
        return [_relative_to(p, root) for p in path]
    return Path(os.path.relpath(path, root)).as_posix()


def _check_manifests_exist(sources: Sequence[MixSource]) -> None:
    """One InputError naming every missing manifest (not only the first), with how to make it."""
    from medsam3.data.layouts.common import listing

    missing = [s for s in sources if not Path(s.manifest).is_file()]
    if not missing:
        return
    shown = listing([f"{s.dataset} ({s.manifest})" for s in missing], limit=8)
    raise InputError(f"{len(missing)} of the mix's {len(sources)} manifests do not exist: {shown}; make each "
                     "with `medsam3 data prepare NAME --root DIR -o FILE` (`medsam3 data list` shows which "
                     "datasets convert) or leave it out of the mix")


def build_mix(sources: Sequence[MixSource], prompts: str = "paper", split: str = "train") -> Mix:
    """Read every source manifest and merge them (nothing is written; see :func:`write_mix`).

    Args:
        sources: the datasets and their weights.
        prompts: ``paper`` (registry prompts) or ``as-is``.
        split: the split whose item counts ``"size"`` weights and shares refer to.

    Raises:
        ArgumentError: no sources, a name given twice, a bad weight or prompt mode, a source
            without items in ``split``.
        InputError: a manifest that cannot be read (named).
    """
    from medsam3.data.convert import apply_class_map
    from medsam3.data.manifest import read_manifest
    from medsam3.data.registry import REGISTRY, get_dataset

    if prompts not in PROMPT_MODES:
        raise ArgumentError(f"prompts {prompts!r} is not one of {', '.join(PROMPT_MODES)}")
    if not sources:
        raise ArgumentError("a mix needs at least one dataset manifest")
    names = [s.dataset for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ArgumentError(f"dataset(s) {', '.join(twice)} given twice in the mix")
    _check_manifests_exist(sources)
    parts, items, notes = [], [], []
    for source in sources:
        manifest = read_manifest(source.manifest)
        info = None
        key = source.dataset.strip().lower().replace("_", "-").replace(" ", "-")
        if key in REGISTRY:
            info = get_dataset(key)
        paper = info.paper_prompts if info is not None else {}
        own = []
        for item in manifest:
            item = copy.deepcopy(item)
            if not item.id.startswith(f"{source.dataset}/"):
                item.id = f"{source.dataset}/{item.id}"
            item.dataset = source.dataset
            item.image = _rebase(item.image, manifest)
            item.label = _rebase(item.label, manifest)
            own.append(item)
        classes = sorted({n for it in own for n in it.class_names})
        rename = {c: paper[c] for c in classes if prompts == "paper" and c in paper}
        if rename:
            apply_class_map(own, rename)
        splits: dict[str, int] = {}
        for it in own:
            splits[it.split] = splits.get(it.split, 0) + 1
        n_split = splits.get(split, 0)
        if n_split == 0:
            raise ArgumentError(f"{source.manifest} ({source.dataset}) has no {split!r} items; "
                                f"its splits: {', '.join(f'{k} {v}' for k, v in sorted(splits.items())) or 'none'}")
        weight = float(n_split) if source.weight == SIZE else float(source.weight)
        if info is None:
            notes.append(f"{source.dataset}: not in the registry; its classes keep their manifest names")
        parts.append(MixPart(
            dataset=source.dataset, manifest=str(source.manifest), weight=weight,
            weight_rule=SIZE if source.weight == SIZE else "given", splits=splits,
            cases=len({it.case or it.id for it in own}),
            prompts={c: rename.get(c, c) for c in classes}, paper_prompt={c: c in rename for c in classes},
            registered=info is not None))
        items.extend(own)
    total = sum(p.weight for p in parts)
    for p in parts:
        p.share = p.weight / total
    files = []
    for it in items:
        for path in ([it.image] if isinstance(it.image, str) else it.image or []):
            files.append(path)
    root = Path(os.path.commonpath([str(Path(f).parent) for f in files])) if files else Path.cwd()
    for it in items:
        it.image = _relative_to(it.image, root)
        it.label = _relative_to(it.label, root)
    return Mix(parts, items, root, prompts, notes)


def write_mix(mix: Mix, output: str | os.PathLike) -> Path:
    """Write the merged manifest (atomically) and return its path."""
    from medsam3.data.manifest import write_manifest

    return write_manifest(mix.items, output, mix.root, "mix")


def mix_sampling_weights(datasets: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """Per-index sampling weights giving each dataset the share ``weight / sum(weights)``
    of the draws, its indices sharing it equally. ``datasets``: per index, its dataset.
    Returns weights summing to 1.

    Raises:
        ArgumentError: a dataset of the indices without a weight, or a weight for a dataset
            that has no index (a typo would silently change the mix).
    """
    present = set(datasets)
    missing = sorted(present - set(weights))
    if missing:
        raise ArgumentError(f"no mix weight for dataset(s) {', '.join(missing)}")
    unused = sorted(set(weights) - present)
    if unused:
        raise ArgumentError(f"mix weight(s) for {', '.join(unused)}, which have no training items; "
                            f"datasets: {', '.join(sorted(present))}")
    counts: dict[str, int] = {}
    for d in datasets:
        counts[d] = counts.get(d, 0) + 1
    w = np.array([float(weights[d]) / counts[d] for d in datasets], dtype=np.float64)
    return w / w.sum()


def describe_mix(mix: Mix, split: str = "train") -> str:
    """The mix as a table: dataset, items per split, cases, weight, share, prompts."""
    lines = [f"mix: {len(mix.parts)} dataset(s), {len(mix.items)} items "
             f"({mix.train_items(split)} in {split!r}); prompts: {mix.prompt_mode}"]
    lines.append(f"  {'dataset':30s} {'train':>7s} {'val':>6s} {'test':>6s} {'cases':>7s} {'weight':>9s} {'share':>7s}")
    for p in mix.parts:
        rule = " (size)" if p.weight_rule == SIZE else ""
        lines.append(f"  {p.dataset[:30]:30s} {p.splits.get('train', 0):7d} {p.splits.get('val', 0):6d} "
                     f"{p.splits.get('test', 0):6d} {p.cases:7d} {p.weight:9.4g} {100 * p.share:6.2f}%{rule}")
        for cls, prompt in p.prompts.items():
            where = "paper prompt" if p.paper_prompt[cls] else "manifest name"
            arrow = f"{cls!r} -> {prompt!r}" if prompt != cls else f"{cls!r}"
            lines.append(f"      {arrow} ({where})")
    for note in mix.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)



def mix_from_config(mix_config, split: str = "train") -> Mix:
    """The :class:`Mix` of a training config's ``mix:`` section (:class:`medsam3.train.config.MixConfig`)."""
    return build_mix(sources_from_mapping(mix_config.datasets, "mix.datasets"), mix_config.prompts, split)


# ------------------------------------------------------------------------ medsam3 data merge
def add_merge_parser(sub, formatter_class) -> None:
    """The ``merge`` subcommand of ``medsam3 data``."""
    m = sub.add_parser(
        "merge", help="merge per-dataset manifests into the training mix (weights, paper prompts)",
        formatter_class=formatter_class,
        description="Merge per-dataset manifests into one, renaming classes to the paper's prompts, and "
                    "print the mix (items, cases, weights, shares, prompts). Training draws each dataset "
                    "with its weight through the config's mix: section (printed at the end).")
    m.add_argument("-o", "--output", required=True, help="the merged manifest (.jsonl)")
    m.add_argument("--add", action="append", default=[], metavar="NAME=MANIFEST[@WEIGHT]",
                   help="one dataset: registry name (or any name), its manifest, its weight (a number, or "
                        "'size': its training items; default size); repeatable")
    m.add_argument("--mix", default=None, metavar="YAML",
                   help="datasets from a YAML file: a training config's mix: section, or the section itself")
    m.add_argument("--prompts", choices=PROMPT_MODES, default=None,
                   help="paper: the registry's paper prompt per class; as-is: the manifests' names "
                        "(default: the YAML's, else paper)")
    m.add_argument("--split", default="train", help="the split that 'size' weights and shares count")
    m.set_defaults(func=run_merge)


def _sources_from_yaml(path: str) -> tuple[list[MixSource], str | None]:
    import yaml

    from medsam3.errors import InputError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InputError(f"cannot read --mix {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"--mix {path} is not valid YAML: {exc}") from None
    section = data.get("mix", data) if isinstance(data, dict) else None
    if not isinstance(section, dict) or "datasets" not in section:
        raise InputError(f"--mix {path}: expected a 'datasets:' mapping (or a config with a 'mix:' section)")
    return sources_from_mapping(section["datasets"], f"{path}: datasets"), section.get("prompts")


def run_merge(args) -> int:
    sources = [parse_source(text) for text in args.add]
    prompts = args.prompts
    if args.mix:
        more, yaml_prompts = _sources_from_yaml(args.mix)
        sources = more + sources
        prompts = prompts or yaml_prompts
    if not sources:
        raise ArgumentError("give the datasets with --add NAME=MANIFEST[@WEIGHT] or --mix YAML")
    if not str(args.output).endswith(".jsonl"):
        raise ArgumentError(f"--output {args.output} must end in .jsonl (JSON Lines)")
    inputs = {Path(s.manifest).resolve() for s in sources}
    if Path(args.output).resolve() in inputs:  # never overwrite an input
        raise ArgumentError(f"--output {args.output} is one of the manifests being merged; write elsewhere")
    mix = build_mix(sources, prompts or "paper", args.split)
    path = write_mix(mix, args.output)
    print(describe_mix(mix, args.split))
    print(f"wrote {len(mix.items)} items to {path}")
    print("to train on this mix, put in the training config:")
    print("mix:")
    print(f"  prompts: {mix.prompt_mode}")
    print("  datasets:")
    for source in sources:
        print(f"    {source.dataset}: {{manifest: {source.manifest}, weight: {source.weight}}}")
    return 0
