"""Clean attention maps beside the trained adversaries' masks (the paper's Figure 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from asa_plugin.defences.asa.adversary import ASAAdversary
from asa_plugin.errors import UserError


@dataclass
class LayerMap:
    """One layer's clean attention (mean over heads) and adversary mask, both (L, L)."""

    layer: int
    attention: torch.Tensor
    mask: torch.Tensor

    @property
    def masked_ratio(self) -> float:
        return 1.0 - self.mask.float().mean().item()


def _max_length(run_dir: Path) -> int:
    from asa_plugin.fileio import tomllib

    resolved = run_dir / "config.resolved.toml"
    if resolved.is_file():
        return int(tomllib.loads(resolved.read_text()).get("model", {}).get("max_length", 128))
    return 128


@torch.no_grad()
def compute_maps(run_dir: str | Path, text: str, layers: list[int] | None = None) -> tuple[list[str], list[LayerMap]]:
    """Tokens of ``text`` and, per chosen layer, the exported model's clean attention and the
    saved adversary's mask. ``layers=None`` means every adversarial layer."""
    from asa_plugin.adapters.loading import load_adapter

    run_dir = Path(run_dir)
    if not text.strip():
        raise UserError("--text is empty; give the sentence whose attention to draw")
    adversary, _ = ASAAdversary.load(run_dir)
    layers = adversary.layers if layers is None else layers
    missing = [i for i in layers if not adversary.has_layer(i)]
    if missing:
        raise UserError(f"--layers: layer {missing[0]} has no adversary in {run_dir}; "
                        f"adversarial layers: {','.join(map(str, adversary.layers))}")
    if not (run_dir / "model").is_dir():
        raise UserError(f"{run_dir} has no model/ directory; is it a finished training run?")
    adapter = load_adapter(str(run_dir / "model"), attn_implementation="eager")
    adapter.model.eval()
    max_length = _max_length(run_dir)
    full = len(adapter.tokenizer(text)["input_ids"])
    if full > max_length:
        import sys

        print(f"advrobust asa-maps: note: --text has {full} tokens; the run's model.max_length is {max_length}, so "
              f"the maps show its first {max_length} (what the model sees)", file=sys.stderr, flush=True)
    enc = adapter.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    out = adapter.model(**enc, output_attentions=True, output_hidden_states=True, return_dict=True)
    maps = []
    for i in layers:
        attention = out.attentions[i][0].mean(0)  # (L, L), mean over heads
        mask = adversary.mask(i, out.hidden_states[i], enc["attention_mask"])[0]  # (L, L); input of layer i
        maps.append(LayerMap(i, attention, mask))
    tokens = adapter.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    return tokens, maps


def render(tokens: list[str], maps: list[LayerMap], out_path: str | Path, title: str = "") -> Path:
    """Draw one row per layer: clean attention (left) and the adversary's mask (right); PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tokens)
    size = max(4.5, 0.28 * n + 1.5)  # wide enough for the panel titles
    fig, axes = plt.subplots(len(maps), 2, figsize=(2 * size + 1, size * len(maps)), squeeze=False)
    for row, layer_map in zip(axes, maps):
        left, right = row
        image = left.imshow(layer_map.attention.numpy(), cmap="viridis", vmin=0)
        left.set_title(f"layer {layer_map.layer}: clean attention (mean of heads)")
        fig.colorbar(image, ax=left, fraction=0.046, pad=0.04)
        right.imshow(layer_map.mask.numpy(), cmap="gray", vmin=0, vmax=1)
        right.set_title(f"layer {layer_map.layer}: ASA mask (black = masked, {layer_map.masked_ratio:.0%})")
        for ax in row:
            ax.set_xticks(range(n), tokens, rotation=90, fontsize=8)
            ax.set_yticks(range(n), tokens, fontsize=8)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
