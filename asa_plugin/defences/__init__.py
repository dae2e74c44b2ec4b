"""Built-in defences. Each subclasses :class:`asa_plugin.defences.base.Defence`."""
