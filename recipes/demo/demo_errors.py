"""Where a model's mask for one class of one volume goes wrong, slice by slice: false positives
and misses per axial slice, how far the misses lie from the mask, and how the reference and the
prediction differ in dark (CSF-like) voxels. The diagnostics of docs/demo-model.md come from it.

    python recipes/demo/demo_errors.py --manifest data/demo/heldout/demo-heldout.jsonl \
        --item mni152-fsl-2mm --class brain --model demo --slices
    python recipes/demo/demo_errors.py --manifest data/demo/train/demo-train.jsonl --item colin27/v00 \
        --class brain --model runs/demo-stage4

Prints one JSON object (with ``--slices``, per-slice rows first). Text prompt only, the
model's volume mode ``slices`` with its own presence window (``--presence-window`` sets
another); the class name is the prompt. ``--oracle-presence`` takes the
present / absent decision of each slice from the reference instead of the model's presence
score (the model's mask is kept wherever the reference holds the class in that slice): how far
the masks alone would go with a perfect presence decision. A diagnostic, never a result.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="medsam3 manifest holding the volume")
    parser.add_argument("--item", required=True, help="the item's id")
    parser.add_argument("--class", dest="cls", required=True, help="class name (and text prompt)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", action="store_true", help="print a row per slice")
    parser.add_argument("--presence-window", type=int, default=None, metavar="N",
                        help="slices whose median presence decides each slice (default: the model's own)")
    parser.add_argument("--oracle-presence", action="store_true",
                        help="decide present / absent per slice from the reference (a diagnostic)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from scipy import ndimage

    from medsam3 import MedSAM3, read_image, segment
    from medsam3.data import read_manifest
    from medsam3.evaluate import dice_score as dice
    from medsam3.orientation import choose_orientation

    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.manifest)
    item = next((it for it in manifest if it.id == args.item), None)
    if item is None or item.dim != 3:
        parser.error(f"{args.manifest}: no volume item {args.item!r}")
    targets = dict(item.targets())
    if args.cls not in targets:
        parser.error(f"{args.manifest}: item {args.item!r} does not label {args.cls!r} (it labels {sorted(targets)})")
    loaded = read_image(manifest.resolve(item.image))
    image = loaded.array.astype(np.float64)
    values = targets[args.cls]  # the label values of the class (None: every value > 0)
    label = read_image(manifest.resolve(item.label)).array
    reference = label > 0 if values is None else np.isin(label, values)
    model = MedSAM3.from_pretrained(args.model, device="cpu")
    if not (getattr(model, "info", None) or {}).get("masks"):  # a training run's folder: read the semantic head
        model.info = dict(getattr(model, "info", {}) or {}, masks="semantic")
    # with --oracle-presence every slice's mask is kept (thresholds 0), then cleared where the reference is empty
    thresholds = {"threshold": 0.0, "presence_threshold": 0.0} if args.oracle_presence else {}
    result = segment(loaded, None, [args.cls], model=model, mode="slices", progress=False,
                     presence_window=args.presence_window, **thresholds)
    predicted = result.labels.array == 1
    if args.oracle_presence:  # along the model's slicing axis, which need not be array axis 0
        by_slice = choose_orientation(loaded.direction)
        holds = by_slice.stack(reference).any(axis=(1, 2))
        by_slice.stack(predicted)[~holds] = False

    missed, extra = reference & ~predicted, predicted & ~reference
    if args.slices:
        for z in range(reference.shape[0]):
            if reference[z].any() or predicted[z].any():
                print(json.dumps({"slice": z, "reference": int(reference[z].sum()), "predicted": int(predicted[z].sum()),
                                  "dice": round(dice(reference[z], predicted[z]), 3), "false_positive": int(extra[z].sum()),
                                  "missed": int(missed[z].sum())}))
    distance = ndimage.distance_transform_edt(~predicted)  # voxels from the predicted mask

    def dark_share(mask):
        return float((image[mask] < 0.5 * np.median(image[mask])).mean()) if mask.any() else float("nan")

    print(json.dumps({
        "model": args.model, "item": args.item, "class": args.cls, "oracle_presence": args.oracle_presence,
        "presence_window": result.sidecar["volume"]["presence_window"],
        "dice": round(dice(reference, predicted), 4),
        "reference_voxels": int(reference.sum()), "predicted_voxels": int(predicted.sum()),
        "false_positive": int(extra.sum()), "missed": int(missed.sum()),
        "missed_within_1_voxel": int((missed & (distance <= 1)).sum()),
        "missed_within_2_voxels": int((missed & (distance <= 2)).sum()),
        "dice_prediction_dilated_1_voxel": round(dice(reference, ndimage.binary_dilation(predicted)), 4),
        "reference_dark_share": round(dark_share(reference), 4), "predicted_dark_share": round(dark_share(predicted), 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
