"""Examples/min of the attack harness before issue 11 (1 process, torch's default threads, no
sentence-encoder cache) and now (the default: worker processes, 1 thread each, cached encoder),
plus a stock TextAttack ``Attacker`` script; per-example rows compared; and each recipe's
distance to the physical limit (its model and encoder work at the bare-forward speed).

The configurations run one after the other per recipe (interleaved across recipes), nice'd like
everything else on a shared machine; the figures depend on the machine's load: report it.

    python benchmarks/attack_throughput.py --model RUN/model --data ../shared/data/sst2/dev.tsv \\
        --recipes deepwordbug pwws textfooler --num-examples 20 --stock-examples 5 --out a.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="classifier checkpoint dir (a run's model/) or 'minilm'")
    p.add_argument("--data", required=True, help="TSV with sentence and label columns (e.g. SST-2 dev)")
    p.add_argument("--recipes", nargs="+", default=["deepwordbug", "pwws", "textfooler"])
    p.add_argument("--profile", default="textdefender", choices=["stock", "textdefender"])
    p.add_argument("--num-examples", type=int, default=50)
    p.add_argument("--stock-examples", type=int, default=0, help="examples for the stock TextAttack column "
                                                                   "(its wrapper pads to 512 tokens: slow); 0 = skip")
    p.add_argument("--seed", type=int, default=765)
    p.add_argument("--nltk-data", default=None, help="NLTK data dir with WordNet (pwws); default: NLTK_DATA")
    p.add_argument("--include-entries", default=None,
                   help="JSONL of recipe entries an earlier run printed (to stderr); they join this run's table "
                        "and get its physical-limit figures (say so when you quote them)")
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


@contextlib.contextmanager
def encoder_as_before():
    """The sentence encoder as on main before issue 11: TextAttack's filter, every text encoded."""
    from asa_plugin.attacks import substitutes
    from textattack.constraints.semantics.sentence_encoders import SentenceEncoder

    cls = substitutes.TransformerSentenceEncoder
    saved = cls.encode, cls._check_constraint_many
    cls.encode, cls._check_constraint_many = cls.encode_uncached, SentenceEncoder._check_constraint_many
    try:
        yield
    finally:
        cls.encode, cls._check_constraint_many = saved


def harness(recipe: str, cfg, model: str, texts, labels, out: Path, cache: Path, wrapper=None):
    """Run the harness; (seconds, rows, summary). ``wrapper`` given: in this process."""
    from asa_plugin.attacks.results import read_rows
    from asa_plugin.attacks.runner import AttackJob, run_attack

    job = AttackJob(recipe=recipe, cfg=cfg, model_path=model, texts=texts, labels=labels,
                    recipe_dir=out / "attack" / recipe, data="bench", overwrite=True, cache_dir=cache,
                    progress=False)
    start = time.perf_counter()
    summary = run_attack(job, wrapper=wrapper)
    return time.perf_counter() - start, read_rows(job.out_dir / "results.jsonl"), summary


def floor_seconds_per_text(module, tokenizer, texts: list[str], batch: int) -> float:
    """A bare ``module(**batch)`` loop over ``texts`` (length-sorted, dynamic padding): s per text."""
    import torch

    texts = sorted(texts, key=len)
    with torch.inference_mode():
        module(**tokenizer(texts[:batch], padding=True, return_tensors="pt"))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            module(**tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=128,
                               return_tensors="pt"))
    return (time.perf_counter() - start) / len(texts)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    default_threads = torch.get_num_threads()
    from asa_plugin.attacks.textattack_env import add_nltk_dir, import_textattack

    cache = Path(tempfile.mkdtemp(prefix="advrobust-bench-"))
    import_textattack(cache, allow_download=False)
    if args.nltk_data:
        add_nltk_dir(args.nltk_data)
    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.attacks.results import outcome_name, without_timing
    from asa_plugin.attacks.wrapper import FastModelWrapper

    from asa_plugin.config import load_config
    from asa_plugin.data.files import read_rows

    adapter = load_adapter(args.model, num_labels=2)
    rows = read_rows(args.data)
    picked = random.Random(args.seed).sample(rows, args.num_examples)
    texts, labels = [str(r["sentence"]) for r in picked], [int(r["label"]) for r in picked]
    base = {"seed": args.seed, "nltk_data": args.nltk_data, "download": False, "profile": args.profile}
    before_cfg = load_config(data={"attack": {**base, "threads": default_threads, "workers": 1}}).attack
    after_cfg = load_config(data={"attack": base}).attack
    table = []
    for recipe in args.recipes:
        torch.set_num_threads(default_threads)
        wrapper = FastModelWrapper(adapter.model, adapter.tokenizer, device="cpu")
        with encoder_as_before():
            t_before, before, _ = harness(recipe, before_cfg, args.model, texts, labels, cache / "before", cache,
                                          wrapper)
        t_after, after, summary = harness(recipe, after_cfg, args.model, texts, labels, cache / "after", cache)
        entry = {
            "recipe": recipe, "examples": len(texts),
            "before_examples_per_min": 60 * len(texts) / t_before, "after_examples_per_min": 60 * len(texts) / t_after,
            "speedup": t_before / t_after, "after_execution": summary["execution"],
            "rows_identical": without_timing(before) == without_timing(after),
            "outcome_mismatches": sum(a["outcome"] != b["outcome"] for a, b in zip(before, after)),
            "outcomes": summary["outcomes"], "time_breakdown_after": summary["time_breakdown"],
            "before_seconds_per_example": t_before / len(texts),
        }
        if args.stock_examples:
            n = min(args.stock_examples, len(texts))
            try:
                t_stock, stock = plain_textattack(recipe, adapter.model, adapter.tokenizer, texts[:n], labels[:n],
                                                  args.seed, cache)
            except Exception as exc:  # noqa: BLE001 - stock recipes download assets (textfooler: paragramcf)
                entry["stock_unavailable"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                table.append(entry)
                print(json.dumps(entry), file=sys.stderr, flush=True)
                continue
            entry.update(stock_examples=n, stock_examples_per_min=60 * n / t_stock,
                         stock_outcome_mismatches=sum(outcome_name(a) != b["outcome"]
                                                      for a, b in zip(stock, after[:n])))
        table.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)

    if args.include_entries:
        earlier = [json.loads(line) for line in Path(args.include_entries).read_text().splitlines() if line.strip()]
        table = [{**e, "from_earlier_run": True} for e in earlier] + table

    # The physical limit: this run's model and encoder texts at the bare forward speed (1 thread).
    torch.set_num_threads(1)
    from asa_plugin.attacks.assets import Assets

    enc_path, _ = Assets(after_cfg, cache).sentence_encoder_path()
    from transformers import AutoModel, AutoTokenizer

    encoder, enc_tok = AutoModel.from_pretrained(enc_path).eval(), AutoTokenizer.from_pretrained(enc_path)
    sample = [str(r["sentence"]) for r in rows[:512]]
    s_model = floor_seconds_per_text(adapter.model.eval(), adapter.tokenizer, sample, after_cfg.batch_size)
    s_encoder = floor_seconds_per_text(encoder, enc_tok, sample, 64)
    for entry in table:
        per = entry["time_breakdown_after"]
        limit = per["model_texts_per_example"] * s_model + per["encoder_texts_per_example"] * s_encoder
        worker_seconds = sum(per["seconds"].values()) / per["examples"]
        entry.update(limit_seconds_per_example=limit, worker_seconds_per_example=worker_seconds,
                     measured_over_limit=worker_seconds / limit if limit else None)
    print(f"{'recipe':<13}{'before ex/min':>14}{'after ex/min':>13}{'speedup':>9}{'stock ex/min':>13}"
          f"{'rows same':>10}{'time/limit':>11}")
    for r in table:
        stock = f"{r['stock_examples_per_min']:.1f}" if "stock_examples_per_min" in r else "-"
        print(f"{r['recipe']:<13}{r['before_examples_per_min']:>14.1f}{r['after_examples_per_min']:>13.1f}"
              f"{r['speedup']:>8.2f}x{stock:>13}{r['rows_identical']!s:>10}{r['measured_over_limit']:>10.2f}x")
    result = {"model": args.model, "data": args.data, "profile": args.profile, "seed": args.seed,
              "cpu_count": os.cpu_count(), "torch_default_threads": default_threads,
              "load_average_at_end": os.getloadavg(), "floor_seconds_per_model_text": s_model,
              "floor_seconds_per_encoder_text": s_encoder, "recipes": table}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
