"""``advrobust bench``: train every listed defence, attack each with every listed recipe, report.

Modules: :mod:`.plan` (the ``[bench]`` section and each cell's run config), :mod:`.grid`
(training and attack cells, resumable), :mod:`.report` (report.json / report.md from stored
results) and :mod:`.plots` (the PNG figures).
"""
