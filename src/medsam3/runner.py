"""The case loop shared by batch segmentation (:func:`medsam3.segment_many`) and model
evaluation (:func:`medsam3.evaluate.model.evaluate_model`): reading runs ahead of the model.

:func:`run_cases` calls ``read(item)`` for every item, in order, on one reader thread that
keeps at most ``prefetch`` read items waiting in a bounded queue (memory stays flat: about
``prefetch + 2`` items are held at once - the queue's, the one the model works on, the one
being read); ``work(item, loaded)`` runs on the calling thread (where the model lives). A
progress bar over the items (with ETA) goes to stderr; every item gets a :class:`CaseOutcome`
with its status, reason and seconds (reading + work).

A failing item (its read or its work raised) is either recorded and skipped
(``fail_fast=False``: the batch rule, one bad case never ends the run) or ends the loop with
its exception (``fail_fast=True``: the evaluation rule, a score over a partial set is wrong).
``KeyboardInterrupt`` / ``SystemExit`` always end the loop; the reader thread stops either way.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from medsam3.errors import MedSAM3Error


@dataclass
class CaseOutcome:
    """One item's result: ``status`` ``ok`` (``value`` is what ``work`` returned) or ``failed``
    (``reason``: one line; ``error``: the exception). ``seconds``: reading + work, wall clock."""

    item: Any
    status: str
    value: Any = None
    reason: str = ""
    error: BaseException | None = None
    seconds: float = 0.0
    read_seconds: float = 0.0


def run_cases(items: Iterable, read: Callable[[Any], Any], work: Callable[[Any, Any], Any], *, prefetch: int = 2,
              progress: bool = True, label: str = "cases", fail_fast: bool = False,
              name: Callable[[Any], str] = str, on_done: Callable[[CaseOutcome], None] | None = None,
              position: int | None = None) -> list[CaseOutcome]:
    """Run ``work(item, read(item))`` over ``items`` in order, reading ahead on a thread.

    Args:
        items: the items, in the order they are read and worked on.
        read: reads one item (runs on the reader thread; must not touch the model).
        work: processes one read item (runs on the calling thread); its return value is the
            outcome's ``value``.
        prefetch: how many read items may wait for ``work`` (>= 1).
        progress: show a progress bar over the items on stderr.
        label: the bar's description.
        fail_fast: re-raise the first failure (read or work) instead of recording it and going on.
        name: an item's name, for the bar and the failure line on stderr.
        on_done: called with each outcome as soon as it exists (e.g. to save a summary row, so a
            killed run keeps its finished items).
        position: the bar's line (one per process when several share a terminal).

    Returns:
        one :class:`CaseOutcome` per item, in order.
    """
    from tqdm.auto import tqdm

    items = list(items)
    if not isinstance(prefetch, int) or prefetch < 1:
        raise ValueError(f"prefetch must be a whole number >= 1, got {prefetch!r}")
    outcomes: list[CaseOutcome] = []
    bar = tqdm(total=len(items), desc=label, unit="case", disable=not progress or not items, file=sys.stderr,
               position=position)
    reader = ReadAhead(items, read, prefetch)
    try:
        for item, (loaded, error, read_seconds) in zip(items, reader, strict=True):
            bar.set_postfix_str(name(item)[-40:])
            start = time.perf_counter()
            outcome = CaseOutcome(item, "failed", read_seconds=read_seconds)
            try:
                if error is not None:
                    raise error
                outcome.value = work(item, loaded)
                outcome.status = "ok"
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - recorded, or re-raised when failing fast
                if fail_fast:
                    raise
                outcome.error, outcome.reason = exc, failure_reason(exc)
                bar.write(f"medsam3: case {name(item)} failed: {outcome.reason}", file=sys.stderr)
            finally:
                del loaded  # the model's copy of a big image goes as soon as the item is done
            outcome.seconds = read_seconds + time.perf_counter() - start
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
            bar.update()
    finally:
        reader.stop()
        bar.close()
    return outcomes


def failure_reason(exc: BaseException) -> str:
    """One line for a failed item: medsam3's own message as it is; the exception's type for others."""
    if isinstance(exc, MedSAM3Error):
        reason = str(exc)
    elif isinstance(exc, MemoryError):
        reason = "out of memory (MemoryError) while processing this case"
    else:
        reason = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower():
            _free_accelerator_memory()
    return " ".join(reason.split())


class ReadAhead:
    """Calls ``read(item)`` for ``items`` on a thread, at most ``prefetch`` results ahead of
    the consumer. Iterating yields ``(value, exception or None, seconds)`` in item order."""

    def __init__(self, items: list, read: Callable[[Any], Any], prefetch: int):
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._n = len(items)
        self._thread = threading.Thread(target=self._work, args=(items, read), name="medsam3-reader", daemon=True)
        self._thread.start()

    def _work(self, items, read) -> None:
        for item in items:
            if self._stop.is_set():
                return
            start = time.perf_counter()
            try:
                entry = (read(item), None, 0.0)
            except BaseException as exc:  # noqa: BLE001 - MemoryError too: handed to the consumer with its item
                entry = (None, exc, 0.0)
            entry = (entry[0], entry[1], time.perf_counter() - start)
            while not self._stop.is_set():
                try:
                    self.queue.put(entry, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def __iter__(self):
        for _ in range(self._n):
            yield self.queue.get()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after an out-of-memory error
        pass
