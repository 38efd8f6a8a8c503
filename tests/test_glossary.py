"""The room glossary: spelling of caption words (pure), and the context it
gives the recognizer, end to end through a real server with Whisper."""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import pytest

from livecap.appkeys import ROOMS
from livecap.asr.engine import Word
from livecap.client import stream_audio
from livecap.glossary import Glossary, propose_terms, similarity
from tests.conftest import start_server
from tests.speech import audio


def _words(text: str, confidence: float = 0.8) -> tuple[Word, ...]:
    """Words one second apart; a word written ``word@0.3`` has that confidence."""
    out = []
    for i, token in enumerate(text.split()):
        word, _, sure = token.partition("@")
        out.append(Word(word, float(i), i + 0.5, float(sure) if sure else confidence))
    return tuple(out)


def _text(words: Sequence[Word]) -> str:
    return " ".join(w.text for w in words)


def test_parse() -> None:
    glossary = Glossary.parse(" Sintra, OBS ,, Claude   Shannon, OBS")
    assert glossary.terms == ("Sintra", "OBS", "Claude Shannon")
    assert Glossary.parse("").terms == ()


def test_matching_words_take_the_terms_form() -> None:
    glossary = Glossary.parse("OBS, Claude Shannon, Dr., Shannon Airport")
    assert _text(glossary.apply(_words("we stream with obs, to the projector."))) == \
        "we stream with OBS, to the projector."
    assert _text(glossary.apply(_words("as claude shannon said"))) == "as Claude Shannon said"
    assert _text(glossary.apply(_words("land at shannon airport"))) == "land at Shannon Airport"
    assert _text(glossary.apply(_words("ask dr. who"))) == "ask Dr. who"  # no doubled period
    assert _text(glossary.apply(_words("observe the shannons"))) == "observe the shannons"  # whole words only


def test_apply_keeps_timing_and_confidence() -> None:
    words = _words("hello obs")
    applied = Glossary.parse("OBS").apply(words)
    assert [(w.start, w.end, w.confidence) for w in applied] == [(w.start, w.end, w.confidence) for w in words]
    assert Glossary().apply(words) == words


def test_words_that_sound_like_a_term_take_its_spelling() -> None:
    glossary = Glossary.parse("Sintra, warfarin, DataLoader, Siobhan Ferreira, Madison")
    assert _text(glossary.respell(_words("the town of Stintra@0.4 and"))) == "the town of Sintra and"
    assert _text(glossary.respell(_words("those on Warfer@0.3 in the trial"))) == "those on warfarin in the trial"
    assert _text(glossary.respell(_words("calls with data loader to"))) == "calls with DataLoader to"
    assert _text(glossary.respell(_words("keynote by Siobhan@0.5 Ferrera's@0.4 starts"))) == \
        "keynote by Siobhan Ferreira's starts"
    assert _text(glossary.respell(_words("Marbury vs@0.4 Magison.@0.3"))) == "Marbury vs Madison."


def test_confident_ordinary_words_are_never_respelled() -> None:
    glossary = Glossary.parse("Rust, Vault, Tokio")
    assert _text(glossary.respell(_words("the rest of the fault", confidence=0.9))) == "the rest of the fault"
    assert _text(glossary.respell(_words("the rest@0.3 of it"))) == "the Rust of it"  # unsure: it may be the term
    assert _text(glossary.respell(_words("into the Tokyo@0.95 task"))) == "into the Tokyo task"


def test_respelling_keeps_the_words_around_a_term() -> None:
    glossary = Glossary.parse("Terraform, semaglutide")
    said = "the Terraform@0.5 plan@0.5 failed and semaglutide is@0.4 added"
    assert _text(glossary.respell(_words(said))) == "the Terraform plan failed and semaglutide is added"


def test_a_respelled_run_spans_its_words() -> None:
    merged = Glossary.parse("DataLoader").respell(_words("with data@0.9 loader@0.4 now"))
    assert [(w.text, w.start, w.end, w.confidence) for w in merged] == \
        [("with", 0.0, 0.5, 0.8), ("DataLoader", 1.0, 2.5, 0.4), ("now", 3.0, 3.5, 0.8)]


def test_similarity_needs_sound_and_spelling() -> None:
    assert similarity("stintra", "sintra") > 0.85
    assert similarity("consumers", "consul") < 0.78
    assert similarity("the", "triton") == 0.0  # lengths too far apart
    assert similarity("", "x") == 0.0


def test_found_counts_whole_terms_as_spelled() -> None:
    glossary = Glossary.parse("Kafka, Kafka Streams, OBS")
    assert glossary.found("Kafka Streams feed Kafka, not kafka or Kafkaesque OBS.") == ["Kafka Streams", "Kafka", "OBS"]
    assert Glossary().found("Kafka") == []


def test_terms_are_proposed_from_a_programme() -> None:
    text = ("Keynote: Siobhan Ferreira (ETH Zurich) on GraphQL and DataLoader at PyCon. "
            "The ECMO circuit and the A100 nodes. Patients on apixaban did well; apixaban again. "
            "The talk is in the big hall and it is about the usual things.")
    proposed = {c.term: (c.why, c.count) for c in propose_terms(text, known=["graphql"])}
    assert proposed["Siobhan Ferreira"] == ("name", 1)
    assert proposed["ETH Zurich"] == ("name", 1)
    assert proposed["DataLoader"] == ("compound", 1) and proposed["ECMO"][0] == "acronym"
    assert proposed["A100"][0] == "acronym" and proposed["apixaban"] == ("rare", 2)
    assert "GraphQL" not in proposed  # already in the glossary
    assert not {"The", "The ECMO", "Keynote", "talk", "hall", "usual", "big"} & proposed.keys()
    order = [{"acronym": 0, "compound": 0, "name": 1, "rare": 2}[why] for why, _ in proposed.values()]
    assert order == sorted(order)  # the most specific kinds first


@pytest.mark.slow
async def test_glossary_reaches_the_recognizer(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Real speech through a real server: from the sound alone tiny.en writes
    "Lenelle's pictures" and "Mr. Birkett Foster's landscapes"; with the
    glossary, the names as given, counted per room for the dashboard and
    ``/metrics``; terms that were not said are not written."""
    server = await start_server(tmp_path_factory.mktemp("glossary"), engine="whisper-onnx", fallback_engine="none",
                                glossary="Linnell, Birket Foster, apixaban, Kowalczyk, ZooKeeper",
                                max_audio_rate=50.0)
    try:
        result = await stream_audio(server.ingest_url("glossary"), audio("librispeech-1272-128104-0004-8k"),
                                    speed=3.0)
        quality = server.app[ROOMS].get("glossary").quality()["glossary"]
        async with aiohttp.ClientSession() as http, http.get(f"{server.base}/metrics") as response:
            metrics = await response.text()
    finally:
        await server.runner.cleanup()
    text = " ".join(m["text"] for m in result.finals)
    assert "Linnell's" in text and "Birket Foster" in text, text
    assert not {"apixaban", "Kowalczyk", "ZooKeeper"} & set(text.split())
    assert quality["terms"] == 5 and quality["heard"] >= 2
    assert {t["term"] for t in quality["most_heard"]} >= {"Linnell", "Birket Foster"}
    assert 'livecap_glossary_terms_total{room="glossary"}' in metrics
