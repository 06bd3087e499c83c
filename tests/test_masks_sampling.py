"""Sampling of hard Gumbel-sigmoid masks: frequencies, straight-through gradients, seeding."""

import math

import pytest
import torch

from modscope.masks.sampling import (
    bits_to_uniform,
    hard_gumbel_sigmoid,
    logistic_noise,
    masked_weights,
    noise_bits,
    noise_keys,
)


def keys_for(n_tasks, samples, g):
    return noise_keys(n_tasks * samples, g).view(n_tasks, samples, 2)


def test_keep_frequency_matches_sigmoid_of_logit():
    logits = torch.linspace(-4, 4, 9).unsqueeze(0)  # (T=1, N=9)
    samples = 20_000
    keys = keys_for(1, samples, torch.Generator().manual_seed(1))
    kept = masked_weights(logits, keys, torch.ones(9)).mean(1)[0]
    expected = torch.sigmoid(logits[0])
    sd = (expected * (1 - expected) / samples).sqrt()
    assert torch.all((kept - expected).abs() < 5 * sd + 1e-4), (kept, expected)


def test_reference_sampler_keep_frequency_and_values():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5])
    noise = logistic_noise((50_000, 3), g)
    sample = hard_gumbel_sigmoid(logits, noise)
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(sample.mean(0), torch.sigmoid(logits), atol=0.01)


def test_fused_sampler_equals_reference_forward_and_gradient():
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 500, generator=g) * 3).requires_grad_(True)
    keys = keys_for(2, 4, g)
    bits = noise_bits(keys, 500)
    weight = torch.randn(500, generator=g)
    upstream = torch.randn(2, 4, 500, generator=g)
    out = masked_weights(logits, keys, weight)
    (grad,) = torch.autograd.grad(out, logits, upstream)

    ref_logits = logits.detach().double().requires_grad_(True)
    noise = torch.special.logit(bits_to_uniform(bits).double())
    ref = weight.double() * hard_gumbel_sigmoid(ref_logits.unsqueeze(1), noise)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits, upstream.double())
    assert torch.equal(out.double(), ref.detach())
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)


def test_straight_through_gradient_is_the_soft_sigmoids():
    logits = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    noise = torch.tensor([0.5, 2.0, -0.7])
    hard = hard_gumbel_sigmoid(logits, noise)
    hard.sum().backward()
    soft = torch.sigmoid(logits.detach() + noise)
    assert torch.equal(hard.detach(), (soft > 0.5).float())
    assert torch.allclose(logits.grad, soft * (1 - soft))


def test_noise_is_seeded_and_covers_the_range():
    a = noise_bits(noise_keys(3, torch.Generator().manual_seed(5)), 1000)
    b = noise_bits(noise_keys(3, torch.Generator().manual_seed(5)), 1000)
    c = noise_bits(noise_keys(3, torch.Generator().manual_seed(6)), 1000)
    assert a.shape == (3, 1000) and torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= -32768 and int(a.max()) <= 32767
    u = bits_to_uniform(a)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert math.isclose(float(u.mean()), 0.5, abs_tol=0.02)


def _chi2_uniform(values, bins):
    counts = torch.bincount(values, minlength=bins).double()
    expected = values.numel() / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_noise_bits_are_uniform_and_independent_across_samples_and_steps():
    """Chi-square tests of the counter-based generator: the bits of each sample (high and low byte), pairs of
    samples of one step (joint histogram of the top 4 bits) and the same sample index on consecutive steps
    (drawn from the same generator, like training does)."""
    g = torch.Generator().manual_seed(11)
    n = 1 << 16
    keys = noise_keys(8, g)
    bits = noise_bits(keys, n) + 32768  # (8, n) in [0, 65536)
    # df = bins - 1; a bound of df + 6 sqrt(2 df) fails a correct generator with probability about 1e-8
    for row in bits:
        assert _chi2_uniform(row >> 8, 256) < 255 + 6 * math.sqrt(2 * 255)
        assert _chi2_uniform(row & 255, 256) < 255 + 6 * math.sqrt(2 * 255)
    for a, b in [(0, 1), (2, 7), (3, 4)]:
        joint = (bits[a] >> 12) * 16 + (bits[b] >> 12)
        assert _chi2_uniform(joint, 256) < 255 + 6 * math.sqrt(2 * 255)
    nxt = noise_bits(noise_keys(8, g), n) + 32768  # the next step of the same generator
    for s in range(8):
        joint = (bits[s] >> 12) * 16 + (nxt[s] >> 12)
        assert _chi2_uniform(joint, 256) < 255 + 6 * math.sqrt(2 * 255)
    # adjacent indices of one sample are not correlated either
    joint = (bits[0, :-1] >> 12) * 16 + (bits[0, 1:] >> 12)
    assert _chi2_uniform(joint, 256) < 255 + 6 * math.sqrt(2 * 255)


def test_noise_bits_differ_across_tasks():
    from modscope.seeding import derive

    n = 1 << 16
    bits = [
        noise_bits(noise_keys(4, torch.Generator().manual_seed(derive(0, t))), n) + 32768
        for t in ("add", "mul")
    ]
    for s in range(4):
        joint = (bits[0][s] >> 12) * 16 + (bits[1][s] >> 12)
        assert _chi2_uniform(joint, 256) < 255 + 6 * math.sqrt(2 * 255)


def test_noise_bits_of_a_slice_equal_the_slice_of_the_bits():
    keys = noise_keys(3, torch.Generator().manual_seed(2))
    full = noise_bits(keys, 1000)
    assert torch.equal(noise_bits(keys, 300, start=700), full[:, 700:])


@pytest.mark.parametrize("logit", [-30.0, 30.0])
def test_extreme_logits_are_deterministic(logit):
    keys = keys_for(1, 2000, torch.Generator().manual_seed(0))
    kept = masked_weights(torch.tensor([[logit]]), keys, torch.ones(1))
    assert torch.all(kept == (1.0 if logit > 0 else 0.0))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_fast_path_matches_reference_through_a_layer(monkeypatch, compiled, layer):
    """masked_weight_list (flat layout, fused or compiled kernels) against the generic reference: the same
    noise through hard_gumbel_sigmoid in float64, per-sample masked weights, a real layer, forward and the
    logit gradient."""
    from torch.func import functional_call, vmap

    from modscope.masks import kernels, sampling

    monkeypatch.setattr(kernels, "_COMPILE", compiled)
    monkeypatch.setattr(kernels, "_COMPILE_MIN_ELEMENTS", 0)
    g = torch.Generator().manual_seed(7)
    if layer == "linear":
        module, x = torch.nn.Linear(24, 16), torch.randn(2 * 3, 5, 24, generator=g)
    else:
        module, x = torch.nn.Conv2d(3, 8, 3), torch.randn(2 * 3, 2, 3, 6, 6, generator=g)
    shape = tuple(module.weight.shape)
    n_tasks, samples = 2, 3
    weight = sampling.to_flat(module.weight.detach(), shape)
    logits = (torch.randn(n_tasks, weight.numel(), generator=g) * 2).requires_grad_(True)
    keys = keys_for(n_tasks, samples, g)
    bits = noise_bits(keys, weight.numel())
    upstream = None

    def run(w):
        flat_w = w.reshape(n_tasks * samples, *shape)
        return vmap(lambda wi, xi: functional_call(module, {"weight": wi}, (xi,)))(flat_w, x)

    (sampled,) = sampling.masked_weight_list(logits, keys, weight, [shape])
    out = run(sampled)
    upstream = torch.randn(out.shape, generator=g)
    (grad,) = torch.autograd.grad(out, logits, upstream)

    module = module.double()
    ref_logits = sampling.from_flat(logits.detach().double(), shape).requires_grad_(True)
    noise = sampling.from_flat(torch.special.logit(bits_to_uniform(bits).double()), shape)
    ref_sampled = module.weight.detach() * hard_gumbel_sigmoid(ref_logits.unsqueeze(1), noise)
    x = x.double()
    ref_out = run(ref_sampled)
    (ref_grad,) = torch.autograd.grad(ref_out, ref_logits, upstream.double())
    assert torch.equal(sampled.double(), ref_sampled.detach())
    assert torch.allclose(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(sampling.from_flat(grad, shape).double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert grad.abs().max() > 1e-3  # a gradient that is really there


def test_flat_layout_round_trip_and_nonfinite_weights_dropped_exactly():
    from modscope.masks import sampling

    t = torch.arange(24.0).reshape(2, 3, 4)
    for shape in [(3, 4), (2, 3, 4)]:
        src = t.reshape(-1, *shape) if len(shape) == 2 else t
        flat = sampling.to_flat(src, shape)
        assert torch.equal(sampling.from_flat(flat, shape), src)
    weight = torch.tensor([float("inf"), float("nan"), 1.0])
    keys = keys_for(1, 1, torch.Generator().manual_seed(0))
    out = sampling.masked_weights(torch.full((1, 3), -30.0), keys, weight)  # every weight dropped
    assert torch.equal(out, torch.zeros(1, 1, 3))


@pytest.mark.parametrize("compiled", [False, True])
def test_keep_probabilities_are_the_sigmoid_and_the_read_out_count(monkeypatch, compiled):
    from modscope.masks import kernels, sampling

    monkeypatch.setattr(kernels, "_COMPILE", compiled)
    monkeypatch.setattr(kernels, "_COMPILE_MIN_ELEMENTS", 0)
    logits = torch.tensor([[-3.0, 0.0, 0.5, 2.0], [1.0, 1.0, -1.0, 9.0]])
    probs, kept = sampling.keep_probabilities(logits)
    assert torch.allclose(probs, torch.sigmoid(logits))
    assert kept.tolist() == [2, 3]  # logit 0 is not kept: the read-out is logit > 0

    keys = keys_for(2, 3, torch.Generator().manual_seed(0))
    weight = torch.randn(4)
    given = sampling.masked_weight_list(logits, keys, weight, [(2, 2)], probs=probs)[0]
    assert torch.equal(given, sampling.masked_weight_list(logits, keys, weight, [(2, 2)])[0])


# ---------------------------------------------------------------- gates (masks.gates) and penalties


def test_gumbel_sigmoid_gate_is_the_fused_sampler():
    from modscope.masks import GumbelSigmoid
    from modscope.masks.sampling import masked_weight_list

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 30, generator=g)
    keys = keys_for(2, 3, g)
    weight = torch.randn(30, generator=g)
    shapes = [(4, 5), (10,)]
    gate = GumbelSigmoid()
    aux, kept = gate.precompute(logits)
    assert torch.equal(kept, (logits > 0).sum(-1).to(kept.dtype))
    got = gate.sample(logits, keys, weight, shapes, True, aux)
    want = masked_weight_list(logits, keys, weight, shapes)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert [tuple(t.shape) for t in got] == [(2, 3, 4, 5), (2, 3, 10)]


def test_hard_concrete_gate_known_probabilities():
    """Louizos et al. (2018), eq. 12 and its mirror: with s = sigmoid((logit + L) / temp), L logistic, and
    z = clamp(low + (high - low) s, 0, 1): P(z > 0) = sigmoid(logit - temp * log(-low / high)) and
    P(z = 1) = sigmoid(logit - temp * logit((1 - low) / (high - low)))."""
    from modscope.masks import HardConcrete

    temp, low, high = 0.5, -0.2, 1.3
    gate = HardConcrete(temperature=temp, limits=(low, high))
    logits = torch.tensor([[-1.5, 0.0, 0.7, 2.0]], dtype=torch.float64)
    samples = 40_000
    keys = keys_for(1, samples, torch.Generator().manual_seed(8))
    aux, _ = gate.precompute(logits)
    (z,) = gate.sample(logits, keys, torch.ones(4, dtype=torch.float64), [(4,)], True, aux)
    z = z[0]  # (samples, 4): the gate values themselves, the weights being 1
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    nonzero = torch.sigmoid(logits[0] - temp * math.log(-low / high))
    one = torch.sigmoid(logits[0] - temp * math.log((1 - low) / (high - 1)))
    for observed, p in (((z > 0).double().mean(0), nonzero), ((z == 1).double().mean(0), one)):
        sd = (p * (1 - p) / samples).sqrt()
        assert torch.all((observed - p).abs() < 5 * sd + 1e-3), (observed, p)


def test_hard_concrete_gradient_is_that_of_the_formula():
    from modscope.masks import HardConcrete

    gate = HardConcrete()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 12, generator=g, dtype=torch.float64, requires_grad=True)
    keys = keys_for(2, 3, g)
    weight = torch.randn(12, generator=g, dtype=torch.float64)
    out = torch.cat([o.flatten(2) for o in gate.sample(logits, keys, weight, [(3, 2), (6,)], True, None)], -1)
    u = bits_to_uniform(noise_bits(keys, 12)).double()
    s = torch.sigmoid((logits.unsqueeze(1) + torch.log(u / (1 - u))) / (2 / 3))
    ref = (-0.1 + 1.2 * s).clamp(0, 1)
    # parameter (3, 2) is 2-d: stored transposed in the flat layout, so compare in that layout
    flat = torch.cat([out[..., :6].reshape(2, 3, 3, 2).transpose(-1, -2).reshape(2, 3, 6), out[..., 6:]], -1)
    assert torch.allclose(flat, ref * weight)
    up = torch.randn(2, 3, 12, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(flat, logits, up)
    (want,) = torch.autograd.grad(ref * weight, logits, up)
    assert torch.allclose(got, want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be a positive finite number, got 0.0"),
        ({"temperature": math.inf}, "temperature must be a positive finite number, got inf"),
        ({"limits": (0.1, 1.1)}, "low < 0 and high > 1"),
        ({"limits": (-0.1, math.nan)}, "limits must be a finite number, got nan"),
        ({"limits": 1.0}, "limits must be a pair"),
    ],
)
def test_hard_concrete_bad_settings(kwargs, match):
    from modscope.masks import HardConcrete

    with pytest.raises(ValueError, match=match):
        HardConcrete(**kwargs)


@pytest.mark.parametrize("name", ["LogitPenalty", "ExpectedKeptPenalty"])
def test_penalty_gradient_equals_autograd_of_its_value(name):
    import modscope.masks as masks
    from modscope.masks import Penalty

    penalty = getattr(masks, name)(0.3)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 20, generator=g, dtype=torch.float64)
    batch_sizes = torch.tensor([4.0, 16.0, 7.0], dtype=torch.float64)
    got, generic = torch.ones_like(logits), torch.ones_like(logits)
    penalty.add_grad(got, logits, batch_sizes)
    Penalty.add_grad(penalty, generic, logits, batch_sizes)  # the autograd default
    assert torch.allclose(got, generic)
    if name == "LogitPenalty":
        assert torch.allclose(got - 1, (0.3 / batch_sizes).unsqueeze(1).expand(3, 20))
    else:
        p = torch.sigmoid(logits)
        assert torch.allclose(got - 1, 0.3 * p * (1 - p) / batch_sizes.unsqueeze(1))


@pytest.mark.parametrize("beta", [-1.0, math.nan, math.inf, None, "1e-3"])
def test_penalty_bad_beta(beta):
    from modscope.masks import ExpectedKeptPenalty, LogitPenalty

    for cls in (LogitPenalty, ExpectedKeptPenalty):
        with pytest.raises(ValueError, match=f"beta must be a non-negative finite number, got {beta!r}"):
            cls(beta)
