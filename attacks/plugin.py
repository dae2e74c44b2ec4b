"""Built-in attack recipes, and the defence that runs them inside training (``a2t``), registered through the
``advrobust`` hooks."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_recipes(register):
    """Register our offline-capable recipes and TextAttack's other stock recipes by name."""
    from asa_plugin.attacks.recipes import BUILTIN, STOCK_TEXTATTACK, stock_recipe

    for recipe in BUILTIN:
        register(recipe.name, recipe)
    for name, class_name in STOCK_TEXTATTACK.items():
        register(name, stock_recipe(name, class_name))


@hookimpl
def advrobust_register_defences(register):
    """``a2t`` trains on the harness's own attacks, so it lives above the harness (docs/architecture.md)."""
    from asa_plugin.attacks.a2t import A2TDefence

    register("a2t", A2TDefence)
