"""The atomic writers: the target holds the old content or the whole new content, never a torn file."""

import json

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
