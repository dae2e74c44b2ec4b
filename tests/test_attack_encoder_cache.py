"""The cached sentence-encoder constraint decides exactly as TextAttack's own ``SentenceEncoder``
on real candidates (WordNet swaps of toy sentences), while encoding each text once."""

from __future__ import annotations

import pytest
from attack_support import nltk_data_dir
from tiny import tiny_model_dir

SENTENCES = [
    "the film is a good and honest story about a lonely old man who finds a new friend in town",
    "a dull , tired and predictable movie",
    "bad acting , bad writing , and a plot that makes no sense at all from the first scene to the end",
    "one of the best pictures of the year , warm and funny",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, attack_cache):
    from asa_plugin.attacks.textattack_env import add_nltk_dir, import_textattack

    import_textattack(attack_cache, allow_download=False)
    add_nltk_dir(nltk_data_dir())
    from textattack.shared import AttackedText
    from textattack.transformations import WordSwapWordNet

    encoder_dir = tiny_model_dir(tmp_path_factory.mktemp("encoder"), "bert", seed=3)
    swap = WordSwapWordNet()
    candidates = {s: swap(AttackedText(s)) for s in SENTENCES}
    assert all(candidates.values())
    return encoder_dir, candidates


def reference_class():
    from textattack.constraints.semantics.sentence_encoders import SentenceEncoder

    class Reference(SentenceEncoder):
        """TextAttack's constraint logic, encoding with ours uncached (every text, every call)."""

        def __init__(self, ours, **kwargs):
            super().__init__(**kwargs)
            self.ours, self.model, self.encoded = ours, self, 0

        def encode(self, sentences):
            self.encoded += len(sentences)
            return self.ours.encode_uncached(sentences)

    return Reference


def midpoint_threshold(scores: list[float]) -> float:
    """A threshold between the two middle scores farthest apart, so decisions go both ways and no
    score lies within float noise of it."""
    s = sorted(scores)
    gaps = [(s[i + 1] - s[i], i) for i in range(len(s) // 4, 3 * len(s) // 4)]
    gap, i = max(gaps)
    assert gap > 1e-4
    return (s[i] + s[i + 1]) / 2


@pytest.mark.parametrize("options", [
    {"metric": "angular", "window_size": 15, "skip_text_shorter_than_window": True},  # TextDefender's
    {"metric": "angular", "window_size": 4, "skip_text_shorter_than_window": False},
    {"metric": "cosine", "window_size": None, "skip_text_shorter_than_window": False},
], ids=["textdefender-window-15-skip", "window-4", "whole-text-cosine"])
def test_decisions_and_scores_match_textattacks_constraint(setup, options):
    from asa_plugin.attacks.substitutes import TransformerSentenceEncoder

    encoder_dir, candidates = setup
    ours = TransformerSentenceEncoder(str(encoder_dir), **options)
    Reference = reference_class()
    probe = Reference(ours, threshold=0.0, **options)
    scores = [t.attack_attrs["similarity_score"] for s, texts in candidates.items()
              for t in probe._check_constraint_many(texts, _original(s))]
    threshold = midpoint_threshold(scores) if len(set(scores)) > 4 else 0.5
    reference = Reference(ours, threshold=threshold, **options)
    mine = TransformerSentenceEncoder(str(encoder_dir), threshold=threshold, **options)
    for rounds in range(2):  # the second round hits the cache: same decisions, no new encoding
        for sentence, texts in candidates.items():
            original = _original(sentence)
            expected = list(reference._check_constraint_many(texts, original))
            expected_scores = [t.attack_attrs["similarity_score"] for t in texts]
            before = mine.num_encoded
            got = list(mine._check_constraint_many(texts, original))
            assert [t.text for t in got] == [t.text for t in expected]
            assert [t.attack_attrs["similarity_score"] for t in texts] == pytest.approx(expected_scores, abs=1e-5)
            if rounds:
                assert mine.num_encoded == before
    assert 0 < mine.num_encoded < reference.encoded / 2  # originals' windows are shared; skipped texts not encoded
    mine.clear_cache()
    assert mine.encode(["a dull movie"]).shape == (1, mine.encoder.config.hidden_size)
    assert mine.num_encoded > 0


def _original(sentence: str):
    from textattack.shared import AttackedText

    return AttackedText(sentence)
