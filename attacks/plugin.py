"""Built-in attack recipes, registered through the ``advrobust`` hooks."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_recipes(register):
    """Register our offline-capable recipes and TextAttack's other stock recipes by name."""
    from asa_plugin.attacks.recipes import BUILTIN, STOCK_TEXTATTACK, stock_recipe

    for recipe in BUILTIN:
        register(recipe.name, recipe)
    for name, class_name in STOCK_TEXTATTACK.items():
        register(name, stock_recipe(name, class_name))
