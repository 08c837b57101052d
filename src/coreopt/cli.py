"""The ``coreopt`` command line. Subcommands are added by each solver as it lands."""

from __future__ import annotations

import dataclasses
import json

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


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
