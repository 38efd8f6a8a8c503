"""LocalAgreement on scripted hypothesis sequences (no model)."""

from __future__ import annotations

import random

from livecap.asr.engine import Word
from livecap.asr.streaming import LocalAgreement, comparable


def words(text: str) -> list[Word]:
    return [Word(w, 0.0, 0.0) for w in text.split()]


def texts(ws: tuple[Word, ...]) -> str:
    return " ".join(w.text for w in ws)


def test_words_become_stable_when_two_hypotheses_agree() -> None:
    policy = LocalAgreement()
    first = policy.update(words("the cat"))
    assert texts(first.stable) == "" and texts(first.unstable) == "the cat"
    second = policy.update(words("the cat sat"))
    assert texts(second.stable) == "the" and texts(second.unstable) == "cat sat", \
        "'cat' ended the first hypothesis, at the edge of its audio: it waits for one more"
    third = policy.update(words("the cat sad on"))
    assert texts(third.stable) == "the cat" and texts(third.unstable) == "sad on"
    fourth = policy.update(words("the cat sat on the mat"))
    assert texts(fourth.stable) == "the cat" and texts(fourth.unstable) == "sat on the mat"
    fifth = policy.update(words("The cat, sat on the mat."))
    assert texts(fifth.stable) == "the cat sat on the", "newly stable words take the newest spelling"
    assert texts(fifth.unstable) == "mat."


def test_stable_text_survives_a_drifting_hypothesis() -> None:
    policy = LocalAgreement()
    policy.update(words("ask not what your"))
    policy.update(words("ask not what your country"))
    drifted = policy.update(words("and so ask not what your country can"))
    assert texts(drifted.stable) == "ask not what your", "aligned past the inserted words"
    assert texts(drifted.unstable) == "country can"


def test_final_keeps_the_stable_prefix_with_the_final_spelling() -> None:
    policy = LocalAgreement()
    policy.update(words("ask not what your country"))
    policy.update(words("ask not what your country can"))
    final = policy.finish(words("Ask not what your country can do for you."))
    assert texts(final) == "Ask not what your country can do for you."
    policy = LocalAgreement()
    policy.update(words("fellow americans ask"))
    policy.update(words("fellow americans ask not"))
    assert texts(policy.finish(words("americans ask not"))) == "fellow americans ask not"


def test_stable_words_are_never_retracted_on_random_hypotheses() -> None:
    rng = random.Random(3)
    vocabulary = ["a", "b", "c", "d", "e", "f", "g"]
    for _ in range(300):
        policy, shown = LocalAgreement(), tuple[Word, ...]()
        truth = [rng.choice(vocabulary) for _ in range(12)]
        for step in range(1, 14):
            guess = truth[:step] + [rng.choice(vocabulary) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.3:  # sometimes the recognizer changes its mind about earlier words
                i = rng.randrange(len(guess))
                guess[i] = rng.choice(vocabulary)
            result = policy.update(words(" ".join(guess)))
            assert [comparable(w.text) for w in result.stable[: len(shown)]] == [comparable(w.text) for w in shown]
            shown = result.stable
        final = policy.finish(words(" ".join(truth)))
        assert [comparable(w.text) for w in final[: len(shown)]] == [comparable(w.text) for w in shown]
