"""A dataset nobody here wrote: links out of the version directory are refused before any file is opened,
an unknown field of format 1 is tolerated, a wrong type names its field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import semipairs
from semipairs.errors import ManifestError
from semipairs.pack import pack
from semipairs.sources import open_source
from tests.conftest import ring_pairs


@pytest.fixture()
def version(cifar_folder: Path, tmp_path: Path) -> Path:
    src = f"imagefolder:{cifar_folder}"
    csv = ring_pairs(open_source(src).keys()[:40], tmp_path / "p.csv")
    return pack(src, csv, tmp_path / "store", "ring", "1.0.0", progress=False)


def _edit(version: Path, change) -> None:
    m = json.loads((version / "semipairs.json").read_text())
    change(m)
    (version / "semipairs.json").write_text(json.dumps(m))


def test_a_listed_file_that_links_outside_is_refused_by_every_reader(version: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from semipairs.cli import app

    secret = tmp_path / "outside.tar"
    shard = version / "data" / "pairs-000000.tar"
    shutil.copy(shard, secret)  # same bytes: only the link gives it away
    shard.unlink()
    shard.symlink_to(secret)
    with pytest.raises(ManifestError, match=r"field 'files.1.path' \('data/pairs-000000.tar'\) is a link leading outside"):
        semipairs.load(version)
    for args, code in ((["verify", str(version)], 1), (["info", str(version)], 2),  # verify: a failed check, exit 1
                       (["audit", str(version), "--out", str(tmp_path / "a")], 2)):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == code and "is a link leading outside the version directory" in r.output, (args, r.output)
    shard.unlink()
    (version / "data").rename(tmp_path / "data-elsewhere")
    (version / "data").symlink_to(tmp_path / "data-elsewhere")  # a linked directory is the same escape
    with pytest.raises(ManifestError, match="is a link leading outside"):
        semipairs.load(version)


def test_a_link_inside_the_version_is_fine(version: Path) -> None:
    shard = version / "data" / "pairs-000000.tar"
    (version / "data" / "real.tar").write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to("real.tar")
    ds = semipairs.load(version)
    assert len(ds) == 40


def test_unknown_fields_are_tolerated_and_wrong_types_name_the_field(version: Path) -> None:
    _edit(version, lambda m: m.update(written_by_a_newer_release={"x": 1}) or m["stats"].update(new_stat=3))
    assert semipairs.load(version).verify().ok
    _edit(version, lambda m: m["stats"].update(num_pairs="many"))
    with pytest.raises(ManifestError, match=r"field 'stats.num_pairs'"):
        semipairs.load(version)


def test_a_pair_list_as_users_write_it_is_counted_never_silently_published(cifar_folder: Path, tmp_path: Path) -> None:
    import pandas as pd

    from semipairs.errors import PairsError

    src = f"imagefolder:{cifar_folder}"
    keys = open_source(src).keys()
    rows = [(keys[0], keys[1]), (keys[0], keys[1]), (keys[1], keys[0]), (keys[2], keys[3]), (keys[2], keys[3])]
    pd.DataFrame(rows, columns=["anchor_key", "positive_key"]).to_csv(tmp_path / "p.csv", index=False)
    ds = semipairs.load(pack(src, tmp_path / "p.csv", tmp_path / "store", "dupes", "1.0.0", progress=False))
    assert ds.manifest.mining.duplicates_dropped == 2 and len(ds) == 3
    assert ds.table["mutual"].tolist() == [True, True, False]  # the reversed pair is kept, and marked
    pd.DataFrame([(keys[0], keys[1]), (keys[4], keys[4])], columns=["anchor_key", "positive_key"]).to_csv(
        tmp_path / "self.csv", index=False)
    with pytest.raises(PairsError, match=r"row\(s\) \[1\] pair an image with itself"):
        pack(src, tmp_path / "self.csv", tmp_path / "store", "selfs", "1.0.0", progress=False)


def test_a_pair_table_of_another_size_is_named_before_it_is_parsed(version: Path) -> None:
    from semipairs.errors import ShardReadError

    with open(version / "pairs.parquet", "ab") as f:
        f.write(b"\0" * 1000)  # grown: what a replaced table looks like to a reader
    with pytest.raises(ShardReadError, match=r"pairs.parquet: is \d+ bytes, the manifest says \d+ bytes"):
        _ = semipairs.load(version).table
