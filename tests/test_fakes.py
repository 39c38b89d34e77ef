"""The loopback fakes work with the real twilio and openai client libraries, over real HTTP."""

from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from openai import OpenAI
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN

OUR_NUMBER = "+15550001111"
PERSON = "+15552223333"


@pytest.fixture
def twilio_client(fake_twilio) -> Client:
    """The real twilio client, its api domain pointed at the fake."""
    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    client.api.base_url = fake_twilio.url
    return client


@pytest.fixture
def model_client(fake_model) -> OpenAI:
    """The real openai client on the fake, with no retries so scripted errors surface at once."""
    return OpenAI(base_url=fake_model.url + "/v1", api_key="sk-test", max_retries=0, timeout=30)


def chat(client: OpenAI, text: str, **kw):
    """One chat completion with a system prompt and a user turn."""
    return client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        **kw,
    )


# --- FakeTwilio ------------------------------------------------------------------------------------


def test_fake_twilio_listens_on_loopback_only(fake_twilio):
    assert fake_twilio.url.startswith("http://127.0.0.1:")


def test_send_sms_with_media_and_status_callback(fake_twilio, twilio_client):
    message = twilio_client.messages.create(
        from_=OUR_NUMBER,
        to=PERSON,
        body="Hello there",
        media_url=["https://example.test/a.png", "https://example.test/b.jpg"],
        status_callback="https://sms.example.test/twilio/status",
    )
    assert message.sid.startswith("MM") and len(message.sid) == 34
    assert message.status == "queued"
    assert message.num_segments == "1"
    assert message.num_media == "2"
    assert (message.to, message.from_, message.body) == (PERSON, OUR_NUMBER, "Hello there")
    assert message.date_created is not None

    [sent] = fake_twilio.wait_for_messages(1)
    assert sent["sid"] == message.sid
    assert sent["From"] == OUR_NUMBER and sent["To"] == PERSON and sent["Body"] == "Hello there"
    assert sent["MediaUrl"] == ["https://example.test/a.png", "https://example.test/b.jpg"]
    assert sent["StatusCallback"] == "https://sms.example.test/twilio/status"
    assert isinstance(sent["received_at"], float)

    fetched = twilio_client.messages(message.sid).fetch()
    assert fetched.sid == message.sid and fetched.body == "Hello there"


def test_plain_sms_gets_an_sm_sid_and_segments_counted(twilio_client):
    short = twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="hi")
    assert short.sid.startswith("SM") and short.num_media == "0"
    long_gsm = twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="a" * 161)
    assert long_gsm.num_segments == "2"
    emoji = twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="🙂" * 40)
    assert emoji.num_segments == "2"  # UCS-2: 80 code units > 70


def test_wrong_credentials_get_twilio_401(fake_twilio):
    client = Client(ACCOUNT_SID, "wrong-token")
    client.api.base_url = fake_twilio.url
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x")
    assert info.value.status == 401 and info.value.code == 20003
    assert fake_twilio.messages == []


def test_scripted_21610_raises_with_code(fake_twilio, twilio_client):
    fake_twilio.fail_next(code=21610, status=400)
    with pytest.raises(TwilioRestException) as info:
        twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x")
    assert info.value.code == 21610 and info.value.status == 400
    assert "unsubscribed" in info.value.msg
    # Only the next send failed; the failed attempt is kept apart from accepted messages.
    twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="y")
    assert [m["Body"] for m in fake_twilio.messages] == ["y"]
    assert [a.get("error", {}).get("code") for a in fake_twilio.attempts] == [21610, None]


def test_fail_to_a_number_and_5xx_and_429(fake_twilio, twilio_client):
    fake_twilio.fail_to("+15559990000", code=21211, status=400)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as info:
            twilio_client.messages.create(from_=OUR_NUMBER, to="+15559990000", body="x")
        assert info.value.code == 21211
    twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="ok")

    fake_twilio.fail_next_with_status(500)
    fake_twilio.fail_next_with_status(429)
    with pytest.raises(TwilioRestException) as info:
        twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x")
    assert (info.value.status, info.value.code) == (500, 20500)
    with pytest.raises(TwilioRestException) as info:
        twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x")
    assert (info.value.status, info.value.code) == (429, 20429)
    assert len(fake_twilio.messages) == 1


def test_fail_next_times(fake_twilio, twilio_client):
    fake_twilio.fail_next(code=30007, status=400, message="Filtered", times=2)
    for _ in range(2):
        with pytest.raises(TwilioRestException):
            twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x")
    assert twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x").status == "queued"


def test_twilio_validates_required_fields(twilio_client):
    with pytest.raises(TwilioRestException) as info:
        twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON)
    assert info.value.code == 21602
    with pytest.raises(TwilioRestException) as info:
        twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x" * 1601)
    assert info.value.code == 21617


def test_incoming_phone_numbers_list_and_update(fake_twilio, twilio_client):
    sid = fake_twilio.add_number(OUR_NUMBER)
    service = fake_twilio.add_messaging_service("Support")
    fake_twilio.add_number("+15550002222", messaging_service_sid=service)

    assert len(twilio_client.incoming_phone_numbers.list()) == 2
    [number] = twilio_client.incoming_phone_numbers.list(phone_number=OUR_NUMBER)
    assert number.sid == sid and number.phone_number == OUR_NUMBER and number.sms_url == ""
    assert number.friendly_name == "(555) 000-1111"
    [in_service] = twilio_client.incoming_phone_numbers.list(phone_number="+15550002222")
    twilio_client.messaging.base_url = fake_twilio.url
    [member] = twilio_client.messaging.v1.services(service).phone_numbers.list()
    assert member.sid == in_service.sid and member.phone_number == "+15550002222"

    updated = twilio_client.incoming_phone_numbers(sid).update(
        sms_url="https://sms.example.test/twilio/sms",
        sms_method="POST",
        status_callback="https://sms.example.test/twilio/status",
    )
    assert updated.sms_url == "https://sms.example.test/twilio/sms"
    assert updated.status_callback == "https://sms.example.test/twilio/status"
    assert fake_twilio.numbers[sid]["sms_url"] == "https://sms.example.test/twilio/sms"
    assert twilio_client.incoming_phone_numbers(sid).fetch().sms_method == "POST"

    with pytest.raises(TwilioRestException) as info:
        twilio_client.incoming_phone_numbers("PN" + "0" * 32).update(sms_url="https://x.test")
    assert info.value.status == 404


def test_incoming_phone_numbers_paging(fake_twilio, twilio_client):
    for i in range(5):
        fake_twilio.add_number(f"+1555000{i:04d}")
    numbers = twilio_client.incoming_phone_numbers.list(page_size=2)
    assert len(numbers) == 5 and len({n.sid for n in numbers}) == 5


def test_media_needs_basic_auth(fake_twilio):
    url = fake_twilio.add_media("image/png", b"\x89PNG fake bytes")
    assert url.startswith(fake_twilio.url + "/2010-04-01/Accounts/" + ACCOUNT_SID + "/Messages/MM")
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=(ACCOUNT_SID, "nope"), timeout=5).status_code == 401
    response = requests.get(url, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == b"\x89PNG fake bytes"
    meta = requests.get(url + ".json", auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5).json()
    assert meta["content_type"] == "image/png" and meta["sid"] == url.rsplit("/", 1)[1]


def test_twilio_reset_forgets_traffic_but_keeps_numbers(fake_twilio, twilio_client):
    sid = fake_twilio.add_number(OUR_NUMBER)
    twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="x")
    fake_twilio.fail_next()
    fake_twilio.reset()
    assert fake_twilio.messages == [] and fake_twilio.attempts == []
    assert twilio_client.messages.create(from_=OUR_NUMBER, to=PERSON, body="y").status == "queued"
    assert sid in fake_twilio.numbers


def test_wait_for_messages_times_out(fake_twilio):
    with pytest.raises(AssertionError, match="timed out"):
        fake_twilio.wait_for_messages(1, timeout=0.1)


# --- FakeModel -------------------------------------------------------------------------------------


def test_default_reply_echoes_with_usage(fake_model, model_client):
    completion = chat(model_client, "hello model friend")
    assert completion.choices[0].message.content == "Echo: hello model friend"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "fake-model"
    # Words: "Be brief." (2) + "hello model friend" (3); reply "Echo: hello model friend" (4).
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 9
    [request] = fake_model.wait_for_requests(1)
    assert request["model"] == "fake-model" and request["messages"][-1]["content"] == "hello model friend"


def test_echo_reads_content_parts(model_client):
    completion = model_client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": [{"type": "text", "text": "part one"}]}],
    )
    assert completion.choices[0].message.content == "Echo: part one"


def test_scripted_replies(fake_model, model_client):
    fake_model.queue_replies(["first", "second"])
    fake_model.reply_with("fixed")
    assert [chat(model_client, "q").choices[0].message.content for _ in range(3)] == [
        "first",
        "second",
        "fixed",
    ]
    fake_model.reply_with(None)
    fake_model.responder = lambda req: req["messages"][-1]["content"].upper()
    assert chat(model_client, "shout").choices[0].message.content == "SHOUT"
    fake_model.reset()
    assert chat(model_client, "back").choices[0].message.content == "Echo: back"
    assert len(fake_model.requests) == 1


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (429, openai.RateLimitError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
    ],
)
def test_scripted_errors_raise_the_client_exceptions(fake_model, model_client, status, exc):
    fake_model.fail_next(status=status)
    with pytest.raises(exc) as info:
        chat(model_client, "x")
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and "message" in info.value.body
    assert chat(model_client, "after").choices[0].message.content == "Echo: after"
    assert len(fake_model.requests) == 2


def test_fail_next_times_and_raw_body(fake_model, model_client):
    fake_model.fail_next(status=502, times=2, body="<html>Bad Gateway</html>")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            chat(model_client, "x")
    assert chat(model_client, "y").choices[0].message.content == "Echo: y"


def test_stream_is_refused(model_client):
    with pytest.raises(openai.BadRequestError):
        chat(model_client, "x", stream=True)


def test_latency_applies(fake_model, model_client):
    fake_model.latency = 0.3
    started = time.monotonic()
    chat(model_client, "slow")
    # A lower bound only: the fake must have slept; no upper bound on a noisy machine.
    assert time.monotonic() - started >= 0.29  # a hair of slack for clock granularity


def test_concurrent_requests_overlap(fake_model):
    fake_model.latency = 0.5
    client = OpenAI(base_url=fake_model.url + "/v1", api_key="sk-test", max_retries=0, timeout=60)
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda i: chat(client, f"n{i}").choices[0].message.content, range(50)))
    assert sorted(results) == sorted(f"Echo: n{i}" for i in range(50))
    # Shown without timing: many requests were being answered at the same moment.
    assert fake_model.max_in_flight >= 10


def test_api_key_checked_when_configured():
    from tests.fakes import FakeModel

    with FakeModel(api_key="sk-right") as fake:
        wrong = OpenAI(base_url=fake.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            chat(wrong, "x")
        right = OpenAI(base_url=fake.url + "/v1", api_key="sk-right", max_retries=0)
        assert chat(right, "x").choices[0].message.content == "Echo: x"


def test_keep_alive_serves_many_requests_on_one_connection(fake_model):
    conn = http.client.HTTPConnection("127.0.0.1", fake_model.port, timeout=10)
    body = '{"model": "m", "messages": [{"role": "user", "content": "k"}]}'
    for _ in range(3):
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Length")
        response.read()
    # An error answer also leaves the connection usable.
    conn.request("GET", "/nowhere")
    response = conn.getresponse()
    assert response.status == 404
    response.read()
    conn.request("GET", "/v1/models")
    assert conn.getresponse().status == 200
    conn.close()


def test_stop_closes_idle_keep_alive_connections():
    from tests.fakes import FakeModel

    fake = FakeModel().start()
    client = OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0)
    chat(client, "x")  # leaves a pooled keep-alive connection open
    fake.stop()
    with pytest.raises(openai.APIConnectionError):
        chat(client, "y")
