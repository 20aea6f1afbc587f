"""Format v1 end to end on real CIFAR-10 JPEGs: pack -> verify -> load -> read back, and its failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

import semipairs
from semipairs.errors import FormatVersionError, PairsError, ShardReadError, StoreError
from semipairs.pack import pack
from semipairs.sources import open_source
from tests.conftest import ring_pairs


@pytest.fixture()
def packed(cifar_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    src = open_source(f"imagefolder:{cifar_folder}")
    pairs = ring_pairs(src.keys(), tmp_path / "pairs.csv", step=7)
    path = pack(f"imagefolder:{cifar_folder}", pairs, tmp_path / "store", "cifar-ring", "1.0.0", shard_size=64, progress=False)
    return path, pairs


def test_roundtrip_through_dataloader_returns_source_bytes(packed, cifar_folder: Path) -> None:
    path, pairs_csv = packed
    ds = semipairs.load(path.parent)  # STORE/NAME -> newest version
    assert ds.verify().ok
    m = ds.manifest
    assert (m.format, m.format_version, m.layout) == ("semipairs", 1, "embedded")
    assert m.stats.num_pairs == 300 and len(m.shard_files()) == 5  # 64 per shard
    assert [f.samples for f in m.shard_files()] == [64, 64, 64, 64, 44]
    assert m.source.has_labels and m.stats.label_precision == pytest.approx(
        (ds.table["anchor_label"] == ds.table["positive_label"]).mean()
    )
    seen = {}
    loader = DataLoader(ds.to_torch(decode=False), batch_size=None, num_workers=2)
    for anchor, positive, meta in loader:
        assert meta["pair_id"] not in seen
        seen[meta["pair_id"]] = meta
        assert anchor == (cifar_folder / f"{meta['anchor_key']}.jpg").read_bytes()
        assert positive == (cifar_folder / f"{meta['positive_key']}.jpg").read_bytes()
    assert sorted(seen) == list(range(300))
    expected = pd.read_csv(pairs_csv, dtype=str)
    assert [seen[i]["positive_key"] for i in range(300)] == expected["positive_key"].tolist()


def test_to_torch_applies_transform_and_collates(packed) -> None:
    from torchvision.transforms import v2

    from semipairs.torch_data import collate_pairs

    tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    ds = semipairs.load(packed[0])
    a, p, metas = next(iter(DataLoader(ds.to_torch(tf), batch_size=16, collate_fn=collate_pairs)))
    assert a.shape == p.shape == (16, 3, 32, 32) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert len(metas) == 16 and metas[0]["pair_id"] == 0


def test_shards_read_by_webdataset_and_datasets(packed) -> None:
    ds = semipairs.load(packed[0])
    urls = [str(s) for s in ds.shards]
    pipe = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("anchor.jpg", "positive.jpg", "json")
    rows = list(pipe)
    assert len(rows) == 300
    assert all(isinstance(a, Image.Image) and a.size == (32, 32) for a, _, _ in rows)
    assert [r[2]["pair_id"] for r in rows] == list(range(300))

    hf = ds.to_hf()
    assert hf.num_rows == 300
    first = hf[0]
    assert isinstance(first["anchor.jpg"], Image.Image) and isinstance(first["positive.jpg"], Image.Image)
    assert first["json"]["anchor_key"] == ds.table["anchor_key"][0]


def test_the_shard_reader_groups_members_as_webdataset_does(packed, tmp_path: Path) -> None:
    """semipairs reads shards with the standard library (webdataset imports torch); both must see the same
    samples, on a real shard and on a tar with the cases that grouping rules decide."""
    import io
    import tarfile

    from webdataset.tariterators import tarfile_samples

    from semipairs.shards import _tar_samples

    def same(path: Path) -> list[dict]:
        ours = list(_tar_samples(str(path)))
        theirs = [{k: v for k, v in d.items() if k != "__local_path__"} for d in tarfile_samples([{"url": str(path)}])]
        assert ours == theirs
        return ours

    real = semipairs.load(packed[0]).shards[0]
    assert len(same(real)) == 64

    odd = tmp_path / "odd.tar"
    with tarfile.open(odd, "w") as tar:
        def add(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("__meta__.json", b"{}")
        add("000000001.anchor.JPG", b"a1")
        add("000000001.json", b"{}")
        add("dir", kind=tarfile.DIRTYPE)
        add("dir/000000002.anchor.png", b"a2")
        add("000000003.positive.png", b"p3")
        add("000000003.link", kind=tarfile.SYMTYPE)
        add("noextension", b"n")
        add("000000001.anchor.jpg", b"again")  # a key seen earlier, not adjacent: a new sample
    rows = same(odd)
    assert [r["__key__"] for r in rows] == ["__meta__", "000000001", "dir/000000002", "000000003", "000000001"]
    assert rows[1]["anchor.jpg"] == b"a1" and set(rows[3]) == {"__key__", "__url__", "positive.png"}

    dup = tmp_path / "dup.tar"
    with tarfile.open(dup, "w") as tar:
        for name in ("000000001.json", "000000001.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ValueError, match="duplicate"):
        list(_tar_samples(str(dup)))
    with pytest.raises(ValueError, match="duplicate"):
        list(tarfile_samples([{"url": str(dup)}]))


def test_the_shard_writer_writes_the_bytes_webdataset_writes(tmp_path: Path) -> None:
    import io

    from semipairs.shards import PairShardWriter

    samples = [(i, bytes([i]) * (100 + 37 * i), b"p" * i, b'{"pair_id":%d}' % i) for i in range(5)]
    with PairShardWriter(tmp_path / "ours", "png", maxcount=3) as w:
        for s in samples:
            w.write(*s)
    theirs = []
    for part in (samples[:3], samples[3:]):
        buf = io.BytesIO()
        tw = wds.TarWriter(buf, encoder=False, mtime=0)
        for i, a, p, m in part:
            tw.write({"__key__": f"{i:09d}", "anchor.png": a, "positive.png": p, "json": m})
        tw.close()
        theirs.append(buf.getvalue())
    ours = [(tmp_path / "ours" / f.path).read_bytes() for f in w.files]
    assert ours == theirs and [f.samples for f in w.files] == [3, 2]


def test_verify_and_load_never_import_torch(packed) -> None:
    import subprocess
    import sys

    code = ("import sys, semipairs; ds = semipairs.load(sys.argv[1]); assert ds.verify().ok; "
            "print(len(ds), 'torch' in sys.modules)")  # verify reads every sample of every shard
    r = subprocess.run([sys.executable, "-c", code, str(packed[0])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["300", "False"]


def test_flipped_byte_fails_verify_naming_the_shard(packed) -> None:
    from typer.testing import CliRunner

    from semipairs.cli import app

    path = packed[0]
    shard = path / "data" / "pairs-000002.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = semipairs.load(path).verify()
    assert not report.ok
    assert {p.path for p in report.problems} == {"data/pairs-000002.tar"}
    result = CliRunner().invoke(app, ["verify", str(path)])
    assert result.exit_code == 1
    assert "data/pairs-000002.tar" in result.output and "sha256 mismatch" in result.output


def test_truncated_shard_fails_loading_naming_it(packed) -> None:
    path = packed[0]
    shard = path / "data" / "pairs-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardReadError, match="pairs-000001.tar"):
        for _ in semipairs.load(path).to_torch(decode=False):
            pass
    problems = semipairs.load(path).verify().problems
    assert {p.path for p in problems} == {"data/pairs-000001.tar"}


def test_unknown_format_version_is_refused(packed) -> None:
    path = packed[0]
    manifest = json.loads((path / "semipairs.json").read_text())
    manifest["format_version"] = 99
    (path / "semipairs.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match=r"format_version 99 is not supported; this semipairs reads format_version 1"):
        semipairs.load(path)


def test_pack_over_existing_version_is_refused_and_untouched(packed, cifar_folder: Path) -> None:
    path, pairs_csv = packed
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.rglob("*") if p.is_file()}
    other = ring_pairs(open_source(f"imagefolder:{cifar_folder}").keys(), pairs_csv.parent / "other.csv", step=3)
    with pytest.raises(StoreError, match="already exists"):
        pack(f"imagefolder:{cifar_folder}", other, path.parent.parent, "cifar-ring", "1.0.0", progress=False)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.0.0"]  # no temp dir left


def test_unknown_keys_are_named_before_anything_is_written(cifar_folder: Path, tmp_path: Path) -> None:
    df = pd.DataFrame({"anchor_key": ["cat/0001", "cat/9999", "dog/0001"], "positive_key": ["cat/0002", "cat/0003", "cat/0004"]})
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(PairsError, match=r"2 key\(s\) not in source .*'cat/9999', 'dog/0001'"):
        pack(f"imagefolder:{cifar_folder}", tmp_path / "p.csv", tmp_path / "store", "x", "1.0.0", progress=False)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.tar"))


def test_bad_pair_lists_are_named(cifar_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "cols.csv").write_text("a,b\ncat/0001,cat/0002\n")
    with pytest.raises(PairsError, match=r"cols.csv: missing column\(s\) \['anchor_key', 'positive_key'\]"):
        pack(f"imagefolder:{cifar_folder}", tmp_path / "cols.csv", tmp_path / "s", "x", "1.0.0", progress=False)
    (tmp_path / "self.csv").write_text("anchor_key,positive_key\ncat/0001,cat/0002\ncat/0003,cat/0003\n")
    with pytest.raises(PairsError, match=r"row\(s\) \[1\] pair an image with itself"):
        pack(f"imagefolder:{cifar_folder}", tmp_path / "self.csv", tmp_path / "s", "x", "1.0.0", progress=False)


def test_reference_layout_resolves_against_the_source(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    pairs = ring_pairs(open_source(src).keys(), tmp_path / "p.csv", step=5)
    path = pack(src, pairs, tmp_path / "store", "ref", "0.1.0", layout="reference", progress=False)
    assert not (path / "data").exists()
    ds = semipairs.load(path)
    assert ds.manifest.layout == "reference" and ds.verify().ok and ds.manifest.files[0].path == "pairs.parquet"
    with pytest.raises(StoreError, match="pass source="):
        ds.to_torch()
    rows = list(DataLoader(ds.to_torch(decode=False, source=src), batch_size=None, num_workers=2))
    assert len(rows) == 300
    for a, p, meta in rows:
        assert a == (cifar_folder / f"{meta['anchor_key']}.jpg").read_bytes()
        assert p == (cifar_folder / f"{meta['positive_key']}.jpg").read_bytes()
    assert ds.to_hf().num_rows == 300


def test_same_inputs_give_the_same_content_hash(cifar_folder: Path, tmp_path: Path) -> None:
    src = f"imagefolder:{cifar_folder}"
    pairs = ring_pairs(open_source(src).keys(), tmp_path / "p.csv", step=2)
    a = pack(src, pairs, tmp_path / "store", "d", "1.0.0", progress=False)
    b = pack(src, pairs, tmp_path / "store", "d", "1.1.0", progress=False)
    ma, mb = semipairs.load(a).manifest, semipairs.load(b).manifest
    assert ma.content_hash == mb.content_hash and ma.created_with == mb.created_with
    assert semipairs.load(tmp_path / "store" / "d").manifest.version == "1.1.0"
    assert semipairs.load(tmp_path / "store" / "d", version="1.0.0").path == a


def test_odd_keys_stay_out_of_member_names(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    names = ["Ünïcode Dir/photo.v1.final", "Ünïcode Dir/IMG 0002", "plain/a.b.c", "plain/ß ç"]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 10, 200)).save(root / f"{name}.png")
    src = f"imagefolder:{root}"
    assert sorted(open_source(src).keys()) == sorted(names)
    pd.DataFrame({"anchor_key": names, "positive_key": names[1:] + names[:1]}).to_csv(tmp_path / "p.csv", index=False)
    path = pack(src, tmp_path / "p.csv", tmp_path / "store", "odd", "1.0.0", progress=False)
    import tarfile

    with tarfile.open(path / "data" / "pairs-000000.tar") as tar:
        members = tar.getnames()
    assert members[:3] == ["000000000.anchor.png", "000000000.json", "000000000.positive.png"]
    ds = semipairs.load(path)
    assert ds.table["anchor_key"].tolist() == names
    assert [r["json"]["anchor_key"] for r in ds.to_hf()] == names


def test_corrupt_images_are_skipped_counted_and_listed(cifar_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs" / "cat"
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"{i}.jpg").write_bytes((cifar_folder / "cat" / f"{i:04d}.jpg").read_bytes())
    (root / "9.jpg").write_bytes(b"not an image at all")
    (root / "8.jpg").write_bytes((cifar_folder / "cat" / "0005.jpg").read_bytes()[:300])  # truncated
    src = open_source(f"imagefolder:{tmp_path / 'imgs'}")
    good = [item.key for item in src]
    assert good == ["cat/0", "cat/1", "cat/2", "cat/3"]
    assert sorted(s.key for s in src.skipped) == ["cat/8", "cat/9"]
    pairs = {"anchor_key": ["cat/0", "cat/1", "cat/9", "cat/2"], "positive_key": ["cat/1", "cat/8", "cat/0", "cat/3"]}
    pd.DataFrame(pairs).to_csv(tmp_path / "p.csv", index=False)
    path = pack(f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "p.csv", tmp_path / "store", "c", "1.0.0", progress=False)
    m = semipairs.load(path).manifest
    assert m.stats.num_pairs == 2 and m.source.num_images == 4
    assert [s.key for s in m.source.skipped] == ["cat/8", "cat/9"]


def test_reader_split_covers_every_pair_once(packed, monkeypatch) -> None:
    """5 shards over 2 ranks x 2 workers (shard split) and over 3 x 2 and 4 x 4 (sample split)."""
    import semipairs.torch_data as td

    ds = semipairs.load(packed[0])
    for readers in (4, 6, 16):
        seen: list[int] = []
        sizes = []
        for me in range(readers):
            monkeypatch.setattr(td, "reader_slot", lambda me=me, readers=readers: (me, readers))
            ids = [m["pair_id"] for _, _, m in ds.to_torch(decode=False)]
            sizes.append(len(ids))
            seen += ids
        assert sorted(seen) == list(range(300)), readers
        assert min(sizes) > 0, readers
        if readers > 5:  # sample split: every reader within one pair of the others
            assert max(sizes) - min(sizes) <= 1


def test_ddp_rank_env_is_respected(packed, monkeypatch) -> None:
    ds = semipairs.load(packed[0])
    got = {}
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = DataLoader(ds.to_torch(decode=False), batch_size=None, num_workers=2)
        got[rank] = {m["pair_id"] for _, _, m in loader}
    assert not got[0] & got[1] and got[0] | got[1] == set(range(300))
    os.environ.pop("RANK", None)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such pair dataset"):
        semipairs.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no published version"):
        semipairs.load(tmp_path / "empty")
