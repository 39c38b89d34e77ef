"""The `smsgw` command: dev, worker, db upgrade, numbers."""

from __future__ import annotations

import logging

import click

from .config import Settings, load_settings


def _settings() -> Settings:
    """Settings from the environment and `.env`."""
    return load_settings()


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """Self-hosted SMS/MMS gateway for LLM chat agents."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema."""
    from . import db as database

    settings = _settings()
    database.init_database(settings.resolved_database_url(), pool_size=2)
    applied = database.upgrade()
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the web app listens on.")
@click.option("--port", type=int, default=5000, envvar="PORT", show_default=True, help="Port ($PORT).")
def dev(host: str, port: int) -> None:
    """Run the whole gateway on this machine: SQLite, embedded Redis, web and worker together."""
    from .dev import run_dev

    run_dev(_settings(), host=host, port=port)


@main.command()
@click.option("--concurrency", type=int, default=None, help="Jobs in flight at once.")
@click.option("--burst", is_flag=True, help="Quit when the queue is empty.")
def worker(concurrency: int | None, burst: bool) -> None:
    """Run the RQ worker for the gateway's queues (with RQ's scheduler for periodic jobs)."""
    from workers.runner import run_worker

    run_worker(_settings(), concurrency=concurrency, burst=burst)


if __name__ == "__main__":
    main()
