"""Registers the built-in defences through the ``advrobust`` hooks, like any third-party plugin."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_defences(register):
    from asa_plugin.defences.asa import ASADefence
    from asa_plugin.defences.vanilla import VanillaDefence

    register("vanilla", VanillaDefence)
    register("asa", ASADefence)
