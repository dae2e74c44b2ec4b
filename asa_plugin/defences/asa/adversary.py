"""The ASA adversaries: one single-head query/key scorer per adversarial layer.

Each scorer reads the layer's input hidden states with the gradient stopped (so the model is
never trained through the adversary's inputs) and proposes a binary mask over the layer's
attention units. Saved beside a run (``asa_adversary.safetensors`` + ``asa_adversary.json``),
never inside the exported model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.errors import UserError

WEIGHTS_FILE = "asa_adversary.safetensors"
META_FILE = "asa_adversary.json"


class LayerAdversary(nn.Module):
    """Scores every (query, key) pair of one layer: (B, L, H) -> (B, L, L)."""

    def __init__(self, hidden_size: int, projection_size: int, init_std: float | None = None):
        super().__init__()
        self.query = nn.Linear(hidden_size, projection_size)
        self.key = nn.Linear(hidden_size, projection_size)
        self.scale = 1.0 / math.sqrt(projection_size)
        if init_std is not None:  # the model's own init, as the official code's init_weights() gives them
            for linear in (self.query, self.key):
                nn.init.normal_(linear.weight, mean=0.0, std=init_std)
                nn.init.zeros_(linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """In the adversary's own dtype (float32), also under autocast: the tau term's gradient sums
        over all L^2 units of a layer, and in fp16 it overflows at any useful loss scale."""
        hidden = hidden_states.detach().to(self.query.weight.dtype)  # (B, L, H): gradient stopped into the model
        with torch.autocast(hidden.device.type, enabled=False):
            q = self.query(hidden)  # (B, L, d)
            k = self.key(hidden)  # (B, L, d)
            return q @ k.transpose(-1, -2) * self.scale  # (B, L, L)


class ASAAdversary(nn.Module):
    """The per-layer adversaries of one model; ``mask`` gives a layer's hard 0/1 mask."""

    def __init__(self, hidden_size: int, layers: list[int], projection_size: int, init_std: float | None = None):
        """``init_std``: normal(0, init_std) weights and zero biases (the backbone's
        ``initializer_range``); None keeps PyTorch's default ``nn.Linear`` init."""
        super().__init__()
        self.hidden_size, self.projection_size = hidden_size, projection_size
        self.layers = sorted(layers)
        self.per_layer = nn.ModuleDict({str(i): LayerAdversary(hidden_size, projection_size, init_std)
                                        for i in self.layers})

    def has_layer(self, layer: int) -> bool:
        return str(layer) in self.per_layer

    def scores(self, layer: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores QK^T/sqrt(d) plus the padding mask: (B, L, H), (B, L) -> (B, L, L)."""
        scores = self.per_layer[str(layer)](hidden_states)  # (B, L, L)
        return scores + asa_f.padding_bias(attention_mask, scores.dtype)  # (B, L, L)

    def mask(self, layer: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
             noise: bool = False) -> torch.Tensor:
        """Hard mask M_l (B, L, L): 1 keeps a unit, 0 masks it; padding units are always 0.

        Straight-through: the forward value is binary, the gradient that of sigmoid(scores).
        """
        scores = self.scores(layer, hidden_states, attention_mask)  # (B, L, L)
        if noise:
            scores = scores + asa_f.logistic_noise(scores)
        mask = asa_f.straight_through_binarize(scores)  # (B, L, L)
        return mask * asa_f.pair_mask(attention_mask).to(mask.dtype)  # (B, L, L)

    # --- persistence -------------------------------------------------------------------------
    def save(self, run_dir: str | Path, **meta) -> None:
        """Write ``asa_adversary.safetensors`` and ``asa_adversary.json`` into ``run_dir``."""
        from safetensors.torch import save_file

        run_dir = Path(run_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(run_dir / WEIGHTS_FILE))
        info = {"hidden_size": self.hidden_size, "projection_size": self.projection_size,
                "layers": self.layers, **meta}
        (run_dir / META_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, run_dir: str | Path) -> tuple[ASAAdversary, dict]:
        """The adversary saved in ``run_dir`` and its metadata."""
        from safetensors.torch import load_file

        run_dir = Path(run_dir)
        if not (run_dir / WEIGHTS_FILE).is_file() or not (run_dir / META_FILE).is_file():
            raise UserError(f"{run_dir} has no {WEIGHTS_FILE}: asa-maps needs the run directory of a "
                            f'training run with defence name = "asa"')
        info = json.loads((run_dir / META_FILE).read_text())
        adversary = cls(info["hidden_size"], info["layers"], info["projection_size"])
        adversary.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)))
        return adversary.eval(), info
