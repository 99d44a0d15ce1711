"""Batch inference: folders, lists and manifests of cases through one loaded model.

* :func:`segment_many` - the Python API (``medsam3.segment_many``), same keywords as :func:`medsam3.segment`;
* :mod:`medsam3.batch.cases` - finding cases and their per-case settings (manifests, jobs files);
* :mod:`medsam3.batch.parts` - deterministic shares (``--num-parts``/``--part-id``, torchrun ranks)
  and the merged ``summary.csv``;
* :mod:`medsam3.batch.cli` - ``medsam3 segment -i FOLDER|LIST|MANIFEST -o OUTDIR``.

See docs/batch.md.
"""

from medsam3.batch.cases import Case, find_cases
from medsam3.batch.engine import BatchResult, CaseResult, segment_many

__all__ = ["segment_many", "BatchResult", "CaseResult", "Case", "find_cases"]
