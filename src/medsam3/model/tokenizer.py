"""The CLIP BPE tokenizer of SAM3, built offline from the vocabulary in the open-clip-torch wheel.

SAM3's text encoder uses OpenAI CLIP's byte-level BPE (49408 tokens, context length 32).
``open_clip`` ships the merges file ``bpe_simple_vocab_16e6.txt.gz``; the vocabulary is
derived from it the way CLIP defines it (256 byte symbols, the same with ``</w>``, one
token per merge, then the two special tokens), so the ids equal OpenAI CLIP's.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

CONTEXT_LENGTH = 32
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable-character table, in CLIP's order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _bpe_file() -> Path:
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("open-clip-torch is needed to build the CLIP tokenizer offline") from exc
    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : VOCAB_SIZE - 256 - 256 - 2 + 1]
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer equal to OpenAI CLIP's, padded to SAM3's context length of 32."""
    vocab, merges = _vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges])
    tokenizer.model_max_length = CONTEXT_LENGTH
    return tokenizer
