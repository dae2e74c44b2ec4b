"""Deprecated import path of :mod:`asa_plugin.static_sets` (accuracy on a static set; "evaluation" was one of three
modules named after evaluating: docs/architecture.md). This name is that very module."""

import sys

from asa_plugin import static_sets

sys.modules[__name__] = static_sets
