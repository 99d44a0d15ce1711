"""The batch side of ``medsam3 segment``: ``-i`` a folder, a ``.txt`` list or a manifest, ``-o`` a directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsam3.errors import ArgumentError

#: The arguments that only batch mode has; giving any of them selects batch mode.
_BATCH_ONLY = ("jobs", "overwrite", "num_parts", "part_id", "ext", "prefetch", "overlays")


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the batch arguments to ``medsam3 segment``."""
    b = parser.add_argument_group(
        "batch", "-i a folder (image files and DICOM series, searched recursively), a .txt list of paths or a "
                 ".jsonl/.csv manifest, and -o an output directory: every case is written to OUTDIR/<case><ext> "
                 "with its sidecar, and OUTDIR/summary.csv lists them (see docs/batch.md)")
    b.add_argument("--jobs", default=None, metavar="CSV|JSONL",
                   help="per-case settings: rows with 'case' (or 'input') and prompts, box, points, slice, "
                        "modality, window; cases without a row use -p")
    b.add_argument("--overwrite", action="store_true", default=None,
                   help="redo cases whose output and sidecar already match this run's settings")
    b.add_argument("--num-parts", type=int, default=None, metavar="N", help="split the cases into N parts ...")
    b.add_argument("--part-id", type=int, default=None, metavar="K", help="... and run part K (0..N-1)")
    b.add_argument("--ext", default=None, help="output format by ending: .nii.gz (default), .nii, .nrrd, .mha, "
                   ".png, .tif; .dcm with --format dicom-seg/dicom-rt")
    b.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="cases read ahead of the model (memory: about N images; default 2)")
    b.add_argument("--overlays", action="store_true", default=None,
                   help="also write OUTDIR/<case>_overlay.png for each case")


def is_batch(args) -> bool:
    """Batch mode: a batch argument was given, ``-i`` is a list or manifest, or ``-i`` is a
    folder and ``-o`` names no image file (a DICOM series folder with ``-o seg.nii.gz`` stays
    a single case)."""
    from medsam3.batch.cases import LIST_SUFFIXES, MANIFEST_SUFFIXES
    from medsam3.io.formats import image_extension

    if any(getattr(args, name, None) is not None for name in _BATCH_ONLY):
        return True
    source = Path(args.input)
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES + MANIFEST_SUFFIXES:
        return True
    return source.is_dir() and not image_extension(args.output)


def run_batch(args, window) -> int:
    """Run ``medsam3 segment`` over many cases; exit 0 when every case succeeded, 1 when some failed."""
    from medsam3.batch.engine import segment_many

    if args.overlay is not None:
        raise ArgumentError("--overlay names one PNG: in batch mode use --overlays (one per case)")
    if args.json:
        raise ArgumentError("--json prints one case's results: in batch mode see OUTDIR/summary.csv and the sidecars")
    if (args.num_parts is None) != (args.part_id is None):
        raise ArgumentError("give --num-parts N and --part-id K together")
    ext = args.ext or (".dcm" if args.output_format else ".nii.gz")
    result = segment_many(
        args.input, args.output, args.prompts, jobs=args.jobs, extension=ext, overwrite=bool(args.overwrite),
        num_parts=args.num_parts or 1, part_id=args.part_id or 0, model=args.model, device=args.device,
        dtype=args.dtype, prefetch=args.prefetch or 2, overlays=bool(args.overlays), box=args.box,
        points=args.points, point_labels=args.point_labels, exemplars=args.exemplars,
        exemplar_labels=args.exemplar_labels, slice_index=args.slice_index, modality=args.modality, window=window,
        threshold=args.threshold, presence_threshold=args.presence_threshold, mask_threshold=args.mask_threshold,
        batch_size=args.batch_size, mode=args.mode, axis=args.axis, instances=args.volume_instances,
        skip_empty=args.skip_empty, backward_slices=args.backward_slices, max_unsupported=args.max_unsupported,
        iou_threshold=args.iou_threshold, key_score=args.key_score, presence_window=args.presence_window,
        size=args.size, series_uid=args.series_uid, output_format=args.output_format)
    counts = {s: sum(c.status == s for c in result.cases) for s in ("ok", "skipped", "failed")}
    share = result.share
    where = f" (part {share.index + 1} of {share.count})" if share.count > 1 else ""
    print(f"{len(result.cases)} cases{where}: {counts['ok']} segmented, {counts['skipped']} already done, "
          f"{counts['failed']} failed")
    done = [c.seconds for c in result.cases if c.status == "ok"]
    if done:
        print(f"seconds per case: mean {sum(done) / len(done):.2f}, max {max(done):.2f}")
    if result.summary is not None:
        print(f"summary: {result.summary}")
    failed = result.merged_failed
    if failed:
        total = len(result.merged) if result.merged else len(result.cases)
        print(f"medsam3: {failed} of {total} cases failed; reasons in {Path(args.output) / 'summary.csv'}",
              file=sys.stderr)
        return 1
    return 0
