"""The prompt vocabulary: every class a dataset names -> one canonical text prompt.

Datasets name the same structure in many ways ("Kidney_L", "left kidney", "kidney, left",
"CT imaging of the left kidney within the abdomen", "Nuclei", "Skin Lesion"). Training
and prediction must agree on one short noun phrase per concept, the way SAM3 was trained
("polyp", "fetal head", "left kidney"). This module holds that vocabulary:

* :class:`Concept`: a canonical name, synonyms (including dataset abbreviations such as
  AAL's ``Frontal_Sup``) and whether it comes in a left and a right version;
* :func:`resolve_prompt`: any text -> :class:`ResolvedPrompt` (the concept, the side, the
  canonical prompt). Exact names, synonyms, side markers (``left``, ``_L``, ``R``), spelling
  variants (tumour/tumor, oesophagus/esophagus), plurals and free sentences (the words of
  a synonym found anywhere in the text) all map to the vocabulary; text that matches no
  concept is kept as typed (cleaned) with an :class:`UnknownConceptWarning`;
* :meth:`Vocabulary.match`: the concept a text *names*, with the steps that got there
  (plural, spelling, adjective "renal" -> kidney, abbreviation "IVC", side qualifier, synonym);
  the word rules live in ``medsam3/data/vocabulary.json`` (what each model then receives:
  :mod:`medsam3.prompt_mapping`);
* :func:`prompt_variants`: the surface forms of a class ("left kidney", "kidney, left",
  "kidney (left)", "left renal", synonyms) that training samples draw from;
* :func:`check_prompt_length`: SAM3's CLIP text encoder reads 32 tokens including its
  start and end markers; longer prompts are refused with the count instead of being cut.

Canonical prompts are lower case: the CLIP tokenizer lower-cases all text anyway.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from medsam3.errors import ArgumentError

#: SAM3's text context: 32 tokens, including the start and end markers.
MAX_PROMPT_TOKENS = 32

SIDES = ("left", "right")


class UnknownConceptWarning(UserWarning):
    """A prompt or class name that matches no concept of the vocabulary (kept as typed)."""


@dataclass(frozen=True)
class Concept:
    """One structure or finding.

    Attributes:
        name: the canonical prompt without side ("kidney", "polyp", "cell nucleus").
        synonyms: other names, abbreviations and spellings of the same concept.
        lateral: the concept comes as a left and a right structure; its classes are
            "left <name>" and "right <name>", and the bare name means both sides.
        group: a coarse family, for listings ("abdomen", "brain", "lesion", ...).
    """

    name: str
    synonyms: tuple[str, ...] = ()
    lateral: bool = False
    group: str = ""

    def prompt(self, side: str | None = None) -> str:
        """The canonical prompt, e.g. ``"left kidney"`` for side ``"left"``."""
        if side is None or not self.lateral:
            return self.name
        return f"{side} {self.name}"


def _c(name: str, *synonyms: str, lateral: bool = False, group: str = "") -> Concept:
    return Concept(name, tuple(synonyms), lateral, group)


# The vocabulary. Names follow the paper's prompts ("polyp", "skin lesion", "thyroid
# nodule", "fetal head", "cell nucleus", "retinal blood vessel"; 3D class names such as
# "spleen", "liver tumor", "left kidney"), the classes of the registered datasets
# (medsam3.data.registry) and the 116 regions of the AAL brain atlas (with AAL's own
# abbreviations as synonyms, so "Hippocampus_L" resolves to "left hippocampus").
CONCEPTS: tuple[Concept, ...] = (
    # --- abdomen and pelvis
    _c("liver", "hepatic parenchyma", group="abdomen"),
    _c("spleen", "splenic parenchyma", group="abdomen"),
    _c("kidney", "renal parenchyma", lateral=True, group="abdomen"),
    _c("adrenal gland", "suprarenal gland", "adrenal", lateral=True, group="abdomen"),
    _c("gallbladder", "gall bladder", group="abdomen"),
    _c("pancreas", group="abdomen"),
    _c("stomach", group="abdomen"),
    _c("esophagus", "gullet", group="abdomen"),
    _c("duodenum", group="abdomen"),
    _c("small bowel", "small intestine", "intestine", group="abdomen"),
    _c("colon", "large intestine", "large bowel", group="abdomen"),
    _c("rectum", group="abdomen"),
    _c("urinary bladder", "bladder", group="abdomen"),
    _c("prostate", "prostate gland", group="abdomen"),
    _c("uterus", group="abdomen"),
    _c("aorta", "abdominal aorta", group="vessel"),
    _c("inferior vena cava", "ivc", "vena cava", group="vessel"),
    _c("superior vena cava", "svc", group="vessel"),
    _c("portal vein and splenic vein", "portal vein", "splenic vein", group="vessel"),
    _c("hepatic vessel", "hepatic vessels", "liver vessel", group="vessel"),
    _c("hepatic vein", group="vessel"),
    _c("femur", "femoral head", lateral=True, group="bone"),
    _c("hip bone", "hip", "pelvic bone", lateral=True, group="bone"),
    _c("vertebra", "spine", "vertebral body", group="bone"),
    _c("rib", "ribs", group="bone"),
    _c("bone", "bones", "osseous tissue", "skull", "cranium", group="bone"),
    # --- chest
    _c("lung", "lung lobe", lateral=True, group="chest"),
    _c("lungs", "both lungs", "lung fields", "lung field", group="chest"),
    _c("heart", group="chest"),  # "cardiac": an adjective (data/vocabulary.json)
    _c("left ventricle", "lv", "lv blood pool", "left ventricular cavity", group="chest"),
    _c("right ventricle", "rv", "right ventricular cavity", group="chest"),
    _c("left atrium", "la", group="chest"),
    _c("right atrium", "ra", group="chest"),
    _c("myocardium", "left ventricular myocardium", "lv myocardium", "myo", group="chest"),
    _c("trachea", "airway", group="chest"),
    _c("pulmonary artery", group="chest"),
    _c("coronary artery", "coronary arteries", "coronary vessel", "vessel segment",
       group="vessel"),
    _c("thyroid gland", "thyroid", group="neck"),
    _c("carotid artery", "carotid", lateral=True, group="neck"),
    _c("jugular vein", "internal jugular vein", lateral=True, group="neck"),
    _c("parotid gland", "parotid", lateral=True, group="neck"),
    _c("submandibular gland", lateral=True, group="neck"),
    _c("optic nerve", lateral=True, group="neck"),
    _c("eye", "eyeball", "globe", lateral=True, group="neck"),
    _c("brachial plexus nerve", "brachial plexus", group="neck"),
    # --- lesions and findings
    _c("liver tumor", "liver lesion", "liver cancer", "hepatic tumor", "hepatic lesion",
       group="lesion"),
    _c("kidney tumor", "renal tumor", "kidney cancer", "renal mass", "kidney lesion",
       group="lesion"),
    _c("kidney cyst", "renal cyst", group="lesion"),
    _c("pancreatic tumor", "pancreas tumor", "pancreatic cancer", "pancreatic lesion",
       "pancreas cancer", group="lesion"),
    _c("lung nodule", "pulmonary nodule", "nodule", group="lesion"),
    _c("lung tumor", "lung cancer", "lung lesion", "pulmonary tumor", group="lesion"),
    _c("brain tumor", "glioma", "glioblastoma", "meningioma", group="lesion"),
    _c("brain lesion", "white matter lesion", "white matter hyperintensity", group="lesion"),
    _c("stroke lesion", "ischemic stroke lesion", "infarct", "stroke", group="lesion"),
    _c("multiple sclerosis lesion", "ms lesion", group="lesion"),
    _c("whole tumor", "wt", group="lesion"),
    _c("tumor core", "tc", group="lesion"),
    _c("enhancing tumor", "et", "gd enhancing tumor", "enhancing tumour", group="lesion"),
    _c("peritumoral edema", "edema", "ed", "brain edema", group="lesion"),
    _c("necrotic tumor core", "necrosis", "ncr", "non enhancing tumor core", group="lesion"),
    _c("colon cancer", "colon tumor", "colorectal cancer", group="lesion"),
    _c("covid-19 infection", "covid 19 infection", "covid infection",
       "lung infection", "ground glass opacity", group="lesion"),
    _c("pneumothorax", group="lesion"),
    _c("tumor", "neoplasm", group="lesion"),
    _c("hemorrhage", "intracranial hemorrhage", "brain hemorrhage", "hematoma", group="lesion"),
    _c("gross tumor volume", "gtv", group="lesion"),
    _c("clinical target volume", "ctv", group="lesion"),
    _c("planning target volume", "ptv", group="lesion"),
    _c("pleural effusion", group="lesion"),
    _c("stenosis", "coronary stenosis", group="lesion"),
    _c("bone tumor", "bone lesion", "bone tumour", group="lesion"),
    _c("thyroid nodule", "thyroid lesion", group="lesion"),
    _c("breast tumor", "breast lesion", "breast mass", "breast cancer",
       group="lesion"),
    _c("skin lesion", "dermoscopic lesion", "melanoma", "nevus", group="lesion"),
    _c("polyp", "colon polyp", "colorectal polyp", group="endoscopy"),
    _c("neoplastic polyp", group="endoscopy"),
    _c("non-neoplastic polyp", "non neoplastic polyp", group="endoscopy"),
    # --- ultrasound
    _c("fetal head", "fh", group="obstetrics"),
    _c("pubic symphysis", "ps", "symphysis", group="obstetrics"),
    _c("placental vessel", "placenta vessel", "fetoscopic vessel", group="obstetrics"),
    _c("placenta", group="obstetrics"),
    # --- eye
    _c("retinal blood vessel", "retinal vessel", "blood vessel", "vasculature",
       group="eye"),
    _c("retinal artery", "retinal arteries", group="eye"),
    _c("retinal vein", "retinal veins", group="eye"),
    _c("optic disc", "optic disk", group="eye"),
    _c("optic cup", group="eye"),
    _c("intraretinal cystoid fluid", "intraretinal fluid", "cystoid fluid",
       "cystoid macular edema", "irf", group="eye"),
    # --- microscopy and histology
    _c("cell nucleus", "nucleus", "cell nuclei", group="microscopy"),
    _c("neoplastic cell nucleus", "neoplastic", group="microscopy"),
    _c("inflammatory cell nucleus", "inflammatory", group="microscopy"),
    _c("connective tissue cell nucleus", "soft tissue", group="microscopy"),
    _c("dead cell nucleus", "dead", group="microscopy"),
    _c("epithelial cell nucleus", "epithelial", group="microscopy"),
    _c("cell", "cells", group="microscopy"),
    _c("granulocyte", group="microscopy"),
    _c("gland", "colon gland", "glandular structure", group="microscopy"),
    _c("mitochondrion", "mitochondria", group="microscopy"),
    _c("endolysosome", "lysosome", group="microscopy"),
    _c("fusiform vesicle", group="microscopy"),
    # --- surgery (CholecSeg8k, m2caiSeg)
    _c("abdominal wall", "upper wall", group="surgery"),
    _c("gastrointestinal tract", "gi tract", group="surgery"),
    _c("fat", "fatty tissue", group="surgery"),
    _c("connective tissue", group="surgery"),
    _c("blood", "bleeding", group="surgery"),
    _c("cystic duct", group="surgery"),
    _c("cystic artery", group="surgery"),  # m2caiSeg's "artery" (cholecystectomy)
    _c("bile", group="surgery"),
    _c("liver ligament", group="surgery"),
    _c("surgical instrument", "instrument", "tool", group="surgery"),
    _c("grasper", group="surgery"),
    _c("electrocautery hook", "l hook electrocautery", "hook", group="surgery"),
    _c("bipolar forceps", "bipolar", group="surgery"),
    _c("scissors", group="surgery"),
    _c("clipper", "clip applier", group="surgery"),
    _c("irrigator", group="surgery"),
    _c("specimen bag", group="surgery"),
    _c("trocar", group="surgery"),
    _c("clip", group="surgery"),
    # --- brain (tissues and the AAL atlas)
    _c("head", "whole head", "head and neck soft tissue", group="brain"),
    _c("brain", "whole brain", "brain mask", "intracranial", group="brain"),
    _c("white matter", "wm", group="brain"),
    _c("gray matter", "gm", "cortex", group="brain"),
    _c("cerebrospinal fluid", "csf", group="brain"),
    _c("lateral ventricle", "ventricle", lateral=True, group="brain"),
    _c("cerebellum", group="brain"),
    _c("brainstem", "brain stem", group="brain"),
    _c("precentral gyrus", "precentral", "primary motor cortex", lateral=True, group="brain"),
    _c("superior frontal gyrus", "frontal sup", lateral=True, group="brain"),
    _c("orbital superior frontal gyrus", "frontal sup orb", lateral=True, group="brain"),
    _c("middle frontal gyrus", "frontal mid", lateral=True, group="brain"),
    _c("orbital middle frontal gyrus", "frontal mid orb", lateral=True, group="brain"),
    _c("opercular inferior frontal gyrus", "frontal inf oper", "pars opercularis",
       lateral=True, group="brain"),
    _c("triangular inferior frontal gyrus", "frontal inf tri", "pars triangularis",
       lateral=True, group="brain"),
    _c("orbital inferior frontal gyrus", "frontal inf orb", "pars orbitalis",
       lateral=True, group="brain"),
    _c("rolandic operculum", "rolandic oper", lateral=True, group="brain"),
    _c("supplementary motor area", "supp motor area", "sma", lateral=True, group="brain"),
    _c("olfactory cortex", "olfactory", lateral=True, group="brain"),
    _c("medial superior frontal gyrus", "frontal sup medial", lateral=True, group="brain"),
    _c("medial orbitofrontal cortex", "frontal med orb", lateral=True, group="brain"),
    _c("gyrus rectus", "rectus", lateral=True, group="brain"),
    _c("insula", "insular cortex", lateral=True, group="brain"),
    _c("anterior cingulate gyrus", "cingulum ant", lateral=True, group="brain"),
    _c("middle cingulate gyrus", "cingulum mid", lateral=True, group="brain"),
    _c("posterior cingulate gyrus", "cingulum post", lateral=True, group="brain"),
    _c("hippocampus", lateral=True, group="brain"),
    _c("parahippocampal gyrus", "parahippocampal", lateral=True, group="brain"),
    _c("amygdala", lateral=True, group="brain"),
    _c("calcarine cortex", "calcarine", "calcarine sulcus", lateral=True, group="brain"),
    _c("cuneus", lateral=True, group="brain"),
    _c("lingual gyrus", "lingual", lateral=True, group="brain"),
    _c("superior occipital gyrus", "occipital sup", lateral=True, group="brain"),
    _c("middle occipital gyrus", "occipital mid", lateral=True, group="brain"),
    _c("inferior occipital gyrus", "occipital inf", lateral=True, group="brain"),
    _c("fusiform gyrus", "fusiform", lateral=True, group="brain"),
    _c("postcentral gyrus", "postcentral", lateral=True, group="brain"),
    _c("superior parietal lobule", "parietal sup", "superior parietal gyrus",
       lateral=True, group="brain"),
    _c("inferior parietal lobule", "parietal inf", "inferior parietal gyrus",
       lateral=True, group="brain"),
    _c("supramarginal gyrus", "supramarginal", lateral=True, group="brain"),
    _c("angular gyrus", "angular", lateral=True, group="brain"),
    _c("precuneus", lateral=True, group="brain"),
    _c("paracentral lobule", lateral=True, group="brain"),
    _c("caudate nucleus", "caudate", lateral=True, group="brain"),
    _c("putamen", lateral=True, group="brain"),
    _c("globus pallidus", "pallidum", lateral=True, group="brain"),
    _c("thalamus", lateral=True, group="brain"),
    _c("heschl gyrus", "heschl", "transverse temporal gyrus", lateral=True, group="brain"),
    _c("superior temporal gyrus", "temporal sup", lateral=True, group="brain"),
    _c("superior temporal pole", "temporal pole sup", lateral=True, group="brain"),
    _c("middle temporal gyrus", "temporal mid", lateral=True, group="brain"),
    _c("middle temporal pole", "temporal pole mid", lateral=True, group="brain"),
    _c("inferior temporal gyrus", "temporal inf", lateral=True, group="brain"),
    _c("cerebellar crus 1", "cerebelum crus1", lateral=True, group="brain"),
    _c("cerebellar crus 2", "cerebelum crus2", lateral=True, group="brain"),
    _c("cerebellar lobule 3", "cerebelum 3", lateral=True, group="brain"),
    _c("cerebellar lobules 4 and 5", "cerebelum 4 5", lateral=True, group="brain"),
    _c("cerebellar lobule 6", "cerebelum 6", lateral=True, group="brain"),
    _c("cerebellar lobule 7b", "cerebelum 7b", lateral=True, group="brain"),
    _c("cerebellar lobule 8", "cerebelum 8", lateral=True, group="brain"),
    _c("cerebellar lobule 9", "cerebelum 9", lateral=True, group="brain"),
    _c("cerebellar lobule 10", "cerebelum 10", lateral=True, group="brain"),
    _c("vermis lobules 1 and 2", "vermis 1 2", group="brain"),
    _c("vermis lobule 3", "vermis 3", group="brain"),
    _c("vermis lobules 4 and 5", "vermis 4 5", group="brain"),
    _c("vermis lobule 6", "vermis 6", group="brain"),
    _c("vermis lobule 7", "vermis 7", group="brain"),
    _c("vermis lobule 8", "vermis 8", group="brain"),
    _c("vermis lobule 9", "vermis 9", group="brain"),
    _c("vermis lobule 10", "vermis 10", group="brain"),
)

def _load_rules() -> dict:
    """The surface-form rules of ``medsam3/data/vocabulary.json`` (see docs/prompts.md)."""
    import json
    from pathlib import Path

    return json.loads((Path(__file__).resolve().parent / "data" / "vocabulary.json").read_text())


#: The contents of ``medsam3/data/vocabulary.json`` (rules and model presets).
RULES = _load_rules()
# Word-by-word rewrites before matching: British -> American spelling, irregular plurals.
_SPELLING: dict[str, str] = RULES["spellings"]
_IRREGULAR_PLURALS: dict[str, str] = RULES["plurals"]
# Tried only when the text names no concept as it stands ("hepatic vein" is a concept of its
# own; "hepatic" alone means the liver): adjective -> noun, abbreviation -> full name.
_ADJECTIVES: dict[str, str] = RULES["adjectives"]
_ABBREVIATIONS: dict[str, str] = RULES["abbreviations"]
_BOTH_SIDES = tuple(tuple(p.split()) for p in RULES["both_sides"])
_SIDE_WORDS = {"left": "left", "l": "left", "lt": "left", "right": "right", "r": "right",
               "rt": "right", "sinister": "left", "dexter": "right"}
# Words that carry no meaning for matching a sentence to a concept.
_FILLER = {"the", "a", "an", "of", "in", "on", "and", "with", "within", "from", "for", "at",
           "image", "images", "imaging", "scan", "scans", "ct", "mri", "mr", "pet", "us",
           "x", "ray", "xray", "visualization", "presence", "detected", "showing", "shown",
           "region", "area", "structure", "segmentation", "mask", "sided", "side", "label",
           "abdominal", "abdomen", "head", "neck", "chest", "thorax"}


@dataclass(frozen=True)
class ResolvedPrompt:
    """What a text means in the vocabulary.

    Attributes:
        text: the text as given.
        prompt: the canonical prompt ("left kidney"); the cleaned text when unknown.
        concept: the matched :class:`Concept`, or ``None`` for an unknown concept.
        side: ``"left"``, ``"right"`` or ``None``.
        exact: the text named the concept directly (a name or synonym, with or without a
            side), not a sentence that merely contains it.
        steps: how the text was brought onto the vocabulary, in order: ``case/punctuation``,
            ``spelling``, ``plural``, ``side qualifier``, ``both sides``, ``side ignored`` (a
            side given for a concept without sides), ``abbreviation``, ``adjective``,
            ``synonym``; ``sentence`` for a concept found inside a longer text.
        form: see :attr:`named`.
    """

    text: str
    prompt: str
    concept: Concept | None
    side: str | None
    exact: bool
    steps: tuple[str, ...] = ()
    form: str | None = None

    @property
    def named(self) -> str:
        """The text's own words in the vocabulary's forms: the canonical prompt, except that a
        synonym stays itself ("pulmonary nodules" -> "pulmonary nodule", not "lung nodule")."""
        return self.form or self.prompt

    @property
    def known(self) -> bool:
        return self.concept is not None


def clean_text(text: str) -> str:
    """Lower case, ``_``/``-``/``/`` and punctuation to spaces, single spaces."""
    text = str(text).strip().lower()
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # non-neoplastic -> non neoplastic
    text = re.sub(r"[_/,;:()\[\]{}\"'.!?|+*]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _word_forms(words: Iterable[str], known: set[str], steps: list[str] | None = None,
                eager: bool = False) -> list[str]:
    """Spelling variants and plurals -> the vocabulary's forms; ``steps`` collects which applied.

    A plural that is itself a word of the vocabulary ("lungs", "veins") is kept unless ``eager``.
    """
    out = []
    for w in words:
        if w in _SPELLING:
            w = _SPELLING[w]
            _note(steps, "spelling")
        singular = w
        if w in _IRREGULAR_PLURALS:
            singular = _IRREGULAR_PLURALS[w]
        elif eager or w not in known:
            if w.endswith("ies") and w[:-3] + "y" in known:
                singular = w[:-3] + "y"
            elif w.endswith("es") and w[:-2] in known:
                singular = w[:-2]
            elif w.endswith("s") and w[:-1] in known:
                singular = w[:-1]
        if singular != w:
            _note(steps, "plural")
        out.append(singular)
    return out


def _note(steps: list[str] | None, step: str) -> None:
    if steps is not None and step not in steps:
        steps.append(step)


def _expand(words: list[str], capitals: set[str], steps: list[str]) -> list[str]:
    """Abbreviations and adjectives -> the concept's words ("svc" -> "superior vena cava",
    "renal" -> "kidney"). A word inside a longer text counts as an abbreviation only when it
    was typed in capitals ("la" is also a word)."""
    key = " ".join(words)
    if key in _ABBREVIATIONS:
        steps.append("abbreviation")
        return _ABBREVIATIONS[key].split()
    out: list[str] = []
    for w in words:
        if w in _ABBREVIATIONS and w in capitals:
            out.extend(_ABBREVIATIONS[w].split())
            _note(steps, "abbreviation")
        elif w in _ADJECTIVES:
            out.append(_ADJECTIVES[w])
            _note(steps, "adjective")
        else:
            out.append(w)
    return out


class Vocabulary:
    """A set of :class:`Concept` with lookup by name, synonym and free text."""

    def __init__(self, concepts: Sequence[Concept]):
        self.concepts = tuple(concepts)
        self._words: set[str] = set()
        self._phrases: dict[str, Concept] = {}
        for concept in self.concepts:
            for phrase in (concept.name,) + concept.synonyms:
                self._words.update(clean_text(phrase).split())
        for concept in self.concepts:  # canonical names win over other concepts' synonyms
            key = self._key(concept.name)
            if key in self._phrases and self._phrases[key] is not concept:
                raise ValueError(f"concept name {concept.name!r} is used twice")
            self._phrases[key] = concept
        for concept in self.concepts:
            for synonym in concept.synonyms:
                self._phrases.setdefault(self._key(synonym), concept)

    def _key(self, text: str) -> str:
        return " ".join(_word_forms(clean_text(text).split(), self._words))

    def __contains__(self, name: str) -> bool:
        return self.resolve(name, warn=False).known

    def __iter__(self):
        return iter(self.concepts)

    def __len__(self) -> int:
        return len(self.concepts)

    def get(self, name: str) -> Concept | None:
        """The concept a name or synonym denotes (no side handling, no free text)."""
        return self._phrases.get(self._key(name))

    def resolve(self, text: str, warn: bool = True) -> ResolvedPrompt:
        """Map a class name, prompt or sentence onto the vocabulary.

        First the concept the text names (:meth:`match`: names, synonyms, side qualifiers,
        spellings, plurals, abbreviations, adjectives); then the concept whose name or
        synonym has the most words all present in the text (free sentences such as "CT
        imaging of the spleen within the abdomen"), taking the side from "left"/"right" in
        the text when the concept is lateral. Unknown text comes back as its cleaned form
        with ``concept=None`` and, when ``warn``, an :class:`UnknownConceptWarning`.
        """
        cleaned = " ".join(clean_text(text).split())
        if not cleaned:
            raise ArgumentError(f"empty prompt {text!r}: give a structure's name, e.g. 'liver'")
        named = self.match(text)
        if named is not None:
            return named
        words = _word_forms(cleaned.split(), self._words)
        match = self._best_contained(words)
        if match is not None:
            side = None
            if match.lateral:
                sides = {_SIDE_WORDS[w] for w in words if w in ("left", "right")}
                side = sides.pop() if len(sides) == 1 else None
            return ResolvedPrompt(text, match.prompt(side), match, side, False, ("sentence",))
        if warn:
            _warn_unknown(cleaned)
        return ResolvedPrompt(text, cleaned, None, None, False)

    def match(self, text: str) -> ResolvedPrompt | None:
        """The concept a text names, or ``None`` when it names none (a sentence, unknown text).

        Tried in this order, each time on the whole text, then without a side qualifier at
        its start or end ("left kidney", "Kidney_L", "kidney, right", "R kidney", "left-sided
        kidney") and without "both"/"bilateral": the text as it stands (case, punctuation,
        spelling and plurals normalised: "Tumours" -> "tumor", "hippocampi" -> "hippocampus";
        names and synonyms: "left ventricle" is a concept, not the left of a ventricle); then
        with abbreviations ("IVC"; a word inside a longer text only when typed in capitals)
        and adjectives ("renal" -> "kidney") replaced by the concept's noun.
        """
        typed = " ".join(str(text).split())
        cleaned = clean_text(text)
        steps: list[str] = []
        if cleaned != typed:
            steps.append("case/punctuation")
        capitals = {w.lower() for w in re.split(r"[^A-Za-z0-9]+", typed) if len(w) >= 2 and w.isupper()}
        words = _word_forms(cleaned.split(), self._words, steps)
        eager = _word_forms(cleaned.split(), self._words, eager=True)  # "hepatic veins" -> "hepatic vein"
        splits = self._side_splits(words)
        if eager != words:
            splits += [(side, rest, side_steps + ["plural"]) for side, rest, side_steps in self._side_splits(eager)]
        for expand in (False, True):
            for side, rest, side_steps in splits:
                more: list[str] = []
                if expand:
                    rest = _expand(rest, capitals, more)
                    if not more:
                        continue
                key = " ".join(rest)
                concept = self._phrases.get(key)
                if concept is None:
                    continue
                found = list(dict.fromkeys(steps + side_steps + more))
                if side is not None and not concept.lateral:  # "left liver": the liver has no sides
                    found[found.index("side qualifier")] = "side ignored"
                    side = None
                named = key
                if not expand and key in _ABBREVIATIONS:
                    _note(found, "abbreviation")
                    named = self._key(_ABBREVIATIONS[key])
                if named != self._key(concept.name):
                    _note(found, "synonym")
                    form = f"{side} {named}" if side else named
                else:
                    form = concept.prompt(side)
                return ResolvedPrompt(text, concept.prompt(side), concept, side, True, tuple(found), form)
        return None

    @staticmethod
    def _side_splits(words: list[str]) -> list[tuple[str | None, list[str], list[str]]]:
        """``(side, the other words, steps)``: the whole text, then without a side qualifier."""
        splits: list[tuple[str | None, list[str], list[str]]] = [(None, words, [])]
        if len(words) < 2:
            return splits
        if words[0] in _SIDE_WORDS:
            rest = words[2:] if words[1] == "sided" and len(words) > 2 else words[1:]
            splits.append((_SIDE_WORDS[words[0]], rest, ["side qualifier"]))
        if words[-1] in _SIDE_WORDS:
            splits.append((_SIDE_WORDS[words[-1]], words[:-1], ["side qualifier"]))
        for both in _BOTH_SIDES:
            if tuple(words[:len(both)]) == both and len(words) > len(both):
                splits.append((None, words[len(both):], ["both sides"]))
        return splits

    def _best_contained(self, words: list[str]) -> Concept | None:
        present = set(words)
        content = present - _FILLER - set(_SIDE_WORDS)
        if not content:
            return None
        best, best_score = None, (0, 0)
        for phrase, concept in self._phrases.items():
            phrase_words = phrase.split()
            # a one-word synonym must be a real word of the text, not a 1-2 letter code
            if not set(phrase_words) <= present or (len(phrase_words) == 1 and len(phrase) < 3):
                continue
            if not set(phrase_words) & content:
                continue
            score = (len(phrase_words), len(phrase))
            if score > best_score:
                best, best_score = concept, score
        return best

    def variants(self, text: str) -> list[str]:
        """The surface forms of a class, canonical first: synonyms and side templates."""
        resolved = self.resolve(text, warn=False)
        if resolved.concept is None:
            return [resolved.prompt]
        concept, side = resolved.concept, resolved.side
        names = [concept.name] + [s for s in concept.synonyms if len(clean_text(s)) > 3]
        out: list[str] = []
        for name in names:
            if side is None:
                out.append(name)
            else:
                out.extend([f"{side} {name}", f"{name}, {side}", f"{name} ({side})",
                            f"{side}-sided {name}"])
        return list(dict.fromkeys(out))


def _warn_unknown(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        warnings.warn(f"prompt {text!r} matches no concept of the medsam3 vocabulary; it is used "
                      "as typed (see medsam3.prompts.CONCEPTS for the known names)",
                      UnknownConceptWarning, stacklevel=3)


_WARNED: set[str] = set()


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The vocabulary built from :data:`CONCEPTS`."""
    return Vocabulary(CONCEPTS)


def resolve_prompt(text: str, warn: bool = True, check_length: bool = True) -> ResolvedPrompt:
    """Map any class name or prompt onto the default vocabulary (see :meth:`Vocabulary.resolve`).

    With ``check_length`` the canonical prompt is also checked against SAM3's 32-token
    text context (:func:`check_prompt_length`).
    """
    resolved = default_vocabulary().resolve(text, warn=warn)
    if check_length:
        check_prompt_length(resolved.prompt)
    return resolved


def canonical_prompt(text: str, warn: bool = True) -> str:
    """The canonical prompt of a class name ("Kidney_L" -> "left kidney")."""
    return resolve_prompt(text, warn=warn).prompt


def prompt_variants(text: str) -> list[str]:
    """Surface forms of a class for training, canonical first (see :meth:`Vocabulary.variants`)."""
    return default_vocabulary().variants(text)


@lru_cache(maxsize=1)
def _tokenizer():
    from medsam3.model.tokenizer import build_tokenizer

    return build_tokenizer()


def count_prompt_tokens(text: str) -> int:
    """Number of CLIP tokens of ``text``, including the start and end markers."""
    return len(_tokenizer()(text, truncation=False)["input_ids"])


def check_prompt_length(text: str, max_tokens: int = MAX_PROMPT_TOKENS) -> None:
    """Refuse a prompt longer than SAM3's text context instead of cutting it silently.

    Short ASCII prompts are accepted without tokenizing: every BPE token covers at least
    one non-space character, so ``n`` such characters never make more than ``n + 2``
    tokens (with the start and end markers).

    Raises:
        ArgumentError: the prompt needs more than ``max_tokens`` tokens.
    """
    if text.isascii() and len("".join(text.split())) <= max_tokens - 2:
        return
    n = count_prompt_tokens(text)
    if n > max_tokens:
        short = text if len(text) <= 60 else text[:57] + "..."
        raise ArgumentError(
            f"prompt {short!r} is {n} tokens long; SAM3's text encoder reads at most {max_tokens} "
            f"(including its start and end markers, so {max_tokens - 2} for the text). "
            "Use a short noun phrase such as 'left kidney' or 'polyp'")
