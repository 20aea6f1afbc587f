"""semipairs: semantic positive pairs for self-supervised learning, as versioned WebDataset datasets.

``semipairs.load(path)`` opens a published pair dataset. Importing this package never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from semipairs.dataset import PairDataset, list_versions, load  # noqa: E402
from semipairs.errors import (  # noqa: E402
    FormatVersionError,
    ManifestError,
    PairsError,
    SemipairsError,
    ShardReadError,
    SourceError,
    StoreError,
)
from semipairs.manifest import FORMAT_VERSION, Manifest  # noqa: E402

__all__ = [
    "__version__", "load", "list_versions", "PairDataset", "Manifest", "FORMAT_VERSION",
    "SemipairsError", "FormatVersionError", "ManifestError", "PairsError", "ShardReadError", "SourceError",
    "StoreError",
]
