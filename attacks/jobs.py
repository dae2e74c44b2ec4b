"""The attack jobs of a run config: one :class:`~asa_plugin.attacks.runner.AttackJob` per recipe.

Library code below both ``advrobust attack`` and the bench's attack cells (local processes or Ray
workers), so a cell never imports a CLI command.
"""

from __future__ import annotations

from pathlib import Path


def recipe_jobs(cfg, checkpoint: str, out: Path, recipes: list[str], shard=None, resume: bool = False,
                overwrite: bool = False, progress: bool = True):
    """One AttackJob per recipe on ``cfg``'s attack split, writing ``out/attack/<recipe>/``
    (``advrobust attack`` and the bench's attack cells both call it, so they write the same manifests)."""
    from asa_plugin.attacks.runner import AttackJob
    from asa_plugin.data import load_split
    from asa_plugin.data.labels import checkpoint_labels

    data = cfg.data
    examples = load_split(data, cfg.attack.split, checkpoint_labels(checkpoint),
                          limit=cfg.attack.examples_for_profile(), seed=cfg.attack.seed)
    source = data.dev_file if data.dataset is None and data.dev_file else (data.dataset or data.train_file)
    return [AttackJob(recipe=name, cfg=cfg.attack, model_path=checkpoint, texts=[e.text for e in examples],
                      labels=[e.label for e in examples], recipe_dir=out / "attack" / name,
                      text_pairs=[e.text_pair for e in examples] if examples[0].text_pair is not None else None,
                      data=f"{source}:{cfg.attack.split}", max_length=cfg.model.max_length, shard=shard,
                      resume=resume, overwrite=overwrite, progress=progress,
                      load_external=cfg.plugins.external, block=tuple(cfg.plugins.block))
            for name in recipes]
