"""TextFooler's stopword list, read from TextAttack's own recipe (not duplicated here).

TextAttack defines the list inline in ``TextFoolerJin2019.build``, whose other components need
assets, so the list is read from the recipe's source with :mod:`ast` (a literal, no code runs).
"""

from __future__ import annotations

import ast
import inspect
from functools import lru_cache


@lru_cache(maxsize=1)
def textfooler_stopwords() -> frozenset[str]:
    from textattack.attack_recipes import textfooler_jin_2019

    tree = ast.parse(inspect.getsource(textfooler_jin_2019))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "stopwords" for t in node.targets)
                and isinstance(node.value, ast.Call) and node.value.args):
            return frozenset(ast.literal_eval(node.value.args[0]))
    raise RuntimeError("TextFooler's stopword list not found in textattack's textfooler_jin_2019 recipe")
