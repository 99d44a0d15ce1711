"""The prompt vocabulary: canonical prompts, sides, synonyms, free text, the 32-token limit."""

from __future__ import annotations

import warnings

import pytest

from medsam3.errors import ArgumentError
from medsam3.prompts import (
    CONCEPTS,
    MAX_PROMPT_TOKENS,
    Concept,
    UnknownConceptWarning,
    Vocabulary,
    canonical_prompt,
    check_prompt_length,
    count_prompt_tokens,
    default_vocabulary,
    prompt_variants,
    resolve_prompt,
)

AAL_NAMES = "/usr/share/mricron/templates/aal.nii.txt"


@pytest.mark.parametrize("text, prompt", [
    ("left kidney", "left kidney"),
    ("Kidney_L", "left kidney"),
    ("kidney, right", "right kidney"),
    ("R kidney", "right kidney"),
    ("Left Kidney", "left kidney"),
    ("kidneys", "kidney"),
    ("Liver tumors", "liver tumor"),
    ("liver tumour", "liver tumor"),
    ("Polyp", "polyp"),
    ("Skin Lesion", "skin lesion"),
    ("Nuclei", "cell nucleus"),
    ("Retinal Blood Vessel", "retinal blood vessel"),
    ("thyroid nodule", "thyroid nodule"),
    ("fetal head", "fetal head"),
    ("Hippocampus_L", "left hippocampus"),
    ("Frontal_Sup_Orb_R", "right orbital superior frontal gyrus"),
    ("Cerebelum_Crus1_L", "left cerebellar crus 1"),
    ("Vermis_4_5", "vermis lobules 4 and 5"),
    ("Pallidum_R", "right globus pallidus"),
    ("left ventricle", "left ventricle"),  # a structure of its own, not the left of a ventricle
    ("oesophagus", "esophagus"),
    ("non-neoplastic polyp", "non-neoplastic polyp"),
    ("mitochondria", "mitochondrion"),
])
def test_canonical_prompts(text, prompt):
    assert canonical_prompt(text) == prompt


@pytest.mark.parametrize("sentence, prompt", [
    ("CT imaging of the spleen within the abdomen", "spleen"),
    ("Presence of the right kidney detected in abdominal CT images", "right kidney"),
    ("Liver tumors in abdominal CT", "liver tumor"),
    ("tumor in the left kidney", "kidney tumor"),
    ("Visualization of brain tumor in head MR", "brain tumor"),
    ("colon polyp in colon endoscopes", "polyp"),
])
def test_free_text_maps_onto_the_vocabulary(sentence, prompt):
    resolved = resolve_prompt(sentence)
    assert resolved.prompt == prompt and resolved.known and not resolved.exact


def test_unknown_concepts_warn_once_and_stay_as_typed():
    with pytest.warns(UnknownConceptWarning, match="'flux capacitor'"):
        resolved = resolve_prompt("Flux_Capacitor")
    assert resolved.prompt == "flux capacitor" and not resolved.known and resolved.concept is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_prompt("Flux_Capacitor").prompt == "flux capacitor"  # warned already
        assert resolve_prompt("another unknown thing", warn=False).prompt == "another unknown thing"
    with pytest.raises(ArgumentError, match="empty prompt"):
        resolve_prompt(" _ ")


def test_variants_of_lateral_and_plain_concepts():
    variants = prompt_variants("Kidney_L")
    assert variants[:4] == ["left kidney", "kidney, left", "kidney (left)", "left-sided kidney"]
    assert all(canonical_prompt(v) == "left kidney" for v in variants)
    assert prompt_variants("polyp") == ["polyp", "colon polyp", "colorectal polyp"]
    assert prompt_variants("zebra stripes") == ["zebra stripes"]


def test_every_aal_region_has_a_distinct_known_prompt():
    try:
        lines = open(AAL_NAMES).read().split("\n")
    except FileNotFoundError:
        pytest.fail(f"{AAL_NAMES} is missing: install the Debian package mricron-data "
                    "(apt-get install mricron-data)")
    names = [line.split()[1] for line in lines if line.strip()]
    assert len(names) == 116
    prompts = [resolve_prompt(n) for n in names]
    assert all(p.known and p.exact for p in prompts)
    assert len({p.prompt for p in prompts}) == 116
    sides = [p.side for p in prompts]
    assert sides.count("left") == 54 and sides.count("right") == 54  # 8 vermis parts in the midline


def test_vocabulary_is_consistent():
    vocab = default_vocabulary()
    assert len(vocab) == len(CONCEPTS) and "spleen" in vocab and "warp drive" not in vocab
    assert vocab.get("Splenic parenchyma").name == "spleen"
    with pytest.raises(ValueError, match="used twice"):
        Vocabulary([Concept("liver"), Concept("liver")])
    for concept in CONCEPTS:  # canonical names resolve to themselves
        assert vocab.resolve(concept.name, warn=False).concept is concept
        check_prompt_length(concept.prompt("right"))


def test_prompt_token_limit():
    assert count_prompt_tokens("left kidney") == 4  # start, left, kidney, end
    check_prompt_length("a " * (MAX_PROMPT_TOKENS - 2))
    assert count_prompt_tokens("a " * (MAX_PROMPT_TOKENS - 2)) == MAX_PROMPT_TOKENS
    with pytest.raises(ArgumentError, match="is 33 tokens long; .* at most 32"):
        check_prompt_length("a " * (MAX_PROMPT_TOKENS - 1))
    long_words = "pneumonoultramicroscopicsilicovolcanoconiosis " * 3
    with pytest.raises(ArgumentError, match="tokens long"):
        resolve_prompt(long_words, warn=False)
    check_prompt_length("é " * 10)  # non-ASCII text is counted with the tokenizer
