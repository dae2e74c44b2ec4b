"""A TextAttack ``ModelWrapper`` that queries a classifier fast: dynamic padding, length-sorted
batches, inference mode, the GPU when there is one.

TextAttack's ``HuggingFaceModelWrapper`` pads every query to the tokenizer's ``model_max_length``
(512 for BERT-style models), so a 20-token sentence costs a 512-token forward. Here each batch is
padded to its longest member, and queries are sorted by length first so batches are uniform.
The model runs in eval mode with no defence hooks (it is loaded fresh from its checkpoint).

Import this module only after :func:`asa_plugin.attacks.textattack_env.import_textattack`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from textattack.models.wrappers import ModelWrapper


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from asa_plugin.errors import UserError

        raise UserError("attack.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device(name)


class FastModelWrapper(ModelWrapper):
    """Wraps a HF sequence classifier and its tokenizer for TextAttack; returns logits (N, C)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, max_length: int | None = None,
                 device: str | torch.device = "auto"):
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or min(int(tokenizer.model_max_length), 512)
        self.num_queries = 0

    def _encode(self, texts: Sequence) -> dict[str, list]:
        if texts and isinstance(texts[0], (tuple, list)):  # multi-column inputs (premise, hypothesis)
            first, second = zip(*texts)
            return self.tokenizer(list(first), list(second), truncation=True, max_length=self.max_length)
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)

    @torch.inference_mode()
    def __call__(self, text_input_list: Sequence) -> torch.Tensor:
        """Logits for each input, in input order: (N, C) float32 on the CPU."""
        self.num_queries += len(text_input_list)
        enc = self._encode(text_input_list)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        order = sorted(range(len(text_input_list)), key=lambda i: len(enc["input_ids"][i]))
        out = torch.empty(len(order), self.model.config.num_labels)  # (N, C)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self._pad([[enc[k][i] for i in idx] for k in keys], keys)
            logits = self.model(**batch).logits  # (B, C)
            out[idx] = logits.float().cpu()
        return out

    def _pad(self, columns: list[list[list[int]]], keys: list[str]) -> dict[str, torch.Tensor]:
        """Right-pad token lists to the batch's longest: {key: (B, L_max)} on the device."""
        width = max(len(ids) for ids in columns[0])
        pad_id = self.tokenizer.pad_token_id or 0
        batch = {}
        for key, rows in zip(keys, columns):
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([row + [fill] * (width - len(row)) for row in rows])  # (B, L_max)
        return {k: v.to(self.device) for k, v in batch.items()}

    def get_grad(self, text_input: str) -> dict[str, np.ndarray]:
        """Gradient of the loss at the predicted label w.r.t. the input word embeddings (eval mode)."""
        embedding_layer = self.model.get_input_embeddings()
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            output.retain_grad()
            captured.append(output)

        handle = embedding_layer.register_forward_hook(keep)
        try:
            self.model.zero_grad(set_to_none=True)
            enc = self._encode([text_input])  # a text, or a (text, text_pair) tuple
            batch = self._pad([enc[k] for k in enc.keys()], list(enc.keys()))
            with torch.enable_grad():
                logits = self.model(**batch).logits  # (1, C)
                loss = torch.nn.functional.cross_entropy(logits, logits.argmax(-1))
                loss.backward()
        finally:
            handle.remove()
        grad = captured[0].grad[0].detach().cpu().numpy()  # (L, H)
        self.model.zero_grad(set_to_none=True)
        return {"ids": batch["input_ids"].cpu(), "gradient": grad}

    def _tokenize(self, inputs: Sequence[str]) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(ids) for ids in self._encode(inputs)["input_ids"]]
