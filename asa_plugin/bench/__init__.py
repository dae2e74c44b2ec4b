"""``advrobust bench``: train every listed defence, attack each with every listed recipe, report.

Modules: :mod:`.plan` (the ``[bench]`` section and each training run's config), :mod:`.checks` (the pre-flight),
:mod:`.grid` (records the grid and runs its cells), :mod:`.cells` (the graph of cells), :mod:`.runs` (one
training run), :mod:`.executors` (where cells run), :mod:`.report` (report.json / report.md from stored
results) and :mod:`.plots` (the PNG figures).
"""
