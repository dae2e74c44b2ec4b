"""The attack jobs of a run config: one :class:`~asa_plugin.attacks.runner.AttackJob` per recipe.

Library code below both ``advrobust attack`` and the bench's attack cells (local processes or Ray
workers), so a cell never imports a CLI command.
"""

from __future__ import annotations

from pathlib import Path

from asa_plugin.errors import stderr_note


def resolve_model(path: str) -> tuple[str, Path | None]:
    """(model checkpoint to load, the run dir it belongs to or None)."""
    p = Path(path)
    if (p / "model" / "config.json").is_file():
        return str(p / "model"), p
    if (p / "config.json").is_file() and (p.parent / "config.resolved.toml").is_file():
        return str(p), p.parent
    return path, None


def data_source(data, split: str) -> str:
    """How the attacked data is named (results' ``data``, messages): ``FILE:SPLIT`` for the file the split is
    read from (a file named in [data] wins over the dataset, as the loader reads it), else ``DATASET:SPLIT``."""
    explicit = {"train": data.train_file, "dev": data.dev_file, "test": data.test_file}.get(split)
    return f"{explicit or data.dataset or data.train_file}:{split}"


def recipe_jobs(cfg, checkpoint: str, out: Path, recipes: list[str], shard=None, resume: bool = False,
                overwrite: bool = False, progress: bool = True, note=stderr_note):
    """One AttackJob per recipe on ``cfg``'s attack split, writing ``out/attack/<recipe>/``
    (``advrobust attack`` and the bench's attack cells both call it, so they write the same manifests).

    Texts longer than the model's max_length are cut to the words it sees
    (:mod:`asa_plugin.attacks.visible`), said once through ``note``."""
    from asa_plugin.adapters.loading import resolve_backbone
    from asa_plugin.attacks.runner import AttackJob
    from asa_plugin.attacks.visible import visible_texts
    from transformers import AutoTokenizer

    from asa_plugin.checks import check_max_length
    from asa_plugin.data import load_split
    from asa_plugin.data.labels import checkpoint_labels, class_mismatch
    from asa_plugin.data.loading import check_same_inputs

    if cfg.attack.max_length:
        check_max_length(checkpoint, cfg.attack.max_length, f"{cfg.source}: attack.max_length",
                         "use --set attack.max_length={limit} or less")
    else:
        check_max_length(checkpoint, cfg.model.max_length, f"{cfg.source}: model.max_length",
                         "use --set attack.max_length={limit} (the attack's own, over model.max_length)")
    data = cfg.data
    labels = checkpoint_labels(checkpoint)
    examples = load_split(data, cfg.attack.split, labels, limit=cfg.attack.examples_for_profile(),
                          seed=cfg.attack.seed)
    source = data_source(data, cfg.attack.split)
    check_same_inputs(examples, source, resolve_model(checkpoint)[1], "attack")
    mismatch = class_mismatch(labels, [e.label for e in examples], source)
    if mismatch:
        note(mismatch.removeprefix("warning: "))
    max_length = cfg.attack.max_length or cfg.model.max_length
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    texts, pairs, cut = visible_texts(AutoTokenizer.from_pretrained(resolve_backbone(checkpoint)),
                                      [e.text for e in examples], pairs, max_length)
    if cut:
        note(f"{cut} of {len(examples)} examples are longer than max_length = {max_length} tokens; each is "
             f"attacked (and its words counted) up to the last word the model sees")
    return [AttackJob(recipe=name, cfg=cfg.attack, model_path=checkpoint, texts=texts,
                      labels=[e.label for e in examples], recipe_dir=out / "attack" / name, text_pairs=pairs,
                      data=source, max_length=cfg.model.max_length, shard=shard,
                      resume=resume, overwrite=overwrite, progress=progress,
                      load_external=cfg.plugins.external, block=tuple(cfg.plugins.block))
            for name in recipes]
