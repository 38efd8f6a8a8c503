"""Whisper's byte-level BPE tokenizer and its special tokens.

Loaded from the model directory's ``tokenizer.json`` (never from a hub). The
file lists tokens up to ``<|notimestamps|>``; the 1501 timestamp tokens
``<|0.00|>`` … ``<|30.00|>`` follow it in the model's vocabulary, so
``timestamp_begin`` is derived, not looked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from livecap.language import ENGLISH, WHISPER_LANGUAGES

Task = Literal["transcribe", "translate"]
"""Whisper's tasks: write what was said, or its English translation (multilingual models only)."""

_SPACE = "Ġ"
"""GPT-2's byte-level encoding writes a leading space as this character."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the control tokens of one vocabulary (English-only and
    multilingual vocabularies number them differently)."""

    eot: int
    sot: int
    english: int
    transcribe: int
    translate: int | None
    """None in an English-only vocabulary."""
    start_of_prev: int
    no_speech: int
    no_timestamps: int

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1


class WhisperTokenizer:
    """Text ↔ token ids, plus the prefix a transcription starts with."""

    def __init__(self, path: Path, multilingual: bool) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self.special = SpecialTokens(
            eot=self._id("<|endoftext|>"),
            sot=self._id("<|startoftranscript|>"),
            english=self._id("<|en|>"),
            transcribe=self._id("<|transcribe|>"),
            translate=self._optional_id("<|translate|>") if multilingual else None,
            start_of_prev=self._id("<|startofprev|>"),
            # openai-whisper names it <|nospeech|>; the Hugging Face vocabulary <|nocaptions|>.
            no_speech=self._optional_id("<|nospeech|>") or self._id("<|nocaptions|>"),
            no_timestamps=self._id("<|notimestamps|>"),
        )
        self.multilingual = multilingual
        self.languages: dict[str, int] = {code: self._id(f"<|{code}|>") for code in WHISPER_LANGUAGES} \
            if multilingual else {ENGLISH: self.special.english}
        """Each language's token: what the decoder is told to write, or what it detects."""
        vocabulary = self._tokenizer.get_vocab(with_added_tokens=False)
        self._spaced = np.zeros(self.special.eot, dtype=bool)
        self._opens_word = np.zeros(self.special.eot, dtype=bool)
        self._closes_word = np.zeros(self.special.eot, dtype=bool)
        for piece, token in vocabulary.items():
            if token < self.special.eot and piece:
                self._spaced[token] = piece.startswith(_SPACE)
                self._opens_word[token] = piece[0].isalnum()
                self._closes_word[token] = piece[-1].isalnum()

    def _optional_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token}")
        return token_id

    def sot_sequence(self, language: str = ENGLISH, task: Task = "transcribe") -> tuple[int, ...]:
        """Start of transcript, then language and task for a multilingual model
        (the English-only models take neither: ``ValueError`` for another language or task)."""
        s = self.special
        if not self.multilingual:
            if language != ENGLISH or task != "transcribe":
                raise ValueError(f"an English-only model cannot {task} {language!r}")
            return (s.sot,)
        task_token = s.translate if task == "translate" else s.transcribe
        assert task_token is not None
        return s.sot, self.languages[language], task_token

    def encode(self, text: str) -> list[int]:
        """Ids of plain text, without any special token."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: list[int]) -> str:
        """Text of the ordinary tokens among ``tokens`` (control tokens dropped)."""
        return str(self._tokenizer.decode([t for t in tokens if t < self.special.eot]))

    def starts_word(self, token: int) -> bool:
        """Whether the token begins with a space, i.e. starts a new word."""
        return token < self.special.eot and bool(self._spaced[token])

    def ends_word(self, token: int) -> bool:
        """Whether ``token`` does not continue the word before it: it starts
        with a space or not with a letter or digit, or it is a control token."""
        return token >= self.special.eot or bool(self._spaced[token] or not self._opens_word[token])

    def after_word(self, token: int) -> bool:
        """Whether text ending in ``token`` ends in a letter or digit."""
        return token < self.special.eot and bool(self._closes_word[token])
