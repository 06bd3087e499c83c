"""The SCAN command language (Lake & Baroni, "Generalization without Systematicity", ICML 2018,
arXiv:1711.00350), generated from its grammar and interpretation function -- nothing is downloaded.

Grammar (the paper's Fig. 6, with X = u | turn)::

    C -> S and S | S after S | S
    S -> V twice | V thrice | V
    V -> X opposite D | X around D | X D | U          (X in {walk, look, run, jump, turn}, D in {left, right})
    U -> walk | look | run | jump

Interpretation ([.] maps a phrase to actions; "turn" alone has no action)::

    [walk] = I_WALK   [look] = I_LOOK   [run] = I_RUN   [jump] = I_JUMP
    [turn left] = I_TURN_LEFT                 [u left] = I_TURN_LEFT [u]
    [turn opposite left] = I_TURN_LEFT x2     [u opposite left] = I_TURN_LEFT I_TURN_LEFT [u]
    [turn around left] = I_TURN_LEFT x4       [u around left] = (I_TURN_LEFT [u]) x4
    (the same with right / I_TURN_RIGHT)
    [x twice] = [x] [x]      [x thrice] = [x] [x] [x]
    [x1 and x2] = [x1] [x2]  [x1 after x2] = [x2] [x1]

This gives 34 V phrases, 102 S phrases and 102 + 2 * 102**2 = 20,910 distinct commands, the published size
of SCAN; the longest action sequence has 48 actions.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from modscope.data.vocab import Vocab
from modscope.seeding import check_seed

__all__ = [
    "ACTIONS",
    "PUBLISHED_PRIMITIVE_COPIES",
    "SCAN_SPLITS",
    "interpret",
    "scan_commands",
    "scan_split",
    "scan_vocabs",
]

ACTIONS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")
_PRIMITIVES = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
_TURNS = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
_REPEATS = {"twice": 2, "thrice": 3}

#: The splits :func:`scan_split` knows.
SCAN_SPLITS = ("simple", "addprim_jump", "length", "addprim_turn_left")
#: How many times the published training files contain the added primitive (``tasks_train_addprim_*.txt``
#: of the SCAN repository have 14,670 and 21,890 lines); pass ``primitive_copies="published"`` to match.
PUBLISHED_PRIMITIVE_COPIES = {"addprim_jump": 1467, "addprim_turn_left": 2189}
#: Longest action sequence in the training half of the ``length`` split.
LENGTH_SPLIT_MAX_TRAIN = 22


def _interpret_v(words: list[str]) -> list[str]:
    if not words:
        raise ValueError("empty SCAN phrase")
    if len(words) == 1:
        if words[0] not in _PRIMITIVES:
            raise ValueError(f"not a SCAN primitive: {words[0]!r}")
        return [_PRIMITIVES[words[0]]]
    head, direction = words[0], words[-1]
    if direction not in _TURNS or (head not in _PRIMITIVES and head != "turn"):
        raise ValueError(f"not a SCAN phrase: {' '.join(words)!r}")
    turn = _TURNS[direction]
    act = [] if head == "turn" else [_PRIMITIVES[head]]
    if len(words) == 2:
        return [turn, *act]
    if len(words) == 3 and words[1] == "opposite":
        return [turn, turn, *act]
    if len(words) == 3 and words[1] == "around":
        return [turn, *act] * 4
    raise ValueError(f"not a SCAN phrase: {' '.join(words)!r}")


def _interpret_s(words: list[str]) -> list[str]:
    if words and words[-1] in _REPEATS:
        return _interpret_v(words[:-1]) * _REPEATS[words[-1]]
    return _interpret_v(words)


def interpret(command: str) -> str:
    """The action sequence of a SCAN command, e.g. ``interpret("look after jump") == "I_JUMP I_LOOK"``.

    Raises ``ValueError`` for a string outside the language.
    """
    words = command.split()
    conjunctions = [i for i, w in enumerate(words) if w in ("and", "after")]
    if len(conjunctions) > 1:
        raise ValueError(f"not a SCAN command (one 'and'/'after' at most): {command!r}")
    if conjunctions:
        k = conjunctions[0]
        first, second = _interpret_s(words[:k]), _interpret_s(words[k + 1 :])
        return " ".join(first + second if words[k] == "and" else second + first)
    return " ".join(_interpret_s(words))


def _v_phrases() -> list[str]:
    heads = [*_PRIMITIVES, "turn"]
    phrases = []
    for head in heads:
        for d in _TURNS:
            phrases += [f"{head} opposite {d}", f"{head} around {d}", f"{head} {d}"]
    return phrases + list(_PRIMITIVES)


@cache
def _all_commands() -> tuple[tuple[str, str], ...]:
    s_phrases = [f"{v}{r}" for v in _v_phrases() for r in ("", " twice", " thrice")]
    commands = list(s_phrases)
    for conj in ("and", "after"):
        commands += [f"{s1} {conj} {s2}" for s1 in s_phrases for s2 in s_phrases]
    return tuple((c, interpret(c)) for c in sorted(commands))


def scan_commands() -> list[tuple[str, str]]:
    """All 20,910 distinct SCAN commands with their action sequences, sorted by command string.

    Returns a list of ``(command, actions)`` pairs of space-separated strings, e.g.
    ``("jump twice", "I_JUMP I_JUMP")``.
    """
    return list(_all_commands())


def _has_phrase(command: str, phrase: str) -> bool:
    return f" {phrase} " in f" {command} "


def scan_split(
    split: str = "simple",
    seed: int = 0,
    test_fraction: float = 0.2,
    primitive_copies: int | str = 1,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The standard SCAN splits (Lake & Baroni 2018, experiments 1-3), as ``(train, test)`` lists.

    Parameters
    ----------
    split :
        * ``"simple"``: a random split of the 20,910 commands, ``round(test_fraction * 20910)`` in test
          (4,182 with the default 0.2, as published), drawn by ``numpy.random.default_rng(seed)``;
        * ``"addprim_jump"``: train = every command without the word "jump" plus the bare primitive "jump";
          test = every other command (the 7,706 compositions with "jump");
        * ``"addprim_turn_left"``: train = every command without the phrase "turn left" plus the bare
          "turn left"; test = the 1,208 compositions with "turn left" (commands such as "walk left" or
          "turn around left" that produce I_TURN_LEFT without the phrase stay in train, as published);
        * ``"length"``: train = commands whose action sequence has at most 22 actions (16,990);
          test = the longer ones (3,920, lengths 24..48).
    seed, test_fraction : for ``"simple"`` only. The deterministic splits ignore them.
    primitive_copies : for the ``addprim_*`` splits, how many times the added primitive appears in train
        (default 1: distinct commands only). ``"published"`` uses :data:`PUBLISHED_PRIMITIVE_COPIES`
        (1,467 for jump, 2,189 for turn left), which reproduces the published training-set sizes
        (14,670 and 21,890); the extra copies are appended at the end of the training list.

    Returns
    -------
    ``(train, test)``: lists of ``(command, actions)`` string pairs, in command order (``"simple"``: in
    the seeded random order). Encode them with :class:`~modscope.data.vocab.Vocab`.
    """
    pairs = scan_commands()
    if split == "simple":
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        perm = np.random.default_rng(check_seed(seed, "seed")).permutation(len(pairs))
        n_test = round(test_fraction * len(pairs))
        return [pairs[i] for i in perm[n_test:]], [pairs[i] for i in perm[:n_test]]
    if split == "length":
        train = [p for p in pairs if len(p[1].split()) <= LENGTH_SPLIT_MAX_TRAIN]
        test = [p for p in pairs if len(p[1].split()) > LENGTH_SPLIT_MAX_TRAIN]
        return train, test
    if split in ("addprim_jump", "addprim_turn_left"):
        phrase = "jump" if split == "addprim_jump" else "turn left"
        copies = PUBLISHED_PRIMITIVE_COPIES[split] if primitive_copies == "published" else primitive_copies
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(
                f"primitive_copies must be a positive int or 'published', got {primitive_copies!r}"
            )
        train = [p for p in pairs if not _has_phrase(p[0], phrase) or p[0] == phrase]
        test = [p for p in pairs if _has_phrase(p[0], phrase) and p[0] != phrase]
        train += [(phrase, interpret(phrase))] * (copies - 1)
        return train, test
    raise ValueError(f"unknown SCAN split {split!r}; choose one of {SCAN_SPLITS}")


def scan_vocabs() -> tuple[Vocab, Vocab]:
    """``(command_vocab, action_vocab)`` over the whole language, independent of the split.

    Command vocabulary: the 13 words (after, and, around, jump, left, look, opposite, right, run, thrice,
    turn, twice, walk) -> ids 4..16; action vocabulary: the 6 actions (sorted) -> ids 4..9; ids 0..3 are
    ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.
    """
    pairs = _all_commands()
    return Vocab.from_sequences(c for c, _ in pairs), Vocab.from_sequences(a for _, a in pairs)
