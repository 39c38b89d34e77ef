"""Settings: one module reads the environment, and `.env.example` lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ENV_NAMES, Settings, SettingsError, load_settings, settings_to_env

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting_and_nothing_else():
    """Every setting has a line in .env.example, and every variable there is a setting."""
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    missing = set(ENV_NAMES.values()) - names
    assert not missing, f".env.example lacks {sorted(missing)}"
    unknown = names - set(ENV_NAMES.values())
    assert not unknown, f".env.example lists {sorted(unknown)}, which no setting reads"


def test_every_setting_is_a_typed_field():
    """One field per setting, each with a type and the variable it is read from."""
    for name, info in Settings.model_fields.items():
        assert info.annotation is not None, name
        assert ENV_NAMES[name].isupper(), name


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_CONCURRENCY", "abc", "WORKER_CONCURRENCY: expected an integer, got 'abc'"),
        ("MODEL_TIMEOUT", "soon", "MODEL_TIMEOUT: expected a number, got 'soon'"),
        ("TWILIO_VALIDATE_SIGNATURES", "maybe", "TWILIO_VALIDATE_SIGNATURES: expected 1 or 0"),
        ("DATABASE_POOL_SIZE", "0", "DATABASE_POOL_SIZE: expected greater than or equal to 1, got '0'"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_expected(name, value, message):
    """The error says which variable is wrong and what it should hold."""
    with pytest.raises(SettingsError) as info:
        load_settings({name: value}, dotenv_path=None)
    assert message in str(info.value)


def test_settings_are_immutable_and_derived_by_copy():
    """Settings never change in place; a changed copy leaves the original alone."""
    settings = Settings(openai_model="a")
    with pytest.raises(ValueError):
        settings.openai_model = "b"  # type: ignore[misc]
    changed = settings.model_copy(update={"openai_model": "b"})
    assert (settings.openai_model, changed.openai_model) == ("a", "b")


def test_settings_ignore_the_environment_unless_loaded(monkeypatch):
    """`Settings()` is exactly what the caller gives; only load_settings reads the environment."""
    monkeypatch.setenv("OPENAI_MODEL", "from-env")
    assert Settings().openai_model != "from-env"
    assert load_settings(dotenv_path=None).openai_model == "from-env"


def test_environment_overrides_dotenv(tmp_path):
    """A variable in the environment wins over the same name in `.env`."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("OPENAI_MODEL=from-dotenv\nGATEWAY_API_KEY=dotenv-key\n")
    settings = load_settings({"OPENAI_MODEL": "from-env"}, dotenv_path=str(dotenv))
    assert settings.openai_model == "from-env"
    assert settings.gateway_api_key == "dotenv-key"


def test_types_and_defaults():
    """Numbers and switches are parsed; empty values fall back to defaults; URLs lose a trailing slash."""
    settings = load_settings(
        {
            "WORKER_CONCURRENCY": "50",
            "TWILIO_VALIDATE_SIGNATURES": "0",
            "PUBLIC_BASE_URL": "https://sms.example.com/",
            "OPENAI_API_KEY": "",
        },
        dotenv_path=None,
    )
    assert settings.worker_concurrency == 50
    assert settings.twilio_validate_signatures is False
    assert settings.public_base_url == "https://sms.example.com"
    assert settings.openai_api_key is None
    assert not settings.model_configured
    assert settings.resolved_database_url().startswith("sqlite:///")


def test_settings_round_trip_through_environment():
    """What a parent process passes to a worker process reads back as the same settings."""
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "MODEL_TIMEOUT": "5"}, dotenv_path=None)
    assert load_settings(settings_to_env(settings), dotenv_path=None) == settings


def test_the_cli_stops_on_a_bad_setting_naming_it(tmp_path, monkeypatch):
    """`smsgw db upgrade` with a bad variable says which one, instead of a traceback."""
    from click.testing import CliRunner

    from gateway.cli import main

    monkeypatch.chdir(tmp_path)  # no `.env` here
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"DATABASE_POOL_SIZE": "many"})
    assert result.exit_code == 1
    assert "DATABASE_POOL_SIZE: expected an integer, got 'many'" in result.output


def test_trusted_proxy_hops_is_a_small_count():
    """TRUSTED_PROXY_HOPS defaults to 0 (X-Forwarded-For ignored) and takes a count of proxies."""
    assert load_settings({}, dotenv_path=None).trusted_proxy_hops == 0
    assert load_settings({"TRUSTED_PROXY_HOPS": "2"}, dotenv_path=None).trusted_proxy_hops == 2
    with pytest.raises(SettingsError) as info:
        load_settings({"TRUSTED_PROXY_HOPS": "-1"}, dotenv_path=None)
    assert "TRUSTED_PROXY_HOPS: expected greater than or equal to 0" in str(info.value)
