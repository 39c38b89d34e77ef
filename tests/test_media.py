"""MMS media: images reach the model from Twilio only, within limits; outbound media reaches Twilio.

The fetch rules are tested against loopback servers standing in for Twilio's API, its CDN and
hosts that must never be asked; the MMS path end to end with a real worker and the fakes.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import zlib
from dataclasses import replace

import pytest

from gateway.agent.prompt import build_messages
from gateway.config import Settings
from gateway.conversations import replies
from gateway.queue import JobSerializer, job_queue, queue_name
from gateway.storage.models import Agent, Chat, ChatType, Message, PhoneNumber, Role
from gateway.twilio import media
from gateway.twilio.media import MediaError, MediaPolicy, Source, fetch_media, origin_of, policy_for
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, GATEWAY_API_KEY, SimpleWorker, post_twilio, wait_for
from tests.fakes.http import LoopbackServer, Request, Response
from tests.payloads import OUR_NUMBER, PERSON, inbound_mms
from workers import context

SMS = "/twilio/sms"
HEX = "0123456789abcdef" * 2
MEDIA_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{HEX}/Media/ME{HEX}"


def tiny_png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = tiny_png()
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


class Recorder(LoopbackServer):
    """A loopback host that records every request and answers with `respond(request)`."""

    def __init__(self, respond=None) -> None:
        """404 for everything unless told otherwise."""
        super().__init__()
        self.requests: list[Request] = []
        self.respond = respond or (lambda request: Response(404, b"", "text/plain"))

    def handle(self, request: Request) -> Response:
        """Record, then answer."""
        self.requests.append(request)
        return self.respond(request)


def redirect(location: str) -> Response:
    """A 307 to `location`, as Twilio answers for stored media."""
    return Response(307, b"", "text/plain", {"Location": location})


@pytest.fixture
def recorder():
    """A started Recorder, stopped after the test."""
    servers: list[Recorder] = []

    def make(respond=None) -> Recorder:
        server = Recorder(respond).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def loopback_settings(base_url: str) -> Settings:
    """Settings for our test account with Twilio's API at `base_url`."""
    return Settings(
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_api_base_url=base_url
    )


# --- which URLs may be fetched ---------------------------------------------------------------------

FAKE = "http://127.0.0.1:8765"
OTHER_SID = "AC" + "1" * 32


@pytest.mark.parametrize(
    ("url", "first_hop", "allowed"),
    [
        (f"https://api.twilio.com{MEDIA_PATH}", True, True),
        (FAKE + MEDIA_PATH, True, True),  # the configured TWILIO_API_BASE_URL origin
        (f"http://api.twilio.com{MEDIA_PATH}", True, False),  # not https
        (f"https://api.twilio.com:8443{MEDIA_PATH}", True, False),
        ("http://127.0.0.1:8766" + MEDIA_PATH, True, False),  # another port is another origin
        ("https://evil.example/x.png", True, False),
        (f"https://evil.example{MEDIA_PATH}", True, False),
        (f"https://api.twilio.com.evil.example{MEDIA_PATH}", True, False),
        (f"https://api.twilio.com{MEDIA_PATH.replace(ACCOUNT_SID, OTHER_SID)}", True, False),
        (f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM{HEX}.json", True, False),
        (f"https://api.twilio.com{MEDIA_PATH}/../../../Calls.json", True, False),
        (f"https://api.twilio.com{MEDIA_PATH}?x=1", True, False),
        (f"https://user:pw@api.twilio.com{MEDIA_PATH}", True, False),
        ("file:///etc/passwd", True, False),
        # Twilio's CDN hosts: redirect targets only, under our account.
        (f"https://mms.twiliocdn.com/{ACCOUNT_SID}/{HEX}?Expires=1&Signature=x", False, True),
        (f"https://mms.twiliocdn.com/{ACCOUNT_SID}/{HEX}", True, False),
        (f"https://mms.twiliocdn.com/{OTHER_SID}/{HEX}", False, False),
        (f"http://mms.twiliocdn.com/{ACCOUNT_SID}/{HEX}", False, False),
        (f"https://s3-external-1.amazonaws.com/media.twiliocdn.com/{ACCOUNT_SID}/{HEX}", False, True),
        (f"https://s3-external-1.amazonaws.com/other-bucket/{ACCOUNT_SID}/{HEX}", False, False),
        ("http://169.254.169.254/latest/meta-data/", False, False),
    ],
)
def test_only_our_accounts_twilio_media_urls_are_allowed(url, first_hop, allowed):
    policy = policy_for(loopback_settings(FAKE))
    assert (policy.source_for(url, first_hop=first_hop) is not None) is allowed


def test_credentials_go_only_to_twilios_api():
    policy = policy_for(loopback_settings(FAKE))
    assert policy.auth == (ACCOUNT_SID, AUTH_TOKEN)
    assert policy.source_for(FAKE + MEDIA_PATH, first_hop=True).credentials
    cdn = policy.source_for(f"https://mms.twiliocdn.com/{ACCOUNT_SID}/{HEX}", first_hop=False)
    assert not cdn.credentials and not cdn.local_ok
    assert not policy.source_for(f"https://api.twilio.com{MEDIA_PATH}", first_hop=True).local_ok


def test_without_an_account_nothing_is_fetched():
    assert policy_for(Settings()).source_for(f"https://api.twilio.com{MEDIA_PATH}", first_hop=True) is None


# --- fetching ----------------------------------------------------------------------------------------


def cdn_source(server: LoopbackServer) -> Source:
    """A loopback stand-in for Twilio's CDN: a redirect target, reached without credentials."""
    return Source(
        origin_of(server.url), re.compile(rf"/{ACCOUNT_SID}/[^/]+"), False, local_ok=True, first_hop=False
    )


def test_redirect_to_the_cdn_is_followed_without_credentials(recorder):
    cdn = recorder(lambda r: Response(200, PNG, "image/png"))
    api = recorder(lambda r: redirect(f"{cdn.url}/{ACCOUNT_SID}/{HEX}?Expires=1&Signature=s"))
    policy = policy_for(loopback_settings(api.url))
    policy = replace(policy, sources=policy.sources + (cdn_source(cdn),))

    content_type, data = fetch_media(api.url + MEDIA_PATH, policy)

    assert (content_type, data) == ("image/png", PNG)
    expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert [r.headers.get("authorization") for r in api.requests] == [expected]
    assert [r.headers.get("authorization") for r in cdn.requests] == [None]
    assert cdn.requests[0].query == {"Expires": ["1"], "Signature": ["s"]}


def test_redirect_elsewhere_is_not_followed(recorder):
    elsewhere = recorder(lambda r: Response(200, PNG, "image/png"))
    for target in (f"{elsewhere.url}/x.png", f"{elsewhere.url}/{ACCOUNT_SID}/{HEX}", "/somewhere/else"):
        api = recorder(lambda r, target=target: redirect(target))
        with pytest.raises(MediaError, match="not a Twilio media URL"):
            fetch_media(api.url + MEDIA_PATH, policy_for(loopback_settings(api.url)))
        assert len(api.requests) == 1
    assert elsewhere.requests == []


def test_endless_redirects_stop(recorder):
    api = recorder(lambda r: redirect(MEDIA_PATH))  # to itself, allowed, forever
    with pytest.raises(MediaError, match="too many redirects"):
        fetch_media(api.url + MEDIA_PATH, policy_for(loopback_settings(api.url)))
    assert len(api.requests) == media.MAX_REDIRECTS + 1


def test_private_addresses_are_refused_unless_configured(recorder):
    """A source that is not the configured origin must be public: loopback is never asked."""
    server = recorder(lambda r: Response(200, PNG, "image/png"))
    not_local = Source(origin_of(server.url), media.media_path(ACCOUNT_SID), credentials=True)
    with pytest.raises(MediaError, match="not a public address"):
        fetch_media(server.url + MEDIA_PATH, MediaPolicy((not_local,), None))
    assert server.requests == []


def test_oversized_media_is_refused_by_its_length(recorder):
    api = recorder(lambda r: Response(200, PNG + b"\0" * 2000, "image/png"))
    with pytest.raises(MediaError, match="larger than"):
        fetch_media(api.url + MEDIA_PATH, policy_for(loopback_settings(api.url)), max_bytes=1000)


class RawServer:
    """Answers each connection with these bytes as they are (no Content-Length), then hangs up."""

    def __init__(self, payload: bytes) -> None:
        """Listen on a free loopback port."""
        self.payload = payload
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                conn.sendall(self.payload)

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


def test_oversized_media_without_a_length_is_cut_off_while_streaming():
    body = PNG + b"\0" * 300_000
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n" + body)
    try:
        with pytest.raises(MediaError, match="larger than"):
            fetch_media(server.url + MEDIA_PATH, policy_for(loopback_settings(server.url)), max_bytes=100_000)
    finally:
        server.close()


def test_a_404_right_after_the_webhook_is_tried_once_more(recorder):
    """Twilio may answer 404 while new media propagates; one retry after a short pause."""
    answers = [Response(404, b"", "text/plain"), Response(200, PNG, "image/png")]
    api = recorder(lambda r: answers.pop(0))
    assert fetch_media(api.url + MEDIA_PATH, policy_for(loopback_settings(api.url)))[1] == PNG
    assert len(api.requests) == 2


def test_what_is_not_an_image_is_not_passed_as_one(recorder):
    api = recorder(lambda r: Response(200, b"<html>not a picture</html>", "image/png"))
    policy = policy_for(loopback_settings(api.url))
    item = {"url": api.url + MEDIA_PATH, "content_type": "image/png"}
    prompt = [{"role": "user", "content": [{"type": "text", "text": "hi"}, media.pending_image(item)]}]
    resolved = media.resolve_images(loopback_settings(api.url), prompt, policy)
    not_shown = "[attachment: image/png, not shown: not a PNG, JPEG, GIF or WebP image]"
    assert resolved == [{"role": "user", "content": "hi\n" + not_shown}]


# --- the prompt: which images are fetched ------------------------------------------------------------


@pytest.fixture
def configured(app, settings):
    """Jobs and replies run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def sms_chat(**agent_fields) -> Chat:
    """An ongoing SMS chat with a fresh agent."""
    agent_fields.setdefault("retry_delay", 0)
    agent = Agent.create(system_prompt="You look at pictures.", **agent_fields)
    return Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}",
    )


def inbound(chat: Chat, body: str, media_items: list[tuple[str, str]], **kw) -> Message:
    """An inbound MMS waiting for its answer, as the webhook records it."""
    kw.setdefault("reply_state", "pending")
    return Message.create(
        chat=chat,
        role=Role.USER.value,
        content=body,
        media=[{"url": url, "content_type": kind} for url, kind in media_items],
        status="received",
        **kw,
    )


def image_parts(content) -> list[dict]:
    """The image parts of a message content."""
    return [p for p in content if p.get("type") == "image_url"] if isinstance(content, list) else []


def test_only_the_newest_images_of_the_texts_being_answered_are_fetched(configured):
    chat = sms_chat(accepts_images=True)
    old = inbound(chat, "earlier", [("https://api.twilio.com/old", "image/png")], reply_state="answered")
    Message.create(chat=chat, role="agent", content="Nice picture.", reply_to=old, status="delivered")
    urls = [f"https://api.twilio.com/m{i}" for i in range(6)]
    inbound(chat, "six pictures", [(u, "image/jpeg") for u in urls[:3]])
    inbound(chat, "", [(u, "image/jpeg") for u in urls[3:]] + [("https://api.twilio.com/v", "video/mp4")])

    messages = build_messages(chat, chat.agent, configured, images=True)

    assert messages[1] == {"role": "user", "content": "earlier\n[attachment: image/png]"}
    parts = messages[-1]["content"]
    assert [p["media"]["url"] for p in parts if p["type"] == media.PENDING_IMAGE] == urls[2:]
    assert [p["text"] for p in parts if p["type"] == "text"] == [
        "six pictures\n[attachment: image/jpeg]\n[attachment: image/jpeg]",
        "[attachment: video/mp4]",
    ]
    # Without images (an agent that does not accept them, or the API), every attachment is text.
    plain = build_messages(chat, chat.agent, configured)
    assert plain[-1]["content"].count("[attachment: image/jpeg]") == 6


def test_image_only_message_keeps_its_turn(configured):
    chat = sms_chat(accepts_images=True)
    inbound(chat, "", [("https://api.twilio.com/m", "image/gif")])
    messages = build_messages(chat, chat.agent, configured, images=True)
    assert [p["type"] for p in messages[-1]["content"]] == [media.PENDING_IMAGE]


# --- end to end --------------------------------------------------------------------------------------


def mms_in(client, body: str, items: list[tuple[str, str]]) -> Message:
    """Post a signed inbound MMS and return the message the webhook recorded."""
    form = inbound_mms(body, items)
    assert post_twilio(client, SMS, form).status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


def answered(message: Message) -> Message:
    """Wait until the reply job is done with `message`; it must have been answered."""
    wait_for(lambda: Message.get_by_id(message.id).reply_state in ("answered", "failed"), 30, message="reply")
    stored = Message.get_by_id(message.id)
    assert stored.reply_state == "answered", stored.error_message
    return stored


def image_agent_on_our_number(**fields) -> Agent:
    """An agent that accepts images, answering texts to OUR_NUMBER."""
    agent = Agent.create(system_prompt="You look at pictures.", accepts_images=True, retry_delay=0, **fields)
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)
    return agent


def test_mms_image_reaches_the_model_and_the_pdf_is_described(client, worker, fake_twilio, fake_model):
    image_agent_on_our_number()
    image_url = fake_twilio.add_media("image/png", PNG)
    pdf_url = fake_twilio.add_media("application/pdf", b"%PDF-1.4 receipt")
    fake_model.reply_with("A green pixel and a receipt.")

    message = mms_in(client, "what is this?", [(image_url, "image/png"), (pdf_url, "application/pdf")])

    [sent] = fake_twilio.wait_for_messages(1, timeout=30)
    assert sent["Body"] == "A green pixel and a receipt."
    answered(message)
    [request] = fake_model.requests
    assert request["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?\n[attachment: application/pdf]"},
            {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
        ],
    }


def test_mms_without_text_is_answered(client, worker, fake_twilio, fake_model):
    image_agent_on_our_number()
    fake_model.reply_with("Nice picture!")
    message = mms_in(client, "", [(fake_twilio.add_media("image/png", PNG), "image/png")])

    fake_twilio.wait_for_messages(1, timeout=30)
    answered(message)
    assert fake_model.requests[0]["messages"][-1] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": PNG_DATA_URL}}],
    }


def test_mms_without_text_to_an_agent_without_images_is_answered(client, worker, fake_twilio, fake_model):
    fake_model.reply_with("I can't see pictures, sorry.")
    message = mms_in(client, "", [(fake_twilio.add_media("image/png", PNG), "image/png")])

    fake_twilio.wait_for_messages(1, timeout=30)
    answered(message)
    assert fake_model.requests[0]["messages"][-1] == {"role": "user", "content": "[attachment: image/png]"}


def test_media_on_other_hosts_is_never_fetched(configured, recorder, fake_model, fake_twilio):
    """Loopback on another port, another host, our API with another account: described, not fetched."""
    bystander = recorder(lambda r: Response(200, PNG, "image/png"))
    chat = sms_chat(accepts_images=True)
    foreign = [
        bystander.url + MEDIA_PATH,
        f"{bystander.url}/x.png",
        "https://evil.example/x.png",
        fake_twilio.url + MEDIA_PATH.replace(ACCOUNT_SID, OTHER_SID),
    ]
    message = inbound(chat, "look", [(url, "image/png") for url in foreign])

    assert replies.answer_message(configured, message.id).outcome == "answered"

    assert bystander.requests == []
    content = fake_model.requests[0]["messages"][-1]["content"]
    not_ours = "[attachment: image/png, not shown: not a Twilio media URL of this account]"
    assert content == "look\n" + "\n".join([not_ours] * 4)


def test_oversized_image_is_described_instead(configured, fake_model, fake_twilio):
    chat = sms_chat(accepts_images=True)
    big = fake_twilio.add_media("image/png", PNG + b"\0" * media.MAX_MEDIA_BYTES)
    small = fake_twilio.add_media("image/png", PNG)
    message = inbound(chat, "two", [(big, "image/png"), (small, "image/png")])

    replies.answer_message(configured, message.id)

    assert fake_model.requests[0]["messages"][-1]["content"] == [
        {"type": "text", "text": "two\n[attachment: image/png, not shown: larger than 5 MB]"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
    ]


def test_wrong_credentials_leave_the_image_described(fake_twilio):
    """The fake, like Twilio with HTTP auth for media on, serves media only to our credentials."""
    item = {"url": fake_twilio.add_media("image/jpeg", PNG), "content_type": "image/jpeg"}
    prompt = [{"role": "user", "content": [{"type": "text", "text": "hi"}, media.pending_image(item)]}]
    wrong = loopback_settings(fake_twilio.url).model_copy(update={"twilio_auth_token": "wrong"})
    assert media.resolve_images(wrong, prompt)[0]["content"] == (
        "hi\n[attachment: image/jpeg, not shown: Twilio answered HTTP 401]"
    )
    right = media.resolve_images(loopback_settings(fake_twilio.url), prompt)
    assert image_parts(right[0]["content"]) == [{"type": "image_url", "image_url": {"url": PNG_DATA_URL}}]


# --- outbound media via the API ----------------------------------------------------------------------


def test_outbound_media_urls_reach_twilio_and_show_in_the_chat(client, configured, redis_conn, fake_twilio):
    PhoneNumber.create(phone_number=OUR_NUMBER)
    auth = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
    urls = ["https://cdn.example.test/menu.png", "https://cdn.example.test/map.pdf"]
    response = client.post(
        "/v1/sms-chats",
        json={"from_number": OUR_NUMBER, "to_number": PERSON, "message": "Our menu", "media_urls": urls},
        headers=auth,
    )
    assert response.status_code == 202, response.json
    chat_id = response.json["chat_id"]

    queue = job_queue(queue_name(configured), redis_conn)
    SimpleWorker([queue], connection=redis_conn, serializer=JobSerializer).work(
        burst=True, with_scheduler=False
    )

    [sent] = fake_twilio.messages
    assert (sent["Body"], sent["MediaUrl"]) == ("Our menu\nReply STOP to opt out.", urls)
    chat = client.get(f"/v1/chats/{chat_id}", headers=auth).json
    [message] = chat["messages"]
    assert message["media"] == [{"url": url, "content_type": None} for url in urls]
    assert message["status"] == "queued" and message["role"] == "agent"
    assert Message.get(Message.chat == chat_id).twilio_sid == sent["sid"]
