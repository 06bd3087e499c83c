"""Token vocabularies and padded tensors for sequence-to-sequence data (SCAN).

Ids ``0..3`` are the special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` (pad is 0, so a padding mask
is ``ids != 0``); the vocabulary's own tokens follow in the order given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import TensorDataset

__all__ = ["BOS", "EOS", "PAD", "UNK", "Vocab", "encode_pairs"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
_SPECIALS = (PAD, BOS, EOS, UNK)


class Vocab:
    """A fixed token <-> id mapping, with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3.

    Build one from a list of tokens (``Vocab(["walk", "look"])``) or from sequences
    (:meth:`from_sequences`, tokens in sorted order so that the ids do not depend on data order).
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos: list[str] = list(_SPECIALS)
        for tok in tokens:
            if tok in _SPECIALS:
                raise ValueError(f"{tok!r} is a reserved special token")
            if tok not in self.itos:
                self.itos.append(tok)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def from_sequences(cls, sequences: Iterable[str]) -> Vocab:
        """A vocabulary of every whitespace-separated token of ``sequences``, in sorted order."""
        return cls(sorted({tok for seq in sequences for tok in seq.split()}))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocab({self.itos[len(_SPECIALS) :]!r})"

    def encode(self, sequence: str | Sequence[str], bos: bool = False, eos: bool = True) -> list[int]:
        """Ids of a whitespace-separated string (or token list), with ``<bos>``/``<eos>`` if asked.

        Unknown tokens map to ``<unk>``.
        """
        tokens = sequence.split() if isinstance(sequence, str) else list(sequence)
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int], strip: bool = True) -> str:
        """Tokens of ``ids`` joined by spaces; with ``strip`` (default), stop at ``<eos>`` and drop
        ``<pad>``/``<bos>``."""
        out = []
        for i in ids:
            i = int(i)
            if strip and i == self.eos_id:
                break
            if strip and i in (self.pad_id, self.bos_id):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(out)

    def batch(
        self, sequences: Sequence[str], bos: bool = False, eos: bool = True, max_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and right-pad with ``<pad>`` (0).

        Returns ``(ids, lengths)``: ``ids`` long ``(B, T)`` with ``T = max_len`` or the longest encoded
        sequence; ``lengths`` long ``(B,)``, the unpadded lengths (``<bos>``/``<eos>`` included). Raises
        ``ValueError`` if a sequence is longer than ``max_len``.
        """
        encoded = [self.encode(s, bos=bos, eos=eos) for s in sequences]
        lengths = [len(e) for e in encoded]
        width = max(lengths, default=0) if max_len is None else max_len
        if lengths and max(lengths) > width:
            raise ValueError(f"a sequence has {max(lengths)} tokens, more than max_len={width}")
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        return ids, torch.tensor(lengths, dtype=torch.long)


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    src_len: int | None = None,
    tgt_len: int | None = None,
) -> TensorDataset:
    """Tensors for a seq2seq model from ``(source, target)`` string pairs (e.g. :func:`scan_split`'s lists).

    The source gets ``<eos>``; the target gets ``<bos>`` and ``<eos>`` (teacher forcing feeds
    ``tgt[:, :-1]`` and predicts ``tgt[:, 1:]``). Pass ``src_len``/``tgt_len`` to pad train and test to the
    same widths.

    Returns ``TensorDataset(src, src_lengths, tgt, tgt_lengths)``: ``src`` long ``(N, S)``, ``tgt`` long
    ``(N, T)``, padded with 0; lengths long ``(N,)``. For SCAN: ``S = 10`` (9 words + eos), ``T = 50``
    (48 actions + bos + eos) over the full language.
    """
    src, src_lengths = src_vocab.batch([p[0] for p in pairs], bos=False, eos=True, max_len=src_len)
    tgt, tgt_lengths = tgt_vocab.batch([p[1] for p in pairs], bos=True, eos=True, max_len=tgt_len)
    return TensorDataset(src, src_lengths, tgt, tgt_lengths)
