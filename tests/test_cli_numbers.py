"""`smsgw numbers list|configure` against a loopback fake of Twilio, driven by the real twilio client."""

from __future__ import annotations

import pytest

from gateway.cli import main
from gateway.config import settings_to_env
from gateway.storage.models import PhoneNumber

NUMBER = "+15551234567"


@pytest.fixture
def cli(settings, app, monkeypatch):
    """Invoke `smsgw` with the test settings in its environment (as a user's shell would have)."""
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    # Run where no developer's .env can leak into the test.
    monkeypatch.chdir(settings.instance_path.rsplit("/", 1)[0])
    from click.testing import CliRunner

    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def test_list_shows_where_webhooks_point(cli, fake_twilio):
    """Each number is listed with its SMS webhook and status callback as Twilio has them now."""
    fake_twilio.add_number(NUMBER, sms_url="https://old.example.com/sms")
    fake_twilio.add_number("+15557654321")
    result = cli("numbers", "list")
    assert result.exit_code == 0, result.output
    assert NUMBER in result.output
    assert "POST https://old.example.com/sms" in result.output
    assert "+15557654321" in result.output
    assert "(not set)" in result.output


def test_configure_points_webhooks_and_registers(cli, fake_twilio):
    """configure updates the number through IncomingPhoneNumbers, registers it and prints the change."""
    sid = fake_twilio.add_number(NUMBER, sms_url="https://old.example.com/sms")
    result = cli("numbers", "configure", NUMBER, "--base-url", "https://gw.example.org/")
    assert result.exit_code == 0, result.output
    resource = fake_twilio.numbers[sid]
    assert resource["sms_url"] == "https://gw.example.org/twilio/sms"
    assert resource["sms_method"] == "POST"
    assert resource["status_callback"] == "https://gw.example.org/twilio/status"
    assert "sms_url: https://old.example.com/sms -> https://gw.example.org/twilio/sms" in result.output
    row = PhoneNumber.get(PhoneNumber.phone_number == NUMBER)
    assert row.twilio_sid == sid

    again = cli("numbers", "configure", NUMBER, "--base-url", "https://gw.example.org")
    assert again.exit_code == 0
    assert "already points at" in again.output


def test_configure_defaults_to_public_base_url(cli, fake_twilio, settings):
    """Without --base-url the gateway's PUBLIC_BASE_URL is used."""
    sid = fake_twilio.add_number(NUMBER)
    result = cli("numbers", "configure", NUMBER)
    assert result.exit_code == 0, result.output
    assert fake_twilio.numbers[sid]["sms_url"] == settings.public_base_url + "/twilio/sms"


def test_configure_reports_messaging_service(cli, fake_twilio):
    """A number in a Messaging Service is reported with what to set instead; nothing changes."""
    service = fake_twilio.add_messaging_service(
        "Support line", inbound_request_url="https://elsewhere.example/in"
    )
    sid = fake_twilio.add_number(NUMBER, messaging_service_sid=service)
    result = cli("numbers", "configure", NUMBER, "--base-url", "https://gw.example.org")
    assert result.exit_code == 2
    assert service in result.output
    assert "https://gw.example.org/twilio/sms" in result.output
    assert fake_twilio.numbers[sid]["sms_url"] == ""
    listing = cli("numbers", "list")
    assert "inbound texts go to https://elsewhere.example/in" in listing.output


def test_configure_unknown_number(cli, fake_twilio):
    """A number the account does not have is a clear error."""
    result = cli("numbers", "configure", "+15550000000", "--base-url", "https://gw.example.org")
    assert result.exit_code == 1
    assert "is not a number of this Twilio account" in result.output


def test_configure_service_sets_its_urls_and_sends_through_it(cli, fake_twilio):
    """--service points the number's Messaging Service at the gateway and the number sends through it."""
    service = fake_twilio.add_messaging_service(
        "Support line", inbound_request_url="https://elsewhere.example/in"
    )
    sid = fake_twilio.add_number(NUMBER, messaging_service_sid=service)
    result = cli("numbers", "configure", NUMBER, "--base-url", "https://gw.example.org", "--service")
    assert result.exit_code == 0, result.output
    assert fake_twilio.services[service]["inbound_request_url"] == "https://gw.example.org/twilio/sms"
    assert fake_twilio.services[service]["status_callback"] == "https://gw.example.org/twilio/status"
    assert fake_twilio.numbers[sid]["sms_url"] == ""  # the number's own webhook is not the one in use
    row = PhoneNumber.get(PhoneNumber.phone_number == NUMBER)
    assert (row.twilio_sid, row.messaging_service_sid) == (sid, service)
    listing = cli("numbers", "list")
    assert "inbound texts go to https://gw.example.org/twilio/sms" in listing.output
    assert "service status callback: https://gw.example.org/twilio/status" in listing.output
    again = cli("numbers", "configure", NUMBER, "--base-url", "https://gw.example.org", "--service")
    assert again.exit_code == 0 and "already points at" in again.output
