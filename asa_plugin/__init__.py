"""asa-plugin: Adversarial Self-Attention and adversarial-training defences for text classifiers."""

PROJECT_NAME = "advrobust"
"""Pluggy project name, hook prefix and entry-point group, all in one constant."""

__version__ = "0.1.0"
