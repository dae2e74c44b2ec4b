"""The atomic writers: the target holds the old content or the whole new content, never a torn file."""

import json
from pathlib import Path

import pytest

from asa_plugin.fileio import write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"accuracy": 0.5, "name": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"accuracy": 0.5, "name": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_jsonl_writes_one_row_per_line(tmp_path):
    target = tmp_path / "results.jsonl"
    write_jsonl_atomic(target, [{"i": 0}, {"i": 1}])
    assert [json.loads(line) for line in target.read_text().splitlines()] == [{"i": 0}, {"i": 1}]


def test_a_failed_write_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", disk_full)
    with pytest.raises(OSError, match="report.json"):
        write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert not (tmp_path / "report.json.tmp").exists()


def _torn_writes(monkeypatch):
    """Every ``Path.write_text`` writes half of its text, then fails as on a full disk (a torn file)."""
    real = Path.write_text

    def torn(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", torn)


def _dump_config(path):
    from asa_plugin.config import dump_toml, load_config

    dump_toml(load_config(), path)


def _write_html(path):
    from asa_plugin.bench import html

    html.write_html(path.parent, {})


def _write_failures(path):
    from asa_plugin.bench.executors import _write_failures

    _write_failures(path.parent, {"train vanilla": "error: something"})


# Files that mark work done, each written by the code that writes it in a run: a write that fails half-way
# leaves the old file whole (before issue 33 config.resolved.toml and report.html were torn).
DONE_MARKERS = [
    ("config.resolved.toml", _dump_config),
    ("report.html", _write_html),
    ("failures.json", _write_failures),
]


@pytest.mark.parametrize("name,write", DONE_MARKERS, ids=[name for name, _ in DONE_MARKERS])
def test_a_write_that_fails_half_way_keeps_the_old_file_whole(tmp_path, monkeypatch, name, write):
    from asa_plugin.bench import html

    monkeypatch.setattr(html, "page_data", lambda out, report: {})
    monkeypatch.setattr(html, "render", lambda data: "<html>" + "x" * 100 + "</html>\n")
    target = tmp_path / name
    target.write_text("the old, complete file\n", encoding="utf-8")
    _torn_writes(monkeypatch)
    with pytest.raises(OSError, match=name):
        write(target)
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "the old, complete file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
