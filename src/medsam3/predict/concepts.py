"""Concept gating: a model trained on a list of concepts (``medsam3.json`` ``concepts``) answers
text prompts outside that list "absent", with a warning, instead of guessing.

Applied by the predictors (:meth:`medsam3.predict.ImagePredictor.predict`,
:meth:`medsam3.predict.volume.VolumePredictor.segment`), so ``segment``, evaluation and the
web app gate the same way. Known prompts are sent as the vocabulary's canonical text
(:meth:`medsam3.model.info.ModelInfo.model_text`); answers keep the user's words.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class ConceptGate:
    """Which of ``prompts`` (:class:`~medsam3.predict.image.TextPrompt` s) the model is asked.

    Attributes:
        prompts: the prompts as given.
        run: indices (into ``prompts``) of the prompts the model is asked, in order.
        model_prompts: those prompts with the text the model sees.
        unknown: the texts of the prompts outside the model's concepts.
    """

    prompts: list
    run: list[int]
    model_prompts: list
    unknown: list[str]

    @classmethod
    def apply(cls, model, prompts: Sequence, enabled: bool = True) -> ConceptGate:
        """Gate ``prompts`` for ``model`` (a :class:`~medsam3.model.loader.MedSAM3`; ``None`` or
        ``enabled=False``: every prompt runs as typed); warns once per unknown prompt."""
        prompts = list(prompts)
        info = getattr(model, "info", None)
        if not enabled or info is None or info.concepts is None:
            return cls(prompts, list(range(len(prompts))), prompts, [])
        from medsam3.prompts import UnknownConceptWarning

        run, unknown = [], []
        for i, p in enumerate(prompts):
            (run if info.knows(p.text) else unknown).append(i)
        for i in unknown:
            warnings.warn(f"{prompts[i].text!r} is not a concept model {model.source} was trained on "
                          f"({', '.join(info.concepts)}): answered absent, not guessed", UnknownConceptWarning,
                          stacklevel=4)
        model_prompts = [dataclasses.replace(prompts[i], text=info.model_text(prompts[i].text)) for i in run]
        return cls(prompts, run, model_prompts, [prompts[i].text for i in unknown])

    @property
    def complete(self) -> bool:
        """Every prompt runs under its own text: answers need no reordering or renaming."""
        return len(self.run) == len(self.prompts) and all(
            m.text == self.prompts[i].text for i, m in zip(self.run, self.model_prompts))

    def answers(self, results: Sequence[Any], absent: Callable[[str], Any]) -> list:
        """One answer per prompt, in order: ``results`` (one per :attr:`model_prompts`, each
        with a ``prompt`` attribute, renamed to the user's text), ``absent(text)`` for the others."""
        out = [None] * len(self.prompts)
        for i, result in zip(self.run, results, strict=True):
            result.prompt = self.prompts[i].text
            out[i] = result
        for i, p in enumerate(self.prompts):
            if out[i] is None:
                out[i] = absent(p.text)
        return out

    def label_lookup(self, n_objects: int = 0):
        """``(L,)`` int64 table from the labels of a run of :attr:`model_prompts` (then
        ``n_objects`` object prompts) to the labels of :attr:`prompts` (then the objects)."""
        import numpy as np

        lookup = np.zeros(len(self.run) + n_objects + 1, dtype=np.int64)
        for k, i in enumerate(self.run, start=1):
            lookup[k] = i + 1
        for j in range(n_objects):
            lookup[len(self.run) + 1 + j] = len(self.prompts) + 1 + j
        return lookup
