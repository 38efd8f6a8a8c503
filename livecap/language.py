"""Which language a room speaks: Whisper's languages, and the lock on a detected one.

A room is captioned in one language, set by its publisher or operator, or
``auto``: detected from Whisper's language-token probabilities at the
``<|startoftranscript|>`` position (openai-whisper's ``detect_language``), which
every multilingual decode computes anyway. Per-decode detection flips on an
accent, a name or a short chunk, so an auto room *locks* the first language
detected with enough evidence (``LockOptions``) and keeps it; an operator may
pin another one. ``LanguageLock`` is pure; rooms feed it each hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"
ENGLISH = "en"

WHISPER_LANGUAGES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "de": "German", "es": "Spanish", "ru": "Russian", "ko": "Korean",
    "fr": "French", "ja": "Japanese", "pt": "Portuguese", "tr": "Turkish", "pl": "Polish", "ca": "Catalan",
    "nl": "Dutch", "ar": "Arabic", "sv": "Swedish", "it": "Italian", "id": "Indonesian", "hi": "Hindi",
    "fi": "Finnish", "vi": "Vietnamese", "he": "Hebrew", "uk": "Ukrainian", "el": "Greek", "ms": "Malay",
    "cs": "Czech", "ro": "Romanian", "da": "Danish", "hu": "Hungarian", "ta": "Tamil", "no": "Norwegian",
    "th": "Thai", "ur": "Urdu", "hr": "Croatian", "bg": "Bulgarian", "lt": "Lithuanian", "la": "Latin",
    "mi": "Maori", "ml": "Malayalam", "cy": "Welsh", "sk": "Slovak", "te": "Telugu", "fa": "Persian",
    "lv": "Latvian", "bn": "Bengali", "sr": "Serbian", "az": "Azerbaijani", "sl": "Slovenian", "kn": "Kannada",
    "et": "Estonian", "mk": "Macedonian", "br": "Breton", "eu": "Basque", "is": "Icelandic", "hy": "Armenian",
    "ne": "Nepali", "mn": "Mongolian", "bs": "Bosnian", "kk": "Kazakh", "sq": "Albanian", "sw": "Swahili",
    "gl": "Galician", "mr": "Marathi", "pa": "Punjabi", "si": "Sinhala", "km": "Khmer", "sn": "Shona",
    "yo": "Yoruba", "so": "Somali", "af": "Afrikaans", "oc": "Occitan", "ka": "Georgian", "be": "Belarusian",
    "tg": "Tajik", "sd": "Sindhi", "gu": "Gujarati", "am": "Amharic", "yi": "Yiddish", "lo": "Lao",
    "uz": "Uzbek", "fo": "Faroese", "ht": "Haitian Creole", "ps": "Pashto", "tk": "Turkmen", "nn": "Nynorsk",
    "mt": "Maltese", "sa": "Sanskrit", "lb": "Luxembourgish", "my": "Myanmar", "bo": "Tibetan", "tl": "Tagalog",
    "mg": "Malagasy", "as": "Assamese", "tt": "Tatar", "haw": "Hawaiian", "ln": "Lingala", "ha": "Hausa",
    "ba": "Bashkir", "jw": "Javanese", "su": "Sundanese",
}
"""The 99 languages of Whisper's multilingual vocabulary, code → English name, in its token order
(openai-whisper ``tokenizer.LANGUAGES``; a test checks them against the built model's vocabulary)."""

WITHOUT_SPACES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
"""Languages written without spaces between words: scored by character error rate (CER)."""
TRANSLATION_TARGETS = (ENGLISH,)
"""Whisper's translate task writes English only."""


def supported(language: str) -> bool:
    """Whether ``language`` is a Whisper language code or ``auto``."""
    return language == AUTO or language in WHISPER_LANGUAGES


@dataclass(frozen=True, slots=True)
class LockOptions:
    min_speech_s: float = 2.0
    """Speech a detection must have heard: the first second or so of an utterance is often a name,
    a filler or a cut-off word, on which Whisper's detection is unreliable."""
    min_probability: float = 0.5
    """The detected language's probability: below it Whisper is torn between two languages."""


class LanguageLock:
    """The language of a room's utterances (pure state).

    ``pinned``: a language set by the publisher or an operator (never changes);
    None: ``auto``, each decode detects until one detection over at least
    ``min_speech_s`` of speech is at least ``min_probability`` sure, which
    locks it. Before the lock, ``language`` is None (each utterance detects
    its own) and ``guess`` the last detection. Detection over all 99 languages
    errs on some speakers (base took a Spanish speaker for Italian at p = 0.93):
    ``candidates``, the languages of the event, make it pick among those, as
    commercial services ask for (Azure's candidate languages)."""

    def __init__(self, pinned: str | None = None, options: LockOptions = LockOptions(),
                 candidates: tuple[str, ...] = ()) -> None:
        self.options = options
        self.candidates = candidates
        """The languages an auto room may be in (empty: any of Whisper's): detection picks among them."""
        self.pinned = pinned
        self.language: str | None = pinned
        self.guess: str | None = pinned
        self.locked_after_s: float | None = 0.0 if pinned else None
        """Speech heard in the room when the language locked (0 when pinned)."""
        self._heard_s = 0.0

    @property
    def locked(self) -> bool:
        return self.language is not None

    def observe(self, language: str | None, probability: float | None, speech_s: float) -> bool:
        """A decode of ``speech_s`` seconds of an utterance detected ``language`` with
        ``probability``; True when this locks the room's language."""
        if self.locked or language is None or probability is None:
            return False
        self.guess = language
        if speech_s >= self.options.min_speech_s and probability >= self.options.min_probability:
            self.language = language
            self.locked_after_s = self._heard_s + speech_s
            return True
        return False

    def utterance_ended(self, speech_s: float) -> None:
        """An utterance of ``speech_s`` seconds ended (time to lock counts all speech heard)."""
        self._heard_s += speech_s

    def pin(self, language: str | None) -> None:
        """An operator pins ``language`` (None: detect again)."""
        self.pinned = self.language = self.guess = language
        self.locked_after_s = 0.0 if language else None
        self._heard_s = 0.0

    def state(self) -> dict[str, object]:
        """For the dashboard and the room message."""
        return {"language": self.language, "detected": self.guess, "pinned": self.pinned is not None,
                "locked": self.locked, "candidates": list(self.candidates),
                "locked_after_s": None if self.locked_after_s is None else round(self.locked_after_s, 2)}
