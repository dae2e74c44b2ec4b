"""The ``[attack]`` config section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asa_plugin.schema import option


@dataclass
class AttackConfig:
    recipes: list[str] = option(["textfooler"], help="attack recipes to run, by registered name")
    profile: Literal["stock", "textdefender"] = option("stock", help="recipe constraints: as shipped, or TextDefender's")
    split: str = option("dev", help="which data split to attack")
    num_examples: int = option(100, ge=1, help="examples to attack (the first N of the split, after shuffling by seed)")
    seed: int = option(765, help="seed for example selection and the attacks")
