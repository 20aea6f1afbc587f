"""Pair datasets on the Hugging Face Hub: ``push`` a version, load ``hf://OWNER/NAME[@REVISION]``.

Downloads go through huggingface_hub's own ``snapshot_download`` (its cache, its token lookup, its
``HF_HUB_OFFLINE`` handling); a repo is one published version folder. The download is verified before
it is returned, so a cut-off or tampered download is never taken as a dataset. Tokens are never printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from semipairs.errors import SemipairsError, StoreError
from semipairs.manifest import MANIFEST_NAME, Manifest, read_manifest

_TRANSPORT_MODULES = ("httpx2", "httpx", "httpcore", "httpcore2", "requests", "urllib3")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_ID = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^\s@]+))?$")


def parse_hub_id(uri: str) -> tuple[str, str | None]:
    """``hf://OWNER/NAME[@REV]`` -> (repo_id, revision or None)."""
    m = _HUB_ID.match(uri)
    if not m:
        raise StoreError(f"{uri!r} is not a Hub id: use hf://OWNER/NAME or hf://OWNER/NAME@REVISION (tag, branch, commit)")
    return m["repo"], m["rev"]


def download(uri: str) -> Path:
    """Local snapshot of a Hub pair dataset (from the cache when ``HF_HUB_OFFLINE=1``).

    huggingface_hub writes each file to ``*.incomplete`` and renames it only when whole, so a download
    cut off half way leaves nothing that looks finished; the caller still verifies every hash."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
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
    except HfHubHTTPError as exc:
        raise StoreError(f"{uri}: the Hub refused the download (HTTP {exc.response.status_code})") from None
    except Exception as exc:
        # Transport errors (connection reset, body cut short) come from the HTTP client huggingface_hub
        # uses (httpx2, httpx or requests by version), not from huggingface_hub; anything else is a bug.
        if not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] not in _TRANSPORT_MODULES:
            raise
        raise StoreError(
            f"{uri}: download failed part way ({type(exc).__name__}); nothing partial was kept as a dataset, "
            "run again to resume") from None
    if not (path / MANIFEST_NAME).is_file():
        raise StoreError(f"{uri}: {repo_id} is not a semipairs dataset (no {MANIFEST_NAME} at the repo root)")
    return path


@dataclass(frozen=True)
class PushResult:
    """What ``push`` did: ``uploaded`` is False when the same content was already there (a no-op)."""

    repo_id: str
    version: str
    content_hash: str
    commit: str
    tag: str | None
    uploaded: bool
    url: str


def _remote_manifest(api, repo_id: str, revision: str) -> Manifest | None:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        local = api.hf_hub_download(repo_id, MANIFEST_NAME, repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return None
    try:
        return read_manifest(Path(local).parent)
    except SemipairsError:
        return None


def push(path: str | Path, repo_id: str, *, private: bool = False, tag: bool = True, token: str | None = None) -> PushResult:
    """Upload one published version folder to a Hub dataset repo and tag its commit ``v<version>``.

    The repo root becomes the version folder (so ``datasets.load_dataset(repo_id)`` reads it through the
    card's ``configs``); files of an older version that the new one lacks are deleted in the same commit.
    Re-pushing a version already on the Hub is refused unless its content_hash is identical (then a no-op).
    ``token`` defaults to huggingface_hub's own lookup (HF_TOKEN, the login cache); it is never printed.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from semipairs.dataset import PairDataset

    if not _REPO_ID.match(repo_id):
        raise StoreError(f"{repo_id!r} is not a Hub repo id: use OWNER/NAME")
    root = Path(path).expanduser()
    ds = PairDataset(root)
    report = ds.verify()
    if not report.ok:
        raise StoreError(f"{root}: refusing to push a version that does not verify: {report.problems[0]}")
    m = ds.manifest
    tag_name = f"v{m.version}"
    api = HfApi(token=token)
    try:
        url = str(api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        tagged = {t.name: t.target_commit for t in refs.tags}
        candidates = [tag_name] if tag_name in tagged else []
        candidates += [b.name for b in refs.branches if b.name == "main"]
        for rev in candidates:
            remote = _remote_manifest(api, repo_id, rev)
            if remote is not None and remote.name != m.name:
                raise StoreError(f"{repo_id} holds the pair dataset {remote.name!r}, not {m.name!r}: one repo per dataset")
            if remote is None or remote.name != m.name or remote.version != m.version:
                if rev == tag_name and tag:  # the tag we would create already names other content
                    held = "no semipairs dataset" if remote is None else f"{remote.name} {remote.version}"
                    raise StoreError(f"{repo_id}: tag {tag_name} already exists and holds {held}, not {m.version}")
                continue
            if remote.content_hash != m.content_hash:
                raise StoreError(
                    f"{repo_id}: version {m.version} is already on the Hub ({rev}) with content_hash "
                    f"{remote.content_hash[:16]}..., this one is {m.content_hash[:16]}...: publish a new version instead")
            commit = tagged.get(tag_name) or api.repo_info(repo_id, repo_type="dataset", revision=rev).sha
            if tag and tag_name not in tagged:
                api.create_tag(repo_id, tag=tag_name, revision=commit, repo_type="dataset")
            return PushResult(repo_id, m.version, m.content_hash, commit, tag_name if tag else None, False, url)
        info = api.upload_folder(
            folder_path=root, repo_id=repo_id, repo_type="dataset",
            commit_message=f"{m.name} {m.version} (semipairs)",
            commit_description=f"content_hash {m.content_hash}",
            delete_patterns=["*"],  # a repo holds one version: drop files the new one lacks (.gitattributes is kept)
        )
        if tag:
            api.create_tag(repo_id, tag=tag_name, revision=info.oid, repo_type="dataset",
                           tag_message=f"{m.name} {m.version} content_hash {m.content_hash}")
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (check your token: HF_TOKEN or `hf auth login`)" if status in (401, 403) else ""
        raise StoreError(f"push to {repo_id} failed: HTTP {status}{hint}: {exc.server_message or type(exc).__name__}") from None
    return PushResult(repo_id, m.version, m.content_hash, info.oid, tag_name if tag else None, True, url)
