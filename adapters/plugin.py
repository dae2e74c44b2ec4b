"""Registers the built-in backbone adapters through the ``advrobust`` hooks: one per table row."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_adapters(register):
    from asa_plugin.adapters.encoder import adapter_for
    from asa_plugin.adapters.table import ARCHITECTURES

    for model_type, architecture in ARCHITECTURES.items():
        register(model_type, adapter_for(architecture))
