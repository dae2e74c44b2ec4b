"""Tiny models and tokenizers built in process: no downloads, fast on two CPU cores."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, BertTokenizerFast

WORDS = ("the a an is was it this that movie film story acting plot good great fine bad awful boring "
         "dull fun funny wonderful terrible best worst love hate not very really quite and but or of to "
         "in with for on at by as be are were have has one two no yes i you he she they we me my "
         "his her their our beautiful ugly smart stupid brilliant poor excellent horrible nice mess "
         "masterpiece charming tedious lovely sad happy dark bright").split()

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TINY_DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)

TINY_CONFIGS: dict[str, dict] = {
    "bert": TINY_DIMS,
    "roberta": TINY_DIMS,
    "xlm-roberta": TINY_DIMS,
    "camembert": TINY_DIMS,  # not in the adapter table: tests/test_plugin_hooks.py adds it through a plugin
    # ELECTRA and ALBERT factorise embeddings: word vectors narrower than the hidden states.
    "electra": TINY_DIMS | {"embedding_size": 16},
    "albert": TINY_DIMS | {"embedding_size": 16, "num_hidden_groups": 1, "inner_group_num": 1},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 128},
    # DeBERTa-v3 style: disentangled relative attention, no absolute positions.
    "deberta-v2": TINY_DIMS | {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                               "max_relative_positions": -1, "norm_rel_ebd": "layer_norm", "share_att_key": True,
                               "position_biased_input": False, "type_vocab_size": 0},
}
"""Keyword arguments of ``AutoConfig.for_model`` per ``model_type``: 2 layers, hidden 32."""


def tiny_tokenizer(directory: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over a small vocabulary, written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    tokens = dict.fromkeys(SPECIAL + list(WORDS) + list("abcdefghijklmnopqrstuvwxyz.,!'\""))
    vocab.write_text("\n".join(tokens))
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def _corpus() -> list[str]:
    """Training text of the tiny BPE / SentencePiece tokenizers: the vocabulary, alone and in runs."""
    return [" ".join(WORDS[i:i + 8]) for i in range(0, len(WORDS), 3)] + list(WORDS)


def tiny_family_tokenizer(model_type: str):
    """A tokenizer of the family ``model_type`` really uses, trained in process on the tiny vocabulary.

    RoBERTa: byte-level BPE (``<s>``, ``</s>``, ``<pad>`` = 1, ``Ġ`` word starts); XLM-R and DeBERTa-v2:
    a SentencePiece unigram model (``▁`` word starts) with XLM-R's ``<s>``/``</s>`` or DeBERTa's
    ``[CLS]``/``[SEP]`` specials. Each has a mask token.
    """
    import tempfile

    from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer, processors
    from transformers import DebertaV2TokenizerFast, RobertaTokenizerFast, XLMRobertaTokenizerFast

    if model_type == "roberta":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_corpus(), vocab_size=400, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        with tempfile.TemporaryDirectory() as files:
            bpe.save_model(files)
            return RobertaTokenizerFast(vocab_file=f"{files}/vocab.json", merges_file=f"{files}/merges.txt")
    specials = {"xlm-roberta": dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                    unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"),
                "deberta-v2": dict(bos_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]", cls_token="[CLS]",
                                   unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")}[model_type]
    order = ["cls_token", "pad_token", "sep_token", "unk_token", "mask_token"]  # ids 0..4
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(_corpus(), vocab_size=200, special_tokens=[specials[k] for k in order],
                                unk_token=specials["unk_token"])
    cls, sep = specials["cls_token"], specials["sep_token"]
    unigram._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}", special_tokens=[(cls, 0), (sep, 2)])
    fast = XLMRobertaTokenizerFast if model_type == "xlm-roberta" else DebertaV2TokenizerFast
    return fast(tokenizer_object=unigram._tokenizer, **specials)


def tiny_model_dir(directory: Path, model_type: str = "bert", num_labels: int = 2, seed: int = 0,
                   real_tokenizer: bool = False, **config) -> Path:
    """Save a randomly initialised tiny ``model_type`` classifier plus tokenizer; return the path.

    By default every architecture shares the WordPiece tokenizer: only the vocabulary matters to a
    random model. ``real_tokenizer=True`` gives RoBERTa, XLM-R and DeBERTa-v2 their own family's
    tokenizer (:func:`tiny_family_tokenizer`), with its special tokens and padding id.
    ``config`` overrides entries of the model config (e.g. ``hidden_dropout_prob=0.0``).
    """
    import torch

    tokenizer = tiny_family_tokenizer(model_type) if real_tokenizer else tiny_tokenizer(directory / "_tok")
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), num_labels=num_labels,
                                  pad_token_id=tokenizer.pad_token_id,
                                  **(TINY_CONFIGS[model_type] | config))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_sentiment_tsv(path: Path, n: int = 64, seed: int = 0) -> Path:
    """A learnable toy sentiment TSV (header ``sentence<TAB>label``), with quote characters."""
    import random

    rng = random.Random(seed)
    pos = ["good", "great", "wonderful", "best", "love", "brilliant", "excellent", "charming"]
    neg = ["bad", "awful", "terrible", "worst", "hate", "boring", "horrible", "tedious"]
    filler = ["the", "movie", "film", "story", "acting", "plot", "is", "was", "really", "quite"]
    rows = ["sentence\tlabel"]
    for i in range(n):
        label = i % 2
        words = rng.sample(filler, 4) + [rng.choice(pos if label else neg)]
        rng.shuffle(words)
        text = " ".join(words)
        if i % 7 == 0:
            text = f'"{text}" it\'s'
        rows.append(f"{text}\t{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_pair_tsv(path: Path, n: int = 48, seed: int = 0, labels: tuple = ("contradiction", "entailment"),
                   columns: tuple[str, str] = ("premise", "hypothesis")) -> Path:
    """A learnable toy NLI TSV with string labels: the hypothesis's sentiment word decides the label.

    The premise is the same kind of filler for every label, so only the second text carries the signal.
    """
    import random

    rng = random.Random(seed)
    pos = ["good", "great", "wonderful", "best", "love", "brilliant"]
    neg = ["bad", "awful", "terrible", "worst", "hate", "boring"]
    filler = ["the", "movie", "film", "story", "acting", "plot", "is", "was", "really", "quite"]
    rows = [f"{columns[0]}\t{columns[1]}\tlabel"]
    for i in range(n):
        label = i % len(labels)
        premise = " ".join(rng.sample(filler, 5))
        hypothesis = " ".join(rng.sample(filler, 2) + [rng.choice(pos if label else neg)])
        rows.append(f"{premise}\t{hypothesis}\t{labels[label]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
