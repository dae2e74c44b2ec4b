"""Built-in defences (each subclasses :class:`asa_plugin.defences.base.Defence`).

:func:`label_names` reads a composed label without importing torch.
"""

import re

_NAME_SUFFIX = re.compile(r"\+\+(?=\s*(?:\+|$))")
"""A ``++`` that ends a defence name (``freelb++``): followed by the next ``+`` or the end."""
_KEEP = "\0"


def label_names(label: str) -> list[str]:
    """The defence names of a composed label, split at ``+``: ``"asa+freelb"`` -> ``["asa", "freelb"]``,
    ``"asa+freelb++"`` -> ``["asa", "freelb++"]`` (a name may end in ``++``)."""
    kept = _NAME_SUFFIX.sub(_KEEP, label)
    return [part.replace(_KEEP, "++").strip() for part in kept.split("+")]
