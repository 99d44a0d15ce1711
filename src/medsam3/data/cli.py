"""``medsam3 data ...``: convert, list, prepare, inspect, preview, cache.

Each subcommand calls the Python function of the same name and arguments
(:func:`medsam3.data.convert_dataset`, :func:`~medsam3.data.prepare_dataset`, ...).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from medsam3.errors import ArgumentError


def _json_arg(flag: str, value: str | None):
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith(("{", "[")) and Path(value).is_file():
        text = Path(value).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"{flag} {value!r} is not JSON ({exc.msg}); e.g. {flag} '{{\"1\": \"liver\"}}' "
                            "or a .json file") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{flag} must be a JSON object, got {value!r}")
    return data


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ArgumentError(f"-O {pair!r} must be KEY=VALUE, e.g. -O image=ch2.nii.gz")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _run_convert(args) -> int:
    from medsam3.data.convert import convert_dataset

    options = _options(args.option)
    for key in ("class_name", "images_dir", "masks_dir", "mask_suffix"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    for key, flag in (("labels", "--labels"), ("colors", "--colors")):
        value = _json_arg(flag, getattr(args, key))
        if value is not None:
            options[key] = value
    if args.skip_unpaired:
        options["unpaired"] = "skip"
    if args.channels is not None:
        try:
            options["channels"] = [int(c) for c in args.channels.split(",")]
        except ValueError:
            raise ArgumentError(f"--channels {args.channels!r} must be numbers like 0,1") from None
    manifest = convert_dataset(args.layout, args.input, args.output, dataset=args.dataset,
                               modality=args.modality, val_fraction=args.val_fraction,
                               test_fraction=args.test_fraction, seed=args.seed,
                               check_geometry=not args.no_geometry_check,
                               class_map=_json_arg("--class-map", args.class_map),
                               progress=not args.quiet, **options)
    splits = {}
    for item in manifest:
        splits[item.split] = splits.get(item.split, 0) + 1
    print(f"wrote {len(manifest)} items ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}) "
          f"to {args.output}")
    return 0


def _run_list(args) -> int:
    from medsam3.data.registry import list_datasets

    datasets = list_datasets(args.role)
    if args.json:
        print(json.dumps([d.as_dict() for d in datasets], indent=2))
        return 0
    titles = {"train": "Training sets of the paper", "external": "External (unseen) test sets of the paper",
              "extra": "Other sets medsam3 reads"}
    for role in ("train", "external", "extra"):
        group = [d for d in datasets if d.role == role]
        if not group:
            continue
        print(f"{titles[role]} ({len(group)}):")
        print(f"    {'name':28s} {'dim':3s} {'modality':34s} {'layout':9s} {'ready':5s} classes")
        for d in group:
            layout = d.layout or "-"
            classes = ", ".join(d.classes) if d.classes else "?"
            classes = classes if len(classes) <= 60 else classes[:57] + "..."
            mark = "?" if d.uncertain else " "
            ready = "yes" if d.ready else "no"
            print(f"  {mark} {d.name:28s} {d.dim}D  {d.modality[:34]:34s} {layout:9s} {ready:5s} {classes}")
            if args.verbose:
                for label, value in (("title", d.title), ("licence", d.licence), ("source", d.source),
                                     ("cite", d.citation), ("notes", d.notes)):
                    if value:
                        unsure = " (unverified)" if label in d.uncertain or (label == "cite" and "citation" in d.uncertain) else ""
                        text = textwrap.fill(f"{value}{unsure}", 100, initial_indent=f"      {label + ':':9s}",
                                             subsequent_indent=" " * 15)
                        print(text)
                if d.uncertain:
                    print(f"      {'unverified:':9s} {', '.join(d.uncertain)}")
                if d.prompts:
                    print(f"      {'prompts:':9s}" + ", ".join(f"{c} -> {p!r}" for c, p in d.prompts)
                          + f" (paper run: {d.paper_name})")
                for label, value in (("doubts", d.doubts), ("sources", "; ".join(d.verified_from))):
                    if value:
                        print(textwrap.fill(value, 100, initial_indent=f"      {label + ':':9s}",
                                            subsequent_indent=" " * 15))
                if d.paper_dice:
                    print(f"      {'dice:':9s}SAM3 {d.paper_dice[0]} -> Medical SAM3 {d.paper_dice[1]} (paper, text only)")
        print()
    print("ready: a converter reads the download as it unpacks and its layout facts are verified\n"
          "layout '-': the download needs a step first (`medsam3 data list -v` says which)\n"
          "?: some facts of the entry could not be verified (`-v` marks them); check the licence "
          "on the provider's page before use")
    return 0


def _run_prepare(args) -> int:
    from medsam3.data.registry import get_dataset, prepare_dataset

    info = get_dataset(args.name)
    output = args.output or f"{info.name}.jsonl"
    manifest = prepare_dataset(info.name, args.root, output, val_fraction=args.val_fraction,
                               test_fraction=args.test_fraction, seed=args.seed,
                               check_geometry=not args.no_geometry_check, progress=not args.quiet)
    print(f"wrote {len(manifest)} items of {info.title} to {output}")
    return 0


def _run_inspect(args) -> int:
    from medsam3.data.summary import format_summary, inspect_manifest

    summary = inspect_manifest(args.manifest, scan=args.scan, progress=not args.quiet)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _run_preview(args) -> int:
    from medsam3.data.preview import preview_manifest

    path = preview_manifest(args.manifest, args.output, count=args.count, columns=args.columns,
                            seed=None if args.seed < 0 else args.seed, split=args.split, window=args.window,
                            progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def _run_cache(args) -> int:
    from medsam3.data.cache import SampleCache, build_cache

    path = build_cache(args.manifest, args.output, split=args.split, window=args.window,
                       image_dtype=args.image_dtype, shard_size_mb=args.shard_size_mb, progress=not args.quiet)
    cache = SampleCache(path)
    shards = sorted(path.glob("shard-*.bin"))
    size = sum(p.stat().st_size for p in shards) / 2**20
    print(f"cached {len(cache)} items in {len(shards)} shard(s), {size:.1f} MiB, at {path}")
    return 0


def register(subparsers) -> None:
    """Add ``data`` with its sub-commands to the ``medsam3`` argument parser."""
    from medsam3.data.convert import LAYOUTS
    from medsam3.data.registry import ROLES
    from medsam3.image import MODALITIES

    fmt = argparse.ArgumentDefaultsHelpFormatter
    data = subparsers.add_parser(
        "data", help="training data: convert datasets to manifests, the dataset registry, previews, caches",
        description="Datasets for fine-tuning: convert the layouts you have (nnU-Net, Decathlon, 2D folders, "
                    "COCO, CVPR-2025 npz) into one manifest (JSON Lines), prepare the paper's datasets, "
                    "inspect and preview manifests, cache preprocessed samples.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    def quiet(p):
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("convert", help="read a dataset as it lies on disk and write its manifest",
                       formatter_class=fmt,
                       description="Layouts: " + "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items()))
    c.add_argument("--layout", required=True, choices=list(LAYOUTS))
    c.add_argument("-i", "--input", required=True, help="dataset folder (coco and npz: also one file)")
    c.add_argument("-o", "--output", required=True, help="manifest to write (.jsonl)")
    c.add_argument("--dataset", help="dataset name in the manifest (default: the folder name)")
    c.add_argument("--modality", type=str.upper, choices=list(MODALITIES), help="override the modality")
    c.add_argument("--class-name", help="folder2d: the class of binary masks, e.g. polyp")
    c.add_argument("--labels", help="folder2d/npz: label value -> class name, JSON or a .json file")
    c.add_argument("--colors", help='folder2d: class -> RGB for colour-coded masks, e.g. \'{"polyp": [255, 0, 0]}\'')
    c.add_argument("--images-dir", help="folder2d: the images folder name (default: found by name)")
    c.add_argument("--masks-dir", help="folder2d: the masks folder name (default: found by name)")
    c.add_argument("--mask-suffix", help="folder2d: mask name suffix, e.g. _segmentation (default: tried)")
    c.add_argument("--skip-unpaired", action="store_true", help="folder2d: leave out images without a mask")
    c.add_argument("--channels", help="nnunet: only these channel numbers, e.g. 0,2")
    c.add_argument("--class-map", help='rename classes, JSON: \'{"cancer": "liver tumor"}\' ("*" renames all)')
    c.add_argument("--val-fraction", type=float, default=0.0, help="share of cases for validation")
    c.add_argument("--test-fraction", type=float, default=0.0, help="share of cases for testing")
    c.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    c.add_argument("--no-geometry-check", action="store_true",
                   help="compare only shapes of image and label, not spacing/origin/direction")
    c.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="other layout option (atlas: image=, label=, names=, mask=, mask_class=, mask_threshold=)")
    quiet(c)
    c.set_defaults(func=_run_convert)

    ls = sub.add_parser("list", help="the registry of the paper's datasets", formatter_class=fmt)
    ls.add_argument("--role", choices=list(ROLES), help="only training, external or extra sets")
    ls.add_argument("-v", "--verbose", action="store_true", help="licence, source, citation and notes")
    ls.add_argument("--json", action="store_true", help="print the registry as JSON")
    ls.set_defaults(func=_run_list)

    p = sub.add_parser("prepare", help="turn a downloaded copy of a registered dataset into a manifest",
                       formatter_class=fmt)
    p.add_argument("name", help="registry name (medsam3 data list)")
    p.add_argument("--root", help="the unpacked download (default: the system location, if the entry has one)")
    p.add_argument("-o", "--output", help="manifest to write (default: NAME.jsonl)")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-geometry-check", action="store_true")
    quiet(p)
    p.set_defaults(func=_run_prepare)

    from medsam3.data.mix import add_merge_parser

    add_merge_parser(sub, fmt)

    i = sub.add_parser("inspect", help="counts per split, dataset, modality and class; sizes", formatter_class=fmt)
    i.add_argument("manifest")
    i.add_argument("--scan", action="store_true", help="read every label: presence and pixel counts per class")
    i.add_argument("--json", action="store_true")
    quiet(i)
    i.set_defaults(func=_run_inspect)

    v = sub.add_parser("preview", help="a PNG grid of items with their labels painted on", formatter_class=fmt)
    v.add_argument("manifest")
    v.add_argument("-o", "--output", required=True, help="PNG to write")
    v.add_argument("--count", type=int, default=16, help="number of items")
    v.add_argument("--columns", type=int, default=4)
    v.add_argument("--seed", type=int, default=0, help="random choice of items (-1: the first ones)")
    v.add_argument("--split", help="only this split")
    v.add_argument("--window", help="CT window (preset or LEVEL,WIDTH)")
    quiet(v)
    v.set_defaults(func=_run_preview)

    k = sub.add_parser("cache", help="store read and normalised items in shards for training", formatter_class=fmt)
    k.add_argument("manifest")
    k.add_argument("-o", "--output", required=True, help="cache directory")
    k.add_argument("--split", help="only this split")
    k.add_argument("--window", help="CT window (preset or LEVEL,WIDTH)")
    k.add_argument("--image-dtype", choices=["uint8", "float16"], default="uint8")
    k.add_argument("--shard-size-mb", type=float, default=1024)
    quiet(k)
    k.set_defaults(func=_run_cache)
