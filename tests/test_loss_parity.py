"""Our training losses against Meta's SAM3 criterion (scripts/parity_losses.py), term by term.

Meta's package runs in its own virtual environment: ``$MEDSAM3_META_VENV`` or the
repository's ``.venv-meta`` (created by the script when absent; a download of torch and sam3).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_losses_match_metas_criterion_term_by_term(tmp_path):
    venv = os.environ.get("MEDSAM3_META_VENV", str(REPO / ".venv-meta"))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "parity_losses.py"), "--meta-venv", venv,
                           "--keep", str(tmp_path)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    passed, total = map(int, re.search(r"(\d+)/(\d+) terms within", proc.stdout).groups())
    assert passed == total >= 30  # every term of every layer, one-to-one and one-to-many
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:-1]}
    for name in ("class", "presence", "l1", "giou", "mask_focal", "mask_dice", "semantic_focal", "semantic_dice",
                 "class_aux0", "presence_aux1", "o2m_class", "o2m_mask_focal", "o2m_l1_aux1"):
        assert float(rows[name][2]) > 0 and rows[name][-1] == "yes", name  # a real, non-zero term on both sides
    assert (tmp_path / "case.npz").exists() and (tmp_path / "meta.json").exists()
