"""LocalAgreement on scripted hypothesis sequences (no model)."""

from __future__ import annotations

import random

import pytest

from livecap.asr.engine import Word
from livecap.asr.streaming import Agreement, LocalAgreement, align, comparable, heard_before, skipped_head, split_at_cut


def words(text: str, start: float = 0.0, confidence: float = 1.0) -> list[Word]:
    """Words one second apart from ``start``."""
    return [Word(w, start + i, start + i + 1.0, confidence) for i, w in enumerate(text.split())]


class Stepper:
    """Feeds a policy hypotheses decoded from 0.5 s more audio each time."""

    def __init__(self, policy: LocalAgreement, confidence: float = 1.0) -> None:
        self.policy = policy
        self.audio_s = 0.0
        self.confidence = confidence

    def __call__(self, text: str) -> Agreement:
        self.audio_s += 0.5
        return self.policy.update(words(text, confidence=self.confidence), self.audio_s)


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
        update = Stepper(policy, confidence=0.5)
        truth = [rng.choice(vocabulary) for _ in range(12)]
        for step in range(1, 14):
            guess = truth[:step] + [rng.choice(vocabulary) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.3:  # sometimes the recognizer changes its mind about earlier words
                i = rng.randrange(len(guess))
                guess[i] = rng.choice(vocabulary)
            result = update(" ".join(guess))
            assert [comparable(w.text) for w in result.stable[: len(shown)]] == [comparable(w.text) for w in shown]
            shown = result.stable
        # a final hypothesis that is unsure of its words never retracts a settled one...
        unsure = policy.finish(words(" ".join(truth), confidence=0.3))
        assert [comparable(w.text) for w in unsure[: len(shown)]] == [comparable(w.text) for w in shown]
        # ...and nothing a surer final hypothesis heard after them is lost
        kept = iter(comparable(w.text) for w in policy.finish(words(" ".join(truth), confidence=0.9)))
        assert all(any(word == other for other in kept) for word in truth[len(shown) :]), \
            "the final hypothesis' words after the settled ones all appear, in order"


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
    final = policy.finish(words("the town of stintra which was made famous", start=10.0, confidence=0.4))
    assert texts(final) == "the town of cintra which was made famous", "an unsure final keeps the settled word"
    assert (final[3].start, final[3].end) == (13.0, 14.0), "the stable word takes its replacement's timing"


def _settle(text: str) -> LocalAgreement:
    """A policy whose partials settled every word of ``text`` but the last."""
    policy = LocalAgreement()
    update = Stepper(policy, confidence=0.6)
    update(text)
    update(text)
    return policy


def test_a_sure_final_replaces_settled_words_the_audio_no_longer_supports() -> None:
    """The numbers case: "for the $5.00." settled early; with all the audio the
    final hears "$45." and is sure of it."""
    policy = _settle("tickets cost for the $5.00. call 555")
    final = [*words("tickets cost", confidence=0.9), Word("$45.", 2, 3, 0.8),
             *words("call 555-0199 for details.", start=3, confidence=0.9)]
    assert texts(policy.finish(final)) == "tickets cost $45. call 555-0199 for details."
    policy = _settle("the commission recommends that trump and favorable consideration")
    final = words("the commission recommends that prompt and favorable consideration be given", confidence=0.7)
    assert texts(policy.finish(final)).startswith("the commission recommends that prompt and")


def test_an_unsure_final_does_not_make_settled_words_worse() -> None:
    """Viewers saw "555-0199" settle; the final's own decode writes "555.01.9", unsure."""
    policy = _settle("call 555-0199 for details today")
    final = [Word("call", 0, 1, 0.9), Word("555.01.9", 1, 2, 0.3), *words("for details today", 2, 0.9)]
    assert texts(policy.finish(final)) == "call 555-0199 for details today"


def test_a_final_no_surer_than_the_partials_keeps_what_viewers_saw_settle() -> None:
    """"10.15" settled at 0.70; the final, hearing more, writes "10.50" at 0.71."""
    policy = LocalAgreement()
    update = Stepper(policy, confidence=0.7)
    update("the keynote starts at 10.15 in hall")
    update("the keynote starts at 10.15 in hall")
    final = [*words("the keynote starts at", confidence=0.7), Word("10.50", 4, 5, 0.71),
             *words("in hall 3", start=5, confidence=0.8)]
    assert texts(policy.finish(final)) == "the keynote starts at 10.15 in hall 3"


def test_settled_words_the_final_skipped_are_kept() -> None:
    """Whisper's final decode sometimes leaves out a long stretch it had
    recognised in the partials; settled words are never lost that way."""
    policy = _settle("in planning its data processing techniques and so my fellow americans ask")
    final = policy.finish(words("and so my fellow americans ask not what your country can", confidence=0.9))
    assert texts(final) == ("in planning its data processing techniques and so my fellow americans ask "
                            "not what your country can")


def test_a_far_match_does_not_swallow_what_lies_between() -> None:
    """Stable "... for the $5.00. Call" against a final "... $45. call 555 for
    details.": "for" must not pair with the "for" of "for details"."""
    policy = _settle("cost for the $5.00. call now")
    final = policy.finish(words("cost $45. call 555-0199 for details.", confidence=0.9))
    assert texts(final) == "cost $45. call 555-0199 for details."


def test_unsettled_words_give_way_to_a_surer_final() -> None:
    """Words the last partial had not settled were guesses from less audio,
    unless they were surer than what the final hears in their place."""
    policy = LocalAgreement(horizon_s=5.0)
    policy.update(words("to be ill disposed"), 1.0)
    policy.update([*words("to be", confidence=0.9), Word("old-sposed", 2, 3, 0.3)], 1.5)
    assert texts(policy.stable) == "" and texts(policy.unstable) == "to be old-sposed"
    assert texts(policy.finish(words("to be ill-disposed.", confidence=0.8))) == "to be ill-disposed."
    assert texts(policy.finish(words("to be", confidence=0.4))) == "to be", "nor are they kept where the final has none"
    policy = LocalAgreement(horizon_s=5.0)
    policy.update([*words("call"), Word("0199", 1, 2, 0.8), Word("for", 2, 3, 0.9), Word("details.", 3, 4, 0.9)],
                  1.0)
    final = [*words("call"), Word("0.994", 1, 2, 0.4), Word("details.", 3, 4, 0.9)]
    assert texts(policy.finish(final)) == "call 0199 for details.", "what viewers saw was surer"


def test_align_prefix() -> None:
    segments, tail = align(["for", "the", "5", "call"], ["45", "call", "555", "for", "details"])
    assert segments == [(range(0, 3), range(0, 1), False), (range(3, 4), range(1, 2), True)] and tail == 2
    assert align(["a", "b", "c"], ["a", "b", "c", "d", "e"])[1] == 3
    assert align([], ["x"]) == ([], 0)
    assert align(["x", "y"], []) == ([(range(0, 2), range(0, 0), False)], 0)


def test_split_at_cut_moves_the_words_at_the_cut_to_the_next_utterance() -> None:
    heard = [Word("the", 0.0, 0.3), Word("agencies", 0.3, 1.0), Word("from", 1.1, 1.4), Word("wh-", 14.8, 15.0)]
    kept, carry_from = split_at_cut(heard, 15.0, settled=0)
    assert texts(kept) == "the agencies from" and carry_from == 1.4, "the cut-off word and all after go on"
    kept, carry_from = split_at_cut(heard, 15.0, settled=4)
    assert texts(kept) == "the agencies from wh-" and carry_from == 15.0, "settled words stay"
    assert split_at_cut([], 15.0, 0) == ((), 0.0), "nothing heard: all of it goes on"
    kept, carry_from = split_at_cut([Word("a", 0.0, 0.5), Word("b", 0.5, 14.9)], 15.0, 0, max_carry_s=5.0)
    assert texts(kept) == "a" and carry_from == 10.0, "at most max_carry_s goes on"


def test_a_late_first_word_or_a_suppressed_hypothesis_marks_a_skipped_head() -> None:
    late = [Word("If", 0.68, 1.1), Word("the", 1.1, 1.3)]
    assert skipped_head(late, 9.4, suppressed=False) == 0.68
    assert skipped_head([Word("For", 0.05, 0.3), *late], 9.4, suppressed=False) == 0.0, "it starts at the cut"
    assert skipped_head(late, 0.54, suppressed=True) == 0.54, "a suppressed guess: all of it again"
    assert skipped_head([], 2.0, suppressed=False) == 0.0, "nothing heard, nothing suppressed: no speech left out"


def test_heard_before_keeps_the_head_words_between_the_context_and_the_first_word() -> None:
    """Decoded: 1 s of the utterance before ("a snack"), then the 0.68 s head and 0.3 s more."""
    head = [Word("a", 0.5, 0.6), Word("snack", 0.6, 1.08), Word("for", 1.1, 1.24), Word("her", 1.24, 1.46),
            Word("brother", 1.46, 1.64), Word("Bob.", 1.64, 1.9), Word("If", 1.95, 1.98)]
    words = [Word("if", 0.68, 1.1), Word("the", 1.1, 1.3)]
    kept = heard_before(head, 1.0, 0.68, words)
    assert texts(kept) == "for her brother Bob.", "context words and the first word again are left out"
    assert kept[0].start == pytest.approx(0.1) and kept[-1].end == pytest.approx(0.9), "timed in the utterance"
    assert texts(heard_before(head, 1.0, 0.98, [])) == "for her brother Bob. If", "all of a suppressed utterance"
    assert heard_before([Word("snack", 0.6, 1.08)], 1.0, 0.68, words) == (), "only the context heard: nothing"
