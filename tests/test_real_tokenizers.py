"""RoBERTa, XLM-R and DeBERTa-v2 with their own families' tokenizers (BPE, SentencePiece), not WordPiece.

The other tiny models share a BERT vocabulary whose padding id is 0 and whose specials are
``[CLS]``/``[SEP]``/``[MASK]``; here padding is ``<pad>`` = 1 (RoBERTa, XLM-R), words start with
``Ġ`` or ``▁``, and the mask token is ``<mask>``. ASA's padding mask, PromptBERT pooling, training
and the attack wrapper must meet them.
"""

from __future__ import annotations

import json

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter
from tiny import tiny_model_dir

from asa_plugin.cli import main
from asa_plugin.defences.asa import ASADefence, ASAParams
from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.plugins import get_plugin_manager

# (model_type, tokenizer class, its mask token, its padding id)
FAMILIES = [
    ("roberta", "RobertaTokenizerFast", "<mask>", 1),
    ("xlm-roberta", "XLMRobertaTokenizerFast", "<mask>", 1),
    ("deberta-v2", "DebertaV2TokenizerFast", "[MASK]", 1),
]
IDS = [f[0] for f in FAMILIES]
TEXTS = ["the movie was good", "bad film and really awful and dull", "great fun"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    made = {}

    def make(model_type: str):
        if model_type not in made:
            made[model_type] = tiny_model_dir(tmp_path_factory.mktemp(model_type), model_type, real_tokenizer=True)
        return made[model_type]

    return make


def padded_batch(adapter) -> dict[str, torch.Tensor]:
    batch = dict(adapter.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1])
    return batch


@pytest.mark.parametrize("model_type,cls,mask,pad", FAMILIES, ids=IDS)
def test_the_family_tokenizer_is_what_the_adapter_gets(model_dirs, model_type, cls, mask, pad):
    adapter = load_adapter(str(model_dirs(model_type)), 2)
    tok = adapter.tokenizer
    assert type(tok).__name__ == cls and tok.mask_token == mask and tok.pad_token_id == pad
    ids = tok("the movie was good")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(ids) > 3
    batch = padded_batch(adapter)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == pad).all()  # padding is the family's id


@pytest.mark.parametrize("model_type,cls,mask,pad", FAMILIES, ids=IDS)
def test_asa_masks_leave_the_familys_padding_masked(model_dirs, model_type, cls, mask, pad):
    torch.manual_seed(0)
    adapter = load_adapter(str(model_dirs(model_type)), 2)
    adapter.model.eval()
    defence = ASADefence(ASAParams(), adapter)
    batch = padded_batch(adapter)
    plain = adapter.forward(batch).logits
    with defence.adversarial_attention(batch) as masks:
        masked = adapter.forward(batch).logits
    real = asa_f.pair_mask(batch["attention_mask"])  # (B, L, L)
    assert len(masks) == adapter.num_layers
    assert all((m[~real] == 0).all() and 0 < m[real].mean() < 1 for m in masks)
    assert not torch.allclose(plain, masked, atol=1e-5)


@pytest.mark.parametrize("name", ["scal", "uscal"])
@pytest.mark.parametrize("model_type,cls,mask,pad", FAMILIES, ids=IDS)
def test_prompt_pooling_finds_the_familys_mask_token(model_dirs, model_type, cls, mask, pad, name):
    adapter = load_adapter(str(model_dirs(model_type)), 2)
    defence_cls = get_plugin_manager().defences.get(name)
    defence = defence_cls(defence_cls.Params(pooling="prompt", template='This film "[X]" was [MASK] .'), adapter)
    batch = padded_batch(adapter)
    view, positions = defence.representations.view(batch)
    rows = torch.arange(len(TEXTS))
    assert (view["input_ids"][rows, positions] == adapter.tokenizer.mask_token_id).all()
    assert (view["input_ids"][:, 0] == adapter.tokenizer.cls_token_id).all()
    for row, length in zip(view["input_ids"], view["attention_mask"].sum(1)):
        assert row[length - 1] == adapter.tokenizer.sep_token_id  # each row closes with the family's end token
    result = defence.training_step(batch, lambda loss: loss.backward())
    assert torch.isfinite(torch.tensor(result.loss))


@pytest.mark.parametrize("model_type,cls,mask,pad", FAMILIES, ids=IDS)
def test_asa_trains_and_exports_with_the_familys_tokenizer(model_dirs, model_type, cls, mask, pad, run_config,
                                                           tmp_path):
    config = run_config(defence='name = "asa"', train="max_steps = 2", backbone=model_dirs(model_type))
    assert main(["train", str(config)]) == 0
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert type(exported).__name__ == cls and exported.mask_token == mask
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


@pytest.mark.parametrize("model_type,cls,mask,pad", FAMILIES, ids=IDS)
def test_attack_wrapper_batches_equal_unpadded_forwards(model_dirs, model_type, cls, mask, pad, attack_cache):
    from asa_plugin.attacks.runner import load_wrapper
    from asa_plugin.attacks.textattack_env import import_textattack

    from asa_plugin.config import load_config

    import_textattack(attack_cache)
    wrapper = load_wrapper(str(model_dirs(model_type)), load_config(data={}).attack, 64)
    wrapper.batch_size = 2
    texts = [*TEXTS, "a quite tedious and boring story with bad acting but a wonderful charming plot"]
    with torch.no_grad():
        reference = torch.cat([wrapper.model(**wrapper.tokenizer(t, return_tensors="pt")).logits for t in texts])
    assert torch.allclose(wrapper(texts), reference, atol=1e-5)
