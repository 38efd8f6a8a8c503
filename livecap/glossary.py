"""Room glossary: names and jargon spelled as the organiser wrote them.

Whisper spells a rare name the way it sounds ("Stintra" for "Sintra"). Three
things help, in the order of the pipeline: the decoder favours the terms'
tokens (``asr.biasing``); caption words that match a term apart from case,
spaces and punctuation take the term's form ("obs" becomes "OBS", "data
loader" "DataLoader", every partial and final); and words of a final that
*sound* like a term take its spelling (``respell``), unless they are
ordinary words the model was sure of. Pure: ``rooms`` applies it.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import jellyfish
from wordfreq import zipf_frequency

from livecap.asr.engine import Word
from livecap.asr.streaming import comparable

AFFIXES = re.compile(r"^(\W*)(.*?)((?:['’]s)?\W*)$", re.DOTALL)
"""A word's leading punctuation, its core, and its possessive and trailing punctuation."""
SOUNDS_LIKE = 0.78
"""Least similarity (``similarity``) for a run of words to take a term's spelling."""
ORDINARY_ZIPF = 3.0
"""Words at least this frequent in English (Zipf scale: 3 is once per million words; wordfreq)
are ordinary: ``respell`` changes them only where the model was unsure."""
UNSURE = 0.6
"""A word's confidence below which the model was unsure of it."""
MAX_EXTRA_WORDS = 1
"""``respell`` matches a term of n words against runs of up to n + 1 words ("new keeper")."""


def clean_terms(terms: Iterable[str]) -> tuple[str, ...]:
    """Terms with their spaces collapsed; blanks and repeats dropped, order kept."""
    return tuple(dict.fromkeys(" ".join(term.split()) for term in terms if term.strip()))


@dataclass(frozen=True)
class Glossary:
    terms: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Glossary:
        """Comma-separated terms (see ``clean_terms``)."""
        return cls(clean_terms(text.split(",")))

    @functools.cached_property
    def _keys(self) -> dict[str, str]:
        """Each term by its letters and digits, lower case, without spaces."""
        return {"".join(comparable(part) for part in term.split()): term for term in self.terms}

    def apply(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """``words`` with each run that spells a term apart from case and
        punctuation, word for word, spelled as the term (longest terms first).
        Keeps the number of words, so it may run over partials."""
        keys = self._keys
        if not keys:
            return tuple(words)

        def spelled(run: Sequence[Word]) -> tuple[str, float] | None:
            term = keys.get(_key(run))
            return (term, 1.0) if term is not None and len(term.split()) == len(run) else None

        return _replace_runs(words, self._longest, spelled)

    def respell(self, words: Sequence[Word]) -> tuple[Word, ...]:
        """``words`` with each run that is a term apart from case, spaces and
        punctuation ("data loader": "DataLoader"), or sounds like one
        (``similarity`` at least ``SOUNDS_LIKE``, and less without any word
        of the run), spelled as the term; the best match first. A run sounds
        like a term only if each of its words is rare in English or was
        decoded with a confidence below ``UNSURE``: a confident ordinary word
        is never touched. For finals, whose word confidences are the model's
        own; a run of another length than its term becomes one word."""
        keys = self._keys
        if not keys:
            return tuple(words)

        def sounds_like(run: Sequence[Word]) -> tuple[str, float] | None:
            key = _key(run)
            if key in keys:
                return keys[key], 1.0
            if not all(w.confidence < UNSURE or _rare(_key((w,))) for w in run):
                return None
            sound = _Sound.of(key)
            scores = {term_key: sound.similarity(term_sound) for term_key, term_sound in self._sounds.items()}
            term_key = max(scores, key=scores.__getitem__)
            score = scores[term_key]
            if len(run) > len(keys[term_key].split()) + MAX_EXTRA_WORDS or score < SOUNDS_LIKE:
                return None
            shorter = (run[1:], run[:-1]) if len(run) > 1 else ()
            if any(similarity(_key(part), term_key) >= score for part in shorter):
                return None  # a word of the run that is no part of the term
            return keys[term_key], score

        return _replace_runs(words, self._longest, sounds_like)

    def found(self, text: str) -> list[str]:
        """The terms ``text`` contains, spelled exactly and as whole words, in order."""
        return self._pattern.findall(text) if self.terms else []

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        longest_first = sorted(self.terms, key=len, reverse=True)
        return re.compile(r"(?<!\w)(" + "|".join(map(re.escape, longest_first)) + r")(?!\w)")

    @functools.cached_property
    def _sounds(self) -> dict[str, _Sound]:
        """Each term's key (``_keys``) with its sound, worked out once per glossary."""
        return {key: _Sound.of(key) for key in self._keys}

    @functools.cached_property
    def _longest(self) -> int:
        """Longest run of words compared with the terms."""
        return max((len(term.split()) for term in self.terms), default=0) + MAX_EXTRA_WORDS


def _key(run: Sequence[Word]) -> str:
    """The words' cores (``AFFIXES``), lower case, letters and digits only, run together."""
    return "".join(comparable(AFFIXES.match(w.text).group(2)) for w in run)  # type: ignore[union-attr]


def similarity(said: str, term: str) -> float:
    """How alike two lower-case keys sound and are spelled, in [0, 1]: the
    mean of the Jaro-Winkler similarity of their letters and the edit
    similarity of their Metaphone codes (jellyfish). 0 if their lengths
    differ by more than half."""
    return _Sound.of(said).similarity(_Sound.of(term))


@dataclass(frozen=True, slots=True)
class _Sound:
    """A key with its Metaphone code, so that a term's is worked out once (``similarity``)."""

    key: str
    code: str

    @classmethod
    def of(cls, key: str) -> _Sound:
        return cls(key, jellyfish.metaphone(key) if key else "")

    def similarity(self, other: _Sound) -> float:
        if not self.key or not other.key or not 2 / 3 <= len(self.key) / len(other.key) <= 3 / 2:
            return 0.0
        spelled = jellyfish.jaro_winkler_similarity(self.key, other.key)
        sounded = 1 - jellyfish.levenshtein_distance(self.code, other.code) / max(len(self.code), len(other.code), 1)
        return (spelled + sounded) / 2


@functools.lru_cache(maxsize=65536)
def _rare(word: str) -> bool:
    return zipf_frequency(word, "en") < ORDINARY_ZIPF


def _replace_runs(words: Sequence[Word], longest: int,
                  match: Callable[[Sequence[Word]], tuple[str, float] | None]) -> tuple[Word, ...]:
    """``words`` with runs of up to ``longest`` words replaced by the term
    ``match`` gives them, with its score; at each position the best score,
    then the longest run. A run as long as its term takes it word for word,
    each word keeping its punctuation and times; another becomes one word."""
    out: list[Word] = []
    i = 0
    while i < len(words):
        found = [(found[1], n, found[0]) for n in range(min(longest, len(words) - i), 0, -1)
                 if (found := match(words[i : i + n])) is not None]
        if not found:
            out.append(words[i])
            i += 1
            continue
        _, n, term = max(found)
        run, parts = words[i : i + n], term.split()
        if len(parts) == n:
            out += [_spell(word, part, word) for word, part in zip(run, parts, strict=True)]
        else:
            out.append(_spell(run[0], term, run[-1], min(w.confidence for w in run)))
        i += n
    return tuple(out)


def _spell(first: Word, spelling: str, last: Word, confidence: float | None = None) -> Word:
    """``spelling`` with the punctuation before ``first`` and after ``last``, over their times."""
    before = AFFIXES.match(first.text).group(1)  # type: ignore[union-attr]
    after = AFFIXES.match(last.text).group(3)  # type: ignore[union-attr]
    own = AFFIXES.match(spelling).group(3)  # type: ignore[union-attr]
    after = after[len(own):] if after.startswith(own) else after  # "Dr." + "." once
    return Word(before + spelling + after, first.start, last.end,
                first.confidence if confidence is None else confidence)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A term proposed for a glossary, from text the operator pasted."""

    term: str
    count: int
    """Times it occurs in the text."""
    why: str
    """"acronym" (capitals, or letters with digits: ECMO, A100), "compound" (a capital inside:
    GraphQL), "name" (capitalised words, half of them rare or acronyms: Siobhan Ferreira), "rare"
    (Zipf frequency below ``ORDINARY_ZIPF``: apixaban)."""


_TEXT_WORD = re.compile(r"[^\W_](?:[\w'’.-]*[^\W_])?")
"""A word of pasted text: letters and digits, with inner apostrophes, dots and hyphens."""
_KIND_ORDER = {"acronym": 0, "compound": 0, "name": 1, "rare": 2}


def propose_terms(text: str, known: Iterable[str] = (), limit: int = 100) -> list[Candidate]:
    """Terms worth a glossary in ``text`` (a talk's abstract, a programme,
    slide text): acronyms, compounds, names and words rare in English
    (wordfreq decides), the most specific kinds first, then the most
    frequent; none of the ``known`` terms (compared without case). A term
    keeps its most frequent spelling in the text."""
    counts: dict[str, collections.Counter[str]] = {}
    kinds: dict[str, str] = {}

    def add(term: str, kind: str) -> None:
        key = term.lower()
        counts.setdefault(key, collections.Counter())[term] += 1
        kinds.setdefault(key, kind)

    run: list[tuple[str, bool]] = []
    """Capitalised words in a row, with nothing but spaces between them, each with whether it is
    a candidate on its own."""
    last_end = 0
    for match in _TEXT_WORD.finditer(text):
        if text[last_end : match.start()].strip():
            run = []
        last_end = match.end()
        word = re.sub(r"['’]s$", "", match.group())
        kind = _kind(word)
        if kind is not None:
            add(word, kind)
        if word[:1].isupper() and (run or kind is not None):  # a name begins with a special word, not "The"
            run.append((word, kind is not None))
            if len(run) >= 2 and 2 * sum(special for _, special in run) >= len(run):
                add(" ".join(w for w, _ in run), "name")
        else:
            run = []
    known_keys = {term.lower() for term in known}
    ranked = sorted((key for key in counts if key not in known_keys),
                    key=lambda key: (_KIND_ORDER[kinds[key]], -counts[key].total(), key))
    return [Candidate(counts[key].most_common(1)[0][0], counts[key].total(), kinds[key]) for key in ranked[:limit]]


def _kind(word: str) -> str | None:
    """Why ``word`` alone is a candidate (``Candidate.why``), if it is one."""
    letters = [c for c in word if c.isalpha()]
    capitals = sum(c.isupper() for c in letters)
    if not letters:
        return None  # numbers are written as said
    if any(c.isdigit() for c in word) or (capitals >= 2 and 2 * capitals >= len(letters)):
        return "acronym"
    if any(c.isupper() for c in word[1:]):
        return "compound"
    if len(letters) >= 3 and _rare(comparable(word)):
        return "name" if word[:1].isupper() else "rare"
    return None
