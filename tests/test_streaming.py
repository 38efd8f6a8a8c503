"""LocalAgreement on scripted hypothesis sequences (no model)."""

from __future__ import annotations

import random

from livecap.asr.engine import Word
from livecap.asr.streaming import Agreement, LocalAgreement, comparable


def words(text: str, start: float = 0.0) -> list[Word]:
    """Words one second apart from ``start``."""
    return [Word(w, start + i, start + i + 1.0) for i, w in enumerate(text.split())]


class Stepper:
    """Feeds a policy hypotheses decoded from 0.5 s more audio each time."""

    def __init__(self, policy: LocalAgreement) -> None:
        self.policy = policy
        self.audio_s = 0.0

    def __call__(self, text: str) -> Agreement:
        self.audio_s += 0.5
        return self.policy.update(words(text), self.audio_s)


def texts(ws: tuple[Word, ...]) -> str:
    return " ".join(w.text for w in ws)


def test_words_become_stable_when_two_hypotheses_agree() -> None:
    update = Stepper(LocalAgreement())
    first = update("the cat")
    assert texts(first.stable) == "" and texts(first.unstable) == "the cat"
    second = update("the cat sat")
    assert texts(second.stable) == "the" and texts(second.unstable) == "cat sat", \
        "'cat' ended the first hypothesis, at the edge of its audio: it waits for one more"
    third = update("the cat sad on")
    assert texts(third.stable) == "the cat" and texts(third.unstable) == "sad on"
    fourth = update("the cat sat on the mat")
    assert texts(fourth.stable) == "the cat" and texts(fourth.unstable) == "sat on the mat"
    fifth = update("The cat, sat on the mat.")
    assert texts(fifth.stable) == "the cat sat on the", "newly stable words take the newest spelling"
    assert texts(fifth.unstable) == "mat."


def test_stable_text_survives_a_drifting_hypothesis() -> None:
    update = Stepper(LocalAgreement())
    update("ask not what your")
    update("ask not what your country")
    drifted = update("and so ask not what your country can")
    assert texts(drifted.stable) == "ask not what your", "aligned past the inserted words"
    assert texts(drifted.unstable) == "country can"


def test_final_keeps_the_stable_prefix_with_the_final_spelling() -> None:
    policy = LocalAgreement()
    update = Stepper(policy)
    update("ask not what your country")
    update("ask not what your country can")
    final = policy.finish(words("Ask not what your country can do for you."))
    assert texts(final) == "Ask not what your country can do for you."
    policy = LocalAgreement()
    update = Stepper(policy)
    update("fellow americans ask")
    update("fellow americans ask not")
    assert texts(policy.finish(words("americans ask not"))) == "fellow americans ask not"


def test_stable_words_are_never_retracted_on_random_hypotheses() -> None:
    rng = random.Random(3)
    vocabulary = ["a", "b", "c", "d", "e", "f", "g"]
    for _ in range(300):
        policy, shown = LocalAgreement(rng.choice([0.0, 1.0])), tuple[Word, ...]()
        update = Stepper(policy)
        truth = [rng.choice(vocabulary) for _ in range(12)]
        for step in range(1, 14):
            guess = truth[:step] + [rng.choice(vocabulary) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.3:  # sometimes the recognizer changes its mind about earlier words
                i = rng.randrange(len(guess))
                guess[i] = rng.choice(vocabulary)
            result = update(" ".join(guess))
            assert [comparable(w.text) for w in result.stable[: len(shown)]] == [comparable(w.text) for w in shown]
            shown = result.stable
        final = policy.finish(words(" ".join(truth)))
        assert [comparable(w.text) for w in final[: len(shown)]] == [comparable(w.text) for w in shown]


def test_agreement_spans_the_horizon_not_just_the_last_step() -> None:
    """Two hypotheses half a second apart repeat the same guess; the word
    settles only once a hypothesis with a second more audio confirms it."""
    update = Stepper(LocalAgreement(horizon_s=1.0))
    update("so attain the")  # 0.5 s
    assert texts(update("so attain the").stable) == "", "1.0 s: no hypothesis is a second older yet"
    assert texts(update("so attain the appalling").stable) == "so attain", "1.5 s agrees with 0.5 s"
    update = Stepper(LocalAgreement(horizon_s=1.0))
    update("as i push")  # 0.5 s
    update("as i push it")  # 1.0 s
    update("as i pollution in")  # 1.5 s: agrees with 0.5 s on "as i"
    agreement = update("as light pollution in their")  # 2.0 s against 1.0 s
    assert texts(agreement.stable) == "as i", "'i' is settled and stays"
    assert texts(agreement.unstable) == "pollution in their", "the drifted hypothesis aligns after it"


def test_replaced_stable_word_is_not_followed_by_its_replacement() -> None:
    policy = LocalAgreement()
    update = Stepper(policy)
    update("the town of cintra which")
    update("the town of cintra which was")
    assert texts(policy.stable) == "the town of cintra"
    final = policy.finish(words("the town of stintra which was made famous", start=10.0))
    assert texts(final) == "the town of cintra which was made famous"
    assert (final[3].start, final[3].end) == (13.0, 14.0), "the stable word takes its replacement's timing"
