"""Model cards: a ``README.md`` with Hugging Face's metadata block beside every exported model.

The metadata (YAML front matter, parsed by ``huggingface_hub.ModelCard.load``) holds:

* ``base_model`` (a hub id: an alias such as ``minilm`` maps to the hub model its offline package
  copies; a local directory is named in the text only), ``datasets``, ``tags``, ``metrics``;
* ``model-index``: the clean accuracy on the evaluation split and, once attacked (``advrobust
  bench``), the accuracy under each attack recipe;
* ``advrobust``: the defence and its parameters, the training budget, and per recipe the attack
  summary and the paired comparison with the bench's baseline (difference in accuracy under attack
  with its interval, McNemar per seed; see :mod:`asa_plugin.bench.stats`).

``advrobust train`` and :class:`asa_plugin.hf.DefenceTrainer` write the card when they export;
``advrobust bench`` rewrites each run's card after its attacks with :func:`write_model_card`.
"""

from __future__ import annotations

import errno
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_plugin.defences import label_names
from asa_plugin.fileio import tomllib, write_text_atomic

CARD_FILE = "README.md"
BASE_MODEL_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
"""Backbone aliases (:data:`asa_plugin.adapters.loading.ALIASES`) -> the hub model their offline package ships."""
TAGS = ["advrobust", "adversarial-robustness"]
TASKS = {  # pipeline tag -> (task name, the class that loads the export, clean metric, what the run did)
    "text-classification": ("Text Classification", "AutoModelForSequenceClassification", "clean accuracy",
                            "fine-tune"),
    "fill-mask": ("Fill Mask", "AutoModelForMaskedLM", "masked-token accuracy", "masked-LM pre-training"),
}


@dataclass
class CardFacts:
    """Everything a card states; each value comes from a run's files or a trainer's state."""

    defence: str
    defence_params: dict[str, Any]
    backbone: str
    datasets: list[str] = field(default_factory=list)
    """Dataset names (a registry name such as ``sst2``); empty for local files."""
    data_description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    clean_accuracy: float | None = None
    eval_split: str | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """recipe -> its ``summary.json`` values (accuracy_under_attack, attack_success_rate, ...)."""
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    """recipe -> the paired comparison with the baseline (``advrobust bench``'s report cell)."""
    task: str = "text-classification"
    """A key of :data:`TASKS`: ``fill-mask`` for an ``advrobust pretrain`` export."""

    @property
    def base_model(self) -> str | None:
        if self.backbone in BASE_MODEL_IDS:
            return BASE_MODEL_IDS[self.backbone]
        return None if Path(self.backbone).exists() or self.backbone.startswith((".", "/")) else self.backbone


ATTACK_KEYS = ("accuracy_under_attack", "clean_accuracy", "attack_success_rate", "avg_words_perturbed_pct",
               "avg_queries", "num_examples", "profile", "split")


def _eval_results(facts: CardFacts):
    from huggingface_hub import EvalResult

    dataset = facts.datasets[0] if facts.datasets else "local"
    task_name, _, clean_metric, _ = TASKS[facts.task]
    common = dict(task_type=facts.task, task_name=task_name, dataset_type=dataset, dataset_name=dataset)
    out = []
    if facts.clean_accuracy is not None:
        out.append(EvalResult(**common, dataset_split=facts.eval_split, metric_type="accuracy",
                              metric_value=facts.clean_accuracy, metric_name=clean_metric))
    for recipe, summary in sorted(facts.attacks.items()):
        if summary.get("accuracy_under_attack") is not None:
            out.append(EvalResult(**common, dataset_split=summary.get("split"), metric_type="accuracy",
                                  metric_value=summary["accuracy_under_attack"], metric_config=recipe,
                                  metric_name=f"accuracy under {recipe}"))
    return out


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _body(facts: CardFacts) -> str:
    _, model_class, clean_metric, what = TASKS[facts.task]
    lines = [f"# {facts.defence} {what} of {facts.base_model or Path(facts.backbone).name}", "",
             f"Trained with the advrobust defence `{facts.defence}` "
             f"(parameters: `{json.dumps(facts.defence_params, sort_keys=True)}`) "
             f"on {facts.data_description or 'local data'}.",
             f"It is a plain `{model_class}` checkpoint: the defence's own modules (e.g. ASA's "
             "adversaries) are not part of it.", "", "## Training", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in facts.training.items()]
    lines += ["", "## Evaluation", "", f"{clean_metric[0].upper() + clean_metric[1:]} "
              f"({facts.eval_split or 'eval'} split): {_pct(facts.clean_accuracy)}", ""]
    if facts.attacks:
        lines += ["| recipe | accuracy under attack | attack success rate | examples "
                  "| vs baseline (difference, interval) |", "|---|---|---|---|---|"]
        for recipe, summary in sorted(facts.attacks.items()):
            comparison = facts.comparisons.get(recipe, {})
            diff = comparison.get("accuracy_under_attack") or {}
            versus = (f"{comparison['baseline']}: {100 * diff['delta']:+.1f} pts "
                      f"[{100 * diff['ci'][0]:+.1f}, {100 * diff['ci'][1]:+.1f}]"
                      if comparison.get("status") == "done" and "delta" in diff and diff.get("ci") else "n/a")
            lines.append(f"| {recipe} | {_pct(summary.get('accuracy_under_attack'))} | "
                         f"{_pct(summary.get('attack_success_rate'))} | {summary.get('num_examples')} | {versus} |")
    else:
        lines.append("Not attacked yet: `advrobust bench` adds the accuracy under each attack recipe.")
    return "\n".join(lines) + "\n"


def render(facts: CardFacts):
    """The :class:`huggingface_hub.ModelCard` of ``facts``."""
    from huggingface_hub import ModelCard, ModelCardData

    names = label_names(facts.defence)
    advrobust: dict[str, Any] = {"defence": facts.defence, "defence_params": facts.defence_params,
                                 "training": facts.training}
    if facts.attacks:
        advrobust["attacks"] = {r: {k: s.get(k) for k in ATTACK_KEYS if s.get(k) is not None}
                                for r, s in sorted(facts.attacks.items())}
    if facts.comparisons:
        advrobust["comparison_with_baseline"] = facts.comparisons
    results = _eval_results(facts)
    data = ModelCardData(
        base_model=facts.base_model, datasets=facts.datasets or None, library_name="transformers",
        pipeline_tag=facts.task, tags=[facts.task, *TAGS] + [f"defence-{n}" for n in names],
        metrics=["accuracy"], model_name=f"{facts.defence}-{Path(facts.backbone).name}" if results else None,
        eval_results=results or None, advrobust=_plain(advrobust))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(facts)}")


def _plain(value: Any) -> Any:
    """JSON-compatible values only (YAML metadata): tuples to lists, numpy scalars to floats."""
    return json.loads(json.dumps(value, default=float))


# --- writing next to a user's own text ------------------------------------------------------
CARD_START, CARD_END = "<!-- advrobust:card:start -->", "<!-- advrobust:card:end -->"
"""The generated section of a ``README.md`` lies between these markers; text outside them is the user's."""
OWNED_METADATA = ("advrobust", "model-index", "model_name")
"""Metadata keys the card always states (the run's own numbers); a user's other keys win over ours."""
BESIDE_FILE = "README.advrobust.md"
"""Where the card goes when a user's ``README.md`` has a metadata block that does not parse."""


def _split(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card's text; a ``ValueError`` when its YAML block is not a mapping."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    found = REGEX_YAML_BLOCK.search(text)
    if not found:
        return {}, text
    try:
        meta = yaml.safe_load(found.group(2)) or {}
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from error
    if not isinstance(meta, dict):
        raise ValueError("its metadata block is not a mapping")
    return meta, text[found.end():]


def _tags(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []


def _merged_metadata(user: dict[str, Any], ours: dict[str, Any], user_first: bool = True) -> dict[str, Any]:
    """The user's keys and ours, tags united. ``user_first``: the user's value wins where both have a key,
    except the keys the card owns (:data:`OWNED_METADATA`); otherwise ours wins wherever we have one."""
    merged = dict(user)
    for key, value in ours.items():
        if key == "tags" and "tags" in user:
            merged["tags"] = [*_tags(user["tags"]), *(t for t in _tags(value) if t not in _tags(user["tags"]))]
        elif not user_first or key in OWNED_METADATA or key not in user:
            merged[key] = value
    return merged


def _users_text(body: str) -> tuple[str, str, bool]:
    """(text before, text after) the generated section of ``body``, and whether it has one (else all of
    ``body`` is before)."""
    if CARD_START in body and CARD_END in body.split(CARD_START, 1)[1]:
        before, rest = body.split(CARD_START, 1)
        return before, rest.split(CARD_END, 1)[1], True
    return body, "", False


def merge_card(existing: str | None, generated: str) -> tuple[str, bool]:
    """The ``README.md`` text that states ``generated`` and keeps every word of ``existing``.

    Returns (text, whether ``existing`` held text or metadata of the user's own). The generated body
    goes between :data:`CARD_START` and :data:`CARD_END`: where these markers already are, only what
    lies between them is replaced and our metadata keys are updated; otherwise (a README the user wrote)
    the section is appended after the user's text and the user's metadata values win, except the card's
    own numbers (:data:`OWNED_METADATA`). Tags are united either way.
    """
    ours, body = _split(generated)
    user: dict[str, Any] = {}
    before, after, ours_before = "", "", False
    if existing is not None:
        user, existing_body = _split(existing)
        before, after, ours_before = _users_text(existing_body)
    kept = bool(before.strip() or after.strip() or set(user) - set(ours))
    meta = _merged_metadata(user, ours, user_first=not ours_before)
    section = f"{CARD_START}\n{body.strip()}\n{CARD_END}\n"
    lead = before.rstrip() + "\n\n" if before.strip() else "\n"
    tail = "\n" + after.lstrip("\n") if after.strip() else ""
    return f"---\n{_yaml(meta)}---\n{lead}{section}{tail}", kept


def write_card(model_dir: str | Path, facts: CardFacts, metadata: dict[str, Any] | None = None) -> Path:
    """Write the card of ``facts`` to ``model_dir/README.md`` and return its path.

    A ``README.md`` already there with text of the user's own keeps it (:func:`merge_card`), and one
    line on stderr says so; one whose metadata block cannot be parsed is left as it is and the card is
    written beside it (``README.advrobust.md``). ``metadata``: extra YAML keys (``license``, ``language``,
    ``tags``), e.g. from ``Trainer.push_to_hub``'s arguments.
    """
    path = Path(model_dir) / CARD_FILE
    if path.is_dir():  # the error a write would raise, answered by each command's one line (errors.write_failure)
        raise IsADirectoryError(errno.EISDIR, "a directory where the model card (a file) goes", str(path))
    generated = str(render(facts))
    if metadata:
        ours, body = _split(generated)
        extra = {k: v for k, v in metadata.items() if v is not None}
        generated = f"---\n{_yaml(_merged_metadata(ours, extra))}---\n{body}"
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    try:
        text, kept = merge_card(existing, generated)
    except ValueError as error:
        beside = path.with_name(BESIDE_FILE)
        write_text_atomic(beside, merge_card(None, generated)[0])
        _say(f"{path} is not changed (its metadata block does not parse: {str(error).splitlines()[0]}); "
             f"the model card is written beside it, to {beside.name}")
        return beside
    write_text_atomic(path, text)
    if kept:
        _say(f"{path} has text of its own: it is kept, and the model card is merged into it between "
             f"{CARD_START} and {CARD_END}")
    return path


def _yaml(meta: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def _say(note: str) -> None:
    print(f"advrobust: note: {note}", file=sys.stderr, flush=True)


# --- advrobust train / bench run directories --------------------------------------------------
def facts_from_run(run_dir: str | Path) -> CardFacts:
    """The facts of an ``advrobust train`` run: ``config.resolved.toml``, ``metrics.json`` and any
    ``attack/<recipe>/summary.json``."""
    run = Path(run_dir)
    cfg = tomllib.loads((run / "config.resolved.toml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    data, train = cfg.get("data", {}), cfg.get("train", {})
    dataset = data.get("dataset") if not data.get("train_file") else None
    described = dataset or ", ".join(Path(data[k]).name for k in ("train_file", "dev_file") if data.get(k))
    if data.get("max_train_examples"):
        described += f" ({data['max_train_examples']} training examples, subset seed {data.get('subset_seed', 0)})"
    pretrain = cfg.get("pretrain")  # an advrobust pretrain run: masked-LM on a corpus
    if pretrain:
        described = f"the corpus {Path(str(pretrain.get('corpus', ''))).name or 'given'}"
    params = {k: v for k, v in cfg.get("defence", {}).items() if k != "name"}
    training = {"steps": metrics.get("steps"), "epochs": metrics.get("epochs"),
                "train_examples": metrics.get("train_examples"), "batch_size": train.get("batch_size"),
                "gradient_accumulation_steps": train.get("gradient_accumulation_steps"), "lr": train.get("lr"),
                "seed": train.get("seed"), "mixed_precision": train.get("mixed_precision"),
                "max_length": cfg.get("model", {}).get("max_length"), "train_seconds": metrics.get("train_seconds")}
    if metrics.get("degenerate"):
        training["degenerate"] = metrics.get("degenerate_reason")
    attacks = {}
    for summary in sorted(run.glob("attack/*/summary.json")):
        values = json.loads(summary.read_text())
        attacks[values.get("recipe", summary.parent.name)] = values
    return CardFacts(defence=metrics.get("defence", "+".join(_names(cfg))), defence_params=params,
                     backbone=cfg.get("model", {}).get("backbone", metrics.get("backbone", "")),
                     datasets=[dataset] if dataset else [], data_description=described,
                     training={k: v for k, v in training.items() if v is not None},
                     clean_accuracy=metrics.get("eval_accuracy"), eval_split=data.get("eval_split"), attacks=attacks,
                     task="fill-mask" if pretrain else "text-classification")


def _names(cfg: dict) -> list[str]:
    name = cfg.get("defence", {}).get("name", "vanilla")
    return [name] if isinstance(name, str) else list(name)


def write_model_card(run_dir: str | Path, comparisons: dict[str, dict[str, Any]] | None = None) -> Path:
    """(Re)write the card of the model exported by run ``run_dir`` (``run_dir/model/README.md``) from
    the run's files, with ``comparisons`` (recipe -> paired comparison with the baseline) when given."""
    facts = facts_from_run(run_dir)
    facts.comparisons = comparisons or {}
    return write_card(Path(run_dir) / "model", facts)


def write_bench_cards(out_dir: str | Path, report: dict[str, Any]) -> list[Path]:
    """After a bench's report: every trained run's card with its attacks and its comparisons."""
    out = Path(out_dir)
    written = []
    for row in report.get("training", []):
        run_dir = out / "runs" / row["run"]
        if row.get("status") != "done" or not (run_dir / "model").is_dir():
            continue
        lost = [name for name in ("config.resolved.toml", "metrics.json") if not (run_dir / name).is_file()]
        if lost:  # the card is written from them: say so, keep the bench's report
            print(f"advrobust bench: warning: {run_dir} has no {' or '.join(lost)}, so its model card was not "
                  f"updated; restore the file (or retrain: move {run_dir} away and rerun the bench)",
                  file=sys.stderr, flush=True)
            continue
        comparisons = {c["recipe"]: c["comparison"] for c in report.get("cells", [])
                       if c["defence"] == row["defence"] and "comparison" in c}
        written.append(write_model_card(run_dir, comparisons))
    return written
