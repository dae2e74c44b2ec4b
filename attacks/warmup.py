"""Recipe warm-up: build each recipe once against a stand-in model, so its assets are resolved (and cached)
before a bench trains anything."""

from __future__ import annotations

import logging
from pathlib import Path

from asa_plugin.checks import check_cache_dir
from asa_plugin.errors import UserError


def build_recipes(recipes: list[str], attack_cfg, attack_dir: Path, pm) -> None:
    """Build each recipe once against a stand-in model, so its assets are resolved (and cached) now."""
    from asa_plugin.attacks.recipes import build_attack
    from asa_plugin.attacks.runner import AttackJob
    from asa_plugin.attacks.session import resolve_cache_dir
    from asa_plugin.attacks.textattack_env import import_textattack

    job = AttackJob(recipe=recipes[0], cfg=attack_cfg, model_path="", texts=[], labels=[],
                    recipe_dir=attack_dir / recipes[0], data="")
    cache_dir = resolve_cache_dir(job)
    check_cache_dir(cache_dir)
    textattack = import_textattack(cache_dir, allow_download=attack_cfg.download)
    quiet = textattack.shared.logger  # its model/goal-function compatibility warning is about the stand-in
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name in recipes:
            try:
                build_attack(pm.recipes.get(name), _StandIn(), attack_cfg, cache_dir)
            except UserError as exc:
                raise UserError(f"recipe '{name}' cannot run: {exc}") from None
    finally:
        quiet.setLevel(level)


class _StandIn:
    """The least a TextAttack model wrapper must offer while an attack is built (never queried)."""

    def __init__(self):
        import torch

        self.model = torch.nn.Linear(1, 2)
        self.tokenizer = None

    def __call__(self, texts):  # pragma: no cover - a built attack is never run here
        raise RuntimeError("the stand-in model is only used to build attacks")
