"""Adversarial Self-Attention (ASA): config, maths, adversaries and the ``asa`` defence."""

from asa_plugin.defences.asa.config import ASAParams
from asa_plugin.defences.asa.defence import ASADefence

__all__ = ["ASADefence", "ASAParams"]
