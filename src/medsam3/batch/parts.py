"""Which share of the cases this process runs, on which device, and the merged summary.

Shares are deterministic: with the cases sorted by name, ``--num-parts N --part-id K`` keeps
case ``i`` when ``i % N == K``; under ``torchrun`` / ``accelerate launch`` (environment
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) each rank then keeps every ``WORLD_SIZE``-th case of
that part. Each share writes its own summary part file; the merge reads them all.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from medsam3.errors import ArgumentError

#: Columns of ``summary.csv`` and of the part files.
SUMMARY_COLUMNS = ("case", "input", "status", "reason", "seconds", "output")
#: Where a run keeps its part files, inside the output directory.
STATE_DIR = ".medsam3-batch"


@dataclass(frozen=True)
class Share:
    """This process's share: global part ``index`` of ``count``, and its rank's device index."""

    num_parts: int = 1
    part_id: int = 0
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def index(self) -> int:
        return self.part_id * self.world_size + self.rank

    @property
    def count(self) -> int:
        return self.num_parts * self.world_size

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def take(self, items: list) -> list:
        """This share's items of ``items`` (already in their stable order)."""
        return items[self.part_id::self.num_parts][self.rank::self.world_size]

    def device(self, device: str) -> str:
        """``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under a launcher with CUDA present."""
        if self.distributed and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
            return "cpu" if device == "auto" else device
        return device

    def part_file(self, out_dir: Path) -> Path:
        return out_dir / STATE_DIR / f"summary-part-{self.index:03d}-of-{self.count:03d}.csv"


def current_share(num_parts: int = 1, part_id: int = 0, environ=None) -> Share:
    """The share of this process, from the split arguments and the launcher's environment.

    Raises:
        ArgumentError: ``num_parts`` < 1, ``part_id`` outside ``0..num_parts-1``, bad RANK/WORLD_SIZE.
    """
    environ = os.environ if environ is None else environ
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise ArgumentError(f"--num-parts must be a whole number >= 1, got {num_parts!r}")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise ArgumentError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id!r}")
    try:
        world = int(environ.get("WORLD_SIZE", 1))
        rank = int(environ.get("RANK", 0))
        local = int(environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ArgumentError("RANK / WORLD_SIZE / LOCAL_RANK in the environment are not integers: "
                            f"{environ.get('RANK')!r} / {environ.get('WORLD_SIZE')!r} / "
                            f"{environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ArgumentError(f"environment RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return Share(num_parts, part_id, rank, world, local)


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV with :data:`SUMMARY_COLUMNS`, written atomically."""
    from medsam3.io import atomic_output

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def merge_summary(out_dir: Path, share: Share) -> tuple[Path, list[dict]]:
    """``OUTDIR/summary.csv`` from every part file of this split that exists, rows sorted by case."""
    rows = []
    for k in range(share.count):
        part = Share(num_parts=share.count, part_id=k).part_file(out_dir)
        if part.is_file():
            rows += read_rows(part)
    rows.sort(key=lambda r: r["case"])
    path = out_dir / "summary.csv"
    write_rows(path, rows)
    return path, rows


def wait_for_all_ranks(share: Share) -> bool:
    """Under a launcher, block until every rank has finished its cases (a gloo barrier, which
    needs no GPU); ``False`` when the group cannot be joined (the caller then merges what exists)."""
    if not share.distributed:
        return True
    import warnings

    import torch.distributed as dist

    try:
        if not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ:
                return False
            # ranks may finish hours apart: the barrier must outwait the slowest share
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
        dist.barrier()
        return True
    except Exception as exc:  # a lost rank: merge what the others wrote
        warnings.warn(f"could not wait for the other ranks ({exc}); merging the summary parts that exist",
                      UserWarning, stacklevel=2)
        return False


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
