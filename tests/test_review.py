"""semipairs.review: the stratified order, the judgment log, the estimator (hand values and its coverage
on real CIFAR-10 labels) and the reviewed version it publishes."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from semipairs.dataset import load
from semipairs.errors import SemipairsError
from semipairs.pack import pack
from semipairs.review import (
    Consistency,
    ReviewError,
    ReviewLog,
    estimate,
    estimate_scores,
    merge,
    publish_reviewed,
    read_log,
    review_order,
    reviews_dir,
    score_bands,
    simulated_review,
    stratified,
    threshold_for,
    wilson,
)
from semipairs.verify import verify_version
from tests.conftest import CIFAR_DIR, labelled_pairs


def test_bands_are_equal_and_the_order_visits_them_alike():
    scores = np.linspace(1, 0, 1000)
    bands = score_bands(scores, 5)
    assert bands.sizes.tolist() == [200] * 5
    assert bands.band[0] == 0 and bands.band[-1] == 4  # band 0 holds the highest scores
    order = review_order(bands, seed=3)
    assert sorted(order.tolist()) == list(range(1000))
    for k in (5, 50, 500):  # after any k * 5 judgments, each band was visited k times (+-1)
        counts = np.bincount(bands.band[order[: 5 * k]], minlength=5)
        assert counts.max() - counts.min() <= 1, counts
    assert np.array_equal(order, review_order(bands, seed=3))
    assert not np.array_equal(order, review_order(bands, seed=4))


def test_bands_without_scores_are_one_band():
    bands = score_bands(np.full(7, np.nan), 5)
    assert bands.count == 1 and bands.sizes.tolist() == [7]


def test_wilson_and_the_stratified_estimate_against_hand_values():
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson(1.0, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1.0)
    # two equal bands judged alike: the estimate is the pooled share
    p, lo, hi = stratified(np.array([9, 3]), np.array([10, 10]), np.array([1000, 1000]))
    assert p == pytest.approx(0.6)
    plain = wilson(0.6, 20)
    assert lo < 0.6 < hi and 0.25 < hi - lo < plain[1] - plain[0]  # bands that differ (0.9, 0.3) narrow it
    # weights follow band sizes, not judgment counts
    p, *_ = stratified(np.array([10, 0]), np.array([10, 10]), np.array([3000, 1000]))
    assert p == pytest.approx(0.75)
    # a band judged in full is known exactly
    assert stratified(np.array([3]), np.array([4]), np.array([4])) == (0.75, 0.75, 0.75)
    assert stratified(np.array([0]), np.array([0]), np.array([4])) == (None, 0.0, 1.0)


def test_consistency_correction_inverts_a_known_error_rate():
    c = Consistency(repeats=1000, agree=820)  # 2e(1-e) = 0.18 -> e = 0.1
    e, e_lo, e_hi = c.error_rates()
    assert e == pytest.approx(0.1, abs=1e-6) and e_lo < 0.1 < e_hi
    p, lo, hi = c.correct(0.74, 0.70, 0.78)  # answers 0.9 * 0.8 + 0.1 * 0.2 = 0.74 for a true 0.8
    assert p == pytest.approx(0.8, abs=1e-6) and lo < 0.8 < hi
    assert Consistency(0, 0).correct(0.7, 0.6, 0.8) == (0.7, 0.6, 0.8)
    assert Consistency(9, 9).correct(0.7, 0.6, 0.8) == (0.7, 0.6, 0.8)  # too few repeats to say


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, cifar_folder):
    return load(labelled_pairs(cifar_folder, tmp_path_factory.mktemp("review")))


def truth(ds) -> np.ndarray:
    t = ds.table
    return (t["anchor_label"] == t["positive_label"]).to_numpy(dtype=bool)


def test_log_replays_undo_and_survives_a_cut_off_line(dataset, tmp_path):
    log = ReviewLog(tmp_path, "ann", dataset)
    for pid, v in [(0, "same"), (1, "different"), (2, "unsure"), (3, "skip"), (1, "same")]:
        log.judge(pid, v)
    assert log.undo() == 1  # the second answer on pair 1 is taken back: the first stands again
    log.judge(0, "different", repeat=True)
    j = read_log(log.path, dataset)
    assert j.verdict == {0: "same", 1: "different", 2: "unsure", 3: "skip"}
    assert j.repeats == [(0, "different")] and j.last == (0, True)
    with open(log.path, "ab") as f:  # a write cut off by a kill: no newline
        f.write(b'{"pair_id": 5, "verd')
    assert read_log(log.path, dataset).verdict == j.verdict
    est = estimate(dataset, tmp_path)
    assert (est.judged, est.same, est.different, est.unsure, est.skipped) == (2, 1, 1, 1, 1)
    assert est.repeats == 1 and est.repeat_agreement == 0.0


def test_log_refuses_bad_lines_other_datasets_and_unknown_pairs(dataset, tmp_path):
    log = ReviewLog(tmp_path, "ann", dataset)
    with pytest.raises(ReviewError, match="pairs 0..239"):
        log.judge(240, "same")
    with pytest.raises(ReviewError, match="verdict 'maybe'"):
        log.judge(0, "maybe")
    with pytest.raises(ReviewError, match="reviewer name"):
        ReviewLog(tmp_path, "../evil", dataset)
    good = log.path.read_text()
    log.path.write_text(good + "not json\n" + '{"pair_id": 1, "verdict": "same"}\n')
    with pytest.raises(ReviewError, match=r"ann.jsonl:2: not a judgment line"):
        read_log(log.path, dataset)
    log.path.write_text(good + '{"pair_id": 999, "verdict": "same"}\n')
    with pytest.raises(ReviewError, match=r"ann.jsonl:2: field 'pair_id' is 999"):
        read_log(log.path, dataset)
    head = json.loads(good.splitlines()[0])
    (tmp_path / "bob.jsonl").write_text(json.dumps({**head, "content_hash": "0" * 64}) + "\n")
    with pytest.raises(ReviewError, match="not of cifar-pairs 1.0.0"):
        ReviewLog(tmp_path, "bob", dataset)
    assert issubclass(ReviewError, SemipairsError)


def test_two_reviewers_merge_and_disputes_are_left_out(dataset, tmp_path):
    a, b = ReviewLog(tmp_path, "ann", dataset), ReviewLog(tmp_path, "bob", dataset)
    for pid, v in [(0, "same"), (1, "same"), (2, "unsure")]:
        a.judge(pid, v)
    for pid, v in [(0, "same"), (1, "different"), (2, "different"), (4, "same")]:
        b.judge(pid, v)
    merged, disputed = merge([read_log(a.path, dataset), read_log(b.path, dataset)])
    assert merged == {0: "same", 2: "different", 4: "same"} and disputed == 1
    est = estimate(dataset, tmp_path)
    assert est.reviewers == ["ann", "bob"] and est.disputed == 1 and est.judged == 3


def cifar_label_pairs(precision: float, n_pairs: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and same-class truth of pairs built from the real CIFAR-10 test labels (the tar's class
    folders) at a set precision; right pairs score higher on average, as mined pairs do."""
    tar_path = CIFAR_DIR / "cifar10-test.tar"
    if not tar_path.is_file():
        pytest.skip(f"real CIFAR-10 data not found at {tar_path}") if not __import__("os").environ.get("CI") else \
            pytest.fail(f"real CIFAR-10 data not found at {tar_path}")
    with tarfile.open(tar_path) as tar:
        labels = np.array([m.name.split("/")[1] for m in tar if m.name.endswith(".jpg")])
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(labels), n_pairs)
    want = rng.random(n_pairs) < precision
    b = np.array([rng.choice(np.flatnonzero((labels == labels[i]) == w)) for i, w in zip(a, want)])
    right = labels[a] == labels[b]
    scores = rng.normal(np.where(right, 0.75, 0.6), 0.08)
    return scores, right


@pytest.mark.parametrize("precision", [0.9, 0.6])
def test_interval_covers_the_true_label_precision(precision):
    """200 seeded reviews of 100 answers each: the 95% interval holds the true precision about 95% of the
    time for a reviewer who answers from the labels, and, with the repeats corrected for, for one who errs
    10% of the time."""
    scores, right = cifar_label_pairs(precision)
    true = right.mean()
    for error, repeat_every in [(0.0, 0), (0.1, 4)]:
        hits, widths = 0, []
        for seed in range(200):
            est = estimate_scores(scores, [simulated_review(scores, right, 100, seed, error, repeat_every)])
            hits += est.low <= true <= est.high
            widths.append(est.high - est.low)
        assert 0.90 <= hits / 200 <= 0.995, (precision, error, hits)
        assert np.mean(widths) < (0.2 if error == 0 else 0.45), (precision, error, np.mean(widths))


def test_threshold_and_the_published_cut(dataset, tmp_path):
    right = truth(dataset)
    log = ReviewLog(reviews_dir(dataset), "ann", dataset)
    order = review_order(score_bands(dataset.table["score"].to_numpy()), 0)
    for pid in order[:120].tolist():
        log.judge(pid, "same" if right[pid] else "different")
    est = estimate(dataset)
    assert est.judged == 120 and est.low <= right.mean() <= est.high
    assert est.bands[0].precision > est.bands[-1].precision  # right pairs score higher
    cut = threshold_for(dataset, est, 0.8)
    assert cut is not None and cut.precision >= 0.8 and cut.pairs < len(dataset)
    assert threshold_for(dataset, est, 1.0) is None or threshold_for(dataset, est, 1.0).pairs < cut.pairs
    before = {p.name: p.stat().st_mtime_ns for p in dataset.path.rglob("*")}
    child = load(publish_reviewed(dataset, "1.1.0", target=0.8))
    assert {p.name: p.stat().st_mtime_ns for p in dataset.path.rglob("*")} == before  # reviewed version untouched
    m = child.manifest
    assert m.parent.version == "1.0.0" and m.parent.content_hash == dataset.manifest.content_hash
    r = m.review
    assert (r.judged, r.different, r.reviewed_version) == (120, est.different, "1.0.0")
    assert r.rejected == est.different and r.threshold == cut.threshold
    rejected = {pid for pid, v in read_log(log.path, dataset).verdict.items() if v == "different"}
    kept = dataset.table[(dataset.table["score"] >= cut.threshold) & ~dataset.table["pair_id"].isin(rejected)]
    below = dataset.table["score"] < cut.threshold
    assert len(child) == len(kept) and r.cut == int((below & ~dataset.table["pair_id"].isin(rejected)).sum())
    assert set(zip(child.table["anchor_key"], child.table["positive_key"])) == set(zip(kept["anchor_key"], kept["positive_key"]))
    assert m.source == dataset.manifest.source  # same images, fewer pairs
    assert verify_version(child.path, m).ok
    card = (child.path / "README.md").read_text()
    assert "## Review" in card and "Cut from version 1.0.0" in card
    a, p, meta = next(iter(child.to_torch(decode=False)))  # the images came across from the parent's shards
    t = dataset.table
    row = t[(t["anchor_key"] == meta["anchor_key"]) & (t["positive_key"] == meta["positive_key"])]
    assert meta["anchor_label"] == int(row["anchor_label"].iloc[0]) and a[:2] == b"\xff\xd8"
    with pytest.raises(SemipairsError, match="already exists"):
        publish_reviewed(dataset, "1.1.0")
    with pytest.raises(ReviewError, match="no pair judged same or different yet"):
        publish_reviewed(dataset, "1.2.0", reviews=tmp_path / "empty")
    nay = ReviewLog(tmp_path / "nay", "ann", dataset)
    for pid in order[:10].tolist():
        nay.judge(pid, "different")
    with pytest.raises(ReviewError, match="no score threshold reaches"):
        publish_reviewed(dataset, "1.2.0", reviews=tmp_path / "nay", target=0.5)
    assert not (dataset.path.parent / "1.2.0").exists()


def test_a_reference_dataset_is_reviewed_with_its_source(cifar_folder, tmp_path):
    from semipairs.review_app import ReviewSession
    from semipairs.sources import open_source
    from tests.conftest import ring_pairs

    src = f"imagefolder:{cifar_folder}"
    ds = load(pack(src, ring_pairs(open_source(src).keys(), tmp_path / "p.csv"), tmp_path / "s", "ref", "1.0.0",
                   layout="reference", progress=False))
    with pytest.raises(ReviewError, match="pass --source"):
        ReviewSession(ds, tmp_path / "reviews")
    session = ReviewSession(ds, tmp_path / "reviews", source=src)
    pid = session.next_pairs()[0]["pair_id"]
    data, kind = session.image(pid, "positive")
    assert kind == "image/jpeg" and data == open_source(src).read_key(ds.table["positive_key"].iloc[pid]).data
    session.log.judge(pid, "different")
    child = load(session.publish("1.0.1", None))
    assert child.manifest.layout == "reference" and len(child) == len(ds) - 1 and child.verify().ok
    assert child.manifest.source == ds.manifest.source and child.manifest.review.rejected == 1
