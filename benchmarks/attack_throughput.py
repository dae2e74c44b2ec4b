"""Examples/min of `advrobust attack` vs a plain TextAttack ``Attacker`` script: same recipe, model
and examples, in one run, plus whether every example's outcome agrees.

    python benchmarks/attack_throughput.py --data ../shared/data/sst2/dev.tsv --num-examples 50 --out a.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="classifier: run dir's model/, checkpoint or 'minilm'")
    p.add_argument("--data", required=True, help="TSV with sentence and label columns (e.g. SST-2 dev)")
    p.add_argument("--recipes", nargs="+", default=["deepwordbug", "pwws"])
    p.add_argument("--num-examples", type=int, default=50)
    p.add_argument("--seed", type=int, default=765)
    p.add_argument("--nltk-data", default=None, help="NLTK data dir with WordNet (pwws); default: NLTK_DATA")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


STOCK_CLASSES = {"deepwordbug": "DeepWordBugGao2018", "pwws": "PWWSRen2019", "textfooler": "TextFoolerJin2019"}


def plain_textattack(recipe: str, model, tokenizer, texts, labels, seed: int, cache: Path) -> tuple[float, list]:
    """The script a TextAttack user writes: stock recipe, HuggingFaceModelWrapper, Attacker."""
    import textattack
    import textattack.attack_recipes as recipes
    from asa_plugin.attacks.textattack_env import nltk_downloads
    from textattack.models.wrappers import HuggingFaceModelWrapper

    start = time.perf_counter()
    with nltk_downloads(cache, allow=False):
        attack = getattr(recipes, STOCK_CLASSES[recipe]).build(HuggingFaceModelWrapper(model, tokenizer))
    dataset = textattack.datasets.Dataset(list(zip(texts, labels)))
    args = textattack.AttackArgs(num_examples=len(texts), random_seed=seed, disable_stdout=True, silent=True)
    results = textattack.Attacker(attack, dataset, args).attack_dataset()
    return time.perf_counter() - start, results


def ours(recipe: str, wrapper, cfg, texts, labels, out: Path, cache: Path) -> tuple[float, list[dict]]:
    from asa_plugin.attacks.results import read_rows
    from asa_plugin.attacks.runner import AttackJob, run_attack

    job = AttackJob(recipe=recipe, cfg=cfg, model_path="(preloaded)", texts=texts, labels=labels,
                    recipe_dir=out / "attack" / recipe, data="bench", overwrite=True, cache_dir=cache,
                    progress=False)
    start = time.perf_counter()
    run_attack(job, wrapper=wrapper)
    return time.perf_counter() - start, read_rows(job.out_dir / "results.jsonl")


def main(argv=None) -> int:
    args = parse_args(argv)
    from asa_plugin.attacks.textattack_env import add_nltk_dir, import_textattack

    cache = Path(tempfile.mkdtemp(prefix="advrobust-bench-"))
    import_textattack(cache, allow_download=False)
    if args.nltk_data:
        add_nltk_dir(args.nltk_data)
    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.attacks.results import outcome_name
    from asa_plugin.attacks.wrapper import FastModelWrapper

    from asa_plugin.config import load_config
    from asa_plugin.data.files import read_rows

    adapter = load_adapter(args.model, num_labels=2)
    wrapper = FastModelWrapper(adapter.model, adapter.tokenizer, device=args.device)
    rows = read_rows(args.data)
    import random

    picked = random.Random(args.seed).sample(rows, args.num_examples)
    texts, labels = [str(r["sentence"]) for r in picked], [int(r["label"]) for r in picked]
    cfg = load_config(data={"attack": {"seed": args.seed, "nltk_data": args.nltk_data,
                                       "download": False}}).attack
    table = []
    for recipe in args.recipes:
        t_plain, plain = plain_textattack(recipe, wrapper.model, adapter.tokenizer, texts, labels, args.seed, cache)
        t_ours, mine = ours(recipe, wrapper, cfg, texts, labels, cache / "run", cache)
        plain_outcomes = [outcome_name(r) for r in plain]
        our_outcomes = [r["outcome"] for r in mine]
        table.append({
            "recipe": recipe, "examples": len(texts),
            "plain_examples_per_min": 60 * len(texts) / t_plain, "ours_examples_per_min": 60 * len(texts) / t_ours,
            "speedup": t_plain / t_ours,
            "outcomes_identical": plain_outcomes == our_outcomes,
            "outcome_mismatches": sum(a != b for a, b in zip(plain_outcomes, our_outcomes)),
            "plain_outcomes": {o: plain_outcomes.count(o) for o in sorted(set(plain_outcomes))},
            "ours_outcomes": {o: our_outcomes.count(o) for o in sorted(set(our_outcomes))},
        })
    print(f"{'recipe':<14}{'plain ex/min':>14}{'ours ex/min':>14}{'speedup':>10}{'same outcomes':>16}")
    for r in table:
        print(f"{r['recipe']:<14}{r['plain_examples_per_min']:>14.2f}{r['ours_examples_per_min']:>14.2f}"
              f"{r['speedup']:>9.2f}x{r['outcomes_identical']!s:>16}")
    result = {"model": args.model, "device": str(wrapper.device), "seed": args.seed, "recipes": table}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
