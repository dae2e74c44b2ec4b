"""Tokenized datasets, length-grouped batches and dynamic padding."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from asa_plugin.data import Example


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str | None],
           max_length: int):
    """Token lists of single texts, or of text pairs (the tokenizer's pair template, with
    ``token_type_ids`` where the tokenizer makes them); the longer text is truncated first."""
    if any(p is not None for p in pairs):
        if any(p is None for p in pairs):
            raise ValueError("a batch mixes single texts and text pairs")
        return tokenizer(list(texts), list(pairs), truncation="longest_first", max_length=max_length)
    return tokenizer(list(texts), truncation=True, max_length=max_length)


def truncated_count(enc) -> int | None:
    """How many of a batch encoding's texts lost tokens to ``max_length`` (None: a slow tokenizer, which
    does not keep the overflow)."""
    encodings = getattr(enc, "encodings", None)
    if not encodings:
        return None
    return sum(bool(e.overflowing) for e in encodings)


def truncation_note(max_length: int, **splits: EncodedDataset) -> str | None:
    """One line for the whole run naming how many examples of each split ``max_length`` cut, or None."""
    cut = {name: ds for name, ds in splits.items() if getattr(ds, "truncated", 0)}  # packed corpora: none
    if not cut:
        return None
    counts = ", ".join(f"{ds.truncated} of {len(ds)} {name}" for name, ds in cut.items())
    return f"{counts} examples are longer than model.max_length = {max_length} tokens and were truncated"


class EncodedDataset(Dataset):
    """Examples tokenized once (no padding); items are dicts of token lists plus ``labels``."""

    def __init__(self, examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int):
        enc = encode(tokenizer, [e.text for e in examples], [e.text_pair for e in examples], max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} | {"labels": e.label}
                         for i, e in enumerate(examples)]
        self.lengths = [len(f["input_ids"]) for f in self.features]
        self.truncated = truncated_count(enc)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


class LengthGroupedBatches:
    """Batches of similar length, reshuffled per epoch from ``seed + epoch`` (no global RNG use).

    The method is deliberately not called ``set_epoch``: Accelerate calls that with its own
    iteration counter, which would override the epoch and the resume offset.

    Indices are shuffled, cut into mega-batches of ``mega`` batches, sorted by length inside
    each, cut into batches, and the batches shuffled; ``group_by_length=False`` skips sorting.
    ``short_batch_last`` keeps the one short batch (if any) at the end: Accelerate's sharding
    across processes expects it there (a short batch mid-epoch would drop its round).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True,
                 shuffle: bool = True, mega: int = 50, short_batch_last: bool = False):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.group_by_length, self.shuffle, self.mega = group_by_length, shuffle, mega
        self.short_batch_last = short_batch_last
        self.epoch = 0
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Use epoch ``epoch``'s order, leaving out its first ``skip`` batches (for resuming)."""
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.group_by_length:
            size = self.batch_size * self.mega
            chunks = [order[i:i + size] for i in range(0, len(order), size)]
            order = [i for c in chunks for i in sorted(c, key=lambda j: -self.lengths[j])]
        out = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle and self.group_by_length:
            rng.shuffle(out)
        if self.short_batch_last:
            out = [b for b in out if len(b) == self.batch_size] + [b for b in out if len(b) < self.batch_size]
        return out[self.skip:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size - self.skip


def make_loader(dataset: EncodedDataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int,
                shuffle: bool, group_by_length: bool = True,
                short_batch_last: bool = False, collate_factory=None) -> tuple[DataLoader, LengthGroupedBatches]:
    """A DataLoader with dynamic padding; its private generator keeps the global RNG untouched.

    ``collate_factory(sampler) -> collate_fn`` replaces the padding collator (masked-LM pre-training
    passes one whose random masking follows the sampler's epoch)."""
    sampler = LengthGroupedBatches(dataset.lengths, batch_size, seed, group_by_length, shuffle,
                                   short_batch_last=short_batch_last)
    collate = collate_factory(sampler) if collate_factory else DataCollatorWithPadding(tokenizer)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
