"""``MaskedModel`` under Hugging Face's ``Trainer``: the trainer owns the loop, optimizer and checkpoints;
only the mask logits learn, the planted units are recovered, and the model is left bit-identical."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from modscope.masks import MaskedModel
from test_masks_structured import _same_state, _state, nan_mse, planted_mlp, planted_tasks

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="Hugging Face Trainer needs accelerate")


class WithLoss(nn.Module):
    """The planted MLP returning ``{"loss", "outputs"}`` when given labels, as a Hugging Face model does."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, labels):
        out = self.net(x)
        return {"loss": nan_mse(out, labels), "outputs": out}


class PenaltyTrainer(transformers.Trainer):
    """The one change a user makes: the mask's sparsity penalty joins the model's loss."""

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        outputs = model(**inputs)
        loss = outputs["loss"] + model.penalty()
        return (loss, outputs) if return_outputs else loss


class Rows(torch.utils.data.Dataset):
    def __init__(self, **columns):
        self.columns = columns

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}


def _args(out, **kw):
    settings = dict(output_dir=str(out), per_device_train_batch_size=64, learning_rate=0.05, weight_decay=0.0,
                    lr_scheduler_type="constant", max_grad_norm=1.0, logging_strategy="no",
                    save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False,
                    dataloader_num_workers=0, disable_tqdm=True, seed=0)  # fmt: skip
    return transformers.TrainingArguments(**{**settings, **kw})


def test_trainer_recovers_planted_units_and_saves_the_mask_state(tmp_path):
    net = planted_mlp()
    before = _state(net)
    x, y = planted_tasks(net, (8,), 4, n=512)["a"]
    mm = MaskedModel(WithLoss(net), granularity="unit", beta=1e-3, seed=3)
    trainer = PenaltyTrainer(model=mm, args=_args(tmp_path, max_steps=300), train_dataset=Rows(x=x, labels=y))
    trainer.train()
    assert _same_state(before, _state(net))
    kept = mm.grouping.kept_groups(mm.masks()["task"])
    assert kept.tolist() == torch.cat([torch.arange(16) < 8, torch.arange(4) < 2]).tolist()
    # the trainer's own checkpoint (safetensors) holds the logits and the noise generators
    trainer.save_model(str(tmp_path / "saved"))
    state = load_file(tmp_path / "saved" / "model.safetensors")
    assert set(state) == {"logits", "_extra_state"}
    again = MaskedModel(WithLoss(net), granularity="unit", beta=1e-3, seed=3)
    again.load_state_dict(state)
    assert torch.equal(again.logits, mm.logits) and torch.equal(again.get_extra_state(), mm.get_extra_state())


def test_trainer_trains_head_masks_of_a_hugging_face_classifier_from_dict_batches(tmp_path):
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=16,
                                     num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()
    before = _state(bert)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (96, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 6:] = 0
    data = Rows(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3)
    # beta 0: only the task's loss, through the trainer and the straight-through gate, moves the logits
    mm = MaskedModel(bert, granularity="head", fallback="unit", beta=0.0, init=0.5, seed=0)
    start = mm.logits.detach().clone()
    PenaltyTrainer(model=mm, args=_args(tmp_path, max_steps=6, per_device_train_batch_size=16),
                   train_dataset=data).train()  # fmt: skip
    assert _same_state(before, _state(bert))
    moved = (mm.logits.detach() - start).abs().reshape(-1)
    assert bool((moved > 0).all())  # every head and unit got a gradient through the trainer
