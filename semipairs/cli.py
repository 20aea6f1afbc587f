"""The ``semipairs`` command line. Commands import their heavy modules lazily: ``semipairs info``
never imports torch; ``curate`` loads the curation package only when it runs."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from semipairs.config import config_option, flags, load_config, option
from semipairs.console import GuardedTyper, err, fail, out
from semipairs.pack import PackConfig

app = GuardedTyper(
    name="semipairs",
    help="Curate, publish and load semantic positive pairs for self-supervised learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show spec grammar like [/TAG|FILE] literally
)


def _show_version(value: bool) -> None:
    if value:
        from semipairs import __version__

        out.print(f"semipairs {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Curate, publish and load semantic positive pairs for self-supervised learning."""


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@app.command(
    epilog="Example: semipairs pack --source imagefolder:photos --pairs pairs.csv --store store --name mypairs --version 1.0.0"
)
def pack(
    source: str | None = option(PackConfig, "source"),
    pairs: Path | None = option(PackConfig, "pairs"),
    store: Path | None = option(PackConfig, "store"),
    name: str | None = option(PackConfig, "name"),
    version: str | None = option(PackConfig, "version"),
    layout: str | None = option(PackConfig, "layout"),
    shard_size: int | None = option(PackConfig, "shard_size"),
    config: Path | None = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Publish a pair list made elsewhere as a verified, versioned pair dataset."""
    cfg = load_config(PackConfig, config, flags(locals()))
    from semipairs.dataset import PairDataset
    from semipairs.pack import pack as do_pack

    path = do_pack(cfg.source, cfg.pairs, cfg.store, cfg.name, cfg.version, layout=cfg.layout, shard_size=cfg.shard_size,
                   progress=not as_json)
    info_ = PairDataset(path).info()
    if as_json:
        _print_json(info_)
    else:
        out.print(f"published [bold]{info_['name']} {info_['version']}[/] at {path}: {info_['stats']['num_pairs']} pairs",
                  soft_wrap=True)


@app.command(epilog="Example: semipairs info store/mypairs --json")
def info(
    path: str = typer.Argument(..., help="A version directory or STORE/NAME (newest version)."),
    version: str | None = typer.Option(None, help="Version to open under STORE/NAME."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Show a pair dataset's manifest summary: source, encoder, mining, stats, files."""
    from semipairs.dataset import load

    data = load(path, version).info()
    if as_json:
        _print_json(data)
        return
    t = Table(title=f"{data['name']} {data['version']}", show_header=False)
    s = data["stats"]
    rows = [
        ("path", data["path"]), ("layout", data["layout"]), ("created", data["created"]),
        ("source", f"{data['source']} ({data['num_images']} images, {data['skipped']} skipped)"),
        ("encoder", json.dumps(data["encoder"])), ("index", json.dumps(data["index"])),
        ("mining", json.dumps(data["mining"])),
        ("pairs", f"{s['num_pairs']} ({s['num_anchors']} anchors, coverage {s['coverage']:.1%})"),
        ("label precision", "-" if s["label_precision"] is None else f"{s['label_precision']:.1%}"),
        ("files", f"{data['files']} ({data['bytes'] / 1e6:.1f} MB)"), ("content_hash", data["content_hash"]),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    out.print(t)


@app.command(epilog="Example: semipairs verify store/mypairs/1.0.0")
def verify(
    path: str = typer.Argument(..., help="A version directory or STORE/NAME (newest version)."),
    version: str | None = typer.Option(None, help="Version to check under STORE/NAME."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check checksums, sample counts and pairs.parquet-vs-shard agreement. Exit 1 on any mismatch."""
    from semipairs.dataset import version_path
    from semipairs.verify import verify_version

    target = version_path(path, version)  # found without reading the manifest: a broken one gets a report
    report = verify_version(target)
    if as_json:
        _print_json(report.to_dict())
    elif report.ok:
        out.print(f"ok: {target} ({report.files_checked} files, {report.samples_checked} samples)", soft_wrap=True,
                  highlight=False)
    else:
        for p in report.problems:
            err.print(f"[red]FAIL[/] {p}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command(epilog="Example: semipairs push store/mypairs/1.0.0 me/mypairs   (token from HF_TOKEN or `hf auth login`)")
def push(
    path: str = typer.Argument(..., help="A version directory or STORE/NAME (newest version)."),
    repo_id: str = typer.Argument(..., help="Hub dataset repo OWNER/NAME; created if missing."),
    version: str | None = typer.Option(None, help="Version to push from STORE/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    revision_tag: bool = typer.Option(True, "--revision-tag/--no-revision-tag", help="Tag the commit v<version>."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Upload one verified version to a Hub dataset repo and tag it; same version + same content is a no-op."""
    from semipairs.dataset import load
    from semipairs.hub import push as do_push

    target = load(path, version).path
    result = do_push(target, repo_id, private=private, tag=revision_tag)
    if as_json:
        _print_json(result.__dict__)
    elif result.uploaded:
        where = result.tag or result.commit[:12]
        out.print(f"pushed {target} -> {result.repo_id} @ {where} ({result.commit[:12]})", soft_wrap=True)
    else:
        where = result.tag or result.commit[:12]
        out.print(f"already on the Hub with the same content_hash: {result.repo_id} @ {where} (nothing uploaded)", soft_wrap=True)


@app.command(epilog="Example: semipairs pull someone/cifar10-pairs@v1.0.0   (HF_HUB_OFFLINE=1 reads the cache only)")
def pull(
    repo: str = typer.Argument(..., help="OWNER/NAME[@REVISION] (tag, branch or commit) or hf://OWNER/NAME[@REVISION]."),
    as_json: bool = typer.Option(False, "--json", help="Print the dataset summary as JSON."),
) -> None:
    """Download a pair dataset into the Hugging Face cache, verify every file, print where it is."""
    from semipairs.dataset import load

    uri = repo if repo.startswith("hf://") else f"hf://{repo}"
    ds = load(uri)
    if as_json:
        _print_json(ds.info())
    else:
        m = ds.manifest
        out.print(f"ok: {uri} -> {ds.path}", soft_wrap=True)
        out.print(f"{m.name} {m.version}: {m.stats.num_pairs} pairs, content_hash {m.content_hash}", soft_wrap=True)


@app.command(epilog="Example: semipairs review store/photo-pairs   (then: semipairs review store/photo-pairs --publish 1.1.0 "
                     "--target-precision 0.9)")
def review(
    path: str = typer.Argument(..., help="A version directory, STORE/NAME (newest version) or hf://OWNER/NAME[@REV]."),
    version: str | None = typer.Option(None, help="Version to review under STORE/NAME."),
    source: str | None = typer.Option(None, help="Image source of a 'reference' dataset (its images are not in it)."),
    reviewer: str = typer.Option("reviewer", help="Your name: judgments go to REVIEWS/NAME.jsonl (two reviewers, two files)."),
    reviews: Path | None = typer.Option(None, help="Judgment directory (default STORE/NAME/reviews/VERSION)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (the page is for this machine only by default)."),
    port: int = typer.Option(0, min=0, max=65535, help="Port (0: a free one)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the address without opening a browser."),
    bands: int = typer.Option(5, min=1, max=50, help="Score bands the order and the estimate are stratified by."),
    seed: int = typer.Option(0, help="Seed of the review order."),
    publish: str | None = typer.Option(None, help="Publish this new version without the rejected pairs, then exit."),
    target_precision: float | None = typer.Option(None, min=0.01, max=1.0, help="With --publish: also cut the pairs "
                                                  "below the score threshold estimated to reach this precision."),
    store: Path | None = typer.Option(None, help="With --publish: store for the new version (default the reviewed one's)."),
    show_estimate: bool = typer.Option(False, "--estimate", help="Print the precision estimate and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --estimate or --publish: print JSON."),
) -> None:
    """Judge pairs in a local web page and estimate the dataset's precision; publish a version without the rejects.

    Keys on the page: s same kind, d different, u can't tell, space skip, z undo, g grid of 12 (click the
    wrong ones). The estimate (95% interval) is stratified by score band and updates after each judgment."""
    from semipairs.dataset import load
    from semipairs.review import estimate, publish_reviewed, reviews_dir

    ds = load(path, version)
    folder = reviews or reviews_dir(ds)
    if publish:
        new = publish_reviewed(ds, publish, folder, store, target_precision, source, bands, progress=not as_json)
        r = load(new).manifest.review
        if as_json:
            _print_json({"path": str(new), "review": r.model_dump()})
        else:
            out.print(f"published {ds.manifest.name} {publish} at {new}: {r.rejected} rejected, {r.cut} cut below the "
                      f"threshold; parent {ds.manifest.version}", soft_wrap=True, highlight=False)
        return
    if show_estimate:
        _show_estimate(estimate(ds, folder, bands), folder, as_json)
        return
    _serve_review(ds, folder, reviewer, source, seed, bands, store, host, port, not no_browser)


def _show_estimate(est: Any, folder: Path, as_json: bool) -> None:
    if as_json:
        _print_json(est.to_dict())
        return
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    out.print(f"precision {pct(est.precision)} (95% interval {pct(est.low)} - {pct(est.high)}) from {est.judged} pairs "
              f"judged in {folder} ({est.unsure} can't tell, {est.disputed} disputed, {est.repeats} asked twice)",
              soft_wrap=True, highlight=False)
    t = Table("band", "scores", "pairs", "judged", "precision", "95% interval")
    for b in est.bands:
        t.add_row(str(b.band + 1), f"{b.low_score:.3f} - {b.high_score:.3f}", str(b.size), str(b.judged), pct(b.precision),
                  f"{pct(b.low)} - {pct(b.high)}")
    out.print(t)


def _serve_review(ds: Any, folder: Path, reviewer: str, source: str | None, seed: int, bands: int, store: Path | None,
                  host: str, port: int, browser: bool) -> None:
    import webbrowser

    from semipairs.review_app import ReviewSession, bind, serve

    session = ReviewSession(ds, folder, reviewer, source, seed, bands, store)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/?token={session.token}"
    out.print(f"review {ds.manifest.name} {ds.manifest.version}: {url}", soft_wrap=True, highlight=False)
    out.print(f"judgments go to {session.log.path}; keys s / d / u / space / z; Ctrl-C stops (nothing is lost)",
              soft_wrap=True, highlight=False)
    sys.stdout.flush()
    if browser:
        webbrowser.open(url)
    with contextlib.suppress(KeyboardInterrupt):  # every judgment is already on disk
        serve(session, sock)


# The commands each optional package registers: named here so that a package that fails to import still
# shows its commands, each ending in one line that says why, instead of vanishing from --help.
OPTIONAL = {"curation.cli": ("curate", "audit", "quickstart"), "training.cli": ("train", "eval", "refine")}


def _register_optional() -> None:
    """Commands of the curation and training packages register themselves (their modules stay light)."""
    import importlib

    for module, commands in OPTIONAL.items():
        try:
            importlib.import_module(module).register(app)
        except ImportError as exc:
            for name in commands:
                _unavailable(name, module, exc)


def _unavailable(name: str, module: str, exc: ImportError) -> None:
    reason = f"{type(exc).__name__}: {exc}"

    def command() -> None:
        fail(ImportError(f"semipairs {name} is unavailable: importing {module} failed ({reason}); reinstall with "
                         "`python3 -m pip install -e .` or install the missing package"))

    command.__doc__ = f"(unavailable: importing {module} failed: {reason})"
    app.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(command)


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
