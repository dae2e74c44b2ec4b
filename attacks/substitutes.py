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
    """A BERT-style sentence encoder (mean pooling), e.g. all-MiniLM-L6-v2 in place of USE.

    Decisions are TextAttack's ``SentenceEncoder``'s, with less encoder work:

    - every text's embedding is cached until :meth:`clear_cache` (called by ``Attack.clear_cache``
      before each example), so the original windows that all candidates at one word index share,
      and windows seen in earlier search steps, are encoded once;
    - only texts not yet cached are encoded, deduplicated and length-sorted into batches;
    - with ``skip_text_shorter_than_window``, texts that would get score 1 anyway are not encoded.
    """

    def __init__(self, path: str, batch_size: int = 64, cache_size: int = 50_000, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer, self.encoder = _load_encoder(str(path))
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.model = self  # SentenceEncoder._sim_score calls self.model.encode
        self._cache: dict[str, torch.Tensor] = {}
        self.num_forwards = 0  # encoder forward passes (batches), for the time breakdown
        self.num_encoded = 0  # texts encoded (cache misses)

    def clear_cache(self) -> None:
        self._cache.clear()

    def encode(self, sentences: list[str]) -> torch.Tensor:
        """Embeddings of ``sentences`` (N, H), each text encoded at most once per cache lifetime."""
        if not sentences:
            return torch.empty(0)
        missing = [s for s in dict.fromkeys(sentences) if s not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(missing, self.encode_uncached(missing)))
        return torch.stack([self._cache[s] for s in sentences])  # (N, H)

    @torch.inference_mode()
    def encode_uncached(self, sentences: list[str]) -> torch.Tensor:
        """Mean-pooled embeddings (N, H) on the CPU, in input order, from length-sorted batches."""
        device = next(self.encoder.parameters()).device
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = torch.empty(len(sentences), self.encoder.config.hidden_size)  # (N, H)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                                 max_length=256, return_tensors="pt").to(device)
            hidden = self.encoder(**enc).last_hidden_state  # (B, L, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float().cpu()  # (B, H)
            self.num_forwards += 1
        self.num_encoded += len(sentences)
        return out

    def _check_constraint_many(self, transformed_texts, reference_text):
        """TextAttack's filter, without encoding the texts it scores 1 regardless."""
        skip = [self.skip_text_shorter_than_window and len(t.words) < self.window_size for t in transformed_texts]
        scored = [t for t, s in zip(transformed_texts, skip) if not s]
        scores = torch.ones(len(transformed_texts))  # (N,)
        if scored:
            scores[[i for i, s in enumerate(skip) if not s]] = self._score_list(reference_text, scored).float().cpu()
        for text, score in zip(transformed_texts, scores):
            text.attack_attrs["similarity_score"] = score.item()
        mask = (scores >= self.threshold).numpy().nonzero()
        return np.array(transformed_texts)[mask]

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


@lru_cache(maxsize=200_000)
def wordnet_pos(word: str) -> frozenset[str]:
    """The parts of speech WordNet lists for ``word`` (n, v, a, r; satellites count as a); cached,
    as the same words recur in every candidate of an attack."""
    from nltk.corpus import wordnet

    return frozenset("a" if s.pos() == "s" else s.pos() for s in wordnet.synsets(word))


class WordNetPOSMatch(Constraint):
    """Context-free POS check: a substitute must share a WordNet part of speech with the word.

    Stands in for TextAttack's ``PartOfSpeech`` (an NLTK/flair tagger over the sentence) when no
    tagger is available offline. Words WordNet does not know are allowed, as a tagger-free check
    cannot judge them. ``allow_verb_noun_swap`` also accepts noun <-> verb.
    """

    def __init__(self, allow_verb_noun_swap: bool = True):
        super().__init__(compare_against_original=True)
        self.allow_verb_noun_swap = allow_verb_noun_swap
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()  # load WordNet now, not inside the first example's attack time

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
