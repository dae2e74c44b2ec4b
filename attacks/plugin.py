"""Built-in attack recipes, registered through the ``advrobust`` hooks."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_recipes(register):
    """The harness issue registers the TextAttack recipes here."""
