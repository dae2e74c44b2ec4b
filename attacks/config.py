"""The ``[attack]`` config section: defined in :mod:`asa_plugin.config` beside the other sections (the run config
sits below the attacks in the layers, docs/architecture.md); this module keeps the old import path."""

from asa_plugin.config import PROFILE_NUM_EXAMPLES, AttackConfig

__all__ = ["PROFILE_NUM_EXAMPLES", "AttackConfig"]
