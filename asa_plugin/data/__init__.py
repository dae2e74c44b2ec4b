"""Datasets: built-in names, local files and a data root (``ADVROBUST_DATA_DIR``)."""

from asa_plugin.data.loading import Example, load_split

__all__ = ["Example", "load_split"]
