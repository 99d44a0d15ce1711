"""The ``medsam3`` command line: one entry point, subcommands with the Python API's arguments."""

from __future__ import annotations

import argparse
import json
import logging
import warnings
import os
import sys

from medsam3 import __version__
from medsam3.errors import ArgumentError, MedSAM3Error
from medsam3.precision_options import add_precision_arguments, resolve_precision


class _AppendPoint(argparse.Action):
    """``--point X Y`` appends a positive click; a following ``--negative`` flips the last one."""

    def __call__(self, parser, namespace, values, option_string=None):
        points = getattr(namespace, "points", None) or []
        labels = getattr(namespace, "point_labels", None) or []
        if option_string == "--negative":
            if not points:
                parser.error("--negative must follow a --point X Y")
            labels[-1] = 0
        else:
            points.append([float(v) for v in values])
            labels.append(1)
        namespace.points, namespace.point_labels = points, labels


class _AppendExemplar(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        boxes = getattr(namespace, "exemplars", None) or []
        labels = getattr(namespace, "exemplar_labels", None) or []
        boxes.append([float(v) for v in values])
        labels.append(0 if option_string == "--negative-exemplar" else 1)
        namespace.exemplars, namespace.exemplar_labels = boxes, labels


def _add_segment(subparsers) -> None:
    from medsam3.io import SUPPORTED_INPUT_FORMATS, SUPPORTED_OUTPUT_FORMATS
    from medsam3.predict.settings import add_arguments as add_predict_arguments
    from medsam3.preprocess import CT_WINDOWS

    p = subparsers.add_parser(
        "segment", help="segment a 2D image or 3D volume from text, box and point prompts",
        description="Segment structures named by text prompts (and/or one object given by a box or clicks) "
                    "and write a label map in the input's geometry, with a JSON sidecar next to it. "
                    "Label value k is the k-th prompt; a box/point object gets the label after the text prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help=f"image file or DICOM series directory ({SUPPORTED_INPUT_FORMATS})")
    p.add_argument("-o", "--output", required=True, help=f"label map to write ({SUPPORTED_OUTPUT_FORMATS}); "
                   "the sidecar is OUTPUT with its extension replaced by .json")
    p.add_argument("--format", dest="output_format", choices=("dicom-seg", "dicom-rt"), default=None,
                   help="write DICOM: a Segmentation object (SEG) or an RT Structure Set referencing the input "
                        "series (a .dcm output defaults to dicom-seg); otherwise the format follows -o's extension")
    p.add_argument("--series-uid", default=None, metavar="UID",
                   help="for a DICOM folder holding several series: the SeriesInstanceUID to read")
    p.add_argument("-p", "--prompt", action="append", default=[], dest="prompts", metavar="TEXT",
                   help="a structure's name, e.g. -p liver -p spleen (repeatable)")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box around one object, in pixels of the input (x = column, y = row)")
    p.add_argument("--point", nargs=2, type=float, metavar=("X", "Y"), action=_AppendPoint, dest="points",
                   help="a click on that object (repeatable); follow it with --negative for a background click")
    p.add_argument("--negative", nargs=0, action=_AppendPoint, help="make the preceding --point a negative click")
    p.add_argument("--exemplar", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), action=_AppendExemplar,
                   dest="exemplars", help="an example box of the text concept, given with every text prompt")
    p.add_argument("--negative-exemplar", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   action=_AppendExemplar, dest="exemplars", help="a counter-example box of the text concept")
    p.add_argument("--slice", type=int, dest="slice_index", metavar="K",
                   help="for volumes: the slice --box/--point/--exemplar are drawn on, as an index along the slicing axis "
                        "(array order); X/Y are the columns/rows of that array plane")
    v = p.add_argument_group("volumes", "3D inputs: the detector finds the prompts on every slice, the SAM3 tracker "
                             "propagates what it found (and any --box/--point) through the volume, and the two are "
                             "merged; see medsam3.predict.volume")
    p.add_argument("--model", default=None, help="model directory, Hugging Face hub id, or random:NAME "
                   "(random weights, for tests and benchmarks); default: facebook/sam3")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    add_precision_arguments(p)
    p.add_argument("--modality", default=None, help="CT, MR, PT, XR, US, RGB, OTHER (default: from the file)")
    p.add_argument("--window", default=None,
                   help=f"CT window: a preset ({', '.join(CT_WINDOWS)}) or LEVEL,WIDTH in HU, e.g. 40,400")
    add_predict_arguments(p, volumes=v)
    p.add_argument("--overlay", default=None, metavar="PNG", help="also write an overlay picture")
    p.add_argument("--json", action="store_true", help="print the per-prompt results as JSON")
    from medsam3.batch.cli import add_batch_arguments  # -i FOLDER|LIST|MANIFEST -o OUTDIR

    add_batch_arguments(p)
    p.set_defaults(func=_run_segment, points=None, point_labels=None, exemplars=None, exemplar_labels=None)


def _run_segment(args) -> int:
    from medsam3.io import sidecar_path
    from medsam3.predict.settings import from_args as settings_from_args
    from medsam3.segmentation import segment, summary_dict

    if args.window is not None and "," in args.window:
        try:
            window = tuple(float(v) for v in args.window.split(","))
        except ValueError:
            raise ArgumentError(f"--window {args.window!r} is neither a preset nor LEVEL,WIDTH") from None
    else:
        window = args.window
    from medsam3.batch.cli import is_batch, run_batch

    if is_batch(args):  # many cases, one model load: medsam3.batch
        return run_batch(args, window)
    seg = segment(args.input, args.output, args.prompts, box=args.box, points=args.points,
                  point_labels=args.point_labels, exemplars=args.exemplars, exemplar_labels=args.exemplar_labels,
                  slice_index=args.slice_index, model=args.model, device=args.device, dtype=args.dtype,
                  modality=args.modality, window=window, settings=settings_from_args(args), overlay=args.overlay,
                  series_uid=args.series_uid, output_format=args.output_format,
                  precision=resolve_precision(args, args.device))
    if args.json:
        print(json.dumps([summary_dict(r) for r in seg.results], indent=2))
    for k, name in enumerate(seg.prompts, start=1):
        r = seg.results[k - 1]
        state = "absent" if not r.present else "present"
        print(f"  {k}: {name}: {state} (presence {r.presence_score:.3f})")
    print(f"label map: {seg.output}")
    print(f"sidecar:   {sidecar_path(seg.output)}")
    if seg.extra.get("instances_output"):
        print(f"instances: {seg.extra['instances_output']}")
    if seg.overlay:
        print(f"overlay:   {seg.overlay}")
    return 0


def _add_model(subparsers) -> None:
    from medsam3.model.configs import SIZES

    p = subparsers.add_parser("model", help="create or inspect model directories",
                              description="Model directories hold config.json, model.safetensors, the tokenizer "
                                          "and the processor config; everything loads offline.")
    sub = p.add_subparsers(dest="model_command", required=True)
    c = sub.add_parser("create", help="write a randomly initialised model of a named size",
                       description="Sizes: " + "; ".join(f"{k}: {v.description if v else 'the published SAM3 layout (840M + tracker, 1008 px)'}"
                                                         for k, v in SIZES.items()))
    c.add_argument("name", choices=list(SIZES))
    c.add_argument("-o", "--output", required=True, help="directory to write")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--size", type=int, default=None, help="input resolution in pixels (multiple of 14)")
    c.set_defaults(func=_run_model_create)
    e = sub.add_parser("export", help="package a trained model for distribution (float16, concept list)",
                       description="Write a model directory from a trained one (a `medsam3 train` run's final/ "
                                   "or best/ directory): float16 weights, config, processor, and medsam3.json with "
                                   "the concepts it was trained on (prompts outside them are then answered "
                                   "'absent' with a warning) and provenance.")
    e.add_argument("model", help="trained model directory (or hub id)")
    e.add_argument("-o", "--output", required=True, help="directory to write (replaced atomically)")
    e.add_argument("--manifest", help="training manifest: its classes become the model's concepts")
    e.add_argument("--concepts", help="comma-separated concepts instead of --manifest")
    e.add_argument("--float32", action="store_true", help="keep float32 weights (default: float16)")
    e.add_argument("--untrained-tracker", action="store_true",
                   help="mark the tracker as not trained: box/point prompts and propagation are refused, "
                        "merged volumes fall back to slice detection")
    e.add_argument("--info", action="append", default=[], metavar="KEY=VALUE",
                   help="more medsam3.json entries (VALUE read as JSON when it parses, else text)")
    e.add_argument("--card", help="a Markdown model card to copy in as README.md")
    e.set_defaults(func=_run_model_export)
    i = sub.add_parser("info", help="print a model directory's sizes and parameter counts")
    i.add_argument("model", help="model directory or hub id")
    i.set_defaults(func=_run_model_info)


def _run_model_create(args) -> int:
    from medsam3.model.directory import create_random_model

    if os.path.exists(args.output):
        raise ArgumentError(f"{args.output} exists; choose a new directory")
    path = create_random_model(args.name, args.output, seed=args.seed, image_size=args.size)
    print(f"wrote random-initialised '{args.name}' model to {path}")
    return 0


def _run_model_export(args) -> int:
    from medsam3.data.manifest import manifest_concepts
    from medsam3.model.export import export_model

    if args.manifest and args.concepts:
        raise ArgumentError("give --manifest or --concepts, not both")
    concepts = (manifest_concepts(args.manifest) if args.manifest
                else [c.strip() for c in args.concepts.split(",") if c.strip()] if args.concepts else None)
    info = {}
    for entry in args.info:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise ArgumentError(f"--info {entry!r}: expected KEY=VALUE")
        try:
            info[key] = json.loads(value)
        except ValueError:
            info[key] = value
    if args.untrained_tracker:
        info["tracker_trained"] = False
    from medsam3.model.info import ModelInfo

    ModelInfo.from_json(info, "--info")  # a bad entry is refused here rather than when the exported model is loaded
    _check_export_output(args)
    files = {}
    if args.card:
        try:
            files["README.md"] = open(args.card, encoding="utf-8").read()
        except OSError as exc:
            raise ArgumentError(f"--card {args.card}: {exc.strerror}") from None
    path = export_model(args.model, args.output, half=not args.float32, concepts=concepts, info=info, files=files)
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"wrote {path} ({size:.1f} MiB){'; concepts: ' + ', '.join(concepts) if concepts else ''}")
    return 0


def _check_export_output(args) -> None:
    """The output directory is replaced whole: it must not be, or hold, the source model, the
    manifest or the card."""
    from medsam3.io.outputs import OutputPlan

    plan = OutputPlan()
    if os.path.exists(args.model):  # a hub id lives in the hub cache, never under -o
        plan.add_input(args.model, "source model")
    for path, role in ((args.manifest, "manifest"), (args.card, "model card")):
        if path:
            plan.add_input(path, role)
    plan.add_directory(args.output, "exported model directory")
    plan.check()


def _run_model_info(args) -> int:
    from medsam3.model.loader import MedSAM3

    m = MedSAM3.from_pretrained(args.model, device="cpu")
    n = sum(p.numel() for p in m.detector.parameters())
    print(json.dumps({"source": m.source, "image_size": m.image_size, "detector_parameters": n,
                      "num_queries": m.config.detector_config.detr_decoder_config.num_queries}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsam3",
        description="Universal prompt-driven medical image segmentation with SAM3: type a structure's name, "
                    "draw a box or click, on a 2D image or 3D volume; get masks in the scanner's geometry.")
    parser.add_argument("--version", action="version", version=f"medsam3 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_segment(subparsers)
    _add_model(subparsers)
    import importlib

    for module in ("medsam3.model.convert_cli", "medsam3.data.cli", "medsam3.evaluate.cli", "medsam3.train.cli",
                   "medsam3.app.cli"):
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="medsam3: %(message)s")
    warnings.formatwarning = lambda message, category, *rest, **kw: f"medsam3: warning: {message}\n"
    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except MedSAM3Error as exc:
        print(f"medsam3: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medsam3: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `medsam3 data list | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
