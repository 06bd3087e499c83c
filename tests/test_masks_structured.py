"""Masks at unit, channel and head granularity, and MaskedModel in a plain torch loop: groupings, planted
known answers, exact all-ones masks, an untouched model, determinism and the penalty's normalization."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modscope.masks import (
    ExpectedKeptPenalty,
    HardConcrete,
    LogitPenalty,
    MaskedModel,
    MaskSet,
    groupings,
    iou,
    masked_call,
    train_masks,
)
from modscope.masks.grouped import GroupedPenalty

# ---------------------------------------------------------------- planted models: task "a" | task "b"


def nan_mse(out, y):
    """MSE over the finite targets: a task's target is NaN on the other task's outputs."""
    keep = torch.isfinite(y)
    return ((out - torch.nan_to_num(y)) ** 2)[keep].mean()


def _block(rows, cols, row_split, col_split, g, scale=1.0):
    """A weight whose top-left and bottom-right blocks are random and off-blocks exactly 0."""
    w = torch.zeros(rows, cols)
    w[:row_split, :col_split] = scale * torch.randn(row_split, col_split, generator=g)
    w[row_split:, col_split:] = scale * torch.randn(rows - row_split, cols - col_split, generator=g)
    return w


def planted_mlp() -> nn.Sequential:
    """8 -> 16 -> 4: task a's path is inputs 0-3, hidden units 0-7, outputs 0-1; task b's the rest."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    with torch.no_grad():
        net[0].weight.copy_(_block(16, 8, 8, 4, g, 1.5))
        net[2].weight.copy_(_block(4, 16, 2, 8, g))
        net[0].bias.zero_()
        net[2].bias.zero_()
    return net


class PlantedCNN(nn.Module):
    """2 -> 8 -> 4 channels, then Linear(4 * 25 -> 4): task a is input channel 0, conv channels 0-3 and
    0-1, outputs 0-1; task b the rest."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(2, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(100, 4)
        with torch.no_grad():
            w1 = torch.zeros(8, 2, 3, 3)
            w1[:4, 0], w1[4:, 1] = torch.randn(4, 3, 3, generator=g), torch.randn(4, 3, 3, generator=g)
            w2 = torch.zeros(4, 8, 3, 3)
            w2[:2, :4] = 0.5 * torch.randn(2, 4, 3, 3, generator=g)
            w2[2:, 4:] = 0.5 * torch.randn(2, 4, 3, 3, generator=g)
            self.conv1.weight.copy_(w1)
            self.conv2.weight.copy_(w2)
            self.fc.weight.copy_(_block(4, 100, 2, 50, g, 0.3))
            for m in (self.conv1, self.conv2, self.fc):
                m.bias.zero_()

    def forward(self, x):
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


class PlantedAttention(nn.Module):
    """Self-attention over 16 dims, 4 heads of 4, no biases: task a's inputs and outputs are dims 0-7,
    read and written by heads 0-1 only; task b's dims 8-15, heads 2-3. Output: the first token."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.attn = nn.MultiheadAttention(16, 4, bias=False, batch_first=True)
        with torch.no_grad():
            self.attn.in_proj_weight.copy_(torch.cat([_block(16, 16, 8, 8, g, 0.7) for _ in range(3)]))
            self.attn.out_proj.weight.copy_(_block(16, 16, 8, 8, g, 0.7))

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0][:, 0]


def planted_tasks(model, shape, split, n=256, seed=0, dim=1):
    """Tasks a and b: inputs zero outside the task's side of ``split`` in ``dim``, targets the model's
    outputs on the task's half of its outputs (NaN on the other half)."""
    g = torch.Generator().manual_seed(seed)
    tasks = {}
    for name, own in (("a", slice(0, split)), ("b", slice(split, None))):
        x, where = torch.zeros(n, *shape), (slice(None),) * dim + (own,)
        x[where] = torch.randn(n, *shape, generator=g)[where]
        with torch.no_grad():
            y = model(x)
        half = y.shape[1] // 2
        y[:, slice(half, None) if name == "a" else slice(0, half)] = float("nan")
        tasks[name] = (x, y)
    return tasks


def _train(model, tasks, granularity, fallback=None, steps=300):
    return train_masks(model, tasks, nan_mse, steps=steps, beta=1e-3, lr=0.05, batch_size=64, seed=0,
                       granularity=granularity, fallback=fallback)  # fmt: skip


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(p.requires_grad, p.grad) for p in model.parameters()],
            [m.training for m in model.modules()])  # fmt: skip


def _same_state(a, b):
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
            and a[1] == b[1] and a[2] == b[2])  # fmt: skip


# ---------------------------------------------------------------- groupings


class _Self(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.num_attention_heads = heads


class BertLayer(nn.Module):
    """The module layout of a Hugging Face BERT layer (attention.self / attention.output.dense / ...)."""

    def __init__(self, d=8, heads=2, ff=12):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = _Self(d, heads)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, ff)


def test_grouping_counts_per_granularity():
    lin = groupings(nn.Linear(5, 3), "unit")
    assert lin.n_groups == 3 and lin.sizes().tolist() == [5, 5, 5]
    assert lin.ids["weight"][:, 0].tolist() == [0, 1, 2]
    assert (lin.ids["weight"] == lin.ids["weight"][:, :1]).all()
    assert groupings(nn.Linear(5, 3), "weight").sizes().tolist() == [1] * 15
    conv = groupings(nn.Conv2d(2, 6, 3), "channel")
    assert conv.n_groups == 6 and conv.sizes().tolist() == [18] * 6
    tconv = groupings(nn.ConvTranspose2d(4, 6, 3, groups=2), "channel")  # weight (4, 3, 3, 3)
    assert tconv.n_groups == 6 and tconv.sizes().tolist() == [18] * 6
    assert tconv.ids["weight"][2, 1, 0, 0] == 4  # input 2 is in group 1: output channel 3 + 1
    lstm = groupings(nn.LSTM(4, 3, num_layers=2), "unit")
    assert lstm.n_groups == 6 and lstm.sizes().tolist() == [4 * (4 + 3)] * 3 + [4 * (3 + 3)] * 3
    assert lstm.ids["weight_ih_l0"][:, 0].tolist() == [0, 1, 2] * 4
    assert torch.equal(lstm.ids["weight_hh_l1"][:, 0], torch.tensor([3, 4, 5] * 4))
    mha = groupings(nn.MultiheadAttention(8, 2), "head")
    assert mha.n_groups == 2 and mha.sizes().tolist() == [3 * 4 * 8 + 8 * 4] * 2
    assert mha.ids["in_proj_weight"][:, 0].tolist() == ([0] * 4 + [1] * 4) * 3
    assert mha.ids["out_proj.weight"][0].tolist() == [0] * 4 + [1] * 4
    assert mha.implied == {"out_proj.weight"}  # gated through the heads' value rows
    assert groupings(nn.MultiheadAttention(8, 2), "head", names=["out_proj.weight"]).implied == set()


def test_grouping_bert_layout_heads_and_fallback():
    layer = BertLayer()
    with pytest.raises(ValueError, match=r"no rule for parameters \['intermediate.dense.weight'\]"):
        groupings(layer, "head")
    g = groupings(layer, "head", fallback="unit")
    assert g.n_groups == 2 + 12 and g.sizes()[:2].tolist() == [3 * 4 * 8 + 8 * 4] * 2
    assert g.ids["attention.self.value.weight"][:, 0].tolist() == [0] * 4 + [1] * 4
    assert g.ids["attention.output.dense.weight"][3].tolist() == [0] * 4 + [1] * 4
    assert g.ids["intermediate.dense.weight"][:, 0].tolist() == list(range(2, 14))
    assert g.implied == {"attention.output.dense.weight"}


def test_grouping_custom_and_bad_input():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    ids = {"0.weight": torch.tensor([[0, 0, 1], [1, 1, 0]]), "1.weight": torch.zeros(2, 2, dtype=int)}
    g = groupings(net, ids)
    assert g.names == ("0.weight", "1.weight") and g.sizes().tolist() == [7, 3]
    with pytest.raises(ValueError, match="every id used"):
        groupings(net, {"0.weight": torch.full((2, 3), 1)})
    with pytest.raises(ValueError, match="shape"):
        groupings(net, {"0.weight": torch.zeros(3, 2, dtype=int)})
    with pytest.raises(ValueError, match="granularity must be one of"):
        groupings(net, "neuron")
    with pytest.raises(ValueError, match="no rule"):
        groupings(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)), "channel")


# ---------------------------------------------------------------- known answers


def test_unit_masks_keep_exactly_the_planted_units():
    net = planted_mlp()
    before = _state(net)
    masks = _train(net, planted_tasks(net, (8,), 4), "unit")
    assert _same_state(before, _state(net))
    g = groupings(net, "unit")
    a, b = g.kept_groups(masks["a"]), g.kept_groups(masks["b"])
    hidden, out = torch.arange(16) < 8, torch.arange(4) < 2
    assert a.tolist() == torch.cat([hidden, out]).tolist()
    assert b.tolist() == torch.cat([~hidden, ~out]).tolist()
    assert iou(g.collapse(masks["a"]), g.collapse(masks["b"])).total == 0
    assert masks.hparams["granularity"] == "unit" and masks.hparams["groups"] == 20


def test_channel_masks_recover_planted_channels():
    net = PlantedCNN()
    masks = _train(net, planted_tasks(net, (2, 5, 5), 1), "channel", fallback="unit")
    g = groupings(net, "channel", fallback="unit")
    first = torch.cat([torch.arange(8) < 4, torch.arange(4) < 2, torch.arange(4) < 2])
    assert g.kept_groups(masks["a"]).tolist() == first.tolist()
    assert g.kept_groups(masks["b"]).tolist() == (~first).tolist()


def test_head_masks_recover_planted_heads():
    net = PlantedAttention()
    masks = _train(net, planted_tasks(net, (3, 16), 8, dim=2), "head")
    g = groupings(net, "head")
    assert g.kept_groups(masks["a"]).tolist() == [True, True, False, False]
    assert g.kept_groups(masks["b"]).tolist() == [False, False, True, True]


# ---------------------------------------------------------------- MaskedModel


def test_all_ones_masks_reproduce_the_model_exactly():
    for net, shape, gran, fb in ((planted_mlp(), (5, 8), "unit", None),
                                 (PlantedCNN(), (5, 2, 5, 5), "channel", "unit"),
                                 (PlantedAttention(), (5, 3, 16), "head", None)):  # fmt: skip
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        mm = MaskedModel(net, granularity=gran, fallback=fb, init=30.0, beta=0.0).eval()
        assert torch.equal(mm(x), net(x))
        assert torch.equal(masked_call(net, mm.masks()["task"], x), net(x))
        mm.train()
        assert torch.allclose(mm(x), net(x), atol=1e-6)


def test_masked_model_plain_torch_loop_trains_only_the_logits():
    net = planted_mlp()
    before = _state(net)
    tasks = planted_tasks(net, (8,), 4)
    mm = MaskedModel(net, granularity="unit", tasks=("a", "b"), beta=1e-3, seed=3)
    assert [n for n, _ in mm.named_parameters()] == ["logits"] and mm.logits.shape == (2, 20)
    assert list(mm.state_dict()) == ["logits", "_extra_state"]  # the logits and the noise generators
    opt = torch.optim.Adam(mm.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        opt.zero_grad()
        loss = 0
        for t in ("a", "b"):
            x, y = tasks[t]
            idx = torch.randint(len(x), (64,), generator=g)
            loss = loss + nan_mse(mm(x[idx], task=t), y[idx]) + mm.penalty(t)
        loss.backward()
        opt.step()
    assert _same_state(before, _state(net))
    masks = mm.masks()
    kept = mm.grouping.kept_groups(masks["a"])
    assert kept.tolist() == torch.cat([torch.arange(16) < 8, torch.arange(4) < 2]).tolist()
    mm.eval()
    assert torch.equal(mm(tasks["a"][0], task="a"), masked_call(net, masks["a"], tasks["a"][0]))


def test_masked_model_resumes_from_its_state_dict_through_safetensors(tmp_path):
    net = planted_mlp()
    x, y = planted_tasks(net, (8,), 4)["a"]

    def steps(mm, opt, n):
        for _ in range(n):
            opt.zero_grad()
            (nan_mse(mm(x[:32]), y[:32]) + mm.penalty()).backward()
            opt.step()

    def fresh():
        mm = MaskedModel(net, granularity="unit", beta=1e-3, seed=3, init=0.5)
        return mm, torch.optim.Adam(mm.parameters(), lr=0.1)

    whole, opt = fresh()
    steps(whole, opt, 20)
    first, opt = fresh()
    steps(first, opt, 10)
    save_file(first.state_dict(), tmp_path / "mm.safetensors")
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    resumed, opt = fresh()
    resumed.load_state_dict(load_file(tmp_path / "mm.safetensors"))
    opt.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    steps(resumed, opt, 10)
    assert torch.equal(resumed.logits, whole.logits)
    assert not torch.equal(fresh()[0].logits, whole.logits)
    with pytest.raises(ValueError, match="extra state: expected the 1 task generators' states"):
        resumed.load_state_dict({"logits": resumed.logits.detach(), "_extra_state": torch.zeros(3)})


def test_masked_model_is_deterministic_and_keyword_inputs_align():
    net = planted_mlp()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for call in ("args", "args", "kwargs"):
        mm = MaskedModel(net, granularity="unit", init=0.0, beta=0.0, seed=5, method="loop")
        y = mm(x) if call == "args" else mm(input=x)
        y.sum().backward()
        outs.append((y.detach(), mm.logits.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.allclose(outs[0][0], outs[2][0]) and torch.allclose(outs[0][1], outs[2][1])
    other = MaskedModel(net, granularity="unit", init=0.0, beta=0.0, seed=6, method="loop")
    assert not torch.equal(other(x), outs[0][0])


def test_penalty_normalization_equals_the_expanded_mask():
    net = planted_mlp()
    for penalty in (LogitPenalty(1e-2), ExpectedKeptPenalty(1e-2)):
        unit = MaskedModel(net, granularity="unit", init=0.7, penalty=penalty)
        weight = MaskedModel(net, granularity="weight", init=0.7, penalty=penalty)
        assert torch.allclose(unit.penalty(batch_size=32), weight.penalty(batch_size=32))
        grouped = GroupedPenalty(penalty, unit.grouping.flat_index())
        logits = torch.randn(2, 20, generator=torch.Generator().manual_seed(0))
        closed = torch.zeros(2, 20)
        grouped.add_grad(closed, logits, torch.tensor([32.0, 16.0]))
        x = logits.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(grouped(x, torch.tensor([32.0, 16.0])).sum(), x)
        assert torch.allclose(closed, auto)


def test_structured_train_masks_is_deterministic_and_saves(tmp_path):
    net = planted_mlp()
    tasks = planted_tasks(net, (8,), 4)
    one, two = (_train(net, tasks, "unit", steps=20) for _ in range(2))
    assert all(torch.equal(one.logits["a"][n], two.logits["a"][n]) for n in one.param_names)
    one.save(tmp_path / "m.safetensors")
    back = MaskSet.load(tmp_path / "m.safetensors", model=net)
    assert back == one and back.hparams["granularity"] == "unit"


def test_hugging_face_bert_heads_and_keyword_inputs():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=12, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    g = groupings(bert, "head", fallback="unit")
    assert g.n_groups == 2 * (2 + 12 + 8) and g.sizes()[:2].tolist() == [3 * 4 * 8 + 8 * 4] * 2
    assert g.implied == {f"encoder.layer.{i}.attention.output.dense.weight" for i in (0, 1)}
    before = _state(bert)
    mm = MaskedModel(bert, granularity="head", fallback="unit", beta=1e-3, samples=2, init=0.0)
    inputs = {"input_ids": torch.randint(0, 30, (4, 5)), "attention_mask": torch.ones(4, 5, dtype=torch.long)}
    out = mm(**inputs).last_hidden_state
    assert out.shape == (4, 5, 8)
    out[..., 0].sum().backward()
    assert mm.logits.grad.abs().sum() > 0
    with torch.no_grad():
        mm.logits.fill_(5.0)
    assert torch.equal(mm.eval()(**inputs).last_hidden_state, bert(**inputs).last_hidden_state)
    assert _same_state(before, _state(bert))


class _LastStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("gate", [None, HardConcrete()])
def test_structured_masks_keep_or_drop_whole_groups(gate):
    net = _LastStep()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, 3, generator=g)
    tasks = {"a": (x, torch.randn(32, 2, generator=g)), "b": (x, torch.randn(32, 2, generator=g))}
    masks = train_masks(net, tasks, nan_mse, steps=10, beta=0.0, lr=0.05, init=0.0, batch_size=8,
                        granularity="unit", gate=gate)  # fmt: skip
    assert masks.hparams["method"] == "loop"
    grouping = groupings(net, "unit")
    for t in ("a", "b"):
        kept = grouping.kept_groups(masks[t])
        for n, ids in grouping.ids.items():  # every entry of a group agrees with its group
            assert torch.equal(masks[t][n], kept[ids])
        assert 0 < int(kept.sum()) < grouping.n_groups  # some groups went, so the test could fail


def test_structured_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    net = planted_mlp()
    tasks = planted_tasks(net, (8,), 4)
    run = {"steps": 12, "beta": 1e-3, "lr": 0.05, "batch_size": 16, "granularity": "unit"}
    whole = train_masks(net, tasks, nan_mse, **run)
    path = tmp_path / "ckpt.pt"
    train_masks(net, tasks, nan_mse, **{**run, "steps": 5}, checkpoint=path, checkpoint_every=5)
    resumed = train_masks(net, tasks, nan_mse, **run, checkpoint=path)
    assert all(torch.equal(whole.logits[t][n], resumed.logits[t][n]) for t in "ab" for n in whole.param_names)
    with pytest.raises(ValueError):  # another granularity is another run
        train_masks(net, tasks, nan_mse, **{**run, "granularity": "weight"}, checkpoint=path)


class _QKV(nn.Module):
    """The q_proj/k_proj/v_proj/o_proj layout (LLaMA, OPT): heads from ``num_heads``."""

    def __init__(self, d=8, heads=2, kv=8):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, kv), nn.Linear(d, kv)
        self.o_proj, self.num_heads = nn.Linear(d, d), heads


def test_grouping_q_proj_layout_and_grouped_query_attention():
    model = nn.Module()
    model.self_attn = _QKV()
    g = groupings(model, "head")
    assert g.n_groups == 2 and g.sizes().tolist() == [3 * 4 * 8 + 8 * 4] * 2
    assert g.ids["self_attn.o_proj.weight"][0].tolist() == [0] * 4 + [1] * 4
    assert g.implied == {"self_attn.o_proj.weight"}
    model.self_attn = _QKV(kv=4)
    with pytest.raises(ValueError, match="grouped-query attention"):
        groupings(model, "head")


def test_masked_model_one_sample_per_example_group_in_every_layer():
    net = planted_mlp()
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(0)).expand(12, 8)  # one example, 12 times
    outs = {}
    for method in ("vmap", "loop"):
        mm = MaskedModel(net, granularity="unit", init=0.0, beta=0.0, samples=3, seed=1, method=method)
        outs[method] = mm(x).detach()
    assert torch.allclose(outs["vmap"], outs["loop"])
    groups = outs["loop"].reshape(3, 4, -1)
    assert all(torch.equal(grp, grp[:1].expand_as(grp)) for grp in groups)  # a group shares its sample
    assert not torch.equal(groups[0], groups[1]) and not torch.equal(groups[1], groups[2])
