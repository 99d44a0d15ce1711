"""``medsam3 evaluate``: score existing label-map folders, run a model on a manifest and score
it, or compare two evaluation reports.

The lead's ``medsam3/cli.py`` calls :func:`register`; arguments mirror
:func:`medsam3.evaluate.evaluate_folder`, :func:`medsam3.evaluate.evaluate_model`,
:func:`medsam3.evaluate.evaluate_manifest` and :func:`medsam3.evaluate.compare_reports`.
"""

from __future__ import annotations

import argparse

from medsam3.errors import ArgumentError
from medsam3.evaluate.metrics import BOTH_EMPTY_CHOICES, ONE_EMPTY_DISTANCE_CHOICES
from medsam3.precision_options import add_precision_arguments, resolve_precision

_DESCRIPTION = """\
Score label maps that already exist (from medsam3, nnU-Net, TotalSegmentator, ...) against
ground truth, matched by file name: Dice, IoU, NSD at --nsd-tolerance mm, HD95 and ASSD in mm
with each ground-truth file's real spacing (MONAI 1.6 metrics), and instance F1. Writes
OUT/cases.csv (one row per case and class), OUT/report.md, OUT/report.json and box plots.
A run resumes: cases already in OUT/cases.csv are not scored again. Failures are rows, not
gaps: a missing prediction or an "absent" answer on a positive case scores Dice 0 and is listed.

With --model M --manifest F, run the model on the manifest's items (the test split by default)
with one --prompt-mode, write its label maps to OUT/predictions/ and score them the same way:
  text      text prompts only (the classes' canonical prompts); ground truth read only to score;
            volumes through `medsam3 segment` on the whole volume
  text+box  text + one exemplar box per class: the box of its largest ground-truth component
  box       no text: SAM3 tracker, one ground-truth box per connected component (vanilla SAM3 + GT boxes)
  point     no text: SAM3 tracker, one click per ground-truth component (its most interior pixel)
The three ground-truth modes prompt volumes slice by slice, on the slices holding the class.
With --predictions DIR --manifest F, score existing predictions (named by item id) against the
manifest's ground truth.

With --compare A.json B.json, compare two such reports instead (e.g. text vs text+box): paired
differences (B - A) with bootstrap CIs and Wilcoxon p-values, bar charts and box plots, in OUT/compare.*.
"""

_EXAMPLES = """\
examples:
  medsam3 evaluate -p preds/ -g labelsTs/ --labels 1=liver,2=spleen -o eval/
  medsam3 evaluate -p finetuned/ -g labelsTs/ -o eval_ft/ --name finetuned --nsd-tolerance 1
  medsam3 evaluate --compare eval/report.json eval_ft/report.json -o eval_cmp/ --names vanilla,finetuned
  medsam3 evaluate --model ChongCong/Medical-SAM3 --manifest kvasir.jsonl --prompt-mode text -o ev_text/
  medsam3 evaluate --model ChongCong/Medical-SAM3 --manifest kvasir.jsonl --prompt-mode text+box -o ev_box/
  medsam3 evaluate --compare ev_text/ ev_box/ -o text_vs_box/ --names text,text+box
  medsam3 evaluate -p nnunet_preds/ --manifest liver.jsonl -o eval_nnunet/
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "evaluate", help="score label-map folders against ground truth, or compare two evaluations",
        description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--predictions", metavar="PRED_DIR", help="folder of predicted label maps")
    p.add_argument("-g", "--ground-truth", metavar="GT_DIR",
                   help="folder of ground-truth label maps; its file names define the cases")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two report.json files (or their folders) instead of scoring")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("-m", "--model", metavar="M",
                   help="run this model (directory, hub id or random:NAME) on --manifest's items and score it")
    p.add_argument("--manifest", metavar="F.jsonl",
                   help="manifest whose items and ground truth are evaluated (with --model, or with --predictions "
                        "instead of --ground-truth)")
    p.add_argument("--prompt-mode", choices=("text", "text+box", "box", "point"), default="text",
                   help="with --model: how classes are prompted (default text; the others see the ground truth)")
    p.add_argument("--protocol", choices=("paper",), default=None,
                   help="with --model: Medical SAM3's protocol: text, text + GT exemplar box and GT box in one pass "
                        "(each image/slice encoded once), scored, with the paired comparison per dataset and "
                        "modality (OUT/paper.md); see docs/paper-workflow.md")
    p.add_argument("--suite", choices=("external",), default=None,
                   help="with --model and --protocol paper: run the protocol on the paper's external test sets "
                        "given as --local NAME=PATH (no --manifest)")
    p.add_argument("--local", action="append", default=[], metavar="NAME=PATH",
                   help="--suite: a local copy of a suite dataset (registry name = its manifest .jsonl or its "
                        "unpacked download); repeat per dataset")
    p.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="manifest items of this split (default test; every item, with a note, when the manifest "
                        "has no test split)")
    p.add_argument("--datasets", metavar="A,B", help="only manifest items of these datasets")
    g = p.add_argument_group("scoring")
    g.add_argument("--labels", metavar="1=liver,2=spleen",
                   help="score exactly these label values (default: names from the ground truth's JSON sidecars "
                        "or nnU-Net dataset.json, plus every other non-zero value present)")
    g.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM", help="NSD tolerance in mm (default 2)")
    g.add_argument("--both-empty", choices=BOTH_EMPTY_CHOICES, default="nan",
                   help="scores when prediction and ground truth are both empty: nan = undefined, left out of "
                        "means (nnU-Net); perfect = 1 and distance 0 (default nan)")
    g.add_argument("--one-empty-distance", choices=ONE_EMPTY_DISTANCE_CHOICES, default="diagonal",
                   help="HD95/ASSD when exactly one mask is empty: the image's physical diagonal in mm, inf or "
                        "nan (default diagonal); Dice/NSD are 0 there anyway")
    g.add_argument("--no-instances", dest="instances", action="store_false",
                   help="skip instance F1 (connected components), which is slow for many small objects")
    g.add_argument("--dataset", help="dataset name for the summary (default: from sidecars or dataset.json)")
    g.add_argument("--name", help="name of this run in reports and comparisons (default: OUT's folder name)")
    g.add_argument("--overwrite", action="store_true", help="score every case again instead of resuming")
    m = p.add_argument_group("model runs (--model)")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    m.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weights' precision (default float32)")
    add_precision_arguments(m)
    from medsam3.predict.settings import add_arguments as add_predict_arguments

    # as `medsam3 segment` (the volume options apply to text mode; --axis to every mode)
    add_predict_arguments(m, mode_flag="--volume-mode", exclude=("instances",), show_defaults=True)
    m.add_argument("--max-objects", type=int, metavar="N",
                   help="box/point modes: prompt only the N largest components of a class per image or slice "
                        "(default all; the rest are counted, and scored as misses)")
    m.add_argument("--window", help="CT window for CT items: preset name or LEVEL,WIDTH (default soft tissue)")
    c = p.add_argument_group("comparison")
    c.add_argument("--names", metavar="A,B", help="display names of the two compared runs")
    c.add_argument("--group-by", choices=("class", "dataset", "modality", "dimension"),
                   help="group comparisons by this column (default: dataset if several, else class)")
    s = p.add_argument_group("statistics and output")
    s.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNG figures")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``medsam3 evaluate`` from parsed arguments; 0 on success."""
    if args.bootstrap < 0:
        raise ArgumentError(f"--bootstrap {args.bootstrap} must be >= 0")
    if args.compare:
        if args.predictions or args.ground_truth or args.model or args.manifest:
            raise ArgumentError("--compare takes two report.json files; do not also give "
                                "--predictions/--ground-truth/--model/--manifest")
        from medsam3.evaluate.compare import compare_reports

        result = compare_reports(args.compare[0], args.compare[1], args.out, names=args.names,
                                 group_by=args.group_by, n_bootstrap=args.bootstrap, seed=args.seed,
                                 plots=args.plots)
        overall = result.result["overall"]
        for metric in ("dice", "nsd"):
            if metric in overall and overall[metric]["n"]:
                st = overall[metric]
                print(f"{metric}: {result.names[0]} {st['mean_a']:.4f} -> {result.names[1]} {st['mean_b']:.4f}, "
                      f"diff {st['mean_diff']:+.4f} [{st['ci_low']:+.4f}, {st['ci_high']:+.4f}] "
                      f"({st['n']} pairs)")
        for warning in result.warnings:
            print(f"warning: {warning}")
        print(f"report: {result.compare_md}")
        return 0
    if args.suite:
        return _run_suite(args)
    if args.local:
        raise ArgumentError("--local NAME=PATH gives a dataset to --suite: add --suite external")
    if args.model or args.manifest:
        return _run_manifest(args)
    if not args.predictions or not args.ground_truth:
        raise ArgumentError("give --predictions PRED_DIR and --ground-truth GT_DIR (or --manifest F), "
                            "--model M --manifest F, or --compare A.json B.json")
    from medsam3.evaluate.folder import evaluate_folder

    result = evaluate_folder(args.predictions, args.ground_truth, args.out, labels=args.labels,
                             nsd_tolerance=args.nsd_tolerance, both_empty=args.both_empty,
                             one_empty_distance=args.one_empty_distance, instances=args.instances,
                             dataset=args.dataset, name=args.name, n_bootstrap=args.bootstrap, seed=args.seed,
                             overwrite=args.overwrite, progress=args.progress, plots=args.plots)
    overall = result.summary["overall"]
    print(f"{overall['n_cases']} cases, {overall['n_rows']} rows; scored now: {len(result.scored_now)}")
    for metric in ("dice", "nsd", "hd95"):
        st = overall[metric]
        if st["n"]:
            print(f"  {metric}: mean {st['mean']:.4f} [{st['ci_low']:.4f}, {st['ci_high']:.4f}], "
                  f"median {st['median']:.4f} (n={st['n']})")
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    overall = result.summary["overall"]
    failures = sum(overall["status"].get(s, 0) for s in ("false_negative", "absent_answer", "missing_prediction",
                                                          "false_positive"))
    if failures:
        print(f"  failures: {failures} (listed in {result.report_md})")
    print(f"report: {result.report_md}")


def _run_suite(args: argparse.Namespace) -> int:
    """``--model M --protocol paper --suite external --local NAME=PATH ...``."""
    if not args.model or args.protocol != "paper":
        raise ArgumentError("--suite runs the paper protocol: give --model M --protocol paper")
    if args.manifest or args.predictions or args.ground_truth:
        raise ArgumentError("--suite takes its datasets from --local NAME=PATH, not --manifest/--predictions/"
                            "--ground-truth")
    local = {}
    for entry in args.local:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ArgumentError(f"--local {entry!r} must be NAME=PATH (e.g. hc18=~/data/HC18)")
        local[name.strip()] = path.strip()
    _check_paper_flags(args)
    from medsam3.evaluate.paper import evaluate_suite

    result = evaluate_suite(args.model, args.suite, local, args.out, device=args.device, dtype=args.dtype,
                            threshold=args.threshold, presence_threshold=args.presence_threshold,
                            mask_threshold=args.mask_threshold, axis=args.axis, max_objects=args.max_objects,
                            window=args.window, batch_size=args.batch_size, split=args.split or "all",
                            nsd_tolerance=args.nsd_tolerance, both_empty=args.both_empty,
                            one_empty_distance=args.one_empty_distance, instances=args.instances,
                            n_bootstrap=args.bootstrap, seed=args.seed, overwrite=args.overwrite,
                            progress=args.progress, plots=args.plots)
    print(f"{args.suite} suite: {', '.join(result.runs)} run; report {result.suite_md}")
    if result.missing:
        print(f"not run (no --local copy): {', '.join(result.missing)}")
    return 0


def _check_paper_flags(args: argparse.Namespace) -> None:
    given = [flag for flag, value, default in (("--prompt-mode", args.prompt_mode, "text"),
                                               ("--volume-mode", args.mode, None),
                                               ("--presence-window", args.presence_window, None)) if value != default]
    if given:
        raise ArgumentError(f"--protocol paper sets the prompt modes (text, text+box, box) and runs volumes slice by "
                            f"slice; do not also give {', '.join(given)}")


def _run_paper(args: argparse.Namespace, common: dict) -> int:
    """``--model M --manifest F --protocol paper``."""
    _check_paper_flags(args)
    from medsam3.evaluate.paper import evaluate_paper

    result = evaluate_paper(args.model, args.manifest, args.out, device=args.device, dtype=args.dtype,
                            threshold=args.threshold, presence_threshold=args.presence_threshold,
                            mask_threshold=args.mask_threshold, axis=args.axis, max_objects=args.max_objects,
                            window=args.window,
                            batch_size=args.batch_size, **common)
    print(f"paper protocol: {len(result.predicted_now)} items predicted now, {result.encoded} ViT passes; "
          f"report {result.paper_md}")
    for mode, run in result.runs.items():
        st = run.summary["overall"]["dice"]
        if st["n"]:
            print(f"  {mode}: dice mean {st['mean']:.4f} [{st['ci_low']:.4f}, {st['ci_high']:.4f}] (n={st['n']})")
    return 0


def _run_manifest(args: argparse.Namespace) -> int:
    """``--model M --manifest F`` or ``--predictions DIR --manifest F``."""
    if not args.manifest:
        raise ArgumentError("--model needs --manifest F.jsonl: the items to run it on and their ground truth")
    if args.ground_truth:
        raise ArgumentError("give --manifest or --ground-truth, not both: with a manifest the ground truth is "
                            "the manifest's labels")
    if args.labels:
        raise ArgumentError("--labels is for --ground-truth folders; with --manifest the classes are the "
                            "manifest's (use --datasets / --split to choose items)")
    if args.dataset:
        raise ArgumentError("--dataset names a folder's dataset; with --manifest every item has its own "
                            "(use --datasets A,B to choose datasets)")
    common = dict(split=args.split, datasets=args.datasets, nsd_tolerance=args.nsd_tolerance,
                  both_empty=args.both_empty, one_empty_distance=args.one_empty_distance,
                  instances=args.instances, name=args.name, n_bootstrap=args.bootstrap, seed=args.seed,
                  overwrite=args.overwrite, progress=args.progress, plots=args.plots)
    if args.model:
        if args.predictions:
            raise ArgumentError("give --model (predict and score) or --predictions (score existing label maps), "
                                "not both")
        if args.protocol == "paper":
            return _run_paper(args, common)
        from medsam3.evaluate.model import evaluate_model
        from medsam3.predict.settings import from_args as settings_from_args
        from medsam3.segmentation import load_model

        precision = resolve_precision(args, args.device)  # fp32: the model loads on first use, as before
        model = args.model if precision == "fp32" else load_model(args.model, args.device, args.dtype, precision)
        result = evaluate_model(model, args.manifest, args.out, prompt_mode=args.prompt_mode,
                                device=args.device, dtype=args.dtype, settings=settings_from_args(args),
                                max_objects=args.max_objects, window=args.window, **common)
    else:
        if args.protocol:
            raise ArgumentError(f"--protocol {args.protocol} runs a model: give --model M")
        if not args.predictions:
            raise ArgumentError("--manifest needs --model M (predict and score) or --predictions DIR "
                                "(score existing label maps)")
        from medsam3.evaluate.manifest import evaluate_manifest

        result = evaluate_manifest(args.predictions, args.manifest, args.out, **common)
    overall = result.summary["overall"]
    predicted = f"; predicted now: {len(result.predicted_now)}" if args.model else ""
    print(f"{overall['n_cases']} cases ({result.split} split), {overall['n_rows']} rows; "
          f"scored now: {len(result.scored_now)}{predicted}")
    for metric in ("dice", "nsd", "hd95"):
        st = overall[metric]
        if st["n"]:
            print(f"  {metric}: mean {st['mean']:.4f} [{st['ci_low']:.4f}, {st['ci_high']:.4f}], "
                  f"median {st['median']:.4f} (n={st['n']})")
    for note in result.notes:
        print(f"note: {note}")
    _print_summary(result)
    return 0
