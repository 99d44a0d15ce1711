"""``medsam3.segment_many``: many cases through :func:`medsam3.segment` with one loaded model.

For each case of this process's share (:mod:`medsam3.batch.parts`): skip it when its output
and sidecar already exist and the sidecar's ``batch.settings_hash`` matches this run's
settings for the case; else read it on a reader thread that runs ahead of the model through a
bounded queue (:func:`medsam3.runner.run_cases`, the loop evaluation shares), segment it,
write ``OUTDIR/<case><ext>`` + sidecar atomically, and record a summary row. A case that
fails (unreadable, unsupported, an error while predicting, out of memory) is a row with its
reason; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from medsam3.batch.cases import Case, apply_jobs, find_cases, input_fingerprint
from medsam3.batch.parts import Share, current_share, leave_group, merge_summary, wait_for_all_ranks, write_rows
from medsam3.errors import ArgumentError
from medsam3.runner import run_cases

#: Keywords of :func:`medsam3.segment` that are per run, not per case, and do not change a result.
_NOT_HASHED = ("model", "device", "progress", "batch_size")


@dataclass
class CaseResult:
    """One summary row: ``status`` is ``ok``, ``skipped`` (done earlier with these settings) or ``failed``."""

    case: str
    input: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    output: str = ""

    def row(self) -> dict:
        return {"case": self.case, "input": self.input, "status": self.status, "reason": self.reason,
                "seconds": f"{self.seconds:.3f}", "output": self.output}


@dataclass
class BatchResult:
    """What :func:`segment_many` returns: this process's cases and, where it merged, the whole run's summary."""

    cases: list[CaseResult]
    summary: Path | None
    share: Share
    merged: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status == "failed"]

    @property
    def merged_failed(self) -> int:
        """Failed cases over every share in the merged summary (this share's when nothing merged)."""
        return sum(r["status"] == "failed" for r in self.merged) if self.merged else len(self.failed)


def segment_many(inputs, out_dir, prompts=(), *, jobs=None, extension: str = ".nii.gz", overwrite: bool = False,
                 num_parts: int = 1, part_id: int = 0, model=None, device: str = "auto", dtype=None,
                 progress: bool = True, prefetch: int = 2, **kwargs) -> BatchResult:
    """Segment many cases with one model load; the batch face of :func:`medsam3.segment`.

    Args:
        inputs: a folder (image files and DICOM series found recursively), a ``.txt`` list of
            paths, a ``.jsonl``/``.csv`` manifest, or a list of paths (see
            :func:`medsam3.batch.cases.find_cases`).
        out_dir: output directory; case ``NAME`` is written to ``out_dir/NAME<extension>`` with
            its sidecar, in the case's own geometry; ``summary.csv`` lists every case.
        prompts: text prompts for every case (a case's manifest / jobs row replaces them).
        jobs: a CSV/JSONL file of per-case settings (``case``, ``prompts``, ``box``, ``points``,
            ``modality``, ``window``, ...; see :func:`medsam3.batch.cases.read_rows`).
        extension: output format by its file ending (``.nii.gz``, ``.nrrd``, ``.mha``, ``.png``,
            ``.tif``, ``.dcm`` with ``output_format="dicom-seg"``/``"dicom-rt"``).
        overwrite: redo cases whose output already matches this run's settings.
        num_parts, part_id: run only part ``part_id`` of ``num_parts`` (deterministic split).
        model: model directory / hub id / loaded :class:`medsam3.MedSAM3`; loaded once.
        device: ``auto``, ``cpu``, ``cuda``; under torchrun/accelerate ``cuda:LOCAL_RANK``.
        progress: a progress bar over the cases (with ETA) on stderr.
        prefetch: how many read cases may wait for the model (memory: about this many images).
        **kwargs: any other keyword of :func:`medsam3.segment` (``window``, ``mode``,
            ``threshold``, ``output_format``, ``instances``, ...), for every case.

    Returns:
        a :class:`BatchResult`; its ``cases`` are this process's summary rows.

    Raises:
        ArgumentError: bad inputs/jobs/arguments, found before any case runs.
    """
    from medsam3.segmentation import load_model

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentError(f"output {out_dir} is a file: in batch mode -o is a directory")
    _check_extension(extension, kwargs.get("output_format"))
    if kwargs.get("overlay") is not None:
        raise ArgumentError("overlay is one PNG per run in single-case mode; in batch mode use overlays=True")
    overlays = bool(kwargs.pop("overlays", False))
    if not isinstance(prefetch, int) or prefetch < 1:
        raise ArgumentError(f"prefetch must be a whole number >= 1, got {prefetch!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    share = current_share(num_parts, part_id)
    cases = find_cases(inputs, exclude=out_dir.resolve())
    if jobs is not None:
        cases = apply_jobs(cases, jobs)
    unprompted = [c.name for c in cases if not (c.settings.get("prompts") or prompts or c.settings.get("box")
                                                 or c.settings.get("points") or kwargs.get("box")
                                                 or kwargs.get("points"))]
    if unprompted:
        raise ArgumentError(f"{len(unprompted)} case(s) have no prompt ({', '.join(unprompted[:5])}): give -p "
                            "for all cases or prompts per case in --jobs / the manifest")
    mine = share.take(cases)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = kwargs.pop("precision", None)  # a property of the loaded model, not of each case
    loaded = load_model(model, device=share.device(device), dtype=dtype, precision=precision)
    base = dict(kwargs, prompts=list(prompts), dtype=None if dtype is None else str(dtype))
    results: list[CaseResult] = []
    part_file = share.part_file(out_dir)

    todo: list[tuple[Case, Path, str]] = []
    for case in mine:
        output = out_dir / (case.name + extension)
        settings = _case_settings(base, case, loaded, extension, overlays)
        digest = settings_hash(settings)
        previous = None if overwrite else _finished(output, digest)
        if previous is not None:
            results.append(CaseResult(case.name, str(case.input), "skipped", "done earlier with these settings",
                                      previous, str(output)))
        else:
            todo.append((case, output, digest))
    write_rows(part_file, [r.row() for r in results])

    label = f"part {share.index + 1}/{share.count}" if share.count > 1 else "segment"

    def work(job: tuple[Case, Path, str], read) -> CaseResult:
        case, output, digest = job
        image, read_seconds = read
        return _run_case(case, image, read_seconds, output, digest, base, loaded, overlays, share)

    def done(outcome) -> None:
        case = outcome.item[0]
        results.append(outcome.value if outcome.status == "ok" else
                       CaseResult(case.name, str(case.input), "failed", outcome.reason, outcome.seconds))
        write_rows(part_file, [r.row() for r in results])  # a killed run keeps its finished rows

    run_cases(todo, lambda job: _read_case(job[0], base), work, prefetch=prefetch, progress=progress,
              label=label, name=lambda job: job[0].name, on_done=done,
              position=share.rank if share.distributed else None)
    merged_rows: list[dict] = []
    summary = None
    wait_for_all_ranks(share)  # when it cannot, rank 0 merges the parts that exist
    if share.rank == 0:
        summary, merged_rows = merge_summary(out_dir, share)
    if share.distributed:
        leave_group()
    return BatchResult(results, summary, share, merged_rows)


def _check_extension(extension: str, output_format) -> None:
    from medsam3.io.formats import output_format as writable_format

    if output_format in ("dicom-seg", "dicom-rt"):
        if extension.lower() != ".dcm":
            raise ArgumentError(f"output format {output_format} writes .dcm files, not {extension}")
        return
    if not extension.startswith(".") or writable_format("case" + extension) is None:
        from medsam3.io import SUPPORTED_OUTPUT_FORMATS

        raise ArgumentError(f"output extension {extension!r} is not a format medsam3 writes: {SUPPORTED_OUTPUT_FORMATS}")


def _case_settings(base: dict, case: Case, model, extension: str, overlays: bool) -> dict:
    """Everything that decides a case's output: the run's keywords with the case's own over
    them, the model, the input's fingerprint and the output format."""
    settings = {k: v for k, v in base.items() if k not in _NOT_HASHED}
    settings.update(case.settings)
    settings.update(model=str(model.source), precision=getattr(model, "precision", "fp32"),
                    model_files=_model_fingerprint(model), extension=extension,
                    overlays=overlays, input=str(case.input.resolve()), input_files=input_fingerprint(case.input))
    return settings


def _model_fingerprint(model) -> list:
    # a model run at another input size (--size, --fast) is named "DIR@280px": its files are DIR's
    source = Path(re.sub(r"@\d+px$", "", str(model.source)))
    if not source.is_dir():
        return []
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in source.iterdir() if p.is_file())


def settings_hash(settings: dict) -> str:
    """SHA-256 of the settings as canonical JSON (sorted keys; tuples as lists)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _finished(output: Path, digest: str) -> float | None:
    """The seconds the earlier run took, when ``output`` and its sidecar exist and the sidecar
    records ``digest``; else ``None``."""
    from medsam3.io import sidecar_path

    sidecar = sidecar_path(output)
    if not output.is_file() or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8")).get("batch") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if record.get("settings_hash") != digest:
        return None
    return float(record.get("seconds", 0.0))


def _read_case(case: Case, base: dict):
    """The case's image and the seconds reading took (runs on the reader thread)."""
    from medsam3.io import read_image

    start = time.perf_counter()
    settings = {**base, **case.settings}
    image = read_image(case.input, modality=settings.get("modality"), series_uid=settings.get("series_uid"))
    return image, time.perf_counter() - start


def _run_case(case: Case, image, read_seconds: float, output: Path, digest: str, base: dict, model,
              overlays: bool, share: Share) -> CaseResult:
    """Segment one read case and write its outputs (a failure raises: the shared loop records
    it as the case's reason, :func:`medsam3.runner.failure_reason`)."""
    from medsam3.segmentation import segment

    start = time.perf_counter()
    kwargs = {k: v for k, v in base.items() if k not in ("dtype",)}
    kwargs.update(case.settings)
    kwargs.pop("series_uid", None)  # already read
    output.parent.mkdir(parents=True, exist_ok=True)
    overlay = output.with_name(output.name[: -len(_suffix(output))] + "_overlay.png") if overlays else None
    seg = segment(image, output, model=model, progress=False, overlay=overlay, **kwargs)
    seconds = read_seconds + time.perf_counter() - start
    _record(seg.output or output, case, digest, seconds, share)
    return CaseResult(case.name, str(case.input), "ok", seconds=seconds, output=str(seg.output or output))


def _suffix(output: Path) -> str:
    from medsam3.io.formats import image_extension

    return image_extension(output) or output.suffix


def _record(output: Path, case: Case, digest: str, seconds: float, share: Share) -> None:
    """Add the case's name, settings hash and time to its sidecar (atomically): the sidecar
    then says which settings made the output, and resuming compares against it."""
    from medsam3.io import atomic_output, sidecar_path

    sidecar = sidecar_path(output)
    content = json.loads(sidecar.read_text(encoding="utf-8"))
    content["batch"] = {"case": case.name, "settings_hash": digest, "seconds": round(seconds, 3),
                        "part": [share.index, share.count]}
    with atomic_output(sidecar) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
