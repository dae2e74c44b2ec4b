"""``infobert``: InfoBERT (Wang et al., "InfoBERT: Improving Robustness of Language Models from an
Information Theoretic Perspective", ICLR 2021; AI-secure/InfoBERT), on its FreeLB-style base.

Two regularisers are added to every pass of a FreeLB ascent (K steps from a random start; each step
back-propagates its loss / K and moves delta by ``adv_lr`` along the per-example normalised gradient):

- **Information bottleneck** (``beta``): an upper bound on the mutual information between the input and
  the token representations, the authors' CLUB variant for the embedding layer's output ``e`` (the
  model's ``hidden_states[0]``, real tokens only): ``mean_i sum_d (e_i - e_r(i))^2 / 2`` with ``r`` a random
  index (with replacement) over the batch's tokens. Minimising it discards input information.
- **Anchored features** (``alpha``): for each example, the tokens whose perturbation gradient norm ranks
  between the ``cl`` and ``ch`` quantiles (robust but useful: not the most sensitive 10 %) are kept, and the
  InfoNCE lower bound on the mutual information between each such token's ``e`` and the sentence
  representation (the last layer's first token) is maximised. Its critic (an MLP on the concatenated
  pair) is trained with the model. The pairs are shuffled with a fixed seed and cut into chunks of
  ``critic_batch_size``, each chunk a separate InfoNCE (its other pairs are the negatives).

Per step: ``sum_k [CE_k + beta * upper_k - alpha * lower_k] / K``. The anchored tokens are chosen from the
gradient of ``(CE_k + beta * upper_k) / K`` with respect to the perturbation, as in the authors' trainer,
which reads it after a first backward; here it is taken with :func:`input_grad` before the step's single
backward, so DDP sees one backward per forward (the same value; one more input-gradient backward).
Every pass's loss comes from ``self.objective`` (composes with ASA); the representations come from the
objective's first forward of each pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from asa_plugin.defences.base import Backward, Batch, Defence, StepResult
from asa_plugin.defences.contrastive import capture_outputs
from asa_plugin.defences.perturbation import (
    ascent_direction,
    input_grad,
    project,
    random_init,
    token_mask,
)
from asa_plugin.schema import option


@dataclass
class InfoBERTParams:
    adv_steps: int = option(3, ge=1, help="ascent steps K of the FreeLB base")
    adv_lr: float = option(0.04, gt=0, help="size of one ascent step (L2, per example)")
    init_mag: float = option(0.08, ge=0, help="magnitude of the random start, normalized by sequence length")
    max_norm: float = option(0.0, ge=0, help="L2 bound of each example's perturbation; 0 = unbounded")
    alpha: float = option(5e-3, ge=0, help="weight of the anchored-feature InfoNCE lower bound")
    beta: float = option(5e-3, ge=0, help="weight of the information-bottleneck (CLUB) upper bound")
    cl: float = option(0.5, ge=0, le=1, help="lower quantile of the gradient-norm ranks of anchored tokens")
    ch: float = option(0.9, ge=0, le=1, help="upper quantile of the gradient-norm ranks of anchored tokens")
    critic_hidden: int = option(300, ge=1, help="hidden units of the InfoNCE critic")
    critic_batch_size: int = option(32, ge=1, help="anchored pairs per InfoNCE chunk")
    shuffle_seed: int = option(42, ge=0, help="seed of the fixed shuffle of anchored pairs before chunking")

    def __post_init__(self) -> None:
        if self.cl > self.ch:
            raise ValueError(f"defence.cl {self.cl} is larger than defence.ch {self.ch}: anchored tokens rank "
                             f"between cl and ch; use cl <= ch (the authors' 0.5 and 0.9)")


def club_upper_bound(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The authors' CLUB bound of the embedding output: ``mean_i sum_d (t_i - t_index[i])^2 / 2``.

    ``tokens``: (N, H) real-token representations; ``index``: (N,) the random negative of each.
    """
    return ((tokens.float() - tokens[index].float()) ** 2).sum(dim=-1).mean() / 2


def anchored_positions(grad_norms: torch.Tensor, cl: float, ch: float) -> torch.Tensor:
    """Indices of the tokens whose gradient norm ranks in ``[ceil(n * cl), ceil(n * ch))`` (ascending).

    ``grad_norms``: (n,) one example's real tokens; returns (m,) positions into it.
    """
    n = grad_norms.shape[0]
    order = torch.argsort(grad_norms, stable=True)  # (n,)
    return order[math.ceil(n * cl):math.ceil(n * ch)]


class InfoNCECritic(nn.Module):
    """InfoNCE lower bound on I(x; y) with a critic ``F(x, y) = softplus(MLP([x; y]))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Softplus())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x``, ``y``: (N, H) paired samples; returns the scalar bound (row i's negatives: the other x)."""
        n = x.shape[0]
        positive = self.score(torch.cat([x, y], dim=-1))  # (N, 1)
        pairs = torch.cat([x.unsqueeze(0).expand(n, n, -1), y.unsqueeze(1).expand(n, n, -1)], dim=-1)  # (N, N, 2H)
        scores = self.score(pairs)  # (N, N, 1): [i, j] = F(x_j, y_i)
        return positive.mean() - (scores.logsumexp(dim=1).mean() - math.log(n))


class InfoBERTDefence(Defence):
    """FreeLB ascent with InfoBERT's information-bottleneck and anchored-feature regularisers."""

    name = "infobert"
    Params = InfoBERTParams
    role = "procedure"
    step_cost = 4.3  # estimated, not timed yet: 3 passes plus an input-gradient backward each

    def __init__(self, params: InfoBERTParams, adapter):
        super().__init__(params, adapter)
        self.critic = InfoNCECritic(adapter.hidden_size, params.critic_hidden).to(adapter.model.device)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.critic]

    def _pass(self, batch: Batch, delta: torch.Tensor):
        """(objective loss, (B, L, H) embedding-layer output, (B, H) sentence representation)."""
        embeds = self.adapter.embed(batch["input_ids"])  # (B, L, E)
        with capture_outputs(self.adapter) as outputs:
            loss = self.objective(batch, embeds + delta)
        if not outputs:
            raise RuntimeError("the defence objective ran no forward pass of the model")
        sentence = self.adapter.sequence_representation(outputs[0], batch, pooling="cls")  # (B, H)
        return loss, outputs[0].hidden_states[0], sentence

    def anchored_lower_bound(self, tokens: torch.Tensor, sentence: torch.Tensor, grad: torch.Tensor,
                             real: torch.Tensor) -> torch.Tensor:
        """Mean InfoNCE bound between anchored tokens (B, L, H) and their sentence (B, H), over chunks."""
        p = self.params
        local, pooled = [], []
        norms = grad.norm(dim=-1)  # (B, L)
        for i in range(tokens.shape[0]):
            positions = real[i].nonzero().squeeze(-1)  # (n,)
            chosen = positions[anchored_positions(norms[i, positions], p.cl, p.ch)]  # (m,)
            local.append(tokens[i, chosen])
            pooled.append(sentence[i].expand(chosen.shape[0], -1))
        local_all, pooled_all = torch.cat(local), torch.cat(pooled)  # (M, H) each
        if local_all.shape[0] == 0:  # no anchored token: keep the critic in the graph (DDP)
            return sum(q.sum() for q in self.critic.parameters()) * 0.0
        generator = torch.Generator().manual_seed(p.shuffle_seed)
        order = torch.randperm(local_all.shape[0], generator=generator).to(local_all.device)
        local_all, pooled_all = local_all[order], pooled_all[order]
        bounds = [self.critic(local_all[s:s + p.critic_batch_size], pooled_all[s:s + p.critic_batch_size])
                  for s in range(0, local_all.shape[0], p.critic_batch_size)]
        return torch.stack(bounds).mean()

    def training_step(self, batch: Batch, backward: Backward) -> StepResult:
        p = self.params
        mask = token_mask(batch)  # (B, L, 1)
        real = mask.squeeze(-1) > 0  # (B, L)
        weight = self.adapter.input_embeddings().weight
        delta = random_init(mask, weight.shape[-1], p.init_mag).to(weight.dtype)  # (B, L, E)
        totals = {"task_loss": 0.0, "upper_bound": 0.0, "lower_bound": 0.0}
        for step in range(p.adv_steps):
            delta.requires_grad_()
            task, tokens, sentence = self._pass(batch, delta)
            flat = tokens[real]  # (N, H)
            index = torch.randint(flat.shape[0], (flat.shape[0],), device=flat.device)  # (N,)
            upper = p.beta * club_upper_bound(flat, index)
            ascent = (task + upper) / p.adv_steps
            grad = input_grad(ascent, delta, retain_graph=True)  # (B, L, E), float32
            lower = p.alpha * self.anchored_lower_bound(tokens, sentence, grad, real) / p.adv_steps
            backward(ascent - lower)
            totals["task_loss"] += task.detach().item() / p.adv_steps
            totals["upper_bound"] += upper.detach().item() / p.adv_steps
            totals["lower_bound"] += lower.detach().item()
            if step == p.adv_steps - 1:
                break
            delta = delta.detach() + p.adv_lr * ascent_direction(grad, mask, "l2").to(delta.dtype)
            if p.max_norm > 0:
                delta = project(delta, p.max_norm, "l2")
        loss = totals["task_loss"] + totals["upper_bound"] - totals["lower_bound"]
        return StepResult(loss=loss, metrics={f"infobert_{k}": v for k, v in totals.items()})
