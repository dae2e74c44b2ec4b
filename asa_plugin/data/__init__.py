"""Datasets: built-in names, local files and a data root (``ADVROBUST_DATA_DIR``)."""

from asa_plugin.data.labels import LabelMap
from asa_plugin.data.loading import Example, load_split, load_training_data

__all__ = ["Example", "LabelMap", "load_split", "load_training_data"]
