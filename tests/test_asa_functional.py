"""ASA's maths: values and gradient signs of the pure functions, and config validation."""

from __future__ import annotations

import pytest
import torch

from asa_plugin.defences.asa import ASAParams
from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.errors import ConfigError
from asa_plugin.schema import build

BINARIZE_CASES = [  # scores -> hard mask (strictly positive keeps)
    ([-3.0, -0.1, 0.0, 0.1, 5.0], [0.0, 0.0, 0.0, 1.0, 1.0]),
    ([[1e4, -1e4]], [[1.0, 0.0]]),
]


@pytest.mark.parametrize("scores,expected", BINARIZE_CASES)
def test_binarizer_forward_is_hard_zero_one(scores, expected):
    out = asa_f.straight_through_binarize(torch.tensor(scores))
    assert torch.equal(out, torch.tensor(expected))


def test_binarizer_gradient_is_sigmoid_gradient():
    scores = torch.linspace(-4, 4, 17, requires_grad=True)
    upstream = torch.randn(17)
    (asa_f.straight_through_binarize(scores) * upstream).sum().backward()
    reference = scores.detach().clone().requires_grad_(True)
    (torch.sigmoid(reference) * upstream).sum().backward()
    assert torch.allclose(scores.grad, reference.grad)
    assert scores.grad.abs().min() > 0  # every unit gets a gradient, also where the value is 0


@pytest.mark.parametrize("scale", [1.0, 0.5, 3.0])
def test_gradient_reversal_is_identity_forward_and_flips_the_gradient(scale):
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = asa_f.grad_reverse(x, scale)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    assert torch.allclose(x.grad, -scale * upstream)


def test_symmetric_kl_values():
    p = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    lp, lq = p.log_softmax(-1), q.log_softmax(-1)
    kl_pq = (lp.exp() * (lp - lq)).sum(-1)
    kl_qp = (lq.exp() * (lq - lp)).sum(-1)
    expected = (kl_pq + kl_qp).mean()
    assert torch.allclose(asa_f.symmetric_kl(p, q), expected)
    assert torch.allclose(asa_f.symmetric_kl(q, p), expected)  # symmetric
    assert asa_f.symmetric_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert asa_f.symmetric_kl(p, q).item() > 0


def test_symmetric_kl_pulls_both_sides_together():
    p = torch.tensor([[2.0, -1.0]], requires_grad=True)
    q = torch.tensor([[-1.0, 2.0]], requires_grad=True)
    asa_f.symmetric_kl(p, q).backward()
    # descending moves p toward q's preferred class and q toward p's
    assert p.grad[0, 0] > 0 and p.grad[0, 1] < 0
    assert q.grad[0, 1] > 0 and q.grad[0, 0] < 0


def test_padding_is_masked_in_pair_mask_and_bias():
    attention_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pairs = asa_f.pair_mask(attention_mask)
    assert pairs.shape == (2, 3, 3)
    assert not pairs[0, 2].any() and not pairs[0, :, 2].any()  # padding row and column
    assert pairs[0, :2, :2].all() and pairs[1].all()
    bias = asa_f.padding_bias(attention_mask, torch.float32)
    assert torch.equal(bias == asa_f.MASK_VALUE, ~pairs)


def test_mask_to_bias_is_shared_across_heads():
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    bias = asa_f.mask_to_bias(mask)
    assert bias.shape == (1, 1, 2, 2)  # broadcast over heads
    assert torch.equal(bias[0, 0], torch.tensor([[0.0, asa_f.MASK_VALUE], [asa_f.MASK_VALUE, 0.0]]))
    assert torch.equal(asa_f.kept_units(mask), torch.tensor([2.0]))


def test_logistic_noise_is_a_standard_logistic_not_a_gaussian():
    from scipy import stats

    torch.manual_seed(0)
    noise = asa_f.logistic_noise(torch.zeros(20000)).double().numpy()
    assert stats.kstest(noise, stats.logistic.cdf).pvalue > 0.01
    # A Gaussian of the same mean and std is rejected: the test can tell the tails apart.
    assert stats.kstest(noise, stats.norm(0, noise.std()).cdf).pvalue < 1e-4


PARAM_CASES = [  # (config values, error fragment or None)
    ({}, None),
    ({"tau": 1.0, "layers": [0, 1], "projection_size": 16, "gumbel_noise": True, "adversarial_ce": True}, None),
    ({"layers": "all"}, None),
    ({"tau": -0.1}, "defence.tau must be >= 0"),
    ({"layers": []}, "at least one layer"),
    ({"layers": [0, -1]}, ">= 0"),
    ({"layers": [1, 1]}, "twice"),
    ({"layers": "bottom"}, "defence.layers must be"),
    ({"projection_size": 0}, "defence.projection_size must be >= 1"),
    ({"temperature": 1.0}, "unknown key defence.temperature"),
]


@pytest.mark.parametrize("values,error", PARAM_CASES)
def test_params_validation(values, error):
    if error is None:
        params = build(ASAParams, values, section="defence", source="run.toml")
        assert params.layer_indices(4) == (values.get("layers") if isinstance(values.get("layers"), list)
                                           else [0, 1, 2, 3])
    else:
        with pytest.raises(ConfigError, match=error):
            build(ASAParams, values, section="defence", source="run.toml")


def test_defaults_follow_the_paper():
    params = ASAParams()
    assert params.tau == 0.5 and params.layers == "all" and params.projection_size is None
    assert not params.gumbel_noise and not params.adversarial_ce
