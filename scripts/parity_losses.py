"""Training-loss parity: Meta's SAM3 criterion (PyPI ``sam3`` 0.1.4) against ours, term by term.

    python scripts/parity_losses.py [--meta-venv .venv-meta] [--seed 0] [--keep DIR]

Generates one fixed batch of predictions and targets (3 images, 6 prompt rows: present and
absent classes, 3 decoder layers - 2 auxiliary -, a one-to-many query group, instance and
semantic masks at a lower resolution than the ground truth), saves it without pickle
(``case.npz`` + ``case.json``), runs Meta's ``Sam3LossWrapper`` configured as Meta's SAM3
full fine-tuning (matcher, ``IABCEMdetr``, ``Boxes``, ``Masks``, ``SemanticSegCriterion``,
one-to-many matcher; see docs/losses.md) in Meta's virtual environment, runs
``SetCriterion(LossWeights.meta_sam3())`` here, and prints one table: term, Meta, ours,
relative difference, tolerance, pass. Exit status 1 when any term differs by more than the
tolerance (relative 1e-5), 2 on a setup error.

Meta's environment: ``--meta-venv`` (default ``.venv-meta`` in the repository, git-ignored,
the same one ``scripts/parity_meta.py`` uses), created when absent with
``pip install torch==2.14.1 torchvision==0.29.1 sam3==0.1.4 psutil``; the loss code also
needs ``scipy`` and ``torchmetrics``, installed there when missing. sam3 pins numpy < 2.4, so
it never goes into medsam3's own environment.

Run-time fixes on Meta's side only (installed files are never edited): the Triton focal-loss
kernels (GPU only) are replaced by the same formula in PyTorch, and ``all_reduce`` of the box
count is the identity (one process: the mean over processes is the count itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
META_PIP = ["torch==2.14.1", "torchvision==0.29.1", "sam3==0.1.4", "psutil"]
META_EXTRAS = ["scipy", "torchmetrics"]  # imported by sam3.train's matcher and loss module
TOLERANCE = 1e-5

LAYERS, QUERIES, MASK_SIZE, GT_SIZE = 3, 200, 16, 64
# (image, instances) per prompt row: present and absent classes over three images
ROWS = [(0, 3), (0, 0), (1, 2), (1, 1), (2, 0), (2, 4)]

# Meta's loss keys -> (our term name, the weight Meta's configuration gives it)
META_TERMS = {"loss_ce": ("class", 20.0), "presence_loss": ("presence", 20.0), "loss_bbox": ("l1", 5.0),
              "loss_giou": ("giou", 2.0), "loss_mask": ("mask_focal", 200.0), "loss_dice": ("mask_dice", 10.0),
              "loss_semantic_seg": ("semantic_focal", 20.0), "loss_semantic_dice": ("semantic_dice", 30.0),
              "loss_semantic_presence": ("semantic_presence", 1.0)}


# ---------------------------------------------------------------------------- the case
def make_case(seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Random predictions and targets; several queries sit near each instance so that the
    matchers (one-to-one and one-to-many) have real choices to make."""
    rng = np.random.default_rng(seed)
    rows = len(ROWS)

    def random_boxes(*shape):
        return np.concatenate([rng.uniform(0.15, 0.85, (*shape, 2)), rng.uniform(0.05, 0.4, (*shape, 2))], -1)

    counts = [n for _, n in ROWS]
    gt_boxes = random_boxes(sum(counts)).astype(np.float32)
    # two overlapping instances in the last row: a query can serve both in the one-to-many match
    gt_boxes[-1] = gt_boxes[-2] + np.float32(0.01)
    gt_masks = np.zeros((sum(counts), GT_SIZE, GT_SIZE), dtype=bool)
    yy, xx = (np.mgrid[0:GT_SIZE, 0:GT_SIZE] + 0.5) / GT_SIZE
    for i, (cx, cy, w, h) in enumerate(gt_boxes):  # an ellipse inside each box
        gt_masks[i] = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
    first = np.concatenate([[0], np.cumsum(counts)])

    def predictions():
        boxes = random_boxes(LAYERS, rows, QUERIES)
        for r in range(rows):
            for j in range(counts[r]):
                near = rng.choice(QUERIES, size=6, replace=False)
                noise = rng.normal(0, 0.02, (LAYERS, 6, 4))
                boxes[:, r, near] = np.clip(gt_boxes[first[r] + j] + noise, 0.02, 0.98)
        logits = rng.normal(-1.0, 2.0, (LAYERS, rows, QUERIES))
        return logits.astype(np.float32), boxes.astype(np.float32)

    logits, boxes = predictions()
    logits_o2m, boxes_o2m = predictions()
    arrays = {
        "pred_logits": logits, "pred_boxes": boxes,
        "pred_logits_o2m": logits_o2m, "pred_boxes_o2m": boxes_o2m,
        "presence_logits": rng.normal(0.0, 2.0, (LAYERS, rows)).astype(np.float32),
        "pred_masks": rng.normal(0.0, 3.0, (rows, QUERIES, MASK_SIZE, MASK_SIZE)).astype(np.float32),
        "pred_masks_o2m": rng.normal(0.0, 3.0, (rows, QUERIES, MASK_SIZE, MASK_SIZE)).astype(np.float32),
        "semantic_seg": rng.normal(0.0, 3.0, (rows, MASK_SIZE, MASK_SIZE)).astype(np.float32),
        "gt_boxes": gt_boxes, "gt_masks": gt_masks,
    }
    meta = {"seed": seed, "rows": [{"image": i, "instances": n} for i, n in ROWS], "layers": LAYERS,
            "queries": QUERIES, "mask_size": MASK_SIZE, "gt_size": GT_SIZE}
    return arrays, meta


def save_case(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    np.savez(folder / "case.npz", **arrays)
    (folder / "case.json").write_text(json.dumps(meta, indent=1))


def load_case(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(folder / "case.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads((folder / "case.json").read_text())


# ---------------------------------------------------------------------------- Meta's side
def run_meta(folder: Path) -> dict[str, float]:
    """Meta's criterion on the case (runs inside Meta's virtual environment)."""
    import torch
    import torch.nn.functional as F

    from sam3.model import box_ops
    from sam3.model.model_misc import SAM3Output, inverse_sigmoid
    from sam3.train import matcher as meta_matcher
    from sam3.train.loss import loss_fns, sam3_loss

    def focal(inputs, targets, alpha, gamma):  # the Triton kernel's formula (its docstring), on any device
        p = inputs.sigmoid()
        ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        return (alpha * targets + (1 - alpha) * (1 - targets)) * ce * (1 - p_t) ** gamma

    loss_fns.triton_sigmoid_focal_loss = focal
    loss_fns.triton_sigmoid_focal_loss_reduce = lambda i, t, a, g: focal(i, t, a, g).sum()
    torch.distributed.all_reduce = lambda tensor, *args, **kwargs: tensor  # one process

    arrays, meta = load_case(folder)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    counts = torch.tensor([r["instances"] for r in meta["rows"]])
    rows, most = len(counts), int(counts.max())
    boxes_padded = torch.zeros(rows, most, 4)
    ids_padded = torch.full((rows, most), -1, dtype=torch.long)
    first = 0
    for r, n in enumerate(counts.tolist()):
        boxes_padded[r, :n] = t["gt_boxes"][first:first + n]
        ids_padded[r, :n] = torch.arange(first, first + n)
        first += n
    targets = {"boxes": t["gt_boxes"], "boxes_xyxy": box_ops.box_cxcywh_to_xyxy(t["gt_boxes"]),
               "boxes_padded": boxes_padded, "num_boxes": counts, "masks": t["gt_masks"],
               "is_valid_mask": torch.ones(len(t["gt_boxes"]), dtype=torch.bool),
               "object_ids_padded": ids_padded, "is_exhaustive": torch.ones(rows, dtype=torch.bool)}

    def layer(i):  # what Sam3Image returns for decoder layer i (joint scores, as supervise_joint_box_scores)
        presence = t["presence_logits"][i][:, None]
        out = {"presence_logit_dec": presence}
        for suffix in ("", "_o2m"):
            joint = inverse_sigmoid(t["pred_logits" + suffix][i].sigmoid() * presence.sigmoid()).clamp(-10.0, 10.0)
            out["pred_logits" + suffix] = joint[..., None]
            out["pred_boxes" + suffix] = t["pred_boxes" + suffix][i]
            out["pred_boxes_xyxy" + suffix] = box_ops.box_cxcywh_to_xyxy(t["pred_boxes" + suffix][i])
        return out

    matcher = meta_matcher.BinaryHungarianMatcherV2(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal=True,
                                                    alpha=0.25, gamma=2, stable=False)
    out = layer(meta["layers"] - 1)
    out["aux_outputs"] = [layer(i) for i in range(meta["layers"] - 1)]
    out.update(pred_masks=t["pred_masks"], pred_masks_o2m=t["pred_masks_o2m"],
               semantic_seg=t["semantic_seg"][:, None], presence_logit=out["presence_logit_dec"])
    for o in [out, *out["aux_outputs"]]:  # Sam3Image._compute_matching
        o["indices"] = matcher(o, targets)

    criterion = sam3_loss.Sam3LossWrapper(
        loss_fns_find=[
            loss_fns.Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
            loss_fns.IABCEMdetr(weak_loss=False, weight_dict={"loss_ce": 20.0, "presence_loss": 20.0},
                                pos_weight=10.0, alpha=0.25, gamma=2, use_presence=True, pos_focal=False,
                                pad_n_queries=200, pad_scale_pos=1.0),
            loss_fns.Masks(focal_alpha=0.25, focal_gamma=2.0, weight_dict={"loss_mask": 200.0, "loss_dice": 10.0},
                           compute_aux=False),
        ],
        matcher=matcher, o2m_weight=2.0,
        o2m_matcher=meta_matcher.BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4),
        use_o2m_matcher_on_o2m_aux=False,
        loss_fn_semantic_seg=loss_fns.SemanticSegCriterion(
            presence_head=True, presence_loss=False, focal=True, focal_alpha=0.6, focal_gamma=2.0,
            downsample=False,
            weight_dict={"loss_semantic_seg": 20.0, "loss_semantic_presence": 1.0, "loss_semantic_dice": 30.0}),
        scale_by_find_batch_size=True)
    losses = criterion(SAM3Output([[out]]), [targets])

    result = {"total": float(losses.pop(loss_fns.CORE_LOSS_KEY))}
    for key, value in losses.items():
        o2m = key.endswith("_o2m")
        base = key[:-len("_o2m")] if o2m else key
        aux = ""
        if "_aux_" in base:
            base, index = base.rsplit("_aux_", 1)
            aux = f"_aux{index}"
        if base not in META_TERMS:  # accuracies, F1, mIoU: metrics, not losses
            continue
        name, weight = META_TERMS[base]
        result[("o2m_" if o2m else "") + name + aux] = float(value) * weight
    return result


# ---------------------------------------------------------------------------- our side
def run_ours(folder: Path) -> dict[str, float]:
    import torch

    from medsam3.train.losses import LossWeights, RowTarget, SetCriterion

    arrays, meta = load_case(folder)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    targets, first = [], 0
    for row in meta["rows"]:
        n = row["instances"]
        masks = t["gt_masks"][first:first + n]
        targets.append(RowTarget(t["gt_boxes"][first:first + n], masks, masks.any(0), n > 0))
        first += n
    outputs = {k: t[k] for k in ("pred_logits", "pred_boxes", "presence_logits", "pred_masks", "semantic_seg",
                                 "pred_logits_o2m", "pred_boxes_o2m", "pred_masks_o2m")}
    res = SetCriterion(LossWeights.meta_sam3())(outputs, targets)
    return {"total": float(res.total), **{k: float(v) for k, v in res.terms.items()}}


# ---------------------------------------------------------------------------- driver
def ensure_meta_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating Meta's environment {venv} (pip install {' '.join(META_PIP)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *META_PIP], check=True)
    probe = subprocess.run([str(python), "-c", "import scipy, torchmetrics"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *META_EXTRAS], check=True)
    return python


def compare(meta: dict[str, float], ours: dict[str, float]) -> tuple[list[tuple], bool]:
    names = ["total"] + sorted((set(meta) | set(ours)) - {"total"},
                               key=lambda k: ("o2m_" in k, "_aux" in k, k))
    table, ok = [], True
    for name in names:
        a, b = meta.get(name, 0.0), ours.get(name, 0.0)  # a term one side leaves out is zero there
        rel = abs(a - b) / max(abs(a), abs(b), 1e-12)
        good = rel <= TOLERANCE
        ok &= good
        table.append((name, a, b, rel, good))
    return table, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-venv", type=Path, default=REPO / ".venv-meta")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the case and both results into this folder")
    parser.add_argument("--side", choices=["meta"], help=argparse.SUPPRESS)  # internal: Meta's process
    parser.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side == "meta":
        print(json.dumps(run_meta(args.case)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        save_case(folder, *make_case(args.seed))
        try:
            python = ensure_meta_venv(args.meta_venv.resolve())
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"parity_losses: error: cannot set up Meta's environment {args.meta_venv}: {exc}", file=sys.stderr)
            return 2
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # keep medsam3's tree out of it
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--side", "meta", "--case", str(folder)],
                              capture_output=True, text=True, env=env, cwd=folder)
        if proc.returncode:
            print(proc.stderr[-4000:], file=sys.stderr)
            print("parity_losses: error: Meta's criterion failed (output above)", file=sys.stderr)
            return 2
        meta = json.loads(proc.stdout.strip().splitlines()[-1])
        ours = run_ours(folder)
        if args.keep:
            (folder / "meta.json").write_text(json.dumps(meta, indent=1))
            (folder / "ours.json").write_text(json.dumps(ours, indent=1))

    table, ok = compare(meta, ours)
    width = max(len(r[0]) for r in table)
    print(f"{'term':<{width}}  {'Meta':>14}  {'ours':>14}  {'rel. diff':>9}  {'tol':>5}  pass")
    for name, a, b, rel, good in table:
        print(f"{name:<{width}}  {a:14.8g}  {b:14.8g}  {rel:9.2e}  {TOLERANCE:5.0e}  {'yes' if good else 'NO'}")
    print(f"{sum(r[4] for r in table)}/{len(table)} terms within {TOLERANCE:g} (relative); seed {args.seed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
