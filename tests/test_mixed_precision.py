"""Defences under fp16 and bf16 autocast on CPU: counts that fit, gradients that neither underflow nor overflow.

The model is a 12-layer tiny BERT (hidden 32) with room for 512 positions and dropout off, so that a
half-precision step can be compared with the float32 step on the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import convert_outputs_to_fp32
from asa_plugin.adapters.loading import load_adapter
from tiny import tiny_model_dir

from asa_plugin.defences import perturbation, scal
from asa_plugin.defences.asa import ASADefence, ASAParams
from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.defences.base import Defence, build_defence
from asa_plugin.plugins import get_plugin_manager

FP16, BF16 = torch.float16, torch.bfloat16
FP16_MAX = torch.finfo(FP16).max  # 65,504
DEEP = dict(num_hidden_layers=12, max_position_embeddings=512, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """A 12-layer tiny BERT (hidden 32) with 512 positions and no dropout."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-deep"), "bert", **DEEP)


def deep_adapter(deep_dir, dtype: torch.dtype | None = None):
    """The deep model in training mode; with ``dtype``, its forward runs under that CPU autocast and returns
    float32 outputs, as ``accelerator.prepare`` makes it (backward passes run outside autocast, as in the loop)."""
    torch.manual_seed(0)
    adapter = load_adapter(str(deep_dir), num_labels=2)
    adapter.model.train()
    if dtype is not None:
        adapter.model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=dtype)(adapter.model.forward))
    return adapter


def token_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random real tokens (no padding) and alternating labels: (B, L)."""
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 100, (batch_size, length), generator=generator),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "labels": torch.arange(batch_size) % 2}


def test_asa_kept_units_are_exact_float32_counts_under_fp16_autocast(deep_dir):
    """12 layers x 128^2 units per example: about half kept at initialisation, ~98,000 > fp16's 65,504."""
    adapter = deep_adapter(deep_dir, FP16)
    defence = ASADefence(ASAParams(), adapter)
    batch = token_batch(4, 128)
    with defence.adversarial_attention(batch) as masks:
        adapter.forward(batch)
    loss = defence.asa_objective(batch)
    assert masks[0].dtype == torch.float32  # the adversaries run in float32 under autocast
    per_layer = [asa_f.kept_units(m) for m in masks]  # (B,) each
    exact = [(m.detach() != 0).sum(dim=(1, 2)) for m in masks]  # (B,) int64 each
    for counted, truth in zip(per_layer, exact):
        assert counted.dtype == torch.float32
        assert torch.equal(counted.long(), truth) and torch.equal(counted, counted.round())
    total = torch.stack(exact).sum(0)  # (B,)
    assert total.min() > FP16_MAX  # the test really exceeds fp16's range
    assert torch.isfinite(loss)
    assert defence._last["asa_kept_units"] == pytest.approx(total.double().mean().item(), abs=0.5)


@pytest.mark.parametrize("dtype", [FP16, BF16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_kept_units_of_a_half_precision_mask_are_exact(dtype):
    mask = torch.ones(2, 512, 512, dtype=dtype)  # (B, L, L)
    mask[1, :3, :] = 0  # 1,536 units masked
    assert torch.equal(asa_f.kept_units(mask), torch.tensor([262_144.0, 260_608.0]))


def confident_adapter(deep_dir, batch, dtype=None):
    """The deep model made confident on ``batch`` (its labels set to the predictions, the classifier
    weights x 500): per-example CE 3e-6 to 2e-3, as late in training, where fp16 gradients underflow."""
    adapter = deep_adapter(deep_dir, dtype)
    with torch.no_grad():
        batch["labels"] = adapter.forward(batch).logits.argmax(-1)
        adapter.model.classifier.weight.mul_(500.0)
    return adapter


def per_example_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) x 2 -> (B,) cosine similarity of each example's entries."""
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def assert_same_direction_per_example(half: torch.Tensor, full: torch.Tensor) -> None:
    """Every token that has a float32 gradient keeps one (unscaled fp16 keeps only the [CLS] position of
    the most confident examples), and each example's direction matches float32's."""
    assert torch.isfinite(half).all()
    assert (full.norm(dim=-1) > 0).all()  # (B, L): every token has a gradient in float32
    assert (half.norm(dim=-1) > 0).all(), "input gradients of some tokens underflowed to zero"
    assert per_example_cosine(half, full).min() > 0.99


def test_pgd_input_gradient_under_fp16_keeps_every_examples_direction(deep_dir):
    batch = token_batch(4, 128)
    full_precision, half_precision = confident_adapter(deep_dir, batch), confident_adapter(deep_dir, batch, FP16)
    delta = perturbation.zero_delta(full_precision, batch).detach()
    full = perturbation.input_gradient(Defence(None, full_precision), batch, delta)
    with perturbation.loss_scaler(torch.amp.GradScaler("cpu")):  # as the training loop registers its scaler
        half = perturbation.input_gradient(Defence(None, half_precision), batch, delta)
    assert half.dtype == torch.float32
    assert_same_direction_per_example(half, full)


def test_scal_fgm_gradient_under_fp16_keeps_every_examples_direction(deep_dir, monkeypatch):
    batch = token_batch(4, 128)
    seen: list[torch.Tensor] = []
    real_fgm_delta = scal.fgm_delta

    def spy(grad, mask, epsilon):
        seen.append(grad.detach())
        return real_fgm_delta(grad, mask, epsilon)

    monkeypatch.setattr(scal, "fgm_delta", spy)
    for dtype, scaler in ((None, None), (FP16, torch.amp.GradScaler("cpu"))):
        adapter = confident_adapter(deep_dir, batch, dtype)
        with perturbation.loss_scaler(scaler):
            scal.SCALDefence(scal.SCALParams(), adapter).adversarial_pair(batch, None)
    full, half = seen
    assert_same_direction_per_example(half, full)


def test_input_grad_backs_off_when_the_scaled_gradient_overflows():
    """A gradient of 1e3 per entry scaled by 2^16 overflows float16; the result is still the true one."""
    x = torch.ones(2, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=FP16):
        loss = (x.half() * 1000.0).sum()
        grad = perturbation.input_grad(loss, x)
    assert torch.equal(grad, torch.full((2, 3), 1000.0))


# --- every defence, one step at 512 tokens: half precision against float32 ----------------------------------------
CASES = [[name] for name in get_plugin_manager().defences.names()] + [["asa", "freelb"]]
LENGTH = 512
TOLERANCE = {FP16: 0.05, BF16: 0.25}
"""Largest relative L2 distance of one step's SGD parameter update (model and defence modules) from the
float32 update: about fp16's and bf16's rounding (2^-11, 2^-8) grown through 12 layers and several passes."""
MAX_SCALE_BACKOFFS = 8


@dataclass
class Step:
    loss: float
    update: torch.Tensor  # (P,) one SGD step (lr 1) of every trainable parameter, float64
    kept_units: float | None  # ASA: kept units summed over the batch


def asa_part(defence):
    parts = getattr(defence, "parts", (defence,))
    return next((p for p in parts if isinstance(p, ASADefence)), None)


def one_step(deep_dir, names: list[str], batch, dtype: torch.dtype | None) -> Step:
    """``training_step`` of the defence on ``batch`` under ``dtype`` autocast (None: float32). fp16 runs as
    the training loop does on a GPU: every backward of a scaled loss, unscaled before the update, a step
    whose gradients overflowed skipped and taken again at a smaller scale (``GradScaler``'s back-off)."""
    registry = get_plugin_manager().defences
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, backoff_factor=0.5) if dtype == FP16 else None
    for _ in range(MAX_SCALE_BACKOFFS):
        adapter = deep_adapter(deep_dir, dtype)
        defence = build_defence(names, {n: registry.get(n).Params() for n in names}, adapter, registry)
        params = [p for p in adapter.model.parameters()] + [p for m in defence.trainable_modules()
                                                             for p in m.parameters()]
        optimizer = torch.optim.SGD(params, lr=1.0)
        before = torch.cat([p.detach().flatten().double() for p in params])

        def backward(loss):
            (scaler.scale(loss) if scaler else loss).backward()

        torch.manual_seed(1)  # FreeLB's random start
        with perturbation.loss_scaler(scaler):
            result = defence.training_step(batch, backward)
        if scaler is None:
            optimizer.step()
            break
        scaler.unscale_(optimizer)
        scaler.step(optimizer)  # skipped when a gradient overflowed
        found_inf = sum(v.item() for v in scaler._found_inf_per_device(optimizer).values())
        scaler.update()
        if not found_inf:
            break
    else:
        pytest.fail(f"fp16 gradients overflowed at every scale down to {scaler.get_scale()}")
    after = torch.cat([p.detach().flatten().double() for p in params])
    asa = asa_part(defence)
    kept = float(asa._last["asa_kept_units"]) * batch["labels"].shape[0] if asa else None  # a 0-d tensor
    return Step(result.loss, after - before, kept)


@pytest.fixture(scope="module")
def float32_steps(deep_dir):
    """The float32 step of each case, computed once."""
    cache: dict[str, Step] = {}

    def get(names: list[str], batch) -> Step:
        key = "+".join(names)
        if key not in cache:
            cache[key] = one_step(deep_dir, names, batch, None)
        return cache[key]

    return get


@pytest.mark.parametrize("dtype", [FP16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("names", CASES, ids=["+".join(c) for c in CASES])
def test_one_step_at_512_tokens_under_autocast_matches_float32(deep_dir, float32_steps, names, dtype):
    batch = token_batch(2, LENGTH)
    full = float32_steps(names, batch)
    half = one_step(deep_dir, names, batch, dtype)
    assert math.isfinite(half.loss)
    assert torch.isfinite(half.update).all()
    if half.kept_units is not None:  # counted exactly, far above fp16's exact-integer range
        assert half.kept_units == round(half.kept_units) > 2048
    distance = ((half.update - full.update).norm() / full.update.norm()).item()
    assert distance < TOLERANCE[dtype], f"{'+'.join(names)} {dtype}: update {distance:.3g} away from float32's"


# --- the training loop's fp16 path, end to end -----------------------------------------------------------------
class CPUFloat16Accelerator(Accelerator):
    """Accelerate's fp16 path as on a GPU (forward under fp16 autocast, a ``GradScaler`` over backward, clipping
    and step), on CPU: Accelerate itself runs fp16 on CPU as plain float32, which is why the loop refuses it."""

    dtypes: list[torch.dtype] = []  # output dtypes of the model's first Linear layer

    def __init__(self, *args, **kwargs):
        AcceleratorState._reset_state(True)
        super().__init__(*args, **kwargs)
        assert self.mixed_precision == "fp16" and self.scaler is None
        self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu")

    def prepare(self, *args, **kwargs):
        prepared = super().prepare(*args, **kwargs)
        first = next(m for m in prepared[0].modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda module, inputs, out: self.dtypes.append(out.dtype))
        return prepared


@pytest.mark.parametrize("defence", ['name = ["asa", "freelb"]', 'name = "pgd"', 'name = "scal"'],
                         ids=["asa+freelb", "pgd", "scal"])
def test_a_run_config_trains_end_to_end_under_fp16(run_config, monkeypatch, defence):
    from asa_plugin.config import load_config
    from asa_plugin.training import loop

    monkeypatch.setattr(loop, "Accelerator", CPUFloat16Accelerator)
    monkeypatch.setattr(loop, "check_mixed_precision", lambda *args: None)
    monkeypatch.setattr(CPUFloat16Accelerator, "dtypes", [])
    scales: list[float] = []
    real_input_grad = perturbation.input_grad

    def spy(loss, inputs, retain_graph=False):
        scales.append(float(perturbation._scalers[-1].get_scale()))  # the loop registered its scaler
        return real_input_grad(loss, inputs, retain_graph)

    monkeypatch.setattr(perturbation, "input_grad", spy)
    monkeypatch.setattr(scal, "input_grad", spy)
    config = run_config(defence, train='mixed_precision = "fp16"\nmax_steps = 3\nepochs = 1')
    try:
        metrics = loop.train(load_config(config))
    finally:
        AcceleratorState._reset_state(True)
    assert set(CPUFloat16Accelerator.dtypes) == {FP16}  # every forward of the model ran in fp16
    assert metrics["steps"] == 3
    assert all(math.isfinite(s["loss"]) for s in metrics["step_history"])
    if "pgd" in defence or "scal" in defence:
        assert scales
