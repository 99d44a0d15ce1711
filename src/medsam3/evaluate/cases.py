"""The per-case results table of an evaluation (``cases.csv``): its columns and statuses, the
settings that change a score (``settings.json``), and reading and writing the CSV.

Shared by folder evaluation (:mod:`medsam3.evaluate.folder`), model evaluation
(:mod:`medsam3.evaluate.manifest`) and the reports (:mod:`medsam3.evaluate.report`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from medsam3.errors import ArgumentError, InputError
from medsam3.evaluate.metrics import EmptyMaskConvention

#: The columns of ``cases.csv``, in order: the issue's seven first.
CSV_COLUMNS = (
    "case", "class", "dice", "iou", "nsd", "hd95", "assd",
    "instance_f1", "status", "label", "pred_label",
    "gt_voxels", "pred_voxels", "gt_instances", "pred_instances", "matched_instances",
    "nsd_tolerance", "dimension", "modality", "dataset", "spacing", "prediction", "ground_truth",
)
#: Columns holding floats (written with 7 significant digits; ``nan`` and ``inf`` spelled out).
FLOAT_COLUMNS = ("dice", "iou", "nsd", "hd95", "assd", "instance_f1", "nsd_tolerance")
#: Columns holding integers (empty when unknown).
INT_COLUMNS = ("label", "pred_label", "gt_voxels", "pred_voxels", "gt_instances", "pred_instances",
               "matched_instances")
#: Statuses that are failures of the predictor (listed in the report).
FAILURE_STATUSES = ("false_negative", "absent_answer", "missing_prediction", "false_positive")
#: All statuses a row can have.
STATUSES = ("scored", "true_negative") + FAILURE_STATUSES + ("not_in_ground_truth",)

CASES_CSV = "cases.csv"
SETTINGS_JSON = "settings.json"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything that changes a score; stored in ``DIR/settings.json`` to make resume safe.

    Attributes:
        nsd_tolerance: NSD tolerance in mm.
        both_empty, one_empty_distance: see :class:`~medsam3.evaluate.metrics.EmptyMaskConvention`.
        instances: whether instance F1 is computed.
        labels: ``{value: name}`` given by the user, or ``None`` (from sidecars / dataset.json).
        dataset: dataset name written in every row, or ``None`` (from sidecars / dataset.json).
    """

    nsd_tolerance: float = 2.0
    both_empty: str = "nan"
    one_empty_distance: str = "diagonal"
    instances: bool = True
    labels: dict[int, str] | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        EmptyMaskConvention(self.both_empty, self.one_empty_distance)  # raises ArgumentError
        if not (isinstance(self.nsd_tolerance, (int, float)) and math.isfinite(self.nsd_tolerance)
                and self.nsd_tolerance >= 0):
            raise ArgumentError(f"NSD tolerance {self.nsd_tolerance!r} must be a finite number of mm >= 0")

    @property
    def convention(self) -> EmptyMaskConvention:
        return EmptyMaskConvention(self.both_empty, self.one_empty_distance)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = None if self.labels is None else {str(k): v for k, v in self.labels.items()}
        return d


def parse_labels(labels) -> dict[int, str] | None:
    """``"1=liver,2=spleen"``, ``{1: "liver"}`` or ``None`` -> ``{1: "liver", 2: "spleen"}``.

    Raises:
        ArgumentError: bad syntax, a value that is not a positive integer, or a repeated
            value or name.
    """
    if labels is None:
        return None
    if isinstance(labels, str):
        items = []
        for part in labels.split(","):
            part = part.strip()
            if not part:
                continue
            value, sep, name = part.partition("=")
            if not sep or not name.strip():
                raise ArgumentError(f"--labels {labels!r}: {part!r} is not VALUE=NAME; "
                                    "write e.g. 1=liver,2=spleen")
            items.append((value.strip(), name.strip()))
    elif isinstance(labels, dict):
        items = list(labels.items())
    else:
        raise ArgumentError(f"labels {labels!r} must be 'VALUE=NAME,...' or a dict {{value: name}}")
    result: dict[int, str] = {}
    for value, name in items:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ArgumentError(f"labels: {value!r} is not an integer label value (e.g. 1=liver)") from None
        if number <= 0:
            raise ArgumentError(f"labels: value {number} must be a positive integer (0 is background)")
        if number in result:
            raise ArgumentError(f"labels: value {number} is given twice")
        name = str(name).strip()
        if name.lower() in (n.lower() for n in result.values()):
            raise ArgumentError(f"labels: name {name!r} is given twice")
        result[number] = name
    if not result:
        raise ArgumentError(f"labels {labels!r} names no class; write e.g. 1=liver,2=spleen")
    return result


# --------------------------------------------------------------------------- CSV


def _format_value(column: str, value) -> str:
    if value is None or value == "":
        return ""
    if column in FLOAT_COLUMNS:
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return format(value, ".7g")
    return str(value)


def _parse_value(column: str, text: str):
    if column in FLOAT_COLUMNS:
        return math.nan if text == "" else float(text)
    if column in INT_COLUMNS:
        return None if text == "" else int(float(text))
    return text


def rows_to_csv_text(rows: Iterable[dict[str, Any]], header: bool) -> str:
    """CSV text for ``rows`` (all of :data:`CSV_COLUMNS`), with the header line if asked."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_format_value(c, row.get(c)) for c in CSV_COLUMNS])
    return buffer.getvalue()


def read_cases_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``cases.csv`` with numbers parsed (NaN for empty floats).

    A last line cut short by an interrupted run is dropped together with the rest of its
    case, so that case is scored again.

    Raises:
        InputError: the file lacks the required columns.
    """
    path = Path(path)
    text = path.read_text()
    cut = bool(text) and not text.endswith("\n")
    if cut:
        # The last write was interrupted: forget its line (below, also the rest of that case).
        text = text[: text.rfind("\n") + 1]
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in ("case", "class", "status") if c not in columns]
    if missing:
        raise InputError(f"{path} is not a medsam3 cases.csv: it lacks the columns {', '.join(missing)}")
    rows = []
    for line, raw in enumerate(reader, start=2):
        try:
            rows.append({c: _parse_value(c, raw.get(c) or "") for c in columns})
        except ValueError as exc:
            raise InputError(f"{path} line {line}: {exc}; fix or delete the line (or use --overwrite)") from None
    if cut and rows:
        # The cut line belonged to the case after the last complete row, or to that same case
        # (cut in its case id, even): scoring that case again is always safe.
        last_case = rows[-1]["case"]
        rows = [r for r in rows if r["case"] != last_case]
    return rows


def append_case_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append one case's rows to ``path`` in one write; a missing (or empty) file gets the
    header first, so ``cases.csv`` only ever exists with at least one whole case."""
    header = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        handle.write(rows_to_csv_text(rows, header=header))
        handle.flush()


def write_cases_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as a whole ``cases.csv`` atomically (header first)."""
    from medsam3.io.atomic import atomic_output  # lazily: medsam3.io loads SimpleITK and pydicom (seconds)

    with atomic_output(path) as tmp:
        Path(tmp).write_text(rows_to_csv_text(rows, header=True))
