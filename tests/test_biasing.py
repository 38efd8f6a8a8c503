"""Contextual biasing (``livecap.asr.biasing``): the token trie and the
bookkeeping of one greedy decode, on scripted token sequences; then the real
tiny.en decoder with and without a glossary on real speech."""

from __future__ import annotations

import pytest

from livecap.asr.biasing import BiasOptions, TermMatcher, TermTrie, compile_terms, term_variants
from livecap.asr.engine import EngineOptions
from livecap.asr.whisper_onnx import WhisperOnnx
from livecap.glossary import Glossary
from tests.speech import audio

# A toy vocabulary: " Kaf"=1, "ka"=2, " Cons"=3, "ul"=4, "tant"=5, " Vault"=6, "Kaf"=7, " the"=8, " a"=9,
# " N"=10, "ginx"=11
KAFKA, CONSUL, VAULT, UNSPACED_KAFKA = (1, 2), (3, 4), (6,), (7, 2)


def _trie() -> TermTrie:
    return TermTrie([(KAFKA, True, True), (CONSUL, True, True), (VAULT, True, True), (UNSPACED_KAFKA, False, True),
                     ((10, 11), True, False)])  # " N" "ginx": too short a start to be helped to begin


def test_trie_walks_terms_and_says_where_they_may_begin() -> None:
    trie = _trie()
    node = trie.step(0, 1)
    assert node is not None and list(trie.continuations(node)) == [2]
    end = trie.step(node, 2)
    assert end is not None and trie.ends(end) and not trie.ends(node)
    assert trie.step(0, 2) is None
    assert trie.may_begin(1, after_word=True)
    assert not trie.may_begin(6, after_word=False)  # one token: a bonus could only replace another word
    assert trie.may_begin(10, after_word=True) and not trie.distinctive(10)
    assert trie.may_begin(7, after_word=False) and not trie.may_begin(7, after_word=True)  # "XKafka" is no term


def test_variants_cover_case_and_the_leading_space() -> None:
    assert term_variants("apixaban") == (" apixaban", "apixaban", " Apixaban", "Apixaban")
    assert term_variants("qPCR") == (" qPCR", "qPCR", " qpcr", "qpcr", " QPCR", "QPCR")
    encoded: list[str] = []

    def encode(text: str) -> list[int]:
        encoded.append(text)
        return [len(encoded)]

    trie = compile_terms(["Kafka"], encode, lambda tokens: "K" if tokens == [1] else "Kaf")
    assert encoded == [" Kafka", "Kafka", " kafka", "kafka"]
    assert not trie.distinctive(1) and trie.distinctive(2)


def test_terms_the_prompt_holds_get_no_help_to_begin() -> None:
    trie = _trie()
    assert trie.first_tokens_in([8, 1, 2, 9, 3]) == {1}  # " the Kafka a Cons": Kafka whole, Consul not
    matcher = TermMatcher(trie, BiasOptions(begin_bonus=2.0), primed=trie.first_tokens_in([1, 2]))
    assert matcher.bonuses(0, after_word=False) == {3: 2.0, 7: 2.0}
    matcher.advance(0, 1, 0.0, after_word=False, ends_word=True)  # the model's own " Kaf" ...
    assert matcher.bonuses(1, after_word=True) == {2: 10.0}  # ... is helped to go on


def test_a_term_begun_gets_the_continuation_bonus_and_counts_when_finished() -> None:
    matcher = TermMatcher(_trie(), BiasOptions(continue_bonus=4.0, begin_bonus=2.0))
    assert matcher.bonuses(0, after_word=False) == {1: 2.0, 3: 2.0, 7: 2.0}  # not " N", " Vault"
    assert matcher.bonuses(1, after_word=True) == {1: 2.0, 3: 2.0}
    assert not matcher.advance(0, 8, 0.0, after_word=False, ends_word=True)  # " the"
    assert not matcher.advance(1, 1, 0.0, after_word=True, ends_word=True)  # " Kaf", the model's own choice
    assert matcher.begun_at == 1 and matcher.bonuses(2, after_word=True) == {2: 4.0}
    assert not matcher.advance(2, 2, 1.5, after_word=True, ends_word=False)  # "ka", helped
    assert not matcher.advance(3, 8, 0.0, after_word=True, ends_word=True)  # " the": Kafka is whole
    assert matcher.undos == 0 and matcher.begun_at is None  # found, kept


def test_an_abandoned_term_that_was_helped_is_undone_once() -> None:
    matcher = TermMatcher(_trie(), BiasOptions(continue_bonus=4.0, begin_bonus=2.0))
    assert not matcher.advance(0, 3, 0.8, after_word=False, ends_word=True)  # " Cons", chosen by the bonus
    assert matcher.advance(1, 9, 0.0, after_word=True, ends_word=True)  # " a": abandoned, so undo
    assert matcher.undo_to == 0 and matcher.undos == 1
    assert 3 not in matcher.bonuses(0, after_word=False)  # no help for " Cons" there again
    assert not matcher.advance(0, 3, 0.0, after_word=False, ends_word=True)  # the model's own " Cons"
    assert matcher.bonuses(1, after_word=True) == {}  # ...is followed without help
    assert not matcher.advance(1, 9, 0.0, after_word=True, ends_word=True)
    assert matcher.undos == 1


def test_a_term_inside_a_longer_word_is_not_found() -> None:
    matcher = TermMatcher(_trie())
    matcher.advance(0, 3, 0.5, after_word=False, ends_word=True)  # " Cons"
    matcher.advance(1, 4, 0.5, after_word=True, ends_word=False)  # "ul"
    assert matcher.advance(2, 5, 0.0, after_word=True, ends_word=False)  # "tant": "Consultant" is no Consul
    assert matcher.undo_to == 0


def test_the_models_own_words_are_never_undone() -> None:
    matcher = TermMatcher(_trie())
    matcher.advance(0, 3, 0.0, after_word=False, ends_word=True)
    matcher.advance(1, 4, 0.0, after_word=True, ends_word=False)
    assert not matcher.advance(2, 5, 0.0, after_word=True, ends_word=False)  # "Consultant" as the model wrote it
    assert matcher.undos == 0


def test_a_term_the_bonuses_had_to_force_is_undone() -> None:
    matcher = TermMatcher(_trie(), BiasOptions(max_cost=3.0))
    matcher.advance(0, 1, 2.0, after_word=False, ends_word=True)
    matcher.advance(1, 2, 2.0, after_word=True, ends_word=False)
    assert matcher.advance(2, 8, 0.0, after_word=True, ends_word=True)  # whole, but 4 nats overridden
    assert matcher.undo_to == 0


def test_undos_are_bounded_and_then_nothing_is_helped() -> None:
    matcher = TermMatcher(_trie(), BiasOptions(max_undos=2))
    for position in range(2):
        matcher.advance(position, 1, 1.0, after_word=False, ends_word=True)
        assert matcher.advance(position + 1, 9, 0.0, after_word=True, ends_word=True)
    assert matcher.bonuses(0, after_word=False) == {}
    matcher.advance(5, 1, 0.0, after_word=False, ends_word=True)
    assert matcher.bonuses(6, after_word=True) == {}  # help now could not be taken back
    assert not matcher.advance(6, 9, 0.0, after_word=True, ends_word=True)


@pytest.fixture(scope="module")
def tiny_en() -> WhisperOnnx:
    return WhisperOnnx(EngineOptions(model="tiny.en", device="cpu", threads=2))


@pytest.mark.parametrize(("recording", "terms", "plain"), [
    ("ami-ES2011a-headset0-40s-46s", ("Claflin", "Abbie"), "Claphlin"),
    ("fleurs-en_us-test-006", ("Marianas",), "Marianna's"),
])
def test_the_decoder_spells_glossary_names_it_misspells_without(
        tiny_en: WhisperOnnx, recording: str, terms: tuple[str, ...], plain: str) -> None:
    """Real speech: without the glossary tiny.en writes ``plain``; with it, the terms, and as
    many words as before."""
    samples = audio(recording)
    without = tiny_en.transcribe(samples).text
    biased = tiny_en.transcribe(samples, terms=tiny_en.compile(terms)).text
    assert plain in without and plain not in biased
    assert all(term in biased for term in terms), biased
    assert len(biased.split()) == len(without.split())


def test_what_the_decoder_cannot_begin_the_caption_stage_respells(tiny_en: WhisperOnnx) -> None:
    """"Sintra" begins with " S", too short a start for a bonus: the decoder writes "Stintra"
    anyway, and the final's spelling repair, hearing the rare word, writes the term."""
    samples = audio("fleurs-en_us-test-002")
    words = tiny_en.transcribe(samples, word_timestamps=True, terms=tiny_en.compile(("Sintra",))).words
    assert "Stintra" in " ".join(w.text for w in words)
    assert "Sintra" in " ".join(w.text for w in Glossary(("Sintra",)).respell(words)).split()


def test_terms_not_said_are_not_written(tiny_en: WhisperOnnx) -> None:
    """Terms that sound like nothing in the recording change nothing."""
    samples = audio("librispeech-3752-4944-0002")
    terms = ("apixaban", "Kowalczyk", "ZooKeeper", "certiorari", "HbA1c", "Siobhan Ferreira")
    assert tiny_en.transcribe(samples, terms=tiny_en.compile(terms)).text == tiny_en.transcribe(samples).text
