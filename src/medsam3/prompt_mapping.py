"""What a model receives for the text a user typed, and why.

The same words reach every model the same way (:meth:`medsam3.prompts.Vocabulary.match`:
case, punctuation, spelling, plurals, adjectives, abbreviations, side qualifiers); what
differs is what the model was trained on. A model declares that in its ``medsam3.json``:

* ``concepts``: a closed list of canonical concepts (the demo model). Text naming one of
  them is sent as the vocabulary's canonical prompt; anything else is answered "absent"
  without running (``rule`` ``outside the model's concepts``).
* ``prompts`` and/or ``vocabulary``: the texts the model was trained with, open to any other
  text (Medical SAM3). ``vocabulary`` names a preset of ``medsam3/data/vocabulary.json``
  (``"medical-sam3"``: the published prompts, each with the concept it stands for); a bare
  ``prompts`` list is matched through the vocabulary. Text naming a concept the model was
  trained on is sent as that model's own prompt ("kidneys" -> "Kidney", "hepatic tumour" ->
  "Liver tumors"); a known concept the model was not trained on is sent as the canonical
  prompt, with a note.
* neither (``facebook/sam3``, any model without a list): open vocabulary. Text naming a
  concept is sent as the canonical noun phrase ("renal" -> "kidney", "Hippocampi" ->
  "hippocampus", "left renal" -> "left kidney"); a synonym is normalised but kept, since the
  concept it belongs to may be narrower than what was meant ("nodules" -> "nodule", not
  "lung nodule"; rule ``... + normalised``).

Text that names no concept (unknown words, or a sentence that merely mentions one) is sent as
typed (whitespace tidied) with a note and an :class:`~medsam3.prompts.UnknownConceptWarning`.
Every prompt gets a :class:`PromptRecord` (typed, sent, rule, concept, side, note) that
:func:`medsam3.segment` writes to the sidecar's ``prompts`` list.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

from medsam3.errors import InputError
from medsam3.prompts import RULES, UnknownConceptWarning, clean_text, default_vocabulary

OPEN, CONCEPTS, PROMPTS = "open", "concepts", "prompts"


@dataclass(frozen=True)
class PromptRecord:
    """One typed prompt and what the model was given.

    Attributes:
        typed: the text as the user gave it.
        sent: the text the model receives; ``None`` when it is not run (outside a closed
            model's concepts: answered absent).
        rule: why, as ``" + "``-joined steps (see :attr:`medsam3.prompts.ResolvedPrompt.steps`)
            ending in what was sent: ``canonical``, ``normalised`` (a synonym in normalised
            form), ``model prompt``, ``as typed``, ``unmapped``, ``outside the model's concepts``.
        concept: the vocabulary concept the text names (``None``: none).
        side: ``"left"``, ``"right"`` or ``None``.
        note: a sentence for people, when something deserves one.
    """

    typed: str
    sent: str | None
    rule: str
    concept: str | None = None
    side: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def model_presets() -> dict[str, dict]:
    """The named training vocabularies of ``vocabulary.json`` (``medical-sam3``, ...)."""
    return dict(RULES["models"])


@dataclass(frozen=True)
class ModelVocabulary:
    """What a model was trained on, for mapping typed text (see the module docstring).

    Attributes:
        kind: ``open``, ``concepts`` (closed) or ``prompts`` (trained prompts, open to others).
        texts: the model's concepts or prompts, as declared.
        name: the preset name (``vocabulary`` in ``medsam3.json``), if any.
        source: the model, for notes and warnings.
    """

    kind: str
    texts: tuple[str, ...] = ()
    name: str | None = None
    source: str = "the model"
    by_concept: tuple[tuple[tuple[str, str | None], str], ...] = ()  # (concept, side) -> prompt

    @classmethod
    def from_info(cls, info: dict | None, source: str = "the model") -> ModelVocabulary:
        """Read ``concepts`` / ``prompts`` / ``vocabulary`` of a ``medsam3.json`` dict.

        Raises:
            InputError: an unknown preset name, or ``prompts`` that is not a list of texts.
        """
        info = info or {}
        name = info.get("vocabulary")
        prompts = info.get("prompts")
        if name is not None and name not in model_presets():
            raise InputError(f"{source}: medsam3.json names vocabulary {name!r}; known: "
                             f"{', '.join(sorted(model_presets()))}")
        if prompts is not None and (not isinstance(prompts, list) or not all(
                isinstance(p, str) and p.strip() for p in prompts)):
            raise InputError(f"{source}: medsam3.json 'prompts' must be a list of non-empty texts, got {prompts!r}")
        if info.get("concepts"):
            return cls(CONCEPTS, tuple(info["concepts"]), name, source)
        if name is None and not prompts:
            return cls(OPEN, (), None, source)
        entries = list(model_presets()[name]["prompts"]) if name is not None else []
        declared = {e["prompt"] for e in entries}
        entries += [{"prompt": p, "concepts": None} for p in prompts or [] if p not in declared]
        vocab = default_vocabulary()
        index: dict[tuple[str, str | None], str] = {}
        for entry in entries:
            # a preset says which concepts a prompt stands for; a bare prompt stands for what it names
            names = entry["concepts"] if entry["concepts"] is not None else [entry["prompt"]]
            for text in names:
                named = vocab.match(text)
                if named is not None:
                    index.setdefault((named.concept.name, named.side), entry["prompt"])
                elif entry["concepts"] is not None:
                    raise ValueError(f"vocabulary.json: {text!r} (for {entry['prompt']!r}) is no concept")
        return cls(PROMPTS, tuple(e["prompt"] for e in entries), name, source, tuple(index.items()))

    @classmethod
    def of(cls, model) -> ModelVocabulary:
        """The vocabulary a loaded :class:`~medsam3.model.MedSAM3` declares."""
        return cls.from_info(getattr(model, "info", None), str(getattr(model, "source", "the model")))

    def map(self, text: str) -> PromptRecord:
        """The :class:`PromptRecord` for one typed prompt (warns when the text is unmapped)."""
        typed = " ".join(str(text).split())
        if self.kind == CONCEPTS:
            return self._closed(text, typed)
        if self.kind == PROMPTS:
            own = {clean_text(p): p for p in self.texts}.get(clean_text(typed))
            if own is not None:
                named = default_vocabulary().match(text)
                return PromptRecord(text, own, "as typed" if own == typed else "model prompt",
                                    *_concept(named))
        named = default_vocabulary().match(text)
        if named is None:
            return self._unmapped(text, typed)
        steps = list(named.steps)
        if self.kind == PROMPTS:
            own = dict(self.by_concept).get((named.concept.name, named.side))
            if own is not None:
                return PromptRecord(text, own, _rule(steps + ["model prompt"]), *_concept(named))
            return PromptRecord(text, named.prompt, _rule(steps + ["canonical"]), *_concept(named),
                                note=f"{named.prompt!r} is not among the prompts {self._who()} was trained on; "
                                     "the vocabulary's canonical prompt is sent")
        # open vocabulary: the typed words in the vocabulary's forms; a synonym is not swapped for
        # the concept's name, which may be narrower than what was meant ("nodule" vs "lung nodule")
        sent = named.named
        if sent == typed:
            return PromptRecord(text, typed, "as typed", *_concept(named))
        return PromptRecord(text, sent, _rule(steps + ["canonical" if sent == named.prompt else "normalised"]),
                            *_concept(named))

    def _closed(self, text: str, typed: str) -> PromptRecord:
        # the same decision as MedSAM3.knows: the concept (or, for unknown text, the text) is listed
        from medsam3.prompts import resolve_prompt

        resolved = resolve_prompt(text, warn=False, check_length=False)
        name = resolved.concept.name if resolved.concept is not None else resolved.prompt
        concept = _concept(resolved)
        if name not in self.texts:
            return PromptRecord(text, None, "outside the model's concepts", *concept,
                                note=f"{self._who()} was trained on {', '.join(self.texts)} only: answered "
                                     "absent, not run")
        steps = list(resolved.steps)
        rule = "as typed" if resolved.prompt == typed else _rule(steps + ["canonical"])
        return PromptRecord(text, resolved.prompt, rule, *concept)

    def _unmapped(self, text: str, typed: str) -> PromptRecord:
        resolved = default_vocabulary().resolve(text, warn=False)
        if resolved.concept is not None:  # a sentence that mentions a concept: not ours to shorten
            note = (f"names no concept as a whole (it mentions {resolved.concept.name!r}); sent as typed to "
                    f"{self._who()}")
        else:
            note = f"matches no concept of the medsam3 vocabulary; sent as typed to {self._who()}"
        warnings.warn(f"prompt {typed!r} {note} (see docs/prompts.md)", UnknownConceptWarning, stacklevel=4)
        return PromptRecord(text, typed, "unmapped", None, None, note)

    def _who(self) -> str:
        return f"model {self.source}" + (f" ({self.name})" if self.name else "")


def _concept(resolved) -> tuple[str | None, str | None]:
    if resolved is None or resolved.concept is None:
        return None, None
    return resolved.concept.name, resolved.side


def _rule(steps: list[str]) -> str:
    return " + ".join(steps)


def map_prompts(prompts: Sequence[str], model) -> tuple[list[str | None], list[dict]]:
    """What ``model`` receives for each typed prompt, and the sidecar records.

    Args:
        prompts: the text prompts as typed.
        model: a loaded :class:`~medsam3.model.MedSAM3` (its ``info`` is ``medsam3.json``).

    Returns:
        ``(sent, records)``: per prompt, the text to run (``None``: not run, answered absent)
        and a JSON-ready :class:`PromptRecord` dict.
    """
    vocabulary = ModelVocabulary.of(model)
    records = [vocabulary.map(p) for p in prompts]
    return [r.sent for r in records], [r.to_dict() for r in records]
