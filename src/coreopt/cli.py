"""The ``coreopt`` command line. Subcommands are added by each solver as it lands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

app = typer.Typer(
    name="coreopt",
    help="coreopt: optimization and mechanism design for machine learning.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def info(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Print versions, the compute device, and which optional backends are installed."""
    from coreopt._info import gather, render

    report = gather()
    typer.echo(json.dumps(dataclasses.asdict(report), indent=2) if as_json else render(report))


@app.command()
def version() -> None:
    """Print the coreopt version."""
    from coreopt._version import __version__

    typer.echo(__version__)


@app.command()
def credit(
    path: Path = typer.Argument(..., help="JSON/JSONL: query + sources per item."),  # noqa: B008
    llm: str | None = typer.Option(
        None,
        help="'embedded', 'openai[:MODEL]', 'anthropic[:MODEL]', 'hf:PATH'. Default: the server "
        "of COREOPT_LLM_BASE_URL / COREOPT_LLM_MODEL when set, else the embedded SmolLM2.",
    ),
    judge: str | None = typer.Option(None, help="Judge LLM (same forms) for --scoring judge."),
    scoring: str = typer.Option("auto", help="auto, logprob, judge or embedding."),
    budget: int | None = typer.Option(None, help="Most least-core value calls per query."),
    max_calls: int | None = typer.Option(None, help="Most paid LLM calls (partial result)."),
    max_tokens: int | None = typer.Option(None, help="Most billed LLM tokens (partial result)."),
    samples: int = typer.Option(1, help="Answers per coalition (judge/embedding scoring)."),
    max_concurrency: int = typer.Option(16, help="LLM calls in flight."),
    cache: Path | None = typer.Option(None, help="sqlite cache (default ~/.cache)."),  # noqa: B008
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not cache LLM calls."),
    json_out: Path | None = typer.Option(  # noqa: B008
        None, "--json-out", help="Write the JSON report here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report, not the table."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    executor: str | None = typer.Option(
        None, help="Fan queries out: 'threads' or 'ray' (default: one query after another)."
    ),
    max_workers: int | None = typer.Option(None, help="Workers of --executor."),
) -> None:
    """Least-core credit of each source for answering each query (in-context credit)."""
    if executor not in (None, "threads", "ray"):
        raise typer.BadParameter(f"--executor must be 'threads' or 'ray', got {executor!r}")
    from coreopt.credit import assign_items, load_items
    from coreopt.game import LeastCoreConfig
    from coreopt.llm import Budget

    items = load_items(path)
    llm_budget = Budget(max_calls, max_tokens) if (max_calls or max_tokens) else None
    res = assign_items(
        items,
        llm=llm,
        judge=judge,
        scoring=scoring,  # type: ignore[arg-type]
        budget=llm_budget,
        samples=samples,
        cache=False if no_cache else cache,
        max_concurrency=max_concurrency,
        progress=progress,
        config=LeastCoreConfig(normalize=True, retries=0, budget=budget),
        executor=executor,
        max_workers=max_workers,
    )
    report = json.dumps(res.to_json(), indent=2)
    if json_out is not None:
        json_out.write_text(report + "\n", encoding="utf-8")
    typer.echo(report if as_json else res.table())


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
