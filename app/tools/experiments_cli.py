"""`streamrec experiment start|stop|report`: online A/B experiments between two model versions.

Mounted by app/cli.py as the `experiment` sub-command; expected failures raise UserError (one line).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from app.cli_errors import UserError
from app.runtime.settings import Settings, get_settings

experiment_app = typer.Typer(help="Online A/B experiments between two model versions, on live traffic.",
                             no_args_is_help=True)

Bootstrap = Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap (overrides STREAMREC_KAFKA_BOOTSTRAP)")]


def _settings(bootstrap: str | None) -> Settings:
    settings = get_settings()
    if bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    if settings.embedded_broker:
        raise UserError("no Kafka to talk to: set STREAMREC_KAFKA_BOOTSTRAP or pass --bootstrap "
                        "(the demo prints the embedded broker's address)")
    return settings


@experiment_app.command("start")
def start_command(
    name: Annotated[str, typer.Argument(help="the experiment's name (also the salt of the user split)")],
    control: Annotated[str, typer.Option(help="model version of the control arm (a folder under STREAMREC_MODEL_DIR)")],
    treatment: Annotated[str, typer.Option(help="model version of the treatment arm")],
    share: Annotated[float, typer.Option(help="share of users in the treatment arm, in (0, 1)")] = 0.5,
    bootstrap: Bootstrap = None,
) -> None:
    """Start serving two model versions side by side, users split by a salted hash of their id."""
    from app.tools.experiments import check_definition, start

    settings = get_settings()
    check_definition(settings, name, control, treatment, share)  # before asking for Kafka
    record = asyncio.run(start(_settings(bootstrap), name, control, treatment, share))
    typer.echo(f"experiment {record.name} started: control {record.control}, treatment {record.treatment} "
               f"({record.share:.0%} of users); every worker applies it within seconds")


@experiment_app.command("stop")
def stop_command(name: Annotated[str, typer.Argument(help="the running experiment")], bootstrap: Bootstrap = None) -> None:
    """Stop an experiment: every user goes back to the default model version; its data stays reportable."""
    from app.tools.experiments import stop

    record = asyncio.run(stop(_settings(bootstrap), name))
    typer.echo(f"experiment {record.name} stopped; `streamrec experiment report {record.name}` still reports it")


@experiment_app.command("report")
def report_command(
    name: Annotated[str, typer.Argument(help="a running or stopped experiment")],
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the report to this JSON file")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Per-arm counts and rates, lifts with 95% intervals and tests, sample-ratio and sample-size checks."""
    from app.evaluation.abtest import format_report
    from app.tools.experiments import report

    result = asyncio.run(report(_settings(bootstrap), name))
    typer.echo(format_report(result))
    if json_path is not None:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2))
        typer.echo(f"wrote {json_path}")
