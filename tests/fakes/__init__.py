"""Loopback fakes of the services outside the machine: Twilio's REST API and an OpenAI-style model."""

from tests.fakes.model import FakeModel
from tests.fakes.twilio import FakeTwilio

__all__ = ["FakeModel", "FakeTwilio"]
