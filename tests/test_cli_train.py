"""``modscope train``: recipes train, save a loadable model file, and refuse bad combinations."""

import pytest
import torch

from modscope.cli import main
from modscope.models import load_model, read_metadata
from modscope.training.recipes import RECIPES, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mlp_recipe_trains_prunes_saves_and_clusters(tmp_path, capsys):
    out = tmp_path / "mlp.safetensors"
    code = main(["train", "clusterability-mlp", "--dataset", "digits", "--steps", "30", "--prune",
                 "--dropout", "0.5", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "sparsity 0.90-0.90" in printed
    model, spec = load_model(out)
    assert spec["sizes"] == [64, 256, 256, 256, 256, 10] and spec["dropout"] == 0.5
    meta = read_metadata(out)
    assert meta["training"]["recipe"] == "clusterability-mlp" and meta["training"]["prune"] is True
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    assert all((w == 0).float().mean() >= 0.89 for w in weights)
    assert main(["cluster", str(out), "--k", "4", "--shuffles", "3", "--shuffle", "layer_nonzero",
                 "--no-progress"]) == 0  # fmt: skip


def test_same_seed_same_weights():
    a = run_recipe("clusterability-mlp", dataset="digits", steps=5, seed=3)[0]
    b = run_recipe("clusterability-mlp", dataset="digits", steps=5, seed=3)[0]
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na


@pytest.mark.parametrize("recipe", ["addmul-fnn", "double-addition-fnn", "addmul-lstm"])
def test_other_recipes_run(recipe):
    _, spec, results, config = run_recipe(recipe, steps=2)
    assert results[0].steps == 2 and results[0].eval_loss is not None
    assert config["recipe"] == recipe and spec == load_spec_roundtrip(spec)


def test_scan_teacher_forcing_learns_a_slice():
    from modscope.models import build_model
    from modscope.training import train
    from modscope.training.recipes import load_task_data

    task = load_task_data("scan-simple")
    x, y = (t[:64] for t in task.train)
    assert (y == -100).any() and x.dtype == torch.long
    model = build_model(
        f"seq2seq-transformer:src_vocab={task.fill['src']}:tgt_vocab={task.fill['tgt']}:d_model=32:layers=1:heads=2"
    )
    result = train(task.wrap(model), (x, y), steps=60, lr=3e-3, eval_set=(x, y))
    assert result.history[0].train_loss > result.eval_loss  # it learns: loss on the slice falls
    out = task.wrap(model)(x[:2])
    assert out.shape == (2, y.shape[1] * task.fill["tgt"])


def load_spec_roundtrip(spec):
    from modscope.models import normalize_spec

    return normalize_spec(spec)


def test_accuracy_skips_ignored_digits():
    # double addition scores one pair's two digits; the zeroed pair's targets are -100 (ignored)
    from modscope.training.losses import correct

    outputs = torch.zeros(2, 4 * 10)
    outputs[:, 3] = outputs[:, 10 + 7] = 1.0  # digits 0, 1 predict 3, 7
    targets = torch.tensor([[3, 7, -100, -100], [3, 8, -100, -100]])
    assert correct(outputs, targets).tolist() == [True, False]


def test_bad_combinations_are_refused(tmp_path, capsys):
    assert main(["train", "small-cnn", "--dropout", "0.5", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "no dropout option" in capsys.readouterr().err
    assert main(["train", "addmul-fnn", "--dataset", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "trains on ['addmul']" in capsys.readouterr().err
    assert set(RECIPES) >= {"clusterability-mlp", "small-cnn", "addmul-fnn", "addmul-lstm",
                            "double-addition-fnn", "cifar-cnn", "scan-lstm", "scan-transformer"}  # fmt: skip


def test_authors_protocol_options_reach_the_training(tmp_path, capsys):
    out = tmp_path / "addmul.safetensors"
    args = ["train", "addmul-fnn", "--steps", "3", "--init", "torch", "--clip", "1.0", "--heldout", "0",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    training = read_metadata(out)["training"]
    assert (training["init"], training["heldout"]) == ("torch", 0.0)
    assert training["phases"][0]["clip_grad_norm"] == 1.0
    model, _ = load_model(out)
    bound = 1 / 42**0.5  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) before training
    assert model.fc1.weight.abs().max() < bound + 3 * 1e-3


def test_init_torch_is_seeded_and_leaves_the_global_rng_alone():
    from modscope.models import build_model

    state = torch.random.get_rng_state()
    a, b = (build_model("mlp:42-64x2-20", seed=5, init="torch") for _ in range(2))
    c = build_model("mlp:42-64x2-20", seed=6, init="torch")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and not torch.equal(a.fc1.weight, c.fc1.weight)
    assert a.fc1.bias.abs().max() <= 1 / 42**0.5 and a.fc1.bias.abs().max() > 0
    with pytest.raises(ValueError, match="init must be one of"):
        build_model("mlp:42-64x2-20", init="he")
