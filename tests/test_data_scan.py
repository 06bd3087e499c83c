"""SCAN (Lake & Baroni 2018): grammar, published semantics, split promises, vocabularies."""

from __future__ import annotations

import collections

import pytest
import torch

from modscope.data import (
    ACTIONS,
    SCAN_SPLITS,
    Vocab,
    encode_pairs,
    interpret,
    scan_commands,
    scan_split,
    scan_vocabs,
)

TL, TR = "I_TURN_LEFT", "I_TURN_RIGHT"


@pytest.mark.parametrize(
    "command, actions",
    [
        ("jump", "I_JUMP"),
        ("jump twice", "I_JUMP I_JUMP"),
        ("turn left", TL),
        ("turn right twice", f"{TR} {TR}"),
        ("walk left", f"{TL} I_WALK"),
        ("walk around right", " ".join([TR, "I_WALK"] * 4)),
        ("turn around left", " ".join([TL] * 4)),
        ("walk opposite left", f"{TL} {TL} I_WALK"),
        ("turn opposite right", f"{TR} {TR}"),
        ("look after jump", "I_JUMP I_LOOK"),
        ("run twice and jump", "I_RUN I_RUN I_JUMP"),
        ("turn left thrice after walk", f"I_WALK {TL} {TL} {TL}"),
        (
            "jump opposite right twice and look left thrice",
            f"{TR} {TR} I_JUMP {TR} {TR} I_JUMP {TL} I_LOOK {TL} I_LOOK {TL} I_LOOK",
        ),
        ("run around left twice after turn right", " ".join([TR] + [TL, "I_RUN"] * 8)),
    ],
)
def test_published_semantics(command, actions):
    assert interpret(command) == actions


@pytest.mark.parametrize(
    "bad",
    ["fly", "walk sideways", "turn", "jump and and walk", "walk around", "", "walk twice twice", "and walk"],
)
def test_interpret_rejects_non_commands(bad):
    with pytest.raises(ValueError):
        interpret(bad)


def test_full_language():
    pairs = scan_commands()
    commands = [c for c, _ in pairs]
    assert len(pairs) == 20_910 == len(set(commands))  # the published count
    assert all(set(a.split()) <= set(ACTIONS) for _, a in pairs)
    assert max(len(a.split()) for _, a in pairs) == 48
    assert max(len(c.split()) for c in commands) == 9
    assert ("jump twice", "I_JUMP I_JUMP") in pairs


def test_simple_split_is_seeded_random_80_20():
    train, test = scan_split("simple", seed=0)
    assert (len(train), len(test)) == (16_728, 4_182)  # the published sizes
    assert not {c for c, _ in train} & {c for c, _ in test}
    assert scan_split("simple", seed=0) == (train, test)
    assert scan_split("simple", seed=1)[1] != test


def test_addprim_jump_split():
    train, test = scan_split("addprim_jump")
    assert len(test) == 7_706
    assert all("jump" not in c.split() for c, _ in train if c != "jump")
    assert ("jump", "I_JUMP") in train
    assert all("jump" in c.split() and c != "jump" for c, _ in test)
    assert len(train) + len(test) == 20_910
    published, _ = scan_split("addprim_jump", primitive_copies="published")
    assert len(published) == 14_670 and sum(c == "jump" for c, _ in published) == 1_467


def test_addprim_turn_left_split():
    train, test = scan_split("addprim_turn_left")
    assert len(test) == 1_208
    assert all("turn left" not in c for c, _ in train if c != "turn left")
    assert all("turn left" in c and c != "turn left" for c, _ in test)
    # I_TURN_LEFT is still seen in training through other phrases
    assert any(TL in a for c, a in train if c != "turn left")
    assert len(scan_split("addprim_turn_left", primitive_copies="published")[0]) == 21_890


def test_length_split():
    train, test = scan_split("length")
    assert (len(train), len(test)) == (16_990, 3_920)
    assert max(len(a.split()) for _, a in train) == 22
    lengths = collections.Counter(len(a.split()) for _, a in test)
    assert min(lengths) == 24 and max(lengths) == 48


def test_unknown_split_and_bad_copies():
    assert len(SCAN_SPLITS) == 4
    with pytest.raises(ValueError):
        scan_split("mcd1")
    with pytest.raises(ValueError):
        scan_split("addprim_jump", primitive_copies=0)


def test_vocab_and_tensors():
    src_vocab, tgt_vocab = scan_vocabs()
    assert len(src_vocab) == 4 + 13 and len(tgt_vocab) == 4 + 6
    train, test = scan_split("length")
    ds = encode_pairs(test[:5], src_vocab, tgt_vocab, src_len=10, tgt_len=50)
    src, src_len, tgt, tgt_len = ds.tensors
    assert src.shape == (5, 10) and tgt.shape == (5, 50) and src.dtype == tgt.dtype == torch.long
    for k, (c, a) in enumerate(test[:5]):
        assert int(src_len[k]) == len(c.split()) + 1 and src[k, int(src_len[k]) - 1] == Vocab.eos_id
        assert tgt[k, 0] == Vocab.bos_id and int(tgt_len[k]) == len(a.split()) + 2
        assert torch.all(src[k, int(src_len[k]) :] == Vocab.pad_id)
        assert src_vocab.decode(src[k]) == c and tgt_vocab.decode(tgt[k]) == a
    # padding to the longest when no width is given
    auto = encode_pairs(train[:3], src_vocab, tgt_vocab).tensors
    assert auto[2].shape[1] == int(auto[3].max())
    with pytest.raises(ValueError):
        encode_pairs(test[:1], src_vocab, tgt_vocab, tgt_len=10)
    assert src_vocab.encode("walk fly", eos=False) == [src_vocab.stoi["walk"], Vocab.unk_id]
    with pytest.raises(ValueError):
        Vocab(["<pad>"])
