"""Recurrent and sequence-to-sequence models of the zoo: the add/mul LSTM classifier and the SCAN models.

Build them with :func:`modscope.models.build_model` from a spec (``lstm:42-256x2-20:steps=3``,
``seq2seq-lstm:...``, ``seq2seq-transformer:...``); the constructors here take the normalized spec's values.

Sequence conventions (both seq2seq models): token ids are ``LongTensor`` s of shape ``(batch, length)``,
batch first, padded at the end with ``pad``. ``forward(src, tgt_in)`` is teacher forcing: ``tgt_in`` is the
target shifted right (``bos`` first), the result the logits ``(batch, tgt_len, tgt_vocab)`` of the next
tokens; position ``t`` sees ``tgt_in[:, :t+1]`` and the source tokens that are not padding, so padding
never changes the outputs at the other positions. ``generate(src, max_len)`` decodes greedily.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

__all__ = ["LSTMClassifier", "Seq2Seq", "Seq2SeqLSTM", "Seq2SeqTransformer"]


def _repeat_steps(module: nn.Module, args: tuple, steps: int) -> tuple:
    """Pre-hook of :class:`LSTMClassifier`.s LSTM: ``(batch, features)`` -> ``(batch, steps, features)``."""
    x, *rest = args
    return (x.unsqueeze(1).expand(-1, steps, -1), *rest)


class LSTMClassifier(nn.Module):
    """An LSTM reading the same input vector at each of ``steps`` time steps; a Linear head on the last.

    Modules: ``lstm`` (``nn.LSTM``, batch first, ``layers`` layers of ``hidden`` units) and ``out``
    (``nn.Linear(hidden, num_outputs)``). ``forward(x)``: ``(batch, input_size)`` -> ``(batch, num_outputs)``.

    The repetition of the input is a forward pre-hook on ``lstm``, so the model's forward is just
    ``lstm -> last step -> out``: tracing it (``WeightGraph.from_module``) stops at the LSTM and names it.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, num_outputs: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, num_outputs)
        self.lstm.register_forward_pre_hook(functools.partial(_repeat_steps, steps=steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.out(h[:, -1])


class Seq2Seq(nn.Module):
    """Shared greedy decoding of the encoder-decoder models (subclasses define ``_start`` and ``_step``)."""

    pad: int
    bos: int
    eos: int

    def _start(self, src: torch.Tensor) -> object:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, state: object, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_len: int) -> torch.Tensor:
        """Greedy decoding: ``(batch, L)`` token ids, ``L <= max_len``, without the leading ``bos``.

        Each row holds the argmax tokens up to and including its first ``eos``, then ``pad``; a row that
        reaches ``max_len`` tokens without ``eos`` is cut there. Decoding stops once every row has its
        ``eos``. Equals the argmax of ``forward(src, [bos] + own previous outputs)`` at each position.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        batch = src.shape[0]
        state = self._start(src)
        tokens = torch.full((batch, 1), self.bos, dtype=torch.long, device=src.device)
        done = torch.zeros(batch, dtype=torch.bool, device=src.device)
        out = []
        for _ in range(max_len):
            logits, state = self._step(state, tokens)
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad), nxt)
            out.append(nxt)
            done = done | (nxt == self.eos)
            if bool(done.all()):
                break
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        return torch.stack(out, dim=1)


class Seq2SeqLSTM(Seq2Seq):
    """LSTM encoder-decoder (no attention): the encoder's final states start the decoder.

    Modules: ``src_embed`` / ``tgt_embed`` (``nn.Embedding(vocab, d_model, padding_idx=pad)``), ``encoder``
    (``nn.LSTM``, ``layers`` layers, bidirectional with ``d_model // 2`` units per direction, or
    unidirectional with ``d_model``), ``decoder`` (``nn.LSTM(d_model, d_model, layers)``), ``drop``
    (dropout on embeddings and decoder outputs; ``dropout`` also between stacked LSTM layers), ``out``
    (``nn.Linear(d_model, tgt_vocab)``). Padded sources are packed, so the encoder stops at each row's
    last real token.
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        pad: int,
        bos: int,
        eos: int,
    ) -> None:
        super().__init__()
        self.pad, self.bos, self.eos = pad, bos, eos
        self.layers, self.bidirectional = layers, bidirectional
        between = dropout if layers > 1 else 0.0
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=pad)
        self.encoder = nn.LSTM(
            d_model,
            d_model // 2 if bidirectional else d_model,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=between,
        )
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=pad)
        self.decoder = nn.LSTM(d_model, d_model, layers, batch_first=True, dropout=between)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, tgt_vocab)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's initial ``(h, c)``, each ``(layers, batch, d_model)``."""
        lengths = (src != self.pad).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.drop(self.src_embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        _, (h, c) = self.encoder(packed)
        if self.bidirectional:  # (layers * 2, B, H/2) -> (layers, B, H): both directions side by side
            h = torch.cat([h[0::2], h[1::2]], dim=-1)
            c = torch.cat([c[0::2], c[1::2]], dim=-1)
        return h, c

    def decode(
        self, tgt_in: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits ``(batch, len, tgt_vocab)`` and the decoder state after ``tgt_in``."""
        h, state = self.decoder(self.drop(self.tgt_embed(tgt_in)), state)
        return self.out(self.drop(h)), state

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, self.encode(src))[0]

    def _start(self, src: torch.Tensor) -> object:
        return self.encode(src)

    def _step(self, state: object, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
        logits, state = self.decode(tokens[:, -1:], state)  # the LSTM carries the prefix in its state
        return logits[:, -1], state


def sinusoidal_positions(length: int, d_model: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Vaswani et al.'s position encodings ``(length, d_model)``: sin on even, cos on odd features."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    pe = torch.zeros(length, d_model, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe.to(dtype)


class Seq2SeqTransformer(Seq2Seq):
    """``nn.Transformer`` encoder-decoder with token embeddings, position encodings and a Linear head.

    Modules: ``src_embed`` / ``tgt_embed`` (``nn.Embedding(vocab, d_model, padding_idx=pad)``), ``pos``
    (``nn.Embedding(max_len, d_model)``, only with ``pos="learned"``; ``"sin"`` adds
    :func:`sinusoidal_positions`, no parameters), ``transformer`` (``nn.Transformer``, batch first,
    post-norm, ReLU, with its own ``encoder.layers.N`` / ``decoder.layers.N`` and final norms), ``out``
    (``nn.Linear(d_model, tgt_vocab)``). Embeddings are added to the positions unscaled. Masks: source
    padding (``src_key_padding_mask`` and ``memory_key_padding_mask``), target padding and the causal mask.
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int,
        layers: int,
        heads: int,
        ff: int,
        dropout: float,
        pos: str,
        max_len: int,
        pad: int,
        bos: int,
        eos: int,
    ) -> None:
        super().__init__()
        self.pad, self.bos, self.eos = pad, bos, eos
        self.d_model, self.max_len, self.pos_kind = d_model, max_len, pos
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=pad)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=pad)
        if pos == "learned":
            self.pos = nn.Embedding(max_len, d_model)
        self.transformer = nn.Transformer(
            d_model,
            heads,
            num_encoder_layers=layers,
            num_decoder_layers=layers,
            dim_feedforward=ff,
            dropout=dropout,
            batch_first=True,
        )
        # The nested-tensor fast path would drop padded positions inside the encoder: same results for the
        # real tokens, but other numerics; keep one code path for training and evaluation.
        self.transformer.encoder.enable_nested_tensor = False
        self.transformer.encoder.use_nested_tensor = False
        self.out = nn.Linear(d_model, tgt_vocab)

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if self.pos_kind == "learned":
            if length > self.max_len:
                raise ValueError(f"sequence of length {length} is longer than max_len {self.max_len}")
            return self.pos.weight[:length]
        return sinusoidal_positions(length, self.d_model, x.device, x.dtype)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(memory (batch, src_len, d_model), source padding mask (batch, src_len))``."""
        src_pad = src == self.pad
        x = self.src_embed(src)
        memory = self.transformer.encoder(x + self._positions(x), src_key_padding_mask=src_pad)
        return memory, src_pad

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, tgt_len, tgt_vocab)`` given the encoder's output."""
        length = tgt_in.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tgt_in.device), diagonal=1)
        y = self.tgt_embed(tgt_in)
        h = self.transformer.decoder(
            y + self._positions(y),
            memory,
            tgt_mask=causal,
            tgt_key_padding_mask=tgt_in == self.pad,
            memory_key_padding_mask=src_pad,
        )
        return self.out(h)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad)

    def _start(self, src: torch.Tensor) -> object:
        return self.encode(src)

    def _step(self, state: object, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
        memory, src_pad = state
        return self.decode(tokens, memory, src_pad)[:, -1], state
