"""BERT-architecture adapter: kept as a name; the table-driven :class:`EncoderAdapter` does the work."""

from asa_plugin.adapters.encoder import adapter_for
from asa_plugin.adapters.table import ARCHITECTURES

BertAdapter = adapter_for(ARCHITECTURES["bert"])
