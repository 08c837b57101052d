"""The ``coreopt`` command line. Subcommands are added by each solver as it lands."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import click
import typer

app = typer.Typer(
    name="coreopt",
    help="coreopt: optimization and mechanism design for machine learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # never print locals (API keys) in a traceback
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


CLI_WORDS = [
    # what library messages say -> what a CLI user does
    (
        "err.values holds every value paid for (pass it back as known_values= to resume)",
        "rerun the same command to resume: paid LLM calls are in the cache (and --checkpoint)",
    ),
    ("(pass it back as known_values= to resume)", "(rerun the same command to resume)"),
    ("pass it back as known_values= to resume", "rerun the same command to resume"),
    ("known_values=", "the cache"),
    ("err.values", "the cache"),
    ("LLM call budget of", "LLM call budget (--max-calls) of"),
    ("LLM token budget of", "LLM token budget (--max-tokens) of"),
    ("max_concurrency", "--max-concurrency"),
    ("max_workers", "--max-workers"),
    ("scoring=", "--scoring "),
    ("samples must", "--samples must"),
]


def cli_message(exc: BaseException) -> str:
    """An exception as one line for the terminal, in the CLI's words (flags, not keywords)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for lib, cli in CLI_WORDS:
        text = text.replace(lib, cli)
    return text


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile (Python prints and C libraries writing to file
    descriptor 1, such as solver banners) to stderr, so stdout carries only the report."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (embedded interpreters): Python-level only
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _non_negative(value: int | None, flag: str) -> int | None:
    if value is not None and value < 0:
        raise typer.BadParameter(f"{flag} must be >= 0 (0: nothing may be paid), got {value}")
    return value


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
    max_calls: int | None = typer.Option(
        None, help="Most paid LLM calls, every HTTP attempt counted (0: cached values only)."
    ),
    max_tokens: int | None = typer.Option(
        None, help="Most billed LLM tokens (0: cached values only)."
    ),
    samples: int = typer.Option(1, help="Answers per coalition (judge/embedding scoring)."),
    max_concurrency: int = typer.Option(
        16,
        help="Most LLM calls in flight; for a server, adapted below this to what it answers "
        "within --timeout.",
    ),
    timeout: float = typer.Option(60.0, help="Seconds per HTTP request to a server."),
    retries: int = typer.Option(
        3, help="Retries of a failed LLM call (timeouts, 429, 5xx, malformed answers)."
    ),
    chat_template: str = typer.Option(
        "chatml",
        help="How a server's log-probability prompts are rendered: chatml (SmolLM2, Qwen), "
        "plain, or hf:PATH (the model's tokenizer folder).",
    ),
    verify: bool = typer.Option(
        True, help="Self-test a server's log-probabilities before a logprob solve."
    ),
    cache: Path | None = typer.Option(None, help="sqlite cache (default ~/.cache)."),  # noqa: B008
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not cache LLM calls."),
    checkpoint: Path | None = typer.Option(  # noqa: B008
        None, help="Folder of per-query files of paid coalition values (a rerun resumes)."
    ),
    json_out: Path | None = typer.Option(  # noqa: B008
        None, "--json-out", help="Write the JSON report here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report, not the table."),
    progress: bool = typer.Option(True, help="Show progress bars (on stderr)."),
    executor: str | None = typer.Option(
        None, help="Fan queries out: 'threads' or 'ray' (default: one query after another)."
    ),
    max_workers: int | None = typer.Option(None, help="Workers of --executor."),
    verbose: bool = typer.Option(False, "--verbose", help="On an error, print the traceback."),
) -> None:
    """Least-core credit of each source for answering each query (in-context credit).

    stdout carries only the report (the table, or with --json the JSON report alone); progress,
    logs and errors go to stderr. An error is one line on stderr and exit status 1 (the
    traceback with --verbose).
    """
    if executor not in (None, "threads", "ray"):
        raise typer.BadParameter(f"--executor must be 'threads' or 'ray', got {executor!r}")
    _non_negative(max_calls, "--max-calls")
    _non_negative(max_tokens, "--max-tokens")
    _non_negative(retries, "--retries")
    if max_concurrency < 1:
        raise typer.BadParameter(f"--max-concurrency must be >= 1, got {max_concurrency}")
    if not timeout > 0:
        raise typer.BadParameter(f"--timeout must be > 0 seconds, got {timeout}")
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        with stdout_to_stderr():
            report, table = _credit(
                path=path,
                llm=llm,
                judge=judge,
                scoring=scoring,
                budget=budget,
                max_calls=max_calls,
                max_tokens=max_tokens,
                samples=samples,
                max_concurrency=max_concurrency,
                timeout=timeout,
                retries=retries,
                chat_template=chat_template,
                verify=verify,
                cache=False if no_cache else cache,
                checkpoint=checkpoint,
                progress=progress,
                executor=executor,
                max_workers=max_workers,
            )
    except (typer.Exit, typer.Abort, click.exceptions.ClickException):
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
        typer.echo(f"coreopt credit: error: {cli_message(exc)}", err=True)
        raise typer.Exit(130 if isinstance(exc, KeyboardInterrupt) else 1) from None
    if json_out is not None:
        json_out.write_text(report + "\n", encoding="utf-8")
    typer.echo(report if as_json else table)


def _credit(
    *,
    path: Path,
    llm: str | None,
    judge: str | None,
    scoring: str,
    budget: int | None,
    max_calls: int | None,
    max_tokens: int | None,
    samples: int,
    max_concurrency: int,
    timeout: float,
    retries: int,
    chat_template: str,
    verify: bool,
    cache: Path | bool | None,
    checkpoint: Path | None,
    progress: bool,
    executor: str | None,
    max_workers: int | None,
) -> tuple[str, str]:
    """Run ``coreopt credit``; the JSON report and the table."""
    from coreopt.credit import assign_items, load_items
    from coreopt.game import LeastCoreConfig
    from coreopt.llm import LLM, Budget, make_backend

    items = load_items(path)
    limited = max_calls is not None or max_tokens is not None
    llm_budget = Budget(max_calls, max_tokens) if limited else None
    server = {"timeout": timeout, "chat_template": chat_template}

    def build(spec: str | None) -> LLM:
        return LLM(
            make_backend(spec, server=server),
            max_concurrency=max_concurrency,
            retries=retries,
            cache=cache,
            budget=llm_budget,
        )

    answerer = build(llm)
    res = assign_items(
        items,
        llm=answerer,
        judge=None if judge is None else build(judge),
        scoring=scoring,  # type: ignore[arg-type]
        budget=llm_budget,
        samples=samples,
        progress=progress,
        config=LeastCoreConfig(normalize=True, retries=0, budget=budget),
        executor=executor,
        max_workers=max_workers,
        verify=None if verify else False,
        checkpoint=checkpoint,
    )
    return json.dumps(res.to_json(), indent=2), res.table()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
