"""Combine the shards of a recipe run into the results and summary of one unsharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asa_plugin.attacks import results as res

from asa_plugin.errors import UserError
from asa_plugin.locks import run_lock


def merge_recipe(recipe_dir: Path) -> dict[str, Any]:
    """Merge ``recipe_dir/shards/*-of-N`` into ``recipe_dir``; every shard must be complete, and
    ``recipe_dir`` must not hold an unsharded run's results (they would be replaced)."""
    with run_lock(recipe_dir, f"advrobust merge {recipe_dir}"):
        _refuse_unsharded_results(recipe_dir)
        return _merge_recipe(recipe_dir)


def _refuse_unsharded_results(recipe_dir: Path) -> None:
    """Rows in ``recipe_dir`` itself that an earlier merge did not write come from an unsharded run."""
    if not (recipe_dir / "results.jsonl").is_file():
        return
    summary = res.read_json(recipe_dir / "summary.json", "summary") if (recipe_dir / "summary.json").is_file() else {}
    if "shards" in (summary.get("execution") or {}):
        return  # written by a merge: merging again rewrites the same rows
    state = "finished" if summary else "started"
    raise UserError(f"{recipe_dir} holds the results of a {state} unsharded run; merging its shards would replace "
                    f"them: move its results.jsonl, run.json and summary.json (or the shards/) elsewhere first")


def _merge_recipe(recipe_dir: Path) -> dict[str, Any]:
    shard_dirs = sorted((recipe_dir / "shards").glob("*-of-*"))
    if not shard_dirs:
        raise UserError(f"{recipe_dir}: no shards to merge (expected shards/<i>-of-<n>/ from --shard i/n)")
    counts = {d.name.split("-of-")[1] for d in shard_dirs}
    if len(counts) != 1:
        raise UserError(f"{recipe_dir}/shards mixes shard counts ({', '.join(sorted(counts))}); remove the "
                        f"stale ones")
    n = int(counts.pop())
    manifests, rows, assets, executions = [], [], None, []
    for i in range(n):
        d = recipe_dir / "shards" / f"{i}-of-{n}"
        if not (d / "summary.json").is_file():
            raise UserError(f"{d}: shard {i}/{n} has not finished; run it (with --resume if it started) "
                            f"and merge again")
        manifest = res.read_json(d / "run.json", "shard manifest")
        manifest.pop("shard")
        manifests.append(manifest)
        rows += res.read_rows(d / "results.jsonl", dedupe=False)  # a repeated row is refused below
        shard_summary = res.read_json(d / "summary.json", "shard summary")
        shard_assets = shard_summary.get("assets", [])
        executions.append(shard_summary.get("execution"))
        assets = shard_assets if assets is None else assets
        if res.without_timing(shard_assets) != res.without_timing(assets):
            raise UserError(f"{d}: shard {i}/{n} used different assets than shard 0; rerun it with the same "
                            f"assets")
    for i, m in enumerate(manifests):
        changed = sorted(k for k in {*m, *manifests[0]} if m.get(k) != manifests[0].get(k))
        if changed:
            shown = ", ".join(f"{k} {manifests[0].get(k)!r} vs {m.get(k)!r}" for k in changed[:3])
            raise UserError(f"{recipe_dir}: shard {i}/{n} was run with other settings than shard 0 ({shown}"
                            f"{', ...' if len(changed) > 3 else ''}); rerun it with shard 0's settings (or all "
                            f"shards alike) and merge again")
    manifest = manifests[0] | {"shard": None}
    expected = manifest["selection_size"]
    indices = sorted(r["index"] for r in rows)
    if indices != list(range(expected)):
        raise UserError(f"{recipe_dir}: shards hold {len(indices)} rows for {expected} examples; a shard is "
                        f"incomplete or duplicated")
    rows.sort(key=lambda r: r["index"])
    res.write_rows(recipe_dir / "results.jsonl", rows)
    res.write_json(recipe_dir / "run.json", manifest)
    summary = res.summarize(rows, manifest, assets or [], {"shards": executions})
    res.write_json(recipe_dir / "summary.json", summary)
    return summary


def merge_run(path: Path, recipes: list[str] | None = None) -> dict[Path, dict[str, Any]]:
    """Merge every sharded recipe under ``path`` (a run dir, its attack/ dir, or one recipe dir)."""
    path = Path(path)
    if (path / "shards").is_dir():
        candidates = [path]
    else:
        attack_dir = path / "attack" if (path / "attack").is_dir() else path
        candidates = sorted(d for d in attack_dir.iterdir() if (d / "shards").is_dir()) if attack_dir.is_dir() else []
    if recipes:
        candidates = [d for d in candidates if d.name in recipes]
    if not candidates:
        raise UserError(f"{path}: no sharded attack results found (looked for attack/<recipe>/shards/)")
    return {d: merge_recipe(d) for d in candidates}
