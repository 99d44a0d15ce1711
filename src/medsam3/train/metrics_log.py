"""Training metrics on disk: ``metrics.csv`` and TensorBoard scalars (main process only)."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

log = logging.getLogger("medsam3.train")


class MetricsLog:
    """``metrics.csv`` (step, tag, value, time) and TensorBoard scalars, main process only."""

    def __init__(self, output_dir: Path, csv_on: bool, tensorboard_on: bool, start_step: int, enabled: bool):
        self.enabled = enabled
        self.csv_path = output_dir / "metrics.csv" if csv_on and enabled else None
        self.writer = None
        if not enabled:
            return
        if self.csv_path is not None:
            rows = []
            if self.csv_path.is_file() and start_step > 0:  # drop what a killed run logged past the checkpoint
                with open(self.csv_path, newline="") as fh:
                    rows = [r for r in csv.reader(fh)][1:]
                rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= start_step]
            with open(self.csv_path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["step", "tag", "value", "time"])
                w.writerows(rows)
        if tensorboard_on:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)
            except ImportError:
                log.warning("TensorBoard logging asked for but the tensorboard package is not installed "
                            "(pip install tensorboard); writing metrics.csv only")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self.csv_path is not None:
            with open(self.csv_path, "a", newline="") as fh:
                w = csv.writer(fh)
                for tag, value in values.items():
                    w.writerow([step, tag, f"{float(value):.6g}", f"{now:.3f}"])
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
