"""Deprecated import path of :mod:`asa_plugin.degenerate` (the judgement serves training, attacks and reports, so
it sits with the utilities below them all: docs/architecture.md). This name is that very module."""

import sys

from asa_plugin import degenerate

sys.modules[__name__] = degenerate
