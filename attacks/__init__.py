"""TextAttack-driven robustness harness (installed as ``asa_plugin.attacks``)."""
