"""Image sources from one spec string: ``imagefolder:DIR``, ``webdataset:PATTERN``, ``digits``,
``cifar10:ROOT[:train|test]``, ``hf:OWNER/NAME[@REV][:SPLIT][#image=COL,label=COL]`` (Hub, via datasets)."""

from __future__ import annotations

from pathlib import Path

from semipairs.errors import SourceError
from semipairs.sources.base import ImageSource, Skipped, SourceItem, check_image

SOURCE_KINDS = ("imagefolder", "webdataset", "digits", "cifar10", "hf")


def open_source(spec: str) -> ImageSource:
    """Open an image source from its spec string; an unknown kind is a SourceError listing the known."""
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        from semipairs.sources.digits import DigitsSource

        return DigitsSource(spec)
    if kind == "imagefolder" and arg:
        from semipairs.sources.imagefolder import ImageFolderSource

        return ImageFolderSource(spec, root=Path(arg).expanduser())
    if kind == "webdataset" and arg:
        from semipairs.sources.wds import WebDatasetSource

        return WebDatasetSource(spec, pattern=str(Path(arg).expanduser()))
    if kind == "cifar10" and arg:
        from semipairs.sources.cifar10 import Cifar10Source

        root, _, split = arg.rpartition(":") if arg.endswith((":train", ":test")) else (arg, "", "train")
        return Cifar10Source(spec, root=Path(root).expanduser(), split=split)
    if kind == "hf" and arg:
        from semipairs.sources.hub import HubImageSource, parse_hf_spec

        return HubImageSource(spec, **parse_hf_spec(spec))
    raise SourceError(
        f"unknown source spec {spec!r}: use imagefolder:DIR, webdataset:PATTERN, digits, cifar10:ROOT[:train|test] "
        "or hf:OWNER/NAME[@REV][:SPLIT]"
    )


__all__ = ["ImageSource", "SourceItem", "Skipped", "open_source", "check_image", "SOURCE_KINDS"]
