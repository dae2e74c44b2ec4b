"""The ``[pretrain]`` section and the pre-training run config.

A pre-training config has the sections of a training config except ``[data]`` and ``[attack]``
(the corpus is named in ``[pretrain]``)::

    [model]
    backbone = "minilm"
    max_length = 64
    [pretrain]
    corpus = "corpus.txt"        # .txt (one line, one text), .tsv/.csv/.jsonl, or a dataset name
    [defence]
    name = "asa"
    [train]
    max_steps = 1000
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_plugin.config import RunConfig, apply_overrides, blame_override, load_config, read_file
from asa_plugin.errors import ConfigError
from asa_plugin.schema import build, option, toml_values

DEFAULT_RUN_DIR = "runs/pretrain-{defence}-{backbone}"
SECTIONS = ("model", "defence", "train", "output", "plugins", "pretrain")


@dataclass
class PretrainConfig:
    corpus: str = option("", help="corpus: a .txt file (one document or sentence per line), a .tsv/.csv/.jsonl "
                                  "file with a text column, a registered dataset name (its texts, labels "
                                  "ignored) or a Hugging Face datasets name")
    text_column: str | None = option(None, help="text column of a table corpus; default: text, sentence, "
                                                "review or content")
    split: str = option("train", help="split of a named dataset")
    max_lines: int | None = option(None, ge=1, help="use only the first N texts of the corpus")
    eval_fraction: float = option(0.05, gt=0, lt=1, help="share of the texts held out (a fixed random choice, "
                                                         "at least one) for the MLM loss, accuracy, perplexity")
    mlm_probability: float = option(0.15, gt=0, le=1, help="share of tokens selected for prediction")
    mask_replace_prob: float = option(0.8, ge=0, le=1, help="share of selected tokens replaced by the mask token")
    random_replace_prob: float = option(0.1, ge=0, le=1, help="share of selected tokens replaced by a random "
                                                              "token (the rest stay unchanged)")
    whole_word_mask: bool = option(False, help="select whole words (all their sub-tokens) instead of tokens")
    packing: bool = option(True, help="concatenate the tokenized texts and cut blocks of model.max_length "
                                      "tokens; false: one text per example, truncated, padded per batch")


@dataclass
class PretrainRunConfig(RunConfig):
    """A :class:`RunConfig` whose data is a text corpus (``[pretrain]``) instead of ``[data]``."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("data"), out.pop("attack")
        return {**out, "pretrain": toml_values(self.pretrain)}


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainRunConfig:
    """Load and validate a pre-training config (every problem one line naming the file and key)."""
    source = str(path)
    overrides = overrides or []
    raw = apply_overrides(read_file(path), overrides)
    for key in raw:
        if key not in SECTIONS:
            hint = "; the corpus is set in [pretrain] (corpus, text_column)" if key == "data" else ""
            raise ConfigError(blame_override(f"{source}: unknown section [{key}]; allowed sections: "
                                             f"{', '.join(SECTIONS)}{hint}", source, overrides))
    pre_raw = raw.pop("pretrain", None)
    if pre_raw is None:
        raise ConfigError(f"{source}: [pretrain] is missing; give at least pretrain.corpus")
    try:
        pre = build(PretrainConfig, pre_raw, section="pretrain", source=source)
        if not pre.corpus:
            raise ConfigError(f"{source}: pretrain.corpus is empty; name a .txt/.tsv/.csv/.jsonl file or a dataset")
        if pre.mask_replace_prob + pre.random_replace_prob > 1:
            raise ConfigError(f"{source}: pretrain.mask_replace_prob + pretrain.random_replace_prob exceed 1")
    except ConfigError as exc:
        raise ConfigError(blame_override(str(exc), source, overrides)) from None
    try:
        base = load_config(data=raw, source=source)  # overrides already applied
    except ConfigError as exc:
        raise ConfigError(blame_override(str(exc), source, overrides)) from None
    if "run_dir" not in (raw.get("output") or {}):
        base.output.run_dir = DEFAULT_RUN_DIR
    fields = {name: getattr(base, name) for name in ("model", "defence", "train", "output", "plugins")}
    return PretrainRunConfig(**fields, source=source, pretrain=pre)
