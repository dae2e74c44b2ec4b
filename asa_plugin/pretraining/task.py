"""Masked-LM pre-training as a task of the training loop (:func:`asa_plugin.training.loop.train`)."""

from __future__ import annotations

from typing import Any

from asa_plugin.errors import ConfigError, UserError
from asa_plugin.pretraining.corpus import Corpus, load_corpus
from asa_plugin.pretraining.mlm import MLMCollator, MLMDataset, evaluate_mlm, masked_lm_adapter
from asa_plugin.training.loop import Task


def check_defences(cfg, registry) -> None:
    """One line for a defence that cannot pre-train (before any data or model loads): its class does not
    declare ``supports_masked_lm = True`` (:class:`asa_plugin.defences.base.Defence`)."""
    for name in cfg.defence.names:
        if not registry.get(name).supports_masked_lm:
            usable = [e.name for e in registry.entries() if e.value.supports_masked_lm]
            raise ConfigError(f"{cfg.source}: defence.name: '{name}' does not support masked-LM pre-training; "
                              f"use one of: {', '.join(usable)}")


class MaskedLMTask(Task):
    """Continued masked-LM pre-training on the ``[pretrain]`` corpus."""

    name = "pretrain"

    def load_data(self, cfg, pm) -> Corpus:
        return load_corpus(cfg.pretrain, pm.datasets)

    def build(self, cfg, pm, corpus: Corpus) -> tuple[Any, MLMDataset, MLMDataset, Any]:
        from transformers import AutoModelForMaskedLM

        from asa_plugin.adapters.loading import load_adapter

        adapter = masked_lm_adapter(load_adapter(cfg.model.backbone, None, cfg.model.attn_implementation,
                                                 registry=pm.adapters, model_class=AutoModelForMaskedLM))
        tokenizer, pre = adapter.tokenizer, cfg.pretrain
        if tokenizer.mask_token is None:
            raise UserError(f"backbone '{cfg.model.backbone}': its tokenizer has no mask token, so it cannot be "
                            f"pre-trained with masked-LM")
        if pre.whole_word_mask and not tokenizer.is_fast:
            raise UserError(f"pretrain.whole_word_mask needs a fast tokenizer (offsets); backbone "
                            f"'{cfg.model.backbone}' has a slow one: set pretrain.whole_word_mask = false")
        sets = [MLMDataset(texts, tokenizer, cfg.model.max_length, pre.packing, offsets=pre.whole_word_mask)
                for texts in (corpus.train, corpus.eval)]
        return adapter, sets[0], sets[1], lambda sampler: MLMCollator(tokenizer, pre, cfg.train.seed, sampler)

    def evaluate(self, adapter, model, loader, accelerator) -> dict[str, Any]:
        return evaluate_mlm(adapter, model, loader, accelerator)

    def describe(self, corpus: Corpus) -> dict[str, Any]:
        return corpus.describe()

    def fingerprint(self, corpus: Corpus) -> str:
        from asa_plugin.training.loop import data_sha256

        return data_sha256([corpus.train, corpus.eval])

    def data_name(self, cfg) -> str:
        return f"the corpus {cfg.pretrain.corpus}"


def pretrain(cfg, resume: bool = False, pm=None, progress: bool = True) -> dict[str, Any]:
    """Pre-train ``cfg`` (a :class:`~asa_plugin.pretraining.config.PretrainRunConfig`); return its metrics.
    ``progress``: a progress bar on stderr."""
    from asa_plugin.training.loop import train

    return train(cfg, resume=resume, pm=pm, task=MaskedLMTask(), progress=progress)
