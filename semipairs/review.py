"""A pair dataset's precision from a person's judgments, and a new version without the pairs they rejected.

Precision (the share of pairs that show the same kind of thing) decides whether training with the pairs
helps, and without labels only a person can give it. Three pieces make a few minutes of judging count:

- **order**: pairs come in a seeded random order stratified by score band (equal-size bands by score;
  every band is visited at the same rate), so after any number of judgments each band is sampled alike;
- **log**: each judgment is one appended JSON line in ``REVIEWS/REVIEWER.jsonl`` (fsync'd; a line cut off
  by a kill is ignored), so a review stops and resumes, and two reviewers write two files merged on read;
- **estimate**: band precisions weighted by band sizes, with a Wilson interval at the effective sample
  size of the stratified estimate; per band, and the score threshold that reaches a wanted precision.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from semipairs.errors import SemipairsError
from semipairs.manifest import check_name

if TYPE_CHECKING:
    from semipairs.dataset import PairDataset

VERDICTS = ("same", "different", "unsure", "skip")
MIN_REPEATS = 10  # pairs asked twice before the reviewer's error rate is corrected for
Z95 = 1.959963984540054
LOG_SUFFIX = ".jsonl"


class ReviewError(SemipairsError):
    """A judgment log is unreadable, belongs to another dataset, or names a pair the dataset lacks."""


def reviews_dir(ds: PairDataset) -> Path:
    """Where a version's judgments live by default: ``STORE/NAME/reviews/VERSION`` beside the version (never
    inside it: a published version is immutable), or ``./semipairs-reviews/NAME/VERSION`` for a version in a
    download cache."""
    p = ds.path.resolve()
    if p.parent.name == "snapshots" or not os.access(p.parent, os.W_OK):
        return Path("semipairs-reviews") / ds.manifest.name / ds.manifest.version
    return p.parent / "reviews" / ds.manifest.version


# ---------------------------------------------------------------- order


@dataclass(frozen=True)
class Bands:
    """Equal-size score bands (0 = highest scores); pairs without a score fall in the lowest."""

    band: np.ndarray  # band of each pair (row of the table)
    low: list[float]  # lowest score in each band
    high: list[float]
    sizes: np.ndarray

    @property
    def count(self) -> int:
        return len(self.sizes)


def score_bands(scores: np.ndarray, n_bands: int = 5) -> Bands:
    s = np.asarray(scores, dtype=float)
    n = len(s)
    n_bands = max(1, min(n_bands, n))
    if not np.isfinite(s).any():
        n_bands = 1
    order = np.argsort(-np.nan_to_num(s, nan=-np.inf, posinf=np.inf, neginf=-np.inf), kind="stable")
    band = np.empty(n, dtype=np.int64)
    band[order] = (np.arange(n) * n_bands) // max(n, 1)
    low, high = [], []
    for h in range(n_bands):
        v = s[band == h]
        v = v[np.isfinite(v)]
        low.append(float(v.min()) if v.size else float("nan"))
        high.append(float(v.max()) if v.size else float("nan"))
    return Bands(band, low, high, np.bincount(band, minlength=n_bands))


def review_order(bands: Bands, seed: int = 0) -> np.ndarray:
    """Pair ids in the order to judge them: a seeded permutation within each band, the bands interleaved
    in proportion to their sizes (the i-th of a band of N comes at time (i + u) / N, u a seeded offset)."""
    rng = np.random.default_rng(seed)
    ids, times = [], []
    for h in range(bands.count):
        members = rng.permutation(np.flatnonzero(bands.band == h))
        ids.append(members)
        times.append((np.arange(len(members)) + rng.random()) / max(len(members), 1))
    ids_all, t = np.concatenate(ids), np.concatenate(times)
    return ids_all[np.argsort(t, kind="stable")]


# ---------------------------------------------------------------- log


class ReviewLog:
    """One reviewer's append-only judgment file. Its first line names the dataset (name, version,
    content_hash), so judgments are never applied to another version."""

    def __init__(self, directory: str | Path, reviewer: str, ds: PairDataset) -> None:
        try:
            check_name(reviewer)
        except ValueError as exc:
            raise ReviewError(f"--reviewer: {exc}".replace("dataset name", "reviewer name")) from None
        self.path = Path(directory) / f"{reviewer}{LOG_SUFFIX}"
        self.reviewer, self.ds = reviewer, ds
        if self.path.exists():
            read_log(self.path, ds)  # refuses another dataset's file before anything is appended to it
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            m = ds.manifest
            self._append({"dataset": m.name, "version": m.version, "content_hash": m.content_hash, "reviewer": reviewer})

    def _append(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of one line: a reader sees it whole or (killed mid-write) cut off
            os.fsync(fd)
        finally:
            os.close(fd)

    def judge(self, pair_id: int, verdict: str, repeat: bool = False) -> None:
        """Record one judgment; ``repeat`` marks a pair asked again to measure the reviewer's consistency."""
        if verdict not in VERDICTS:
            raise ReviewError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
        if not 0 <= pair_id < len(self.ds):
            m = self.ds.manifest
            raise ReviewError(f"pair {pair_id}: {m.name} {m.version} has pairs 0..{len(self.ds) - 1}")
        self._append({"pair_id": int(pair_id), "verdict": verdict, "t": _now(), **({"repeat": True} if repeat else {})})

    def undo(self) -> int | None:
        """Take back this reviewer's latest judgment still standing; its pair id, or None when there is none."""
        last = read_log(self.path, self.ds).last
        if last is None:
            return None
        self._append({"undo": last[0], "t": _now(), **({"repeat": True} if last[1] else {})})
        return last[0]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Judgments:
    """One reviewer's standing judgments: ``history`` in the order made (undone ones removed), ``verdict``
    the latest per pair."""

    reviewer: str
    history: list[tuple[int, str]] = field(default_factory=list)
    repeats: list[tuple[int, str]] = field(default_factory=list)  # second judgments of pairs asked again

    order: list[tuple[int, bool]] = field(default_factory=list)  # (pair id, repeat?) of standing judgments

    @property
    def verdict(self) -> dict[int, str]:
        return dict(self.history)

    @property
    def last(self) -> tuple[int, bool] | None:
        return self.order[-1] if self.order else None


def read_log(path: str | Path, ds: PairDataset) -> Judgments:
    """Replay a judgment file. A last line without its newline (a write cut off by a kill) is ignored; any
    other bad line is an error naming the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read judgments ({exc.strerror or exc})") from None
    lines = raw.split(b"\n")
    lines = lines[:-1]  # the part after the last newline is empty, or a cut-off write
    if not lines:
        raise ReviewError(f"{path}: empty judgment file (no header line)")
    events = []
    for no, line in enumerate(lines, 1):
        try:
            ev = json.loads(line)
            if not isinstance(ev, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReviewError(f"{path}:{no}: not a judgment line ({exc})") from None
        events.append(ev)
    _check_header(path, events[0], ds)
    out = Judgments(str(events[0].get("reviewer", path.stem)))
    for no, ev in enumerate(events[1:], 2):
        _apply(path, no, ev, out, len(ds))
    return out


def _check_header(path: Path, head: dict, ds: PairDataset) -> None:
    m = ds.manifest
    if head.get("content_hash") != m.content_hash:
        raise ReviewError(f"{path}: judgments of {head.get('dataset')!r} {head.get('version')!r} "
                          f"(content_hash {str(head.get('content_hash'))[:16]}), not of {m.name} {m.version} "
                          f"({m.content_hash[:16]}); use another --reviews directory")


def _apply(path: Path, no: int, ev: dict, out: Judgments, n_pairs: int) -> None:
    if "undo" in ev:
        pid, repeat = ev["undo"], bool(ev.get("repeat"))
        seq = out.repeats if repeat else out.history
        for i in range(len(seq) - 1, -1, -1):
            if seq[i][0] == pid:
                del seq[i]
                break
        for i in range(len(out.order) - 1, -1, -1):
            if out.order[i] == (pid, repeat):
                del out.order[i]
                break
        return
    pid, verdict = ev.get("pair_id"), ev.get("verdict")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < n_pairs:
        raise ReviewError(f"{path}:{no}: field 'pair_id' is {pid!r}; the dataset has pairs 0..{n_pairs - 1}")
    if verdict not in VERDICTS:
        raise ReviewError(f"{path}:{no}: field 'verdict' is {verdict!r}; expected one of {', '.join(VERDICTS)}")
    repeat = bool(ev.get("repeat"))
    (out.repeats if repeat else out.history).append((pid, verdict))
    out.order.append((pid, repeat))


def read_reviews(directory: str | Path, ds: PairDataset) -> list[Judgments]:
    """Every reviewer's judgments under ``directory`` (none when it does not exist yet)."""
    d = Path(directory)
    return [read_log(p, ds) for p in sorted(d.glob(f"*{LOG_SUFFIX}"))] if d.is_dir() else []


def merge(reviews: list[Judgments]) -> tuple[dict[int, str], int]:
    """One verdict per pair over all reviewers: ``same`` / ``different`` where those who said either agree,
    ``unsure`` where nobody did; a disagreement is left out and counted (verdicts, disputed)."""
    votes: dict[int, set[str]] = {}
    for r in reviews:
        for pid, v in r.verdict.items():
            if v != "skip":
                votes.setdefault(pid, set()).add(v)
    merged, disputed = {}, 0
    for pid, vs in votes.items():
        decided = vs - {"unsure"}
        if len(decided) > 1:
            disputed += 1
        else:
            merged[pid] = decided.pop() if decided else "unsure"
    return merged, disputed


# ---------------------------------------------------------------- estimate


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` (possibly effective, fractional) trials."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified(same: np.ndarray, judged: np.ndarray, sizes: np.ndarray) -> tuple[float | None, float, float]:
    """(estimate, low, high): band precisions weighted by band sizes (bands without a judgment are left
    out and the weights renormalised), Wilson at n_eff = p(1-p) / var. The variance uses each band's
    Laplace-smoothed precision (so a band judged all-same still counts as uncertain) and the finite
    population correction (a band judged in full is known exactly)."""
    seen = judged > 0
    if not seen.any():
        return None, 0.0, 1.0
    x, n, big_n = same[seen].astype(float), judged[seen].astype(float), sizes[seen].astype(float)
    w = big_n / big_n.sum()
    p = float((w * x / n).sum())
    smooth = (x + 1) / (n + 2)
    fpc = np.where(big_n > 1, (big_n - n) / np.maximum(big_n - 1, 1), 0.0)
    var = float((w * w * smooth * (1 - smooth) / n * fpc).sum())
    if var <= 0:
        return p, p, p
    ps = float((w * smooth).sum())
    low, high = wilson(p, ps * (1 - ps) / var)
    return p, min(low, p), max(high, p)


@dataclass(frozen=True)
class Consistency:
    """Pairs asked twice: how often the two answers agreed, and the error rate e that implies for a reviewer
    whose every answer is wrong with probability e independently (they disagree with probability 2e(1-e))."""

    repeats: int
    agree: int

    def error_rates(self) -> tuple[float, float, float] | None:
        """(e, e_low, e_high) from the disagreement share and its Wilson interval; None below MIN_REPEATS (one
        or two repeats say little about e, and would only widen the interval)."""
        if self.repeats < MIN_REPEATS:
            return None
        d = 1 - self.agree / self.repeats
        d_lo, d_hi = wilson(d, self.repeats)
        # capped below 1/2, where answers carry no information and the correction divides by zero
        e = [min((1 - math.sqrt(max(1 - 2 * min(x, 0.5), 0.0))) / 2, 0.45) for x in (d, d_lo, d_hi)]
        return e[0], e[1], e[2]

    def correct(self, p: float | None, low: float, high: float) -> tuple[float | None, float, float]:
        """The precision of the pairs, not of the answers: p = (p' - e) / (1 - 2e) (Rogan-Gladen), the interval
        taken over e's interval too (the map is monotone in p' and in e). Conservative: in bench/review.py it
        holds the true precision in 98-100% of runs; a delta-method interval was narrower at precision 0.6
        but held it in only 71-92% at 0.9-0.97 (a few repeats often see no disagreement at all)."""
        rates = self.error_rates()
        if rates is None or p is None:
            return p, low, high
        e, e_lo, e_hi = rates

        def f(q: float, err: float) -> float:
            return min(1.0, max(0.0, (q - err) / (1 - 2 * err)))

        return f(p, e), min(f(low, e_lo), f(low, e_hi)), max(f(high, e_lo), f(high, e_hi))


def consistency(reviews: list[Judgments]) -> Consistency:
    """Second answers against first ones, over every reviewer (each against their own first answer)."""
    repeats = agree = 0
    for r in reviews:
        first = r.verdict
        for pid, v in r.repeats:
            if v in ("same", "different") and first.get(pid) in ("same", "different"):
                repeats += 1
                agree += first[pid] == v
    return Consistency(repeats, agree)


@dataclass
class BandEstimate:
    band: int
    low_score: float
    high_score: float
    size: int
    judged: int
    same: int
    precision: float | None
    low: float
    high: float


@dataclass
class Cut:
    """Keeping only the pairs scoring at least ``threshold``: what is kept and its estimated precision."""

    threshold: float
    pairs: int
    coverage: float  # share of the source's images that anchor a kept pair
    precision: float | None
    low: float
    high: float


METHOD = "stratified by score band, Wilson interval at the effective sample size"


@dataclass
class Estimate:
    pairs: int
    judged: int  # pairs judged same or different (what the estimate rests on)
    same: int
    different: int
    unsure: int
    skipped: int
    disputed: int
    reviewers: list[str]
    precision: float | None
    low: float
    high: float
    bands: list[BandEstimate]
    repeats: int = 0  # pairs asked twice (consistency checks)
    repeat_agree: int = 0
    repeat_agreement: float | None = None
    error_rate: float | None = None  # the reviewer error rate the repeats imply (corrected for, when > 0)
    method: str = METHOD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(ds: PairDataset, reviews: str | Path | list[Judgments] | None = None, n_bands: int = 5) -> Estimate:
    """The precision of ``ds`` from the judgments in ``reviews`` (a directory, default ``reviews_dir(ds)``,
    or already-read judgments): overall, per score band, with 95% intervals."""
    if not isinstance(reviews, list):
        reviews = read_reviews(reviews_dir(ds) if reviews is None else reviews, ds)
    return estimate_scores(ds.table["score"].to_numpy(dtype=float, na_value=np.nan), reviews, n_bands)


def estimate_scores(scores: np.ndarray, reviews: list[Judgments], n_bands: int = 5) -> Estimate:
    """``estimate`` on a score array (pair id = position): what a simulation or a notebook calls directly."""
    bands = score_bands(scores, n_bands)
    merged, disputed = merge(reviews)
    same, judged = _band_counts(bands, merged)
    check = consistency(reviews)
    rows = []
    for h in range(bands.count):
        p, lo, hi = check.correct(*stratified(same[h:h + 1], judged[h:h + 1], bands.sizes[h:h + 1]))
        rows.append(BandEstimate(h, bands.low[h], bands.high[h], int(bands.sizes[h]), int(judged[h]), int(same[h]),
                                 p, lo, hi))
    p, lo, hi = check.correct(*stratified(same, judged, bands.sizes))
    counts = pd.Series(list(merged.values()), dtype=object).value_counts()
    skipped = {pid for r in reviews for pid, v in r.verdict.items() if v == "skip"} - set(merged)
    rates = check.error_rates()
    return Estimate(len(bands.band), int(judged.sum()), int(counts.get("same", 0)), int(counts.get("different", 0)),
                    int(counts.get("unsure", 0)), len(skipped), disputed, [r.reviewer for r in reviews], p, lo, hi, rows,
                    check.repeats, check.agree, check.agree / check.repeats if check.repeats else None,
                    rates[0] if rates else None)


def _band_counts(bands: Bands, merged: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([pid for pid, v in merged.items() if v != "unsure"], dtype=np.int64)
    ok = np.array([merged[pid] == "same" for pid in ids.tolist()], dtype=bool)
    b = bands.band[ids] if ids.size else np.zeros(0, dtype=np.int64)
    judged = np.bincount(b, minlength=bands.count)
    same = np.bincount(b[ok], minlength=bands.count) if ok.any() else np.zeros(bands.count, dtype=np.int64)
    return same, judged


def threshold_for(ds: PairDataset, est: Estimate, target: float) -> Cut | None:
    """The lowest score threshold (a band's lowest score) whose kept bands reach ``target`` estimated
    precision (with the estimate's own reviewer-error correction); None when not even the top band does."""
    if not 0 < target <= 1:
        raise ReviewError(f"target precision {target}: expected a share in (0, 1], e.g. 0.9")
    sizes = np.array([b.size for b in est.bands])
    same = np.array([b.same for b in est.bands])
    judged = np.array([b.judged for b in est.bands])
    check = Consistency(est.repeats, est.repeat_agree)
    best = None
    for h in range(len(est.bands)):
        p, lo, hi = check.correct(*stratified(same[: h + 1], judged[: h + 1], sizes[: h + 1]))
        if p is not None and p >= target and not math.isnan(est.bands[h].low_score):
            best = (h, p, lo, hi)
    if best is None:
        return None
    h, p, lo, hi = best
    t = ds.table
    thr = est.bands[h].low_score
    kept = t[t["score"].to_numpy(dtype=float, na_value=np.nan) >= thr]
    coverage = kept["anchor_key"].nunique() / max(ds.manifest.source.num_images, 1)
    return Cut(thr, len(kept), coverage, p, lo, hi)


def simulated_review(scores: np.ndarray, right: np.ndarray, n: int, seed: int = 0, error: float = 0.0,
                     repeat_every: int = 0, n_bands: int = 5) -> Judgments:
    """A reviewer who answers from known truth (``right``: is pair i the same kind?) along the page's order,
    wrong with probability ``error`` on each answer, asking an earlier pair again every ``repeat_every``-th
    answer. The estimator's own check (its interval's coverage), and a way to plan how many judgments a
    wanted interval width costs."""
    rng = np.random.default_rng(seed + 10_000)
    order = review_order(score_bands(scores, n_bands), seed)
    j = Judgments("simulated")

    def answer(pid: int) -> str:
        return "same" if bool(right[pid]) != (rng.random() < error) else "different"

    for i, pid in enumerate(order[:n].tolist()):
        j.history.append((pid, answer(pid)))
        if repeat_every and (i + 1) % repeat_every == 0:
            again = int(order[rng.integers(0, i + 1)])
            j.repeats.append((again, answer(again)))
    return j


# ---------------------------------------------------------------- publish


def publish_reviewed(ds: PairDataset, version: str, reviews: str | Path | None = None, store: str | Path | None = None,
                     target: float | None = None, images: str | None = None, n_bands: int = 5,
                     progress: bool = False) -> Path:
    """A new version of ``ds`` without the pairs judged different (and, with ``target``, without the pairs
    scoring below the threshold that reaches it). Its manifest names ``ds`` as parent and records the
    review; ``ds`` itself is not touched. ``store`` defaults to ``ds``'s own; a reference version reads no
    image, an embedded one copies the kept pairs' images from its shards."""
    from semipairs.manifest import ReviewRecord
    from semipairs.publish import PublishRequest, new_version_dir, publish
    from semipairs.sources import open_source
    from semipairs.sources.pairs import PairImages

    m = ds.manifest
    if store is None and ds.path.resolve().parent.name == "snapshots":
        raise ReviewError(f"{ds.path} is a download (a Hugging Face cache snapshot), not a store: pass --store DIR "
                          "for the new version")
    store = Path(store) if store is not None else ds.path.resolve().parent.parent
    new_version_dir(store, m.name, version)  # refuse an existing version before any work
    folder = reviews_dir(ds) if reviews is None else Path(reviews)
    judgments = read_reviews(folder, ds)
    est = estimate(ds, judgments, n_bands)
    if est.judged == 0:
        raise ReviewError(f"{folder}: no pair judged same or different yet; judge some first (semipairs review {ds.path})")
    merged, _ = merge(judgments)
    t = ds.table
    keep = ~t["pair_id"].isin([pid for pid, v in merged.items() if v == "different"]).to_numpy()
    rejected = int((~keep).sum())
    cut = threshold_for(ds, est, target) if target is not None else None
    if target is not None and cut is None:
        raise ReviewError(f"no score threshold reaches precision {target:.0%}: even the top score band is estimated "
                          "below it (judge more pairs, or lower --target-precision)")
    cut_count = 0
    if cut is not None:
        above = t["score"].to_numpy(dtype=float, na_value=np.nan) >= cut.threshold
        cut_count = int((keep & ~above).sum())
        keep &= above
    pairs = t.loc[keep, ["anchor_key", "positive_key", "score", "rank", "mutual"]].reset_index(drop=True)
    forward = set(zip(pairs["anchor_key"], pairs["positive_key"]))
    pairs["mutual"] = [(p, a) in forward for a, p in zip(pairs["anchor_key"], pairs["positive_key"])]
    record = ReviewRecord(reviewed_version=m.version, judged=est.judged, same=est.same, different=est.different,
                          unsure=est.unsure, disputed=est.disputed, reviewers=est.reviewers, precision=est.precision,
                          low=est.low if est.precision is not None else None,
                          high=est.high if est.precision is not None else None, method=est.method, rejected=rejected,
                          target_precision=target, threshold=cut.threshold if cut else None, cut=cut_count,
                          kept_precision=cut.precision if cut else None)
    source = PairImages(spec=m.source.uri, dataset=ds, images=open_source(images) if images else None)
    return publish(PublishRequest(
        store=store, name=m.name, version=version, source=source, pairs=pairs, layout=m.layout, encoder=m.encoder,
        index=m.index, mining=m.mining, parent=m.ref(),
        source_info=m.source, review=record, check_images=False, progress=progress,
        config={"command": "review --publish", "reviewed": str(ds.path), "version": version, "target_precision": target},
    ))
