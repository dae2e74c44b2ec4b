"""Label ids and names: integer labels, string labels, and the names a checkpoint carries.

The classes and their names come from the training split:

- ``data.label_names`` set: those names, in that order;
- otherwise, when every training label is an integer: ids ``0..num_labels-1``, as they always were
  (named by a built-in dataset's own names when it has them);
- otherwise (some training label is not an integer) the sorted set of training labels.

A label is then encoded as the position of its text among the names (so star ratings ``1..5``
with ``label_names = ["1", ..., "5"]`` become ids ``0..4``), else, when it is an integer, as
that id.

Dev/test labels are encoded with the training map: a name training never saw is one error line.
The map travels with the exported checkpoint as ``id2label``/``label2id``, so
``transformers.pipeline`` prints names, and ``advrobust attack``/``evaluate`` decode names with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from asa_plugin.errors import DataError

DEFAULT_NAME = re.compile(r"^LABEL_\d+$")
"""transformers' placeholder names (``LABEL_0``...) mean "no names"."""


def as_int(raw) -> int | None:
    """``raw`` as an integer label, or None when it is not one (``'pos'``, ``1.5``, NaN, None)."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, float):
        return int(raw) if math.isfinite(raw) and raw == int(raw) else None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class LabelMap:
    """``num_labels`` classes; ``names[i]`` is class i's name (None: integer labels, unnamed)."""

    num_labels: int
    names: tuple[str, ...] | None = None

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_training_labels(cls, labels: Sequence, where: str, label_names: Sequence[str] | None = None,
                             num_labels: int | None = None, known_names: Sequence[str] | None = None) -> LabelMap:
        """The map implied by the training split's raw labels (see the module docstring).

        ``num_labels`` is ``model.num_labels`` when set (checked against the data); ``known_names``
        are a built-in dataset's names for its integer labels.
        """
        for i, raw in enumerate(labels):
            if raw is None or str(raw).strip() in ("", "nan"):
                raise DataError(f"{where}: row {i + 1}: empty label")
        if label_names:
            names = tuple(str(n) for n in label_names)
            if len(set(names)) != len(names):
                raise DataError(f"data.label_names lists a name twice: {', '.join(names)}")
            found = cls(len(names), names)
        elif all(as_int(raw) is not None for raw in labels):
            ids = [as_int(raw) for raw in labels]
            n = num_labels or max(len(known_names or ()), max(ids, default=0) + 1, 2)
            named = tuple(known_names) if known_names and len(known_names) == n else None
            found = cls(n, named)
        else:
            names = tuple(sorted({str(r) for r in labels}))
            found = cls(len(names), names)
        if num_labels is not None and found.names and num_labels != found.num_labels:
            raise DataError(f"{where}: the data has {found.num_labels} labels ({', '.join(found.names)}) but "
                            f"model.num_labels = {num_labels}; remove model.num_labels or fix it")
        if found.num_labels < 2:
            raise DataError(f"{where}: only one label ({found.names[0] if found.names else labels[0]!r}); "
                            f"a classifier needs at least two")
        return found

    @classmethod
    def from_model_config(cls, config) -> LabelMap:
        """The map stored in a checkpoint's config (names unless they are ``LABEL_i`` placeholders)."""
        n = int(config.num_labels)
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        names = tuple(id2label.get(i, f"LABEL_{i}") for i in range(n))
        if all(DEFAULT_NAME.match(name) for name in names):
            return cls(n)
        return cls(n, names)

    # --- use ------------------------------------------------------------------------------
    def encode(self, raw, where: str, row: int) -> int:
        """The id of raw label ``raw`` (row ``row``, 1-based, of ``where``); one line if invalid."""
        value = as_int(raw)
        name = str(value) if value is not None else str(raw)
        if self.names and name in self.names:
            return self.names.index(name)
        if value is None and self.names:
            raise DataError(f"{where}: row {row}: label {raw!r} was not seen in training (labels: "
                            f"{', '.join(self.names)}); fix the file or list every label in data.label_names")
        if value is None:
            raise DataError(f"{where}: row {row}: label {raw!r} is not an integer; name the labels in "
                            f"data.label_names, or use integer labels")
        if not 0 <= value < self.num_labels:
            raise DataError(f"{where}: row {row}: label {value} outside 0..{self.num_labels - 1}; "
                            f"check model.num_labels or data.label_names")
        return value

    def id2label(self) -> dict[int, str]:
        return {i: self.name(i) for i in range(self.num_labels)}

    def name(self, i: int) -> str:
        return self.names[i] if self.names else f"LABEL_{i}"

    def apply_to(self, config) -> None:
        """Store the names in a model config (exported with the checkpoint); unnamed maps keep LABEL_i."""
        config.id2label = self.id2label()
        config.label2id = {name: i for i, name in self.id2label().items()}

    def describe(self) -> list[str] | int:
        """For metrics.json: the names, or the number of unnamed classes."""
        return list(self.names) if self.names else self.num_labels



def checkpoint_labels(path: str) -> LabelMap:
    """The label map of a saved classifier (a local checkpoint dir, an alias or a hub name)."""
    from transformers import AutoConfig

    from asa_plugin.adapters.loading import resolve_backbone
    from asa_plugin.errors import UserError

    try:
        return LabelMap.from_model_config(AutoConfig.from_pretrained(resolve_backbone(path)))
    except OSError as exc:
        raise UserError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None
