"""Settings: one module reads the environment, and `.env.example` lists every setting."""

from __future__ import annotations

from pathlib import Path

from gateway.config import _ENV_NAMES, load_settings, settings_to_env

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting():
    """Every variable the config module reads has a line (and a comment) in .env.example."""
    text = (ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0].lstrip("# ").strip() for line in text.splitlines() if "=" in line}
    missing = set(_ENV_NAMES.values()) - names
    assert not missing, f".env.example lacks {sorted(missing)}"


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
