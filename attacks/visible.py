"""Cut attacked texts to the words the model sees.

The model reads at most ``max_length`` tokens of a text (or of a text pair, truncated longest first, as
:class:`~asa_plugin.attacks.wrapper.FastModelWrapper` queries it). Words past that point change no
prediction, yet an attack would search them (a 900-word review at max_length 48 took 194 s and 2,909
queries) and words-perturbed would count them. So each text is cut, before the attack, after the last
word holding a token the model sees; words split by the cut are kept whole.
"""

from __future__ import annotations

import re

NOT_SPACE = re.compile(r"\S*")


def visible_texts(tokenizer, texts: list[str], pairs: list[str] | None,
                  max_length: int | None) -> tuple[list[str], list[str] | None, int]:
    """(texts, pairs, how many examples were cut) with each text cut to what the model sees.

    A tokenizer without character offsets (a slow, Python one) cannot say where the cut falls: the
    texts are returned whole.
    """
    if max_length is None or not getattr(tokenizer, "is_fast", False):
        return texts, pairs, 0
    out_texts, out_pairs, cut = [], [] if pairs is not None else None, 0
    for i, text in enumerate(texts):
        pair = None if pairs is None else pairs[i]
        seen = _visible(tokenizer, text, pair, max_length)
        cut += seen != (text, pair)
        out_texts.append(seen[0])
        if out_pairs is not None:
            out_pairs.append(seen[1])
    return out_texts, out_pairs, cut


def _visible(tokenizer, text: str, pair: str | None, max_length: int) -> tuple[str, str | None]:
    if len(tokenizer(text, pair, truncation=False)["input_ids"]) <= max_length:
        return text, pair
    encoding = tokenizer(text, pair, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ends = [0, 0]  # end (in characters) of the last token the model sees, per sequence
    for sequence, (_, end) in zip(encoding.sequence_ids(), encoding["offset_mapping"]):
        if sequence is not None:
            ends[sequence] = max(ends[sequence], end)

    def cut(s: str, end: int) -> str:
        if not s[end:].strip():  # nothing of this text was cut
            return s
        return s[:NOT_SPACE.match(s, end).end()]  # the word the last token belongs to stays whole

    return cut(text, ends[0]), None if pair is None else cut(pair, ends[1])
