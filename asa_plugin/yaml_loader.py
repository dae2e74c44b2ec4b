"""YAML configs read like TOML ones: duplicate keys are errors, ``2e-5`` is a float, and a parse
error names its line and column."""

from __future__ import annotations

import re
from typing import Any

import yaml


class DuplicateKeyError(ValueError):
    """A mapping repeats a key (YAML would silently keep the last one)."""


YAML_ERRORS = (yaml.YAMLError, DuplicateKeyError)

# YAML 1.1 floats need a dot ("2.0e-5"); YAML 1.2 and TOML also read "2e-5" and "1e3" as floats.
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads exponent floats without a dot."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"line {line}: duplicate key {key!r} (first at line {seen[key]}); "
                                        f"keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))


def load_yaml(text: str, name: str = "<yaml>") -> Any:
    """Parse ``text``; errors are :data:`YAML_ERRORS` whose ``str`` is one line with line:column."""
    try:
        return yaml.load(text, Loader=_Loader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise yaml.YAMLError(f"{where}{exc.problem or exc.context}") from None
