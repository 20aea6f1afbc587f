"""Loading pair datasets from the Hugging Face Hub: ``hf://OWNER/NAME[@REVISION]``.

Downloads go through huggingface_hub's own ``snapshot_download`` (its cache, its token lookup, its
``HF_HUB_OFFLINE`` handling); a repo is one published version folder. The download is verified before
it is returned, so a cut-off or tampered download is never taken as a dataset. Tokens are never printed.
"""

from __future__ import annotations

import re
from pathlib import Path

from semipairs.errors import StoreError
from semipairs.manifest import MANIFEST_NAME

_HUB_ID = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^\s@]+))?$")


def parse_hub_id(uri: str) -> tuple[str, str | None]:
    """``hf://OWNER/NAME[@REV]`` -> (repo_id, revision or None)."""
    m = _HUB_ID.match(uri)
    if not m:
        raise StoreError(f"{uri!r} is not a Hub id: use hf://OWNER/NAME or hf://OWNER/NAME@REVISION (tag, branch, commit)")
    return m["repo"], m["rev"]


def download(uri: str) -> Path:
    """Local snapshot of a Hub pair dataset (from the cache when ``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_hub_id(uri)
    try:
        path = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
    except RevisionNotFoundError:
        raise StoreError(f"{uri}: revision {revision!r} not found in dataset repo {repo_id}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise StoreError(f"{uri}: dataset repo {repo_id} not found or not accessible (log in for private repos)") from None
    except LocalEntryNotFoundError:
        raise StoreError(f"{uri}: not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE?)") from None
    if not (path / MANIFEST_NAME).is_file():
        raise StoreError(f"{uri}: {repo_id} is not a semipairs dataset (no {MANIFEST_NAME} at the repo root)")
    return path
