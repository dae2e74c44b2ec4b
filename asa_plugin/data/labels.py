"""Label ids and names: integer labels, string labels, and the names a checkpoint carries.

The classes and their names come from the training split:

- ``data.label_names`` set: those names, in that order;
- otherwise, when every training label is an integer: ids ``0..num_labels-1``, as they always were
  (named by a built-in dataset's own names when it has them);
- otherwise (some training label is not an integer) the sorted set of training labels.

Inference refuses what it would otherwise turn into a class of its own, naming the file, row and value:
an integer label above a class no row has (``9`` among ``0``/``1``), a label that is not an integer
among integers (``1.5``, ``NaN``, ``1x``), integers that do not start at 0, and a name on a single row
while every other name has :data:`MIN_CLASS_ROWS` rows or more (a typo). ``data.label_names`` or
``model.num_labels`` states the classes instead. Whatever the settings, the training labels must hold two
classes or more, and every name listed in ``data.label_names``.

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
from collections import Counter
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
    from_model: bool = False
    """Read from a trained model's config (attack, evaluate): its classes are fixed, so a label the
    data has and the model lacks is fixed in the data or by another model, not in data.label_names."""

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
            if any(not n.strip() for n in names):
                position = next(i for i, n in enumerate(names, start=1) if not n.strip())
                raise DataError(f"data.label_names: name {position} of {len(names)} is empty ({list(names)}); a "
                                f"class needs a name a row can have: fix or remove it")
            if len(set(names)) != len(names):
                raise DataError(f"data.label_names lists a name twice: {', '.join(names)}")
            found = cls(len(names), names)
        elif all(as_int(raw) is not None for raw in labels):
            ids = [as_int(raw) for raw in labels]
            if num_labels is None and not known_names:
                _check_no_gap(ids, where)
            n = num_labels or max(len(known_names or ()), max(ids, default=0) + 1, 2)
            named = tuple(known_names) if known_names and len(known_names) == n else None
            found = cls(n, named)
        else:
            _check_not_mixed(labels, where)
            _check_no_stray_name(labels, where)
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
            return cls(n, from_model=True)
        return cls(n, names, from_model=True)

    # --- use ------------------------------------------------------------------------------
    def encode(self, raw, where: str, row: int) -> int:
        """The id of raw label ``raw`` (row ``row``, 1-based, of ``where``); one line if invalid."""
        value = as_int(raw)
        name = str(value) if value is not None else str(raw)
        if self.names and name in self.names:
            return self.names.index(name)
        model = "the model's classes are fixed: fix the file, or use a model trained with these labels"
        if value is None and self.names:
            fix = model if self.from_model else "fix the file or list every label in data.label_names"
            raise DataError(f"{where}: row {row}: label {raw!r} was not seen in training (labels: "
                            f"{', '.join(self.names)}); {fix}")
        if value is None:
            fix = (f"the model's {self.num_labels} classes have no names, so give their ids 0.."
                   f"{self.num_labels - 1}" if self.from_model else
                   "name the labels in data.label_names, or use integer labels")
            raise DataError(f"{where}: row {row}: label {raw!r} is not an integer; {fix}")
        if not 0 <= value < self.num_labels:
            fix = model if self.from_model else "check model.num_labels or data.label_names"
            raise DataError(f"{where}: row {row}: label {value} outside 0..{self.num_labels - 1}; {fix}")
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


MIN_CLASS_ROWS = 10
"""Without ``data.label_names``, a label on one row while every other label is on at least this many
rows is taken for a typo (a stray class would train a model that can never predict it)."""
FIX = "fix that row, or name every label in data.label_names (or set model.num_labels) to keep it"


def _check_no_gap(ids: list[int], where: str) -> None:
    """Inferred integer classes are ``0..max``: a label above a class no row has is a stray value."""
    seen = set(ids)
    if len(seen) < 2:  # one class: check_training_classes says so
        return
    missing = next(i for i in range(max(ids) + 2) if i not in seen)
    if missing == 0:
        raise DataError(f"{where}: no row has label 0 (the labels are {_few(sorted(seen))}): integer labels are "
                        f"class ids 0..N-1; name them in data.label_names (e.g. label_names = "
                        f"{[str(v) for v in sorted(seen)][:6]}) or set model.num_labels")
    stray = next((row for row, value in enumerate(ids, start=1) if value > missing), None)
    if stray is not None:
        above = sorted(v for v in seen if v < missing)
        raise DataError(f"{where}: row {stray}: label {ids[stray - 1]}, but no row has label {missing} (the "
                        f"others are {_few(above)}): inferred classes would include empty ones; {FIX}")


def _check_not_mixed(labels: Sequence, where: str) -> None:
    """Integer labels with one that is not (``1.5``, ``NaN``, a typo) are refused, naming that row."""
    integers = sorted({as_int(raw) for raw in labels} - {None})
    if not integers:
        return
    row = next(i for i, raw in enumerate(labels, start=1) if as_int(raw) is None)
    raise DataError(f"{where}: row {row}: label {labels[row - 1]!r} is not an integer like the others "
                    f"({_few(integers)}); {FIX}")


def _check_no_stray_name(labels: Sequence, where: str) -> None:
    """A name on a single row, when every other name has :data:`MIN_CLASS_ROWS` rows, is a typo."""
    counts = Counter(str(raw) for raw in labels)
    single = [name for name, count in counts.items() if count == 1]
    rest = [count for name, count in counts.items() if name not in single]
    if len(single) == 1 and len(rest) >= 2 and min(rest) >= MIN_CLASS_ROWS:
        row = next(i for i, raw in enumerate(labels, start=1) if str(raw) == single[0])
        others = sorted(n for n in counts if n != single[0])
        raise DataError(f"{where}: row {row}: label {single[0]!r} is on this row only, while each other label "
                        f"({_few(others)}) has {MIN_CLASS_ROWS} or more: a typo? {FIX}")


def _few(values: Sequence) -> str:
    shown = ", ".join(map(str, values[:6]))
    return shown + (f" and {len(values) - 6} more" if len(values) > 6 else "")


def check_training_classes(ids: Sequence[int], labels: LabelMap, where: str, label_names: Sequence | None,
                           num_labels: int | None = None) -> None:
    """The encoded training labels hold two classes or more, every name of ``data.label_names``, and every
    class of ``model.num_labels`` (a class no row has is one the model never learns)."""
    seen = set(ids)
    if len(seen) < 2:
        only = next(iter(seen))
        raise DataError(f"{where}: every row has label {labels.names[only] if labels.names else only}: a "
                        f"classifier needs examples of at least two classes; check data.label_column and the file")
    unseen = [labels.name(i) for i in range(labels.num_labels) if i not in seen]
    if label_names and unseen:
        raise DataError(f"{where}: data.label_names lists {_few(unseen)}, which no training row has; remove "
                        f"{'it' if len(unseen) == 1 else 'them'} from data.label_names, or add such examples")
    if num_labels is not None and unseen:
        raise DataError(f"{where}: model.num_labels = {num_labels}, but no training row has label "
                        f"{_few(unseen)} (the labels are {_few(sorted(seen))}): the model could never predict "
                        f"{'it' if len(unseen) == 1 else 'them'}; set model.num_labels = {len(seen)} (or remove it), "
                        f"or add such examples")


def checkpoint_labels(path: str) -> LabelMap:
    """The label map of a saved classifier (a local checkpoint dir, an alias or a hub name)."""
    from transformers import AutoConfig

    from asa_plugin.adapters.loading import resolve_backbone
    from asa_plugin.errors import UserError

    try:
        return LabelMap.from_model_config(AutoConfig.from_pretrained(resolve_backbone(path)))
    except OSError as exc:
        raise UserError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None


def class_mismatch(labels: LabelMap, gold: Sequence[int], where: str) -> str | None:
    """A warning when data evaluated on a model of N > 2 classes uses half of them or fewer (a 10-class
    model on a 2-class set: another task's model, or another task's data); None otherwise."""
    used = sorted(set(gold))
    if labels.num_labels <= 2 or len(gold) < labels.num_labels or len(used) > labels.num_labels // 2:
        return None
    shown = _few([labels.name(i) for i in used])
    return (f"warning: the model has {labels.num_labels} classes, but the labels of {where} use only {len(used)} "
            f"of them ({shown}): a model of another task? its accuracy on this data means little")
