"""Backbone adapters over Hugging Face encoders (installed as ``asa_plugin.adapters``)."""
