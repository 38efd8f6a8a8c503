"""Contextual biasing: glossary terms favoured inside greedy decoding (pure).

The technique is shallow fusion with a context graph, as in k2-fsa's
hotwords (icefall ``context_graph.py``, sherpa-onnx ``--hotwords-file``):
the terms are compiled into a trie of token sequences, and a token that
continues a term already begun gets a bonus added to its logit; when the
term is abandoned before its end the bonus is taken back. Beam search takes
it back by subtracting the accumulated score; greedy decoding, which
livecap's Whisper uses, has one path, so here "taking back" means returning
to the token where the term began and choosing again without the term's
help (the decoder keeps that position's cache, so only the tokens after it
are decoded again). A term counts as found only if the next token starts a
new word: "Consul" is not found in "Consultant".

Tokens the model chose on its own are never taken back: an attempt is undone
only if a bonus changed a choice in it, or if it ends as a term the bonuses
had to force (``BiasOptions.max_cost``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

DISTINCTIVE_LETTERS = 2
"""Letters or digits a term's first token needs before a bonus may help it begin the term."""


class TermTrie:
    """Token sequences of terms, as a trie; node 0 is the root.

    ``sequences`` are ``(tokens, spaced, distinctive)``: token ids; whether
    the first token begins with a space (such a term may follow a word; one
    without may not: "Kafka" is no term inside "XKafka"); and whether the
    first token says enough of the term to be helped to begin it (" N" of
    "Nginx" does not: a bonus on it wrote "Nginx" for "the").
    """

    def __init__(self, sequences: Iterable[tuple[Sequence[int], bool, bool]]) -> None:
        self._children: list[dict[int, int]] = [{}]
        self._ends: list[bool] = [False]
        self._unspaced: set[int] = set()
        self._distinctive: set[int] = set()
        for tokens, spaced, distinctive in sequences:
            if not tokens:
                continue
            if not spaced:
                self._unspaced.add(tokens[0])
            if distinctive:
                self._distinctive.add(tokens[0])
            node = 0
            for token in tokens:
                child = self._children[node].get(token)
                if child is None:
                    child = len(self._children)
                    self._children[node][token] = child
                    self._children.append({})
                    self._ends.append(False)
                node = child
            self._ends[node] = True

    def __len__(self) -> int:
        """Nodes, the root included."""
        return len(self._children)

    def step(self, node: int, token: int) -> int | None:
        """The child of ``node`` for ``token``, if any."""
        return self._children[node].get(token)

    def continuations(self, node: int) -> Iterable[int]:
        return self._children[node].keys()

    def ends(self, node: int) -> bool:
        """Whether a term ends at ``node``."""
        return self._ends[node]

    def first_tokens_in(self, tokens: Sequence[int]) -> set[int]:
        """First tokens of the terms that occur whole in ``tokens``."""
        found = set()
        for start, first in enumerate(tokens):
            node: int | None = 0
            for token in tokens[start:]:
                node = self.step(node, token) if node is not None else None
                if node is None:
                    break
                if self.ends(node):
                    found.add(first)
        return found

    def distinctive(self, token: int) -> bool:
        """Whether a bonus may help ``token`` begin a term (see the class docstring)."""
        return token in self._distinctive

    def may_begin(self, token: int, after_word: bool) -> bool:
        """Whether ``token`` begins a term of several tokens here: a whole
        term in one token gets no help (it could only replace another word),
        and after a word only a token led by a space begins one."""
        child = self._children[0].get(token)
        return (child is not None and bool(self._children[child])
                and not (after_word and token in self._unspaced))


def term_variants(term: str) -> tuple[str, ...]:
    """Spellings of ``term`` the model may begin to write: as written, lower
    case and capitalised (the caption stage restores the glossary's
    spelling), each with and without a leading space."""
    forms = dict.fromkeys((term, term.lower(), term[:1].upper() + term[1:]))
    return tuple(prefix + form for form in forms for prefix in (" ", ""))


def compile_terms(terms: Iterable[str], encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]
                  ) -> TermTrie:
    """A trie of every variant of every term, tokenized by ``encode``; a first
    token is distinctive if it holds at least ``DISTINCTIVE_LETTERS`` letters
    or digits (``decode`` gives its text)."""
    sequences = []
    for variant in (variant for term in terms for variant in term_variants(term)):
        tokens = encode(variant)
        first = decode(tokens[:1]) if tokens else ""
        sequences.append((tokens, variant.startswith(" "), sum(c.isalnum() for c in first) >= DISTINCTIVE_LETTERS))
    return TermTrie(sequences)


@dataclass(frozen=True, slots=True)
class BiasOptions:
    """Logit bonuses (natural-log units, added to the model's logits).

    ``continue_bonus`` favours a token that continues a term begun;
    ``begin_bonus`` one that begins a term of several tokens. Chosen by
    measurement (``benchmarks/glossary.py``; figures in README.md).
    """

    continue_bonus: float = 10.0
    begin_bonus: float = 5.0
    max_cost: float = 6.0
    """A term found with more of its tokens overridden than this (the sum of
    ``_Attempt.cost``, nats) is undone: a bonus may tip a close call, not
    write a word the audio does not support."""
    max_undos: int = 8
    """Bound on returns per decode, each of which costs decoder steps."""


@dataclass(slots=True)
class _Attempt:
    start: int
    """Tokens decoded before the term's first token: where an undo returns to."""
    first: int
    node: int
    cost: float
    """What the bonuses overrode: for each token they chose, the model's best logit minus the
    token's (nats; 0 when the model chose it on its own)."""
    quiet: bool
    """Begun where an attempt with the same first token was undone: no bonus this time."""


@dataclass(slots=True)
class TermMatcher:
    """Bookkeeping of one greedy decode: which tokens get a bonus, and what
    the chosen token did to the term being followed.

    Before choosing the token at position ``length`` the caller asks
    ``bonuses``; it reports the choice with ``advance``, which answers
    whether to undo: then the caller truncates its decode to ``undo_to``
    tokens and chooses that position again (the undone attempt's first token
    gets no help there any more). ``after_word``: the text so far ends in a
    letter or digit. ``ends_word``: the chosen token does not continue the
    word before it (it starts with a space, does not start with a letter or
    digit, or is the end of the text).
    """

    trie: TermTrie
    options: BiasOptions = BiasOptions()
    primed: set[int] = field(default_factory=set)
    """First tokens of terms the prompt holds: the model has them in mind already, and a bonus
    to begin them again wrote them over other words (live on jargon-dev: "DataLoader kit" for
    "The ECMO circuit", three sentences after "DataLoader")."""
    undos: int = 0
    undo_to: int = 0
    _attempt: _Attempt | None = None
    _undone: set[tuple[int, int]] = field(default_factory=set)

    @property
    def begun_at(self) -> int | None:
        """Where the term being followed began (``None``: no term)."""
        return self._attempt.start if self._attempt is not None else None

    def bonuses(self, length: int, after_word: bool) -> dict[int, float]:
        """``{token: bonus}`` for the token at position ``length``."""
        attempt = self._attempt
        if attempt is not None:
            if attempt.quiet or self.undos >= self.options.max_undos:  # help that could not be taken back
                return {}
            return dict.fromkeys(self.trie.continuations(attempt.node), self.options.continue_bonus)
        if not self.options.begin_bonus or self.undos >= self.options.max_undos:
            return {}
        return {token: self.options.begin_bonus for token in self.trie.continuations(0)
                if self.trie.distinctive(token) and token not in self.primed and self.trie.may_begin(token, after_word)
                and (length, token) not in self._undone}

    def advance(self, length: int, token: int, cost: float, after_word: bool, ends_word: bool) -> bool:
        """Report the token chosen at position ``length`` and what choosing it
        overrode (``cost``, nats: the model's best logit minus the token's);
        True: undo."""
        attempt = self._attempt
        if attempt is not None:
            child = self.trie.step(attempt.node, token)
            if child is not None:
                attempt.node, attempt.cost = child, attempt.cost + cost
                return False
            self._attempt = None
            found = self.trie.ends(attempt.node) and ends_word and attempt.cost <= self.options.max_cost
            if not found and attempt.cost > 0 and self.undos < self.options.max_undos:
                self.undos += 1
                self.undo_to = attempt.start
                self._undone.add((attempt.start, attempt.first))
                return True
        if self.trie.may_begin(token, after_word):
            child = self.trie.step(0, token)
            assert child is not None
            self._attempt = _Attempt(length, token, child, cost, (length, token) in self._undone)
        return False
