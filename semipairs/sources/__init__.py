"""Image sources from one spec string: ``imagefolder:DIR``, ``webdataset:PATTERN``, ``digits``,
``cifar10:ROOT[:train|test]``, ``hf:OWNER/NAME[@REV][:SPLIT][#image=COL,label=COL]`` (Hub, via datasets),
``embeddings:DIR[#key=COL,label=COL]`` (clip-retrieval's embedding folders: keys and vectors, no images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from semipairs.errors import SourceError
from semipairs.sources.base import ImageSource, Skipped, SourceItem, check_image


def _digits(spec: str, arg: str) -> ImageSource:
    from semipairs.sources.digits import DigitsSource

    return DigitsSource(spec)


def _imagefolder(spec: str, arg: str) -> ImageSource:
    from semipairs.sources.imagefolder import ImageFolderSource

    return ImageFolderSource(spec, root=Path(arg).expanduser())


def _webdataset(spec: str, arg: str) -> ImageSource:
    from semipairs.sources.wds import WebDatasetSource

    return WebDatasetSource(spec, pattern=str(Path(arg).expanduser()))


def _cifar10(spec: str, arg: str) -> ImageSource:
    from semipairs.sources.cifar10 import Cifar10Source

    root, _, split = arg.rpartition(":") if arg.endswith((":train", ":test")) else (arg, "", "train")
    return Cifar10Source(spec, root=Path(root).expanduser(), split=split)


def _embeddings(spec: str, arg: str) -> ImageSource:
    from semipairs.sources.embeddings import EmbeddingsSource, parse_embeddings_spec

    return EmbeddingsSource(spec, **parse_embeddings_spec(spec, arg))


def _hub(spec: str, arg: str) -> ImageSource:
    from semipairs.sources.hf_datasets import HubImageSource, parse_hf_spec

    return HubImageSource(spec, **parse_hf_spec(spec))


# kind -> builder(spec, argument); each imports its reader only when used
SOURCES: dict[str, Callable[[str, str], ImageSource]] = {
    "imagefolder": _imagefolder, "webdataset": _webdataset, "digits": _digits, "cifar10": _cifar10, "hf": _hub,
    "embeddings": _embeddings,
}
SOURCE_KINDS = tuple(SOURCES)


def open_source(spec: str) -> ImageSource:
    """Open an image source from its spec string; an unknown kind is a SourceError listing the known."""
    kind, _, arg = spec.partition(":")
    builder = SOURCES.get(kind)
    if builder is None or (kind != "digits" and not arg):
        raise SourceError(
            f"unknown source spec {spec!r}: use imagefolder:DIR, webdataset:PATTERN, digits, cifar10:ROOT[:train|test], "
            "hf:OWNER/NAME[@REV][:SPLIT] or embeddings:DIR[#key=COLUMN,label=COLUMN]"
        )
    return builder(spec, arg)


__all__ = ["ImageSource", "SourceItem", "Skipped", "open_source", "check_image", "SOURCE_KINDS"]
