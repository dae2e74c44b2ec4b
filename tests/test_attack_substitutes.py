"""Offline substitutes: neighbour matrix, antonym filter, WordNet POS check, look-alike characters."""

from __future__ import annotations

import numpy as np
import pytest
from asa_plugin.attacks.embeddings import nearest_neighbours
from attack_support import nltk_data_dir


def test_neighbour_matrix_ranks_by_cosine_with_the_word_first():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [1, 0]], dtype=np.float32)  # 4 duplicates 0
    nn = nearest_neighbours(vectors, k=2, chunk=2)
    assert nn.shape == (5, 3)
    assert nn[:, 0].tolist() == [0, 1, 2, 3, 4]  # itself first, even for the duplicate pair
    assert nn[0, 1:].tolist() == [4, 1]  # the duplicate, then the nearest
    assert nn[3, 1:].tolist() in ([2, 1], [2, 4])  # orthogonal before the nearly opposite ones


@pytest.fixture(scope="module")
def ta(attack_cache):
    from asa_plugin.attacks.textattack_env import add_nltk_dir, import_textattack

    import_textattack(attack_cache, allow_download=False)
    add_nltk_dir(nltk_data_dir())
    from textattack.shared import AttackedText

    return AttackedText


SWAPS = [
    # (original, perturbed, antonym filter passes, WordNet POS check passes)
    ("a good movie", "a great movie", True, True),
    ("a good movie", "a bad movie", False, True),
    ("it ended quickly", "it ended film", True, False),
    ("a good movie", "a good xqzzy", True, True),  # unknown to WordNet: the check cannot judge, passes
]


@pytest.mark.parametrize("original,perturbed,antonym_ok,pos_ok", SWAPS)
def test_swap_constraints(ta, original, perturbed, antonym_ok, pos_ok):
    from asa_plugin.attacks.substitutes import AntonymSwapFilter, WordNetPOSMatch

    before, after = ta(original), ta(perturbed)
    antonyms = AntonymSwapFilter({("good", "bad"), ("bad", "good")})
    assert antonyms._check_constraint(after, before) is antonym_ok
    assert WordNetPOSMatch(allow_verb_noun_swap=True)._check_constraint(after, before) is pos_ok


def test_visual_character_swaps(ta):
    from asa_plugin.attacks.substitutes import WordSwapVisualChars

    assert sorted(WordSwapVisualChars()._get_replacement_words("lots")) == sorted(["1ots", "l0ts", "lot$"])


def test_glove_substitute_offers_a_words_embedding_neighbours(ta, attack_cache):
    """The counter-fitted stand-in swaps a word for its GloVe neighbours, never for itself."""
    from asa_plugin.attacks.assets import Assets
    from asa_plugin.attacks.config import AttackConfig
    from asa_plugin.attacks.embeddings import glove_neighbours
    from asa_plugin.attacks.substitutes import glove_word_embedding
    from textattack.transformations import WordSwapEmbedding

    files = Assets(AttackConfig(embedding_vocab_size=8000), attack_cache).embedding_files()
    words, vectors, nn = glove_neighbours(files.vectors, files.index, 8000, attack_cache)
    swap = WordSwapEmbedding(max_candidates=10, embedding=glove_word_embedding(words, vectors, nn))
    candidates = swap._get_replacement_words("movie")
    assert {"film", "movies"} <= set(candidates) and "movie" not in candidates
    assert "stock" not in candidates


def test_sentence_encoder_substitute_scores_paraphrases_above_unrelated_text(ta):
    """The USE stand-in (offline MiniLM) behaves as a semantic-similarity constraint needs."""
    import torch.nn.functional as F
    from asa_plugin.attacks.assets import Assets
    from asa_plugin.attacks.config import AttackConfig
    from asa_plugin.attacks.substitutes import TransformerSentenceEncoder

    path, use = Assets(AttackConfig(), ".").sentence_encoder_path()
    assert use.substitute_for and "Universal Sentence Encoder" in use.substitute_for
    vectors = TransformerSentenceEncoder(path).encode(
        ["the movie was great", "the film was wonderful", "stock prices fell sharply today"])  # (3, H)
    paraphrase, unrelated = F.cosine_similarity(vectors[:1], vectors[1:]).tolist()
    assert paraphrase > 0.6 > 0.2 > unrelated
