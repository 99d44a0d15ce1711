"""A model directory's own facts: ``medsam3.json``, read and checked in one place (:class:`ModelInfo`).

``medsam3.json`` sits beside ``config.json`` and ``model.safetensors``; every field is optional:

* ``concepts``: the classes the model was trained to segment (canonical vocabulary names).
  Text prompts outside them are answered "absent" with a warning, never guessed
  (:meth:`ModelInfo.knows`; applied by :class:`medsam3.predict.ImagePredictor`).
* ``masks``: ``instances`` (SAM3's instance queries, the default) or ``semantic`` (the
  semantic head, for a model whose instance queries are undertrained).
* ``context_mm``: 2.5D input: a volume's slice goes in with its neighbours this many mm away
  (0: the slice alone).
* ``presence_window``: the default presence window of volume mode ``slices`` (odd, >= 1).
* ``tracker_trained``: ``false`` when the tracker weights were never trained: box/point
  prompts and propagation are then refused, merged volumes fall back to ``slices``.
* ``volume_mode``: the volume mode the model does best in (``merged``, ``propagate`` or
  ``slices``), used when the user names none (else ``merged``).

Other fields (provenance, ``weights_dtype``, licences, held-out results) are kept as they
are and can be read through the mapping interface (``info["weights_dtype"]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsam3.errors import ArgumentError, InputError

INFO_NAME = "medsam3.json"
#: How a volume is segmented (:mod:`medsam3.predict.volume`): the one list of volume modes.
VOLUME_MODES = ("merged", "propagate", "slices", "clips")
#: The volume mode used when neither the user nor the model names one.
DEFAULT_VOLUME_MODE = "merged"
MASK_SOURCES = ("instances", "semantic")
MAX_CONTEXT_MM = 100.0


def check_presence_window(window) -> int:
    """``window`` if it is an odd whole number >= 1 (a presence window), else :class:`ArgumentError`."""
    if isinstance(window, bool) or not _is_whole(window) or window < 1 or window % 2 == 0:
        raise ArgumentError(f"the presence window must be an odd whole number of slices >= 1 (1, 3, 5, ...), "
                            f"got {window!r}")
    return int(window)


def check_volume_mode(mode) -> str:
    """``mode`` if it is one of :data:`VOLUME_MODES`, else :class:`ArgumentError`."""
    if mode not in VOLUME_MODES:
        raise ArgumentError(f"unknown volume mode {mode!r}; accepted: {', '.join(VOLUME_MODES)}")
    return str(mode)


def _is_whole(value) -> bool:
    import numbers

    return isinstance(value, numbers.Integral)


@dataclass(frozen=True, eq=False)
class ModelInfo(Mapping):
    """The parsed ``medsam3.json`` of a model (module docstring); defaults when there is none.

    Also a read-only mapping of the file's JSON object, for fields medsam3 does not interpret.

    Attributes:
        concepts: the trained classes, or ``None``: any text is run.
        masks: ``instances`` or ``semantic``.
        context_mm: neighbour distance of 2.5D input in mm (0: single slices).
        presence_window: slices mode's default presence window (1: each slice alone).
        tracker_trained: whether the tracker weights were trained.
        volume_mode: the model's own volume mode, or ``None`` (then :data:`DEFAULT_VOLUME_MODE`).
        path: the file it was read from (``None``: built in memory, or no file).
    """

    concepts: tuple[str, ...] | None = None
    masks: str = "instances"
    context_mm: float = 0.0
    presence_window: int = 1
    tracker_trained: bool = True
    volume_mode: str | None = None
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, directory: str | os.PathLike | None) -> ModelInfo:
        """``directory``'s ``medsam3.json`` (defaults when there is none); a malformed file is an
        :class:`InputError` naming the file and the field."""
        if directory is None or not (Path(directory) / INFO_NAME).is_file():
            return cls()
        path = Path(directory) / INFO_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data, where: str | os.PathLike = INFO_NAME) -> ModelInfo:
        """Parse and check a ``medsam3.json`` object; ``where`` names it in errors (a path, or
        e.g. ``"model demo"``). Unknown fields are kept in :attr:`raw`."""
        if isinstance(data, ModelInfo):
            return data
        path = Path(where) if isinstance(where, Path) else None

        def bad(name: str, accepted: str):
            return InputError(f"{where}: {name!r} must be {accepted}, got {data[name]!r}")

        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object (concepts, masks, context_mm, ...), "
                             f"got {type(data).__name__}")
        concepts = data.get("concepts")
        if concepts is not None and (not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts)):
            raise bad("concepts", "a list of class names")
        masks = data.get("masks", "instances")
        if masks not in MASK_SOURCES:
            raise bad("masks", " or ".join(repr(m) for m in MASK_SOURCES))
        context = data.get("context_mm", 0.0)
        if isinstance(context, bool) or not isinstance(context, (int, float)) or not 0 <= context <= MAX_CONTEXT_MM:
            raise bad("context_mm", f"a number of mm in [0, {MAX_CONTEXT_MM:g}]")
        window = data.get("presence_window", 1)
        try:
            check_presence_window(window)
        except ArgumentError:
            raise bad("presence_window", "an odd whole number of slices >= 1") from None
        tracker_trained = data.get("tracker_trained", True)
        if not isinstance(tracker_trained, bool):
            raise bad("tracker_trained", "true or false")
        mode = data.get("volume_mode")
        if mode is not None and mode not in VOLUME_MODES:
            raise bad("volume_mode", "one of " + ", ".join(VOLUME_MODES))
        from medsam3.prompt_mapping import ModelVocabulary

        ModelVocabulary.from_info(data, str(where))  # 'vocabulary' / 'prompts' checked at load, not at first use
        return cls(concepts=tuple(concepts) if concepts else None, masks=masks, context_mm=float(context),
                   presence_window=int(window), tracker_trained=tracker_trained, volume_mode=mode, path=path,
                   raw=dict(data))

    def to_json(self) -> dict[str, Any]:
        """The JSON object (as read, with any interpreted field set in memory)."""
        return dict(self.raw)

    # ------------------------------------------------------------------ what it means
    def knows(self, text: str) -> bool:
        """Whether a text prompt names one of :attr:`concepts` through the vocabulary
        (``"Hippocampus_L"`` -> hippocampus); always true without a concept list."""
        if self.concepts is None:
            return True
        from medsam3.prompts import resolve_prompt

        resolved = resolve_prompt(text, warn=False, check_length=False)
        name = resolved.concept.name if resolved.concept is not None else resolved.prompt
        return name in self.concepts

    def model_text(self, prompt: str) -> str:
        """The text the model sees: a model with a concept list was trained on the vocabulary's
        canonical prompts, so synonyms and atlas names are mapped ("Hippocampus_L" -> "left
        hippocampus"); other models get the user's text as typed."""
        if self.concepts is None:
            return prompt
        from medsam3.prompts import resolve_prompt

        return resolve_prompt(prompt, warn=False, check_length=False).prompt

    def resolve_volume_mode(self, mode: str | None) -> tuple[str, str]:
        """``(mode, why)``: the user's mode, else the model's own, else :data:`DEFAULT_VOLUME_MODE`;
        ``why`` is ``"given"``, ``"model"`` or ``"default"`` (recorded in the sidecar)."""
        if mode is not None:
            return check_volume_mode(mode), "given"
        if self.volume_mode is not None:
            return self.volume_mode, "model"
        return DEFAULT_VOLUME_MODE, "default"

    # ------------------------------------------------------------------ mapping of the JSON
    def __getitem__(self, key: str):
        return self.raw[key]

    def __iter__(self):
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)
