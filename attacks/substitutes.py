"""TextAttack components that stand in for assets missing offline, plus the antonym filter.

Import this module only after :func:`asa_plugin.attacks.textattack_env.import_textattack`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from textattack.constraints import Constraint
from textattack.constraints.semantics.sentence_encoders import SentenceEncoder
from textattack.shared import WordEmbedding
from textattack.transformations import WordSwap


@lru_cache(maxsize=2)
def _load_encoder(path: str):
    """(tokenizer, encoder) of ``path``, loaded once per process: a bench or a test session builds
    many attacks with the same encoder, and it only ever runs under inference mode."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


class TransformerSentenceEncoder(SentenceEncoder):
    """A BERT-style sentence encoder (mean pooling), e.g. all-MiniLM-L6-v2 in place of USE."""

    def __init__(self, path: str, batch_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer, self.encoder = _load_encoder(str(path))
        self.batch_size = batch_size
        self.model = self  # SentenceEncoder._sim_score calls self.model.encode

    @torch.inference_mode()
    def encode(self, sentences: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        out = []
        for start in range(0, len(sentences), self.batch_size):
            enc = self.tokenizer(sentences[start:start + self.batch_size], padding=True, truncation=True,
                                 max_length=256, return_tensors="pt").to(device)
            hidden = self.encoder(**enc).last_hidden_state  # (B, L, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float().cpu())  # (B, H)
        return torch.cat(out) if out else torch.empty(0)

    def to(self, device):
        self.encoder.to(device)
        return self


def changed_word_pairs(transformed_text, reference_text) -> list[tuple[str, str]]:
    """(reference word, new word) for each word index where the two texts differ, lower-cased."""
    indices = reference_text.all_words_diff(transformed_text)
    return [(reference_text.words[i].lower(), transformed_text.words[i].lower()) for i in sorted(indices)
            if i < len(reference_text.words) and i < len(transformed_text.words)]


class AntonymSwapFilter(Constraint):
    """Rejects a swap of a word for one of its antonyms (pairs from e.g. PPDB antonym lists)."""

    def __init__(self, pairs: set[tuple[str, str]]):
        super().__init__(compare_against_original=True)
        self.pairs = pairs

    def _check_constraint(self, transformed_text, reference_text) -> bool:
        return not any(pair in self.pairs for pair in changed_word_pairs(transformed_text, reference_text))


def wordnet_pos(word: str) -> set[str]:
    """The parts of speech WordNet lists for ``word`` (n, v, a, r; satellites count as a)."""
    from nltk.corpus import wordnet

    return {"a" if s.pos() == "s" else s.pos() for s in wordnet.synsets(word)}


class WordNetPOSMatch(Constraint):
    """Context-free POS check: a substitute must share a WordNet part of speech with the word.

    Stands in for TextAttack's ``PartOfSpeech`` (an NLTK/flair tagger over the sentence) when no
    tagger is available offline. Words WordNet does not know are allowed, as a tagger-free check
    cannot judge them. ``allow_verb_noun_swap`` also accepts noun <-> verb.
    """

    def __init__(self, allow_verb_noun_swap: bool = True):
        super().__init__(compare_against_original=True)
        self.allow_verb_noun_swap = allow_verb_noun_swap

    def _check_constraint(self, transformed_text, reference_text) -> bool:
        for old, new in changed_word_pairs(transformed_text, reference_text):
            a, b = wordnet_pos(old), wordnet_pos(new)
            if not a or not b or a & b:
                continue
            if self.allow_verb_noun_swap and {"n", "v"} & a and {"n", "v"} & b:
                continue
            return False
        return True


VISUAL_CHARS = {"o": "0", "l": "1", "a": "@", "i": "1", "e": "3", "s": "$"}
"""TextBugger's Sub-C: letters replaced by visually similar characters (Li et al. 2019)."""


class WordSwapVisualChars(WordSwap):
    """One candidate per position: a letter replaced by its look-alike (the homoglyph substitute)."""

    def _get_replacement_words(self, word: str) -> list[str]:
        return [word[:i] + VISUAL_CHARS[c] + word[i + 1:] for i, c in enumerate(word) if c in VISUAL_CHARS]


def glove_word_embedding(words: list[str], vectors: np.ndarray, nn: np.ndarray) -> WordEmbedding:
    """A TextAttack ``WordEmbedding`` over GloVe vectors with the precomputed neighbour matrix."""
    return WordEmbedding(vectors, {w: i for i, w in enumerate(words)}, dict(enumerate(words)), nn)


def counter_fitted_embedding(path) -> WordEmbedding:
    """TextAttack's counter-fitted embedding from a local paragramcf folder."""
    import pickle
    from pathlib import Path

    p = Path(path)
    word2index = np.load(p / "wordlist.pickle", allow_pickle=True)
    embedding = WordEmbedding(np.load(p / "paragram.npy"), word2index,
                              {i: w for w, i in word2index.items()}, np.load(p / "nn.npy"))
    for name, attr in (("mse_dist.p", "_mse_dist_mat"), ("cos_sim.p", "_cos_sim_mat")):
        if (p / name).is_file():
            with open(p / name, "rb") as f:
                setattr(embedding, attr, pickle.load(f))
    return embedding
