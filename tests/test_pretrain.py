"""`advrobust pretrain`: masked-LM data, ASA's MLM objective, resume after kill -9, export, bad corpora."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from tiny import WORDS

from asa_plugin.cli import main
from asa_plugin.pretraining.config import PretrainConfig

KILL_AT_STEP = str(Path(__file__).with_name("kill_at_step.py"))
"""The test harness that runs a command and SIGKILLs it at a given step (a step callback of the loop)."""
TRAIN = {"max_steps": 10, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7, "checkpoint_every_steps": 3,
         "log_every_steps": 2}


def write_corpus(path: Path, n: int = 120, seed: int = 0, extra: list[str] = ()) -> Path:
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)] + list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pretrain_config(tmp_path, tiny_bert_dir):
    """Factory: a pre-training config (ASA) on the tiny BERT and a random-word corpus."""

    def make(corpus: Path | None = None, **sections) -> Path:
        config = {"model": {"backbone": str(tiny_bert_dir), "max_length": 16},
                  "pretrain": {"corpus": str(corpus or write_corpus(tmp_path / "corpus.txt")), "eval_fraction": 0.1},
                  "defence": {"name": "asa", "tau": 0.5}, "train": dict(TRAIN),
                  "output": {"run_dir": str(tmp_path / "run")}}
        for section, values in sections.items():  # [defence] is replaced, the others merged
            config[section] = values if section == "defence" else {**config.get(section, {}), **values}
        path = tmp_path / "pretrain.toml"
        path.write_text(tomli_w.dumps(config))
        return path

    return make


def pretrain_here(config: Path, *args: str) -> int:
    return main(["pretrain", str(config), *args])


# --- MLM data ---------------------------------------------------------------------------------
def _tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "walk", "talk", "jump", "##ing", "##ed", "the",
             "a", "dog", "cat"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    return BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def _collate(tokenizer, texts, seed=0, epoch=0, max_length=64, **options):
    from types import SimpleNamespace

    from asa_plugin.pretraining.mlm import MLMCollator, MLMDataset

    cfg = PretrainConfig(corpus="x", **options)
    data = MLMDataset(texts, tokenizer, max_length, packing=False, offsets=cfg.whole_word_mask)
    collate = MLMCollator(tokenizer, cfg, seed, SimpleNamespace(epoch=epoch))
    return collate([data[i] for i in range(len(data))])


MASKING_RATES = [  # (pretrain.mlm_probability, mask_replace_prob, random_replace_prob)
    pytest.param(0.15, 0.8, 0.1, id="bert-15-80-10-10"),  # the defaults (BERT's)
    pytest.param(0.4, 0.5, 0.3, id="40-50-30-20"),  # a rate the collator must not replace with 15 %
]


@pytest.mark.parametrize("rate,mask_share,random_share", MASKING_RATES)
def test_masking_selects_the_configured_share_and_replaces_as_configured(tmp_path, rate, mask_share, random_share):
    tokenizer = _tokenizer(tmp_path)
    texts = [" ".join(["the dog walked", "a cat jumping", "play talk"][i % 3] for _ in range(1 + i % 5))
             for i in range(400)]
    original = tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]  # (B, L)
    batch = _collate(tokenizer, texts, mlm_probability=rate, mask_replace_prob=mask_share,
                     random_replace_prob=random_share)
    labels, ids, positions = batch["mlm_labels"], batch["input_ids"], batch["mlm_positions"]
    ordinary = ~torch.isin(original, torch.tensor(tokenizer.all_special_ids))  # (B, L): real, non-special
    assert not positions[~ordinary].any()  # never a special token or padding
    assert torch.equal(labels[positions], original[positions]) and torch.equal(batch["labels"], original[positions])
    n, k = int(ordinary.sum()), int(positions.sum())

    def within(count, total, p):  # 5 binomial standard deviations
        return abs(count - p * total) <= 5 * (total * p * (1 - p)) ** 0.5

    assert within(k, n, rate), (k, n)
    vocab = len(tokenizer)  # a random replacement is any token: the original or the mask token 1 time in `vocab` each
    masked = int((ids[positions] == tokenizer.mask_token_id).sum())
    unchanged = int((ids[positions] == original[positions]).sum())
    assert within(masked, k, mask_share + random_share / vocab), (masked, k)
    assert within(k - masked - unchanged, k, random_share * (1 - 2 / vocab)), (masked, unchanged, k)
    assert torch.equal(ids[~positions], original[~positions])  # only selected positions change


def test_whole_word_masking_selects_all_pieces_of_a_word(tmp_path):
    tokenizer = _tokenizer(tmp_path)
    texts = ["the dog walked a cat jumping playing talked"] * 200
    batch = _collate(tokenizer, texts, whole_word_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(texts[0])["input_ids"])
    positions = batch["mlm_positions"]  # (B, L)
    for i, token in enumerate(tokens):
        if token.startswith("##"):  # a continuation piece is selected exactly when its word start is
            assert torch.equal(positions[:, i], positions[:, i - 1])
    assert positions.any(0).sum() > 3  # and selection still varies over the words


def test_masks_follow_seed_epoch_and_example_not_the_global_rng_or_the_batch(tmp_path):
    from types import SimpleNamespace

    from asa_plugin.pretraining.mlm import MLMCollator, MLMDataset

    tokenizer = _tokenizer(tmp_path)
    texts = ["the dog walked a cat jumping playing talked"] * 32
    first = _collate(tokenizer, texts)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(first["input_ids"], _collate(tokenizer, texts)["input_ids"])
    assert not torch.equal(first["mlm_positions"], _collate(tokenizer, texts, epoch=1)["mlm_positions"])
    assert not torch.equal(first["mlm_positions"], _collate(tokenizer, texts, seed=1)["mlm_positions"])
    # An example's masks do not depend on its batch: alone, or beside longer (padded) and repeated examples.
    data = MLMDataset(texts[:3] + ["the dog walked the dog walked the cat cat jumping"], tokenizer, 64, packing=False)
    collate = MLMCollator(tokenizer, PretrainConfig(corpus="x"), 0, SimpleNamespace(epoch=0))
    alone = collate([data[0]])
    mixed = collate([data[0], data[3], data[0], data[1]])
    width = alone["input_ids"].shape[1]
    assert torch.equal(mixed["input_ids"][0, :width], alone["input_ids"][0])
    assert torch.equal(mixed["mlm_labels"][0, :width], alone["mlm_labels"][0])
    assert torch.equal(mixed["input_ids"][2], mixed["input_ids"][0])


def test_packing_cuts_the_concatenated_texts_into_blocks(tmp_path):
    from asa_plugin.pretraining.mlm import MLMDataset

    tokenizer = _tokenizer(tmp_path)
    texts = ["the dog walked", "a cat", "play talk jump the dog"]
    joined = [t for text in texts for t in tokenizer(text)["input_ids"]]  # each text with [CLS] ... [SEP]
    packed = MLMDataset(texts, tokenizer, 4, packing=True)
    assert [t for f in packed.features for t in f["input_ids"]] == joined
    assert packed.lengths == [4] * (len(joined) // 4) + ([len(joined) % 4] if len(joined) % 4 else [])
    assert MLMDataset(texts, tokenizer, 4, packing=False).lengths == [4, 4, 4]  # one truncated text each


# --- ASA's objective on masked-LM batches ------------------------------------------------------
@pytest.fixture
def mlm_setup(tiny_bert_dir, tmp_path):
    from asa_plugin.adapters.loading import load_adapter
    from transformers import AutoModelForMaskedLM

    from asa_plugin.defences.asa import ASADefence, ASAParams
    from asa_plugin.pretraining.mlm import MLMCollator, MLMDataset, masked_lm_adapter

    torch.manual_seed(0)
    adapter = masked_lm_adapter(load_adapter(str(tiny_bert_dir), model_class=AutoModelForMaskedLM))
    adapter.model.eval()  # no dropout: the forwards below are repeatable
    texts = ["the movie was good and really fun", "bad boring plot", "i love it", "a very awful film indeed"]
    data = MLMDataset(texts, adapter.tokenizer, 16, packing=False)
    batch = MLMCollator(adapter.tokenizer, PretrainConfig(corpus="x", mlm_probability=0.3), 0)(list(data))
    defence = ASADefence(ASAParams(tau=0.5), adapter)
    return adapter, defence, batch


def _attention_weights_times(model, factor: float) -> None:
    """Scale every attention projection of ``model``: at its init (std 0.02) the tiny model's attention adds
    about 1 % to each hidden state, so masking it moves the predictions by a KL near 1e-7, the size of float32's
    rounding between two matmul shapes; scaled by 20 the KL is about 4e-3 and a 1e-5 relative check means
    something."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".attention." in name and name.endswith(".weight") and "LayerNorm" not in name:
                parameter.mul_(factor)


def test_asa_objective_on_mlm_uses_the_selected_positions_only(mlm_setup):
    from asa_plugin.defences.asa import functional as asa_f

    adapter, defence, batch = mlm_setup
    _attention_weights_times(adapter.model, 20.0)
    positions = batch["mlm_positions"]
    assert 0 < positions.sum() < batch["attention_mask"].sum()
    inputs = adapter.model_inputs(batch)
    with torch.no_grad():
        defence.asa_objective(batch)
        clean = adapter.model(**inputs).logits  # (B, L, V)
        with defence.adversarial_attention(batch):
            adv = adapter.model(**inputs).logits  # (B, L, V)
        hf_loss = adapter.model(**inputs, labels=batch["mlm_labels"]).loss  # transformers' own MLM loss
    assert adapter.forward(batch).logits.shape == (int(positions.sum()), adapter.config.vocab_size)
    assert defence._last["asa_ce"] == pytest.approx(hf_loss.item(), rel=1e-5)
    expected = asa_f.symmetric_kl(clean[positions], adv[positions]).item()
    everywhere = asa_f.symmetric_kl(clean[batch["attention_mask"].bool()], adv[batch["attention_mask"].bool()]).item()
    assert expected > 1e-3  # a divergence far above float32's rounding (see _attention_weights_times)
    assert defence._last["asa_symmetric_kl"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(everywhere, rel=1e-2)  # the unselected positions are left out


def test_held_out_loss_and_accuracy_are_means_over_the_predicted_tokens(mlm_setup):
    """evaluate_mlm against transformers' own loss (labels=) on the same masked batches, weighted by each
    batch's predicted tokens; half of each batch's labels are the model's own top-1, so accuracy is not 0."""
    from accelerate import Accelerator

    from asa_plugin.pretraining.mlm import IGNORE, MLMCollator, MLMDataset, evaluate_mlm

    adapter, _, first = mlm_setup
    texts = ["the plot was dull", "what a great and moving story it was", "fine"]
    data = MLMDataset(texts, adapter.tokenizer, 16, packing=False)
    second = MLMCollator(adapter.tokenizer, PretrainConfig(corpus="x", mlm_probability=0.6), 1)(list(data))
    nll = correct = count = 0.0
    for batch in (first, second):
        positions, labels = batch["mlm_positions"], batch["mlm_labels"]  # (B, L) each
        with torch.no_grad():
            top1 = adapter.model(**adapter.model_inputs(batch)).logits.argmax(-1)  # (B, L)
        rows, cols = positions.nonzero(as_tuple=True)
        labels[rows[::2], cols[::2]] = top1[rows[::2], cols[::2]]  # every other predicted token: right
        assert (labels != IGNORE).sum() == positions.sum() < batch["attention_mask"].sum()
        with torch.no_grad():
            out = adapter.model(**adapter.model_inputs(batch), labels=labels)
        n = int(positions.sum())
        nll, count = nll + out.loss.item() * n, count + n
        correct += int((out.logits.argmax(-1)[positions] == labels[positions]).sum())
    assert first["mlm_positions"].sum() != second["mlm_positions"].sum()  # a mean of batch means would differ
    metrics = evaluate_mlm(adapter, adapter.model, [first, second], Accelerator(cpu=True))
    assert metrics["eval_predicted_tokens"] == count
    assert metrics["eval_mlm_loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(correct / count) and 0.4 < metrics["eval_accuracy"] < 1
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_gradient_reversal_reaches_the_adversaries_on_mlm(mlm_setup, monkeypatch):
    from asa_plugin.defences.asa import functional as asa_f

    adapter, defence, batch = mlm_setup

    def grads():
        adapter.model.zero_grad(), defence.adversary.zero_grad()
        defence.asa_objective(batch).backward()
        return ({n: p.grad.clone() for n, p in defence.adversary.named_parameters()},
                {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None})

    adversary, model = grads()
    monkeypatch.setattr(asa_f, "grad_reverse", lambda x, scale=1.0: x)  # the same loss without the reversal
    plain_adversary, plain_model = grads()
    assert sum(g.norm() for g in adversary.values()) > 0
    for name, g in adversary.items():  # the adversaries ascend what the model descends
        assert torch.allclose(g, -plain_adversary[name], atol=1e-6), name
    for name, g in model.items():  # the model's gradients do not pass through the reversal
        assert torch.allclose(g, plain_model[name], atol=1e-6), name


# --- the command --------------------------------------------------------------------------------
def pretrain_killed_at(step: int, config: Path, *args: str) -> subprocess.CompletedProcess:
    """``advrobust pretrain`` in a child process that SIGKILLs itself right after optimizer step ``step``."""
    return subprocess.run([sys.executable, KILL_AT_STEP, str(step), "pretrain", str(config), *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("defence,weights", [
    pytest.param({"name": "asa", "tau": 0.5}, ["model/model.safetensors", "asa_adversary.safetensors"], id="asa"),
    pytest.param({"name": "vanilla"}, ["model/model.safetensors"], id="vanilla", marks=pytest.mark.slow),
])
def test_resume_after_kill_minus_9_matches_an_uninterrupted_run(tmp_path, pretrain_config, defence, weights):
    config = pretrain_config(defence=defence)
    assert pretrain_here(config, "--set", f"output.run_dir='{tmp_path / 'straight'}'") == 0
    killed_dir = tmp_path / "killed"
    killed = pretrain_killed_at(7, config, "--set", f"output.run_dir='{killed_dir}'")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (killed_dir / "checkpoint").is_dir() and not (killed_dir / "metrics.json").exists()
    assert pretrain_here(config, "--set", f"output.run_dir='{killed_dir}'", "--resume") == 0
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    timing = {"train_seconds", "train_cpu_seconds", "train_examples_per_second"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert a["epochs"] >= 2  # the kill (step 7) falls after an epoch end and a mid-epoch checkpoint
    for name in weights:
        wa, wb = load_file(tmp_path / "straight" / name), load_file(killed_dir / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_export_loads_as_masked_lm_and_fine_tunes_with_train(tmp_path, pretrain_config, toy_data):
    from transformers import AutoModelForMaskedLM

    assert pretrain_here(pretrain_config()) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("eval_mlm_loss", "eval_accuracy", "eval_perplexity", "asa_mask_ratio_per_layer"):
        assert key in metrics, key
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_mlm_loss"]))
    ratios = metrics["asa_mask_ratio_per_layer"]
    assert len(ratios) == 2 and all(0 <= r <= 1 for r in ratios)
    assert (run / "asa_adversary.safetensors").is_file()  # beside the model, never inside

    model, info = AutoModelForMaskedLM.from_pretrained(run / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "model" / "README.md").data.to_dict()  # a fill-mask card, not a classifier's
    assert card["pipeline_tag"] == "fill-mask" and "fill-mask" in card["tags"]
    (result,) = card["model-index"][0]["results"]
    assert result["task"]["type"] == "fill-mask" and result["metrics"][0]["name"] == "masked-token accuracy"
    assert result["metrics"][0]["value"] == metrics["eval_accuracy"]
    assert not any("adversary" in k for k in load_file(run / "model" / "model.safetensors"))

    finetune = {"model": {"backbone": str(run / "model"), "num_labels": 2, "max_length": 16},
                "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
                "train": {"max_steps": 4, "batch_size": 16}, "output": {"run_dir": str(tmp_path / "ft")}}
    (tmp_path / "ft.toml").write_text(tomli_w.dumps(finetune))
    assert main(["train", str(tmp_path / "ft.toml")]) == 0
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["steps"] == 4


def test_empty_lines_are_skipped_and_counted(tmp_path, pretrain_config):
    corpus = write_corpus(tmp_path / "c.txt", extra=["", "   ", "the end"])
    assert pretrain_here(pretrain_config(corpus, train={"max_steps": 1})) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_empty_texts"] == 2 and metrics["train_texts"] + metrics["eval_texts"] == 121


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("advrobust pretrain: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


BAD_INPUTS = [  # (what is wrong, how the config is made, words the one line must hold)
    ("non-UTF-8 line", lambda tmp, make: make(_non_utf8(tmp)), ["line 3 is not UTF-8"]),
    ("corpus missing", lambda tmp, make: make(tmp / "nope.txt"), ["file not found", "nope.txt"]),
    ("only empty lines", lambda tmp, make: make(_write(tmp / "e.txt", "\n \n\n")), ["0 non-empty"]),
    ("unknown format", lambda tmp, make: make(_write(tmp / "c.xml", "<a/>")), ["unknown corpus format"]),
    ("defence without MLM", lambda tmp, make: make(defence={"name": "scal"}), ["'scal' does not support"]),
    ("table without text column", lambda tmp, make: make(_write(tmp / "c.tsv", "a\tb\nx\ty\n")),
     ["no text column"]),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _non_utf8(tmp: Path) -> Path:
    path = tmp / "bad.txt"
    path.write_bytes(b"the movie\nwas good\nit was \xff\xfe bad\nfine\n")
    return path


@pytest.mark.parametrize("what,make,words", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_corpus_or_config_is_one_line_before_training(tmp_path, pretrain_config, capsys, what, make, words):
    assert pretrain_here(make(tmp_path, pretrain_config)) == 2
    line = _one_error_line(capsys)
    assert all(w in line for w in words), line
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_config_sections(tmp_path, pretrain_config, capsys):
    config = pretrain_config()
    assert pretrain_here(config, "--set", "data.train_file='x.tsv'") == 2
    assert "the corpus is set in [pretrain]" in _one_error_line(capsys)
    assert pretrain_here(config, "--set", "pretrain.mlm_probability=2") == 2
    assert "--set 'pretrain.mlm_probability=2'" in _one_error_line(capsys)


# --- the bench --------------------------------------------------------------------------------
def _bench(tmp_path, toy_data, backbones: list[str], defences: list[str]) -> Path:
    config = {"model": {"backbone": "minilm", "num_labels": 2},
              "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
              "bench": {"defences": defences, "backbones": backbones, "recipes": ["pwws"],
                        "out_dir": str(tmp_path / "bench")}}
    path = tmp_path / "bench.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_a_bench_label_fine_tunes_a_named_pre_trained_backbone(tmp_path, toy_data):
    from asa_plugin.bench.plan import load_plan

    plan = load_plan(_bench(tmp_path, toy_data, ["asa-pre=runs/pretrain-asa/model", "naive=runs/pre-v/model"],
                            ["vanilla", "vanilla@asa-pre", "vanilla@naive", "asa@naive"]))
    backbones = {c.label: (c.cfg.model.backbone, c.cfg.defence.names, c.run_dir.name) for c in plan.cells}
    assert backbones == {"vanilla": ("minilm", ["vanilla"], "vanilla"),
                         "vanilla@asa-pre": ("runs/pretrain-asa/model", ["vanilla"], "vanilla@asa-pre"),
                         "vanilla@naive": ("runs/pre-v/model", ["vanilla"], "vanilla@naive"),
                         "asa@naive": ("runs/pre-v/model", ["asa"], "asa@naive")}


@pytest.mark.parametrize("backbones,defences,words", [
    (["x=/p"], ["vanilla@y"], "names backbone 'y', which bench.backbones does not define"),
    (["x"], ["vanilla"], "'x' is not NAME=PATH"),
    (["x=/nonexistent/model"], ["vanilla@x"], "bench.backbones ('vanilla@x'): /nonexistent/model: directory not found"),
])
def test_bench_backbone_mistakes_are_one_line(tmp_path, toy_data, capsys, backbones, defences, words):
    assert main(["bench", str(_bench(tmp_path, toy_data, backbones, defences))]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("defence", [
    {"name": "vanilla"}, {"name": "fgm"}, {"name": "pgd", "adv_steps": 2}, {"name": "freelb", "adv_steps": 2},
    {"name": ["asa", "freelb"], "freelb": {"adv_steps": 2}}, {"name": "freelb++", "adv_steps": 2}, {"name": "creat"},
    {"name": "tavat"},
], ids=lambda d: "+".join(d["name"]) if isinstance(d["name"], list) else d["name"])
def test_every_listed_defence_pre_trains(tmp_path, pretrain_config, defence):
    assert pretrain_here(pretrain_config(defence=defence, train={"max_steps": 2, "checkpoint_every_steps": 0})) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["eval_mlm_loss"])


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert",
                                        "deberta-v2"])
def test_masked_lm_adapter_gives_the_selected_logits_of_every_architecture(tiny_backbone_dir, model_type):
    from asa_plugin.adapters.loading import load_adapter
    from transformers import AutoModelForMaskedLM

    from asa_plugin.pretraining.mlm import MLMCollator, MLMDataset, masked_lm_adapter

    adapter = masked_lm_adapter(load_adapter(str(tiny_backbone_dir(model_type)), model_class=AutoModelForMaskedLM))
    adapter.model.eval()
    data = MLMDataset(["the movie was good and fun", "bad plot really"] * 4, adapter.tokenizer, 16, packing=False)
    batch = MLMCollator(adapter.tokenizer, PretrainConfig(corpus="x"), 0)(list(data))
    with torch.no_grad():
        selected = adapter.forward(batch).logits  # the head on the selected positions only
        full = adapter.model(**adapter.model_inputs(batch)).logits  # (B, L, V)
    assert selected.shape == (int(batch["mlm_positions"].sum()), full.shape[-1])
    assert torch.allclose(selected, full[batch["mlm_positions"]], atol=1e-5)


def test_resume_with_other_masking_settings_is_refused(tmp_path, pretrain_config, capsys):
    config = pretrain_config(train={"max_steps": 1})
    assert pretrain_here(config) == 0
    assert pretrain_here(config, "--resume", "--set", "pretrain.mlm_probability=0.3") == 2
    assert "pretrain.mlm_probability (0.15 -> 0.3)" in _one_error_line(capsys)
    assert pretrain_here(config, "--resume") == 0  # finished: its metrics, nothing retrained


def test_two_processes_pre_train_and_evaluate_every_held_out_block_once(tmp_path, pretrain_config):
    from test_distributed import failure, launch

    config = pretrain_config(train={"max_steps": 3, "batch_size": 4})
    single = tmp_path / "single"
    assert pretrain_here(config, "--set", f"output.run_dir='{single}'") == 0
    double = tmp_path / "double"
    proc = launch(2, "-m", "asa_plugin.cli", "pretrain", str(config), "--set", f"output.run_dir='{double}'")
    assert proc.returncode == 0, failure(proc)
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (single, double))
    assert two["eval_predicted_tokens"] == one["eval_predicted_tokens"]  # the same held-out masks, counted once
    assert two["steps"] == 3 and math.isfinite(two["eval_mlm_loss"])
    assert (double / "asa_adversary.safetensors").is_file()


def test_only_defences_checks_the_backbones_of_the_cells_it_runs(tmp_path, toy_data, tiny_bert_dir, capsys):
    """A pre-trained encoder still being made does not block the cells of the finished ones."""
    from asa_plugin.bench.checks import check_bench
    from asa_plugin.bench.plan import load_plan
    from asa_plugin.errors import UserError
    from asa_plugin.plugins import get_plugin_manager

    config = {"model": {"backbone": "minilm", "num_labels": 2, "max_length": 32},
              "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
              "bench": {"defences": ["vanilla@ready", "vanilla@later"], "recipes": ["deepwordbug"],
                        "backbones": [f"ready={tiny_bert_dir}", f"later={tmp_path / 'not-yet' / 'model'}"],
                        "out_dir": str(tmp_path / "bench")},
              "attack": {"download": False}}
    path = tmp_path / "bench.toml"
    path.write_text(tomli_w.dumps(config))
    plan, pm = load_plan(path), get_plugin_manager()
    check_bench(plan, pm, runs_now=lambda cell: cell.label == "vanilla@ready")
    with pytest.raises(UserError, match="bench.backbones \\('vanilla@later'\\)"):
        check_bench(plan, pm)
    assert main(["bench", str(path), "--only-defences", "vanilla@later"]) == 2
    assert "not-yet/model: directory not found" in capsys.readouterr().err
