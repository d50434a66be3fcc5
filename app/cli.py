"""The `streamrec` command line (typer). Every command reads the one Settings object (STREAMREC_*)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from app.cli_errors import FriendlyErrors, UserError
from app.runtime.settings import Settings, get_settings

cli = typer.Typer(cls=FriendlyErrors, add_completion=False, no_args_is_help=True,
                  help="StreamRec: real-time, scene-aware recommendations on Kafka.")

Bootstrap = Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap (overrides STREAMREC_KAFKA_BOOTSTRAP)")]
# An input file must exist and be a readable file: typer says so in one line before anything starts.
DataFile = Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True,
                                        help="Taobao CSV(.gz) or JSON lines in the topic schema")]


def _settings(bootstrap: str | None = None) -> Settings:
    settings = get_settings()
    if bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    return settings


def _need_broker(settings: Settings) -> None:
    if settings.embedded_broker:
        raise UserError("no Kafka to talk to: set STREAMREC_KAFKA_BOOTSTRAP or pass --bootstrap "
                                 "(the demo prints the embedded broker's address)")


SERVICES = frozenset({"worker", "serve", "demo", "bench", "trainer"})  # long-running: their client logs stay on


def _need_events(path: Path) -> None:
    """Fail before any work when `path` holds no valid event (every row rejected, or empty)."""
    from app.tools.replay import read_events

    if next(iter(read_events(path)), None) is None:
        raise UserError(f"no valid events in {path}: every line was rejected or the file is empty (the log above "
                        "says why for the first lines); expected Taobao CSV (user,item,category,behavior,ts) "
                        "or JSON lines in the topic schema")


@cli.callback()
def _main(ctx: typer.Context,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logs; tracebacks on errors")] = False,
          ) -> None:
    ctx.obj = {"verbose": verbose}
    level = logging.DEBUG if verbose else getattr(logging, get_settings().log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(level, logging.WARNING))
    logging.getLogger("faust").setLevel(max(level, logging.WARNING))
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
    if not verbose and ctx.invoked_subcommand not in SERVICES:
        # A short-lived command reports an unreachable Kafka or Cassandra once, in one line (app/cli_errors.py);
        # the clients would log every failed connect, with tracebacks.
        for name in ("aiokafka", "cassandra"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@cli.command()
def demo(
    data: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="Taobao CSV(.gz) or JSON lines; default: the shared data set, else the simulator")] = None,
    events: Annotated[int | None, typer.Option(min=1, help="replay at most N events")] = None,
    duration: Annotated[float | None, typer.Option(min=1.0, help="stop replaying after S seconds")] = None,
    rate: Annotated[float, typer.Option(min=0.0, help="events/s; 0 = as fast as possible")] = 250.0,
    simulate: Annotated[bool, typer.Option("--simulate", help="use the built-in simulator even if data exists")] = False,
) -> None:
    """Start the embedded broker and a worker, train, replay, show live recommendations, summarise."""
    from app.tools.demo import run_demo

    if data is not None:
        _need_events(data)
    raise typer.Exit(run_demo(get_settings(), data=data, max_events=events, duration_s=duration, rate=rate,
                              simulate=simulate))


@cli.command()
def worker() -> None:
    """Run a Faust worker (all agents). Starts the embedded broker when no bootstrap is configured."""
    from app.runtime.worker import run_worker

    run_worker(get_settings())


@cli.command()
def replay(
    path: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="Taobao CSV(.gz) or JSON lines")] = None,
    simulate: Annotated[bool, typer.Option("--simulate", help="replay the built-in simulator instead")] = False,
    rate: Annotated[float | None, typer.Option(min=0.001, help="events/s; omit for as fast as possible")] = None,
    speedup: Annotated[float | None, typer.Option(min=0.001, help="N x real time, paced by event time")] = None,
    events: Annotated[int | None, typer.Option(min=1, help="stop after N events")] = None,
    rebase: Annotated[bool, typer.Option(help="stamp events with the send time (live freshness)")] = True,
    bootstrap: Bootstrap = None,
) -> None:
    """Replay a recorded event file (or the simulator) onto the input topics in event-time order."""
    from app.tools.producer import replay_to_kafka, source_events

    if (path is None) == (not simulate):
        raise typer.BadParameter("give a PATH or --simulate (not both)")
    if rate is not None and speedup is not None:
        raise typer.BadParameter("give --rate or --speedup, not both")
    settings = _settings(bootstrap)
    _need_broker(settings)
    if path is not None:
        _need_events(path)
    stats = asyncio.run(replay_to_kafka(settings, source_events(path, simulate, events), rate=rate,
                                        speedup=speedup, rebase=rebase))
    typer.echo(f"sent {stats.sent} events in {stats.elapsed_s:.1f} s ({stats.events_per_s:,.0f} events/s): "
               f"{stats.by_type}")


@cli.command()
def recs(user_id: str) -> None:
    """Print a user's latest recommendation list (from the store the worker writes)."""
    from app.store import open_store

    settings = get_settings()
    if settings.store == "sqlite" and not settings.sqlite_path.exists():  # a read creates nothing
        raise UserError(f"no store at {settings.sqlite_path}: run this where the worker runs, or set "
                        "STREAMREC_SQLITE_PATH / STREAMREC_DATA_DIR to the worker's")

    async def latest() -> object:
        store = await open_store(settings)
        try:
            return await store.latest_recommendation(user_id)
        finally:
            await store.close()

    record = asyncio.run(latest())
    if record is None:
        raise UserError(f"no recommendations for user {user_id!r} yet (unknown user, or no event of theirs "
                        "processed so far)")
    from app.tools.console import print_recommendation

    print_recommendation(record)


@cli.command()
def tail(
    topic: str,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="exit after N messages")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Print a topic's messages as they arrive, as a downstream app sees them."""
    from app.tools.console import tail_topic

    settings = _settings(bootstrap)
    _need_broker(settings)
    asyncio.run(tail_topic(settings, topic, from_beginning, limit))


@cli.command()
def topics(bootstrap: Bootstrap = None) -> None:
    """Create every topic that is missing (configured partition count) and describe them."""
    from app.runtime.kafka import ensure_topics

    settings = _settings(bootstrap)
    _need_broker(settings)
    for name, partitions in sorted(asyncio.run(ensure_topics(settings)).items()):
        typer.echo(f"{name:40s} partitions={partitions}")


@cli.command()
def train(
    data: DataFile,
    train_fraction: Annotated[float, typer.Option(min=0.05, max=1.0, help="train on this earliest share")] = 1.0,
) -> None:
    """Train item vectors and the user encoder; write a new model version to STREAMREC_MODEL_DIR."""
    from app.tools.replay import read_events, split_by_time
    from app.tools.training import train_model

    settings = get_settings()
    _need_events(data)
    history = list(read_events(data))
    if train_fraction < 1.0:
        history, _ = split_by_time(history, train_fraction)
    path = train_model(history, settings.model_dir, dim=settings.vector_dim)
    typer.echo(f"model version {path.name} written to {path}")


@cli.command()
def trainer(
    once: Annotated[bool, typer.Option("--once", help="one round, then exit (cron, tests)")] = False,
    health: Annotated[bool, typer.Option("--health", help="exit 1 when the last round failed or is overdue "
                                         "(a container health check); trains nothing")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Retrain on the input topics' recent events every STREAMREC_RETRAIN_EVERY_S; workers swap versions."""
    from app.tools.retrain import health_problem, run_trainer

    settings = _settings(bootstrap)
    if health:
        problem = health_problem(settings)
        if problem is not None:
            raise UserError(f"trainer unhealthy: {problem}")
        return
    _need_broker(settings)
    try:
        asyncio.run(run_trainer(settings, once=once))
    except KeyboardInterrupt:
        pass


@cli.command("forget-user")
def forget_user(user_id: str, bootstrap: Bootstrap = None) -> None:
    """Erase a user (privacy): store and history now; the worker drops its tables' rows and the
    compacted recommendation topic gets a tombstone when it reads the request."""
    from app.tools.privacy import request_forget

    settings = _settings(bootstrap)
    _need_broker(settings)
    asyncio.run(request_forget(settings, user_id))
    typer.echo(f"user {user_id!r}: removed from the store; erase request sent to the workers")


@cli.command()
def evaluate(
    data: DataFile,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results as JSON")] = None,
    report: Annotated[Path | None, typer.Option(help="write a Markdown report (and PNG) here")] = None,
    baselines_only: Annotated[bool, typer.Option(help="skip StreamRec and its ablations")] = False,
    systems: Annotated[str | None, typer.Option(help="comma-separated system names: only these "
                                                "(default: every one)")] = None,
    retrain_every_hours: Annotated[float | None, typer.Option(
        min=0.01, help="retrain StreamRec's model on everything seen so far each time the replay's clock "
        "passes this many hours (a deployment's scheduled retrain); default: train once")] = None,
) -> None:
    """Streaming evaluation on real data: time split, score each event's item against the list served."""
    from app.evaluation.command import evaluate_command, system_names

    names = None if systems is None else [name.strip() for name in systems.split(",") if name.strip()]
    if names is not None:
        known = system_names()
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise typer.BadParameter(f"unknown systems {', '.join(unknown) or '(none given)'}; "
                                     f"known: {', '.join(known)}", param_hint="--systems")
        if baselines_only and any(name.startswith("streamrec") for name in names):
            raise typer.BadParameter("--baselines-only skips the streamrec systems named", param_hint="--systems")
    _need_events(data)
    result = evaluate_command(data, json_out, report, baselines_only=baselines_only, systems=names,
                              retrain_every_hours=retrain_every_hours)
    for name, system in result.systems.items():
        typer.echo(f"{name:22s} HR@{result.k} {100 * (system.warm[f'hr@{result.k}'] or 0):6.2f}%  "
                   f"MRR@{result.k} {100 * (system.warm[f'mrr@{result.k}'] or 0):6.2f}%")


@cli.command()
def tune(
    data: DataFile,
    configs: Annotated[str, typer.Option(help="comma-separated names from app/evaluation/grid.py, or 'all'")] = (
        "user_pop,item_knn,session_knn,shipped"),
    user_mod: Annotated[int, typer.Option(min=1, help="score every N-th user (crc32 of the id)")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the accuracy-diversity trade-off plot (PNG) here")] = None,
) -> None:
    """Score configurations on a validation slice of the training period (never the evaluated one)."""
    from app.evaluation.baselines import BASELINES
    from app.evaluation.grid import GRID
    from app.evaluation.tradeoff import plot_tradeoff
    from app.evaluation.tune import format_rows, run_tune, write_json

    names = list(GRID) if configs == "all" else [name.strip() for name in configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in GRID]
    if unknown:
        raise typer.BadParameter(f"unknown configurations {', '.join(unknown)}; known: {', '.join(GRID)}",
                                 param_hint="--configs")
    _need_events(data)
    result = run_tune(data, names, user_mod=user_mod, progress=True)
    scored = "every user" if user_mod == 1 else f"1 user in {user_mod}"
    typer.echo(f"{result.dataset}: fit {result.fit_events:,} events, validation {result.validation_events:,} "
               f"(ts {result.validation_from_ts}..{result.validation_to_ts}), {scored} scored")
    typer.echo(format_rows(result))
    if json_out is not None:
        write_json(result, json_out)
    if plot is not None:
        plot_tradeoff(result, plot, references=[name for name in names if name in BASELINES])


@cli.command()
def lag(
    watch: Annotated[bool, typer.Option("--watch", help="refresh every --interval seconds until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between samples with --watch")] = 5.0,
    group: Annotated[str | None, typer.Option(help="consumer group (default: STREAMREC_APP_ID)")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Print consumer lag per topic and partition: committed, highwater, lag, age of the oldest unprocessed."""
    from app.serving.lag import format_table, sample_once
    from app.serving.lag import watch as watch_lag

    settings = _settings(bootstrap)
    _need_broker(settings)
    if not watch:
        typer.echo(format_table(asyncio.run(sample_once(settings, group))))
        return

    async def loop() -> None:
        async for samples in watch_lag(settings, interval, group):
            typer.echo("\x1b[2J\x1b[H" + format_table(samples), nl=True)

    try:
        asyncio.run(loop())
    except KeyboardInterrupt:
        pass


@cli.command()
def serve(
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="HTTP port (default: STREAMREC_WEB_PORT)")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Serve the HTTP API alone (no agents): lists from the store, POST /events to Kafka, /openapi.json."""
    from app.serving.serve import run_serve

    settings = _settings(bootstrap)
    _need_broker(settings)
    run_serve(settings if port is None else settings.model_copy(update={"web_port": port}))


def _mount_subcommands() -> None:
    from app.store.cli import store_app
    from app.tools.experiments_cli import experiment_app

    cli.add_typer(store_app, name="store")
    cli.add_typer(experiment_app, name="experiment")


_mount_subcommands()


@cli.command()
def bench(
    json_path: Annotated[Path | None, typer.Option("--json", help="write every number to this JSON file")] = None,
    events: Annotated[int | None, typer.Option(help="events for the throughput phases")] = None,
    rate: Annotated[float | None, typer.Option(help="events/s for the freshness phase")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="tiny sizes (CI): every phase, no meaningful speed")] = False,
    users: Annotated[str | None, typer.Option(help="comma-separated user counts for the memory phase")] = None,
    data: Annotated[Path | None, typer.Option(help="train on this Taobao CSV (default: the shared data set)")] = None,
    workdir: Annotated[Path | None, typer.Option(help="keep brokers' and workers' files here")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="reuse the model versions here (skip training)")] = None,
    memory_only: Annotated[bool, typer.Option("--memory-only",
                                              help="only RSS against --users (the long 1e6-user step)")] = False,
) -> None:
    """Measure the pipeline against a real broker and real workers; print a Markdown table."""
    import dataclasses
    import json

    from app.benchmarks.bench import BenchConfig, run_bench, table
    from app.runtime.settings import default_dataset

    cfg = BenchConfig.smoke() if smoke else BenchConfig(data=data or default_dataset())
    changes: dict = {"events": events, "rate": rate, "data": data, "model_dir": model_dir,
                     "memory_only": memory_only or None,
                     "users": tuple(int(u) for u in users.split(",")) if users else None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})

    def write(phase: str, result: dict) -> None:  # after every phase: a late failure keeps the rest
        if json_path is not None:
            json_path.write_text(json.dumps(result, indent=2, default=str))

    result = run_bench(cfg, workdir, on_phase=write)
    typer.echo(table(result))
    if json_path is not None:
        typer.echo(f"wrote {json_path}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
