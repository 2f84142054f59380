"""Papers: `digest ingest`, `papers import/export`, `seeds load` and `rank`."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from digest import digests, paperstore
from digest.cli.common import App, fail, now_utc, parse_date, pass_app
from digest.ingestion import ingest_sources
from digest.models import Run
from digest.ranking import PreparedCorpus, RankingConfig, RankPaper
from digest.runs import describe_run


@click.command()
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(["hf", "arxiv", "seeds"]),
    help="Source to ingest (repeatable; default: DIGEST_INGEST_SOURCES).",
)
@click.option(
    "--date",
    "date_text",
    metavar="YYYY-MM-DD",
    help="HF: that day's Daily Papers; arXiv: papers submitted that day (API). "
    "Default: the latest HF listing and today's arXiv announcements (RSS).",
)
@click.option(
    "--category",
    "categories",
    multiple=True,
    help="arXiv category (repeatable; default: DIGEST_ARXIV_CATEGORIES).",
)
@pass_app
def ingest(
    app: App, sources: tuple[str, ...], date_text: str | None, categories: tuple[str, ...]
) -> None:
    """Fetch papers from the sources now, store them, and say what came in and why not."""
    from digest.config import ARXIV_CATEGORY

    for category in categories:
        if not ARXIV_CATEGORY.match(category):
            raise click.BadParameter(f"{category!r} is not an arXiv category like cs.LG")

    def on_start(source: str) -> None:
        if source == "arxiv":
            click.echo(
                f"arXiv: one request every {app.settings.arxiv_delay_seconds:g} s, "
                "as its terms ask...",
                err=True,
            )

    def on_done(run: Run) -> None:
        first, *rest = describe_run(run)
        click.echo(f"{run.status}: {first}")
        for line in rest:
            click.echo(f"  {line}")

    with app.session() as session:
        runs = ingest_sources(
            session=session,
            settings=app.settings,
            clock=now_utc,
            sources=sources or None,
            day=parse_date(date_text),
            categories=categories or None,
            on_start=on_start,
            on_done=on_done,
        )
    if any(run.status == "failed" for run in runs):
        sys.exit(1)


@click.group()
def papers() -> None:
    """Import and export papers in the JSON Lines paper format."""


@papers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def papers_import(app: App, file: Path) -> None:
    """Import a .jsonl (or .jsonl.gz) paper file; bad lines are reported, good ones kept."""
    import gzip

    from digest.papers import read_lines

    # Progress is measured in bytes of the file as stored, so the file is read only once.
    # Lines are read as bytes, each bounded in size: a bad one is reported, never fatal.
    with file.open("rb") as raw, app.session() as session:
        binary = gzip.GzipFile(fileobj=raw) if file.suffix == ".gz" else raw
        handle = read_lines(binary)
        with click.progressbar(
            length=file.stat().st_size, label=f"Importing {file.name}", file=sys.stderr
        ) as bar:
            done = 0

            def progress(_papers: int) -> None:
                nonlocal done
                bar.update(raw.tell() - done)
                done = raw.tell()

            report = paperstore.import_papers(
                session=session, lines=handle, now=now_utc(), progress=progress
            )
            bar.update(file.stat().st_size - done)
    click.echo(
        f"{report.new} new, {report.updated} updated, {report.unchanged} unchanged, "
        f"{len(report.bad_lines)} bad lines"
    )
    for bad in report.bad_lines[:20]:
        click.echo(f"  line {bad.line_number}: {bad.error}", err=True)
    if len(report.bad_lines) > 20:
        click.echo(f"  ... and {len(report.bad_lines) - 20} more", err=True)


@papers.command("embed")
@click.option("--since", "since_text", metavar="DATE", help="Only papers first seen on or after.")
@pass_app
def papers_embed(app: App, since_text: str | None) -> None:
    """Encode the papers that have no embedding for the active encoder (resumable: each batch
    is committed, and a second run finds nothing to do)."""
    import contextlib
    from typing import Any

    from digest.embedding_store import embed_missing_papers
    from digest.encoder import load_encoder

    since_day = parse_date(since_text)
    since = dt.datetime.combine(since_day, dt.time(0), tzinfo=dt.UTC) if since_day else None
    encoder = load_encoder(kind=app.settings.encoder, threads=app.settings.encoder_threads)
    if encoder is None:
        fail(f"no encoder: DIGEST_ENCODER={app.settings.encoder} or the model is not installed")
        return
    with app.session() as session, contextlib.ExitStack() as stack:
        bars: list[Any] = []

        def on_total(total: int) -> None:
            bars.append(
                stack.enter_context(
                    click.progressbar(length=total, label="Embedding", file=sys.stderr)
                )
            )

        done = embed_missing_papers(
            session=session,
            encoder=encoder,
            since=since,
            batch_size=app.settings.embed_batch_size,
            on_total=on_total,
            progress=lambda n: bars[0].update(n),
        )
    click.echo(f"Embedded {done} papers with {encoder.model_key}")


@papers.command("export")
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-")
@pass_app
def papers_export(app: App, out: IO[str]) -> None:
    """Write every stored paper as JSON Lines (stdout by default)."""
    from digest.papers import write_papers

    with app.session() as session:
        count = write_papers(paperstore.export_papers(session=session), out)
    click.echo(f"{count} papers exported", err=True)


@click.group()
def seeds() -> None:
    """The bundled seed papers."""


@seeds.command("load")
@click.option(
    "--if-empty",
    is_flag=True,
    help="Only into a store without papers: a first start (compose's migrate runs it each time).",
)
@pass_app
def seeds_load(app: App, if_empty: bool) -> None:
    """Load the bundled seed papers into the store."""
    with app.session() as session:
        if if_empty and paperstore.has_papers(session=session):
            click.echo("the store has papers already: seeds not loaded")
            return
        report = paperstore.load_seeds(session=session, settings=app.settings, now=now_utc())
    click.echo(f"{report.new} new, {report.updated} updated, {report.unchanged} unchanged")


@click.command()
@click.option(
    "--papers",
    "papers_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Candidate papers, JSON Lines in the paper format (.jsonl or .jsonl.gz).",
)
@click.option(
    "--profiles",
    "profiles_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Profiles, JSON Lines: {"id", "topics", "exclude", "liked", "disliked"}.',
)
@click.option("--now", "now_text", metavar="ISO-TIME", help="Rank as of this time (default: now).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000))
@pass_app
def rank(app: App, papers_file: Path, profiles_file: Path, now_text: str | None, top: int) -> None:
    """Rank PAPERS for each profile: one JSON line per profile on stdout, no database touched.

    Bad lines are reported on stderr and skipped; the exit status is 1 if there were any.
    """
    import dataclasses
    import gzip
    from collections.abc import Callable, Iterable
    from typing import Any

    from digest.papers import BadLine
    from digest.rankfile import read_profiles, read_rank_papers, result_line
    from digest.ranking import rank_prepared

    now = _rank_time(now_text)

    def read(
        path: Path, reader: Callable[[Iterable[str]], Iterator[Any]]
    ) -> tuple[list[Any], list[BadLine]]:
        opener = gzip.open if path.suffix == ".gz" else open
        good: list[Any] = []
        bad: list[BadLine] = []
        try:
            with opener(path, "rt", encoding="utf-8") as handle:
                for item in reader(handle):
                    (bad if isinstance(item, BadLine) else good).append(item)
        except (UnicodeDecodeError, OSError) as exc:
            raise click.ClickException(f"cannot read {path}: {exc}") from exc
        for line in bad:
            click.echo(f"{path.name} line {line.line_number}: {line.error} (skipped)", err=True)
        return good, bad

    papers, bad_papers = read(papers_file, read_rank_papers)
    profiles, bad_profiles = read(profiles_file, read_profiles)
    config = dataclasses.replace(digests.ranking_config(app.plain_settings), top_k=top)
    corpus = _rank_corpus(app, papers, now, config)
    if corpus is not None:
        from digest.embedding_store import cache_for

        # Liked and disliked papers of the profiles: from the cache, or encoded once and kept.
        digests.load_feedback_embeddings(
            settings=app.plain_settings,
            corpus=corpus,
            profiles=profiles,
            cache=cache_for(app.plain_settings.cache_dir),
        )
    batch = 500
    with click.progressbar(
        length=len(profiles), label="Ranking", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        for start in range(0, len(profiles), batch):
            chunk = profiles[start : start + batch]
            ranked = rank_prepared(corpus, chunk) if corpus else [[] for _ in chunk]
            for profile, picks in zip(chunk, ranked, strict=True):
                click.echo(result_line(profile, picks))
            bar.update(len(chunk))
    click.echo(
        f"Ranked {len(papers)} papers for {len(profiles)} profiles as of {now.isoformat()}"
        + (
            f"; skipped {len(bad_papers)} bad paper and {len(bad_profiles)} bad profile lines"
            if bad_papers or bad_profiles
            else ""
        ),
        err=True,
    )
    if bad_papers or bad_profiles:
        sys.exit(1)


def _rank_time(now_text: str | None) -> dt.datetime:
    """`--now` as an aware time (UTC when no zone is given), or now."""
    if now_text is None:
        return now_utc()
    try:
        now = dt.datetime.fromisoformat(now_text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{now_text!r} is not a time like 2026-06-12T08:00:00Z", param_hint="--now"
        ) from exc
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def _rank_corpus(
    app: App, papers: list[RankPaper], now: dt.datetime, config: RankingConfig
) -> PreparedCorpus | None:
    """The file's papers prepared once, as delivery prepares candidates; their embeddings come
    from the cache when an earlier run (same model, same text) encoded them."""
    from digest.embedding_store import cache_for

    if not papers:
        return None
    settings = app.plain_settings
    cache = cache_for(settings.cache_dir)
    corpus = digests.prepare_candidates(
        settings=settings, papers=papers, as_of=now, cache=cache, config=config
    )
    if corpus.embedded_t is not None:
        click.echo(f"Embeddings: {cache.hits} cached, {cache.misses} encoded", err=True)
    return corpus
