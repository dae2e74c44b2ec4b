"""Registers the built-in backbone adapters through the ``advrobust`` hooks."""

from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_adapters(register):
    from asa_plugin.adapters.bert import BertAdapter

    for model_type in BertAdapter.model_types:
        register(model_type, BertAdapter)
