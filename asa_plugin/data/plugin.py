"""Registers the built-in datasets through the ``advrobust`` hooks."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_datasets(register):
    from asa_plugin.data.builtin import HUB, make_loader

    for name in HUB:
        register(name, make_loader(name))
