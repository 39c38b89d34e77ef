"""The `smsgw` command: dev, worker, db upgrade, numbers, contacts."""

from __future__ import annotations

import click

from gateway.config import Settings, SettingsError, load_settings


def _settings() -> Settings:
    """Settings from the environment and `.env`; a bad value stops with the variable's name."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(f"bad setting: {exc}") from None


class _Commands(click.Group):
    """The `smsgw` group: a bad setting or an unusable database is one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        """Run the command; expected configuration errors print one line, not a traceback."""
        from gateway.config import SettingsError
        from gateway.storage.db import DatabaseUnavailable

        try:
            return super().invoke(ctx)
        except (SettingsError, DatabaseUnavailable) as exc:
            click.echo(f"smsgw: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Commands)
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """Self-hosted SMS/MMS gateway for LLM chat agents."""
    from gateway.logs import configure_logging

    try:
        settings: Settings | None = _settings()
    except Exception:  # a bad setting is reported by the command that reads it, in one line
        settings = None
    configure_logging(settings, level=log_level)


@main.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema."""
    from gateway.storage import db as database

    settings = _settings()
    database.open_from_settings(settings, pool_size=2)
    applied = database.upgrade()
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the web app listens on.")
@click.option("--port", type=int, default=5000, envvar="PORT", show_default=True, help="Port ($PORT).")
def dev(host: str, port: int) -> None:
    """Run the whole gateway on this machine: SQLite, embedded Redis, web and worker together."""
    from gateway.dev import run_dev

    run_dev(_settings(), host=host, port=port)


@main.command()
@click.option("--concurrency", type=int, default=None, help="Jobs in flight at once.")
@click.option("--burst", is_flag=True, help="Quit when the queue is empty.")
def worker(concurrency: int | None, burst: bool) -> None:
    """Run the RQ worker for the gateway's queues (with RQ's scheduler for periodic jobs)."""
    from workers.runner import run_worker

    run_worker(_settings(), concurrency=concurrency, burst=burst)


@main.group()
def numbers() -> None:
    """Twilio number setup."""


@numbers.command("list")
def numbers_list() -> None:
    """Show the account's numbers and where their SMS webhook points now."""
    from gateway.twilio.numbers import list_numbers, numbers_client

    settings = _settings()
    infos = list_numbers(_twilio_or_exit(settings, numbers_client))
    if not infos:
        click.echo("this Twilio account has no phone numbers")
        return
    for info in infos:
        click.echo(f"{info.phone_number}  {info.friendly_name or ''}".rstrip())
        click.echo(f"  SMS webhook:     {info.sms_method or 'POST'} {info.sms_url or '(not set)'}")
        click.echo(f"  status callback: {info.status_callback or '(not set)'}")
        if info.messaging_service_sid:
            where = "the number's webhook" if info.uses_number_webhook else info.messaging_service_inbound_url
            click.echo(
                f"  Messaging Service {info.messaging_service_sid} ({info.messaging_service_name}): "
                f"inbound texts go to {where or '(not set)'}"
            )
            click.echo(f"  service status callback: {info.messaging_service_status_callback or '(not set)'}")


@numbers.command("configure")
@click.argument("phone_number")
@click.option("--base-url", help="The gateway's public https origin (default: PUBLIC_BASE_URL).")
@click.option(
    "--service",
    is_flag=True,
    help="The number is in a Messaging Service: set the service's inbound and status URLs instead, "
    "and send through the service.",
)
def numbers_configure(phone_number: str, base_url: str | None, service: bool) -> None:
    """Point PHONE_NUMBER's SMS webhook and status callback at this gateway and register it."""
    from gateway.storage import db as database
    from gateway.twilio.numbers import configure_number, numbers_client

    settings = _settings()
    base = base_url or settings.public_base_url
    if not base:
        raise click.UsageError("give --base-url or set PUBLIC_BASE_URL (the https origin Twilio reaches)")
    if not base.startswith("https://"):
        click.echo(f"warning: {base} is not https; Twilio will send webhooks over plain HTTP", err=True)
    database.open_from_settings(settings, pool_size=2)
    database.upgrade()
    client = _twilio_or_exit(settings, numbers_client)
    try:
        result = configure_number(client, phone_number, base, service=service)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    if result.advice:
        click.echo(result.advice)
        raise SystemExit(2)
    if not result.changes:
        click.echo(f"{phone_number} already points at {base}; registered with the gateway")
        return
    click.echo(f"{phone_number} ({result.number.sid}) updated:")
    for name, old, new in result.changes:
        click.echo(f"  {name}: {old or '(not set)'} -> {new}")
    click.echo("registered with the gateway (answered by its inbound agent, or the default agent)")


@main.group()
def contacts() -> None:
    """What is stored about a person: export it, or erase it."""


def _person(phone_number: str) -> str:
    """The number in E.164 form, or a usage error."""
    from gateway.api.schemas import normalize_e164

    normalized = normalize_e164(phone_number.strip())
    if normalized is None:
        raise click.BadParameter(f"{phone_number!r} is not a valid phone number in E.164 form (+14155550123)")
    return normalized


def _open_database(settings: Settings) -> None:
    """Point the process at the configured database (schema upgraded)."""
    from gateway.storage import db as database

    database.open_from_settings(settings, pool_size=2)
    database.upgrade()


@contacts.command("export")
@click.argument("phone_number")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file (default: stdout).")
def contacts_export(phone_number: str, output: str | None) -> None:
    """Print everything stored about PHONE_NUMBER as JSON."""
    import json

    from gateway.conversations.contacts import export_person

    phone = _person(phone_number)
    settings = _settings()
    _open_database(settings)
    text = json.dumps(export_person(phone), indent=2, ensure_ascii=False, default=str)
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


@contacts.command("erase")
@click.argument("phone_number")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def contacts_erase(phone_number: str, yes: bool) -> None:
    """Delete everything stored about PHONE_NUMBER: chats, messages, media references, profile,
    opt-out state, idempotency keys and queued jobs."""
    from gateway.conversations.contacts import erase_person
    from gateway.queue import connect_redis, job_queue, queue_name

    phone = _person(phone_number)
    settings = _settings()
    if not yes:
        click.confirm(f"Erase everything stored about {phone}? This cannot be undone", abort=True)
    _open_database(settings)
    queue = None
    if settings.redis_url:
        queue = job_queue(queue_name(settings), connection=connect_redis(settings.redis_url))
    else:
        click.echo("REDIS_URL is not set: no queued jobs were looked for", err=True)
    counts = erase_person(phone, queue, settings)
    click.echo("erased: " + ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items()))


def _twilio_or_exit(settings: Settings, factory):
    """The Twilio client, or a clear error when credentials are missing."""
    if not settings.twilio_configured:
        raise click.ClickException("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (environment or .env)")
    return factory(settings)


if __name__ == "__main__":
    main()
