"""How a number sends: through a Messaging Service, and paced at its own rate across workers."""

from __future__ import annotations

import pytest

from gateway.conversations import replies
from gateway.storage.models import Message, PhoneNumber
from gateway.twilio.senders import pace_key, reserve_slot
from tests.conftest import GATEWAY_API_KEY, WorkerProcess, post_twilio, wait_for
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms, inbound_whatsapp

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
SERVICE = "MG" + "a" * 32
OTHER_SERVICE = "MG" + "c" * 32
OTHER_NUMBER = "+15005550009"


def record(client, form: dict[str, str]) -> Message:
    """POST the webhook form; the message as recorded."""
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


# --- Messaging Services ---------------------------------------------------------------------------


def test_a_number_with_a_messaging_service_sends_through_it(client, settings, fake_model, fake_twilio):
    response = client.post(
        "/v1/phone-numbers", json={"phone_number": OUR_NUMBER, "messaging_service_sid": SERVICE}, headers=AUTH
    )
    assert response.status_code == 201, response.json
    assert (response.json["messaging_service_sid"], response.json["max_mps"]) == (SERVICE, None)
    fake_model.reply_with("Hi!")
    for form in (inbound_sms("by SMS"), inbound_whatsapp("on WhatsApp")):
        replies.answer_message(settings, record(client, form).id)
    by_sms, on_whatsapp = fake_twilio.messages
    assert (by_sms["MessagingServiceSid"], by_sms["From"], by_sms["To"]) == (SERVICE, None, PERSON)
    assert (on_whatsapp["MessagingServiceSid"], on_whatsapp["From"]) == (SERVICE, None)
    assert on_whatsapp["To"] == "whatsapp:" + PERSON


def test_the_gateway_setting_sends_through_a_service_unless_the_number_has_its_own(
    client, settings_with, fake_model, fake_twilio
):
    settings = settings_with(twilio_messaging_service_sid=SERVICE)
    fake_model.reply_with("Hi!")
    replies.answer_message(settings, record(client, inbound_sms("first")).id)
    assert (fake_twilio.messages[-1]["MessagingServiceSid"], fake_twilio.messages[-1]["From"]) == (
        SERVICE,
        None,
    )

    PhoneNumber.create(phone_number=OUR_NUMBER, messaging_service_sid=OTHER_SERVICE)
    replies.answer_message(settings, record(client, inbound_sms("second")).id)
    assert fake_twilio.messages[-1]["MessagingServiceSid"] == OTHER_SERVICE


def test_without_a_service_the_number_sends_from_itself(client, settings, fake_model, fake_twilio):
    fake_model.reply_with("Hi!")
    replies.answer_message(settings, record(client, inbound_sms("hello")).id)
    assert (fake_twilio.messages[-1]["MessagingServiceSid"], fake_twilio.messages[-1]["From"]) == (
        None,
        OUR_NUMBER,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messaging_service_sid": "MG123"}, "messaging_service_sid"),
        ({"messaging_service_sid": "PN" + "a" * 32}, "messaging_service_sid"),
        ({"max_mps": 0}, "max_mps"),
        ({"max_mps": -1.5}, "max_mps"),
        ({"max_mps": "3"}, "max_mps"),
    ],
)
def test_invalid_sender_settings_are_refused(client, fields, field):
    response = client.post("/v1/phone-numbers", json={"phone_number": OUR_NUMBER, **fields}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == field


def test_max_mps_is_set_and_cleared_over_the_api(client):
    client.post("/v1/phone-numbers", json={"phone_number": OUR_NUMBER}, headers=AUTH)
    response = client.patch(f"/v1/phone-numbers/{OUR_NUMBER}", json={"max_mps": 1}, headers=AUTH)
    assert response.json["max_mps"] == 1
    response = client.patch(f"/v1/phone-numbers/{OUR_NUMBER}", json={"max_mps": None}, headers=AUTH)
    assert response.json["max_mps"] is None


# --- send rate per sender -------------------------------------------------------------------------


def test_slots_are_handed_out_one_interval_apart_and_not_beyond_the_longest_wait(settings, redis_conn):
    key = pace_key(settings, OUR_NUMBER)
    waits = [reserve_slot(redis_conn, key, max_mps=10, max_wait=0.25) for _ in range(4)]
    assert waits[0] == 0
    assert waits[1] == pytest.approx(0.1, abs=0.05)
    assert waits[2] == pytest.approx(0.2, abs=0.05)
    assert waits[3] is None  # 0.3 s away: not taken, the caller comes back later
    # Another sender has its own slots.
    assert reserve_slot(redis_conn, pace_key(settings, OTHER_NUMBER), max_mps=10, max_wait=0.25) == 0


def test_a_burst_is_paced_at_the_numbers_rate_and_another_number_is_not_held_up(
    client, settings, fake_model, fake_twilio, worker
):
    rate, burst = 2.0, 7
    PhoneNumber.create(phone_number=OUR_NUMBER, max_mps=rate)
    PhoneNumber.create(phone_number=OTHER_NUMBER)
    for index in range(burst):  # one text each from `burst` people: separate chats, answered at once
        post_twilio(client, "/twilio/sms", inbound_sms(f"hi {index}", From=f"+1415555{index:04d}"))
    post_twilio(client, "/twilio/sms", inbound_sms("and me", To=OTHER_NUMBER))

    sent = fake_twilio.wait_for_messages(burst + 1, timeout=60)
    paced = sorted(m["received_at"] for m in sent if m["From"] == OUR_NUMBER)
    other = [m["received_at"] for m in sent if m["From"] == OTHER_NUMBER]
    assert len(paced) == burst and len(other) == 1
    # Within the budget, with slack for the moments between taking a slot and Twilio seeing the
    # request: the burst is spread over about (burst - 1) / rate seconds, never bunched.
    assert paced[-1] - paced[0] >= 0.75 * (burst - 1) / rate, paced
    most_in_a_second = max(sum(1 for t in paced if start <= t < start + 1.0) for start in paced)
    assert most_in_a_second <= rate + 2, paced
    # The other number's reply did not wait for the burst to drain.
    assert other[0] < paced[-1]
    # Every text was answered, none twice.
    wait_for(lambda: Message.select().where(Message.reply_state == "answered").count() == burst + 1)
    assert len({(m["To"], m["From"]) for m in sent}) == burst + 1


def test_two_worker_processes_share_one_numbers_rate_and_other_numbers_are_not_held_up(
    client, settings, fake_model, fake_twilio, redis_conn, tmp_path
):
    """30 replies from one number at max_mps 5, answered by two worker processes at once: no
    second at Twilio holds more than max_mps + 1 of them (Twilio's stamps; the pacing is one Redis
    key for both processes), both processes sent some, and another number's replies went out
    while the burst was still draining."""
    import re

    from rq import Worker

    rate, burst, others = 5, 30, 3
    PhoneNumber.create(phone_number=OUR_NUMBER, max_mps=rate)
    PhoneNumber.create(phone_number=OTHER_NUMBER)
    # A few threads each, so neither process can take the whole burst on its own.
    workers = [
        WorkerProcess(settings, tmp_path / f"worker{i}.log", {"WORKER_CONCURRENCY": "4"}) for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: len(Worker.all(connection=redis_conn)) >= 2, 30, message="two workers")
        for index in range(burst):  # one text each from `burst` people: separate chats
            post_twilio(client, "/twilio/sms", inbound_sms(f"hi {index}", From=f"+1415555{index:04d}"))
        for index in range(others):
            post_twilio(
                client,
                "/twilio/sms",
                inbound_sms(f"me too {index}", To=OTHER_NUMBER, From=f"+1415666{index:04d}"),
            )
        sent = fake_twilio.wait_for_messages(burst + others, timeout=90)
        wait_for(
            lambda: Message.select().where(Message.reply_state == "answered").count() == burst + others, 30
        )
    finally:
        for worker in workers:
            worker.stop()

    paced = sorted(m["received_at"] for m in sent if m["From"] == OUR_NUMBER)
    other = sorted(m["received_at"] for m in sent if m["From"] == OTHER_NUMBER)
    assert (len(paced), len(other)) == (burst, others)
    # The rate ceiling, whichever process sent: any 1-second window at Twilio holds at most rate + 1.
    most_in_a_second = max(sum(1 for t in paced if start <= t < start + 1.0) for start in paced)
    assert most_in_a_second <= rate + 1, [round(t - paced[0], 2) for t in paced]
    # The other number's replies did not queue behind the burst.
    assert other[-1] < paced[-1]
    # Both processes sent part of the burst (each logs the chats it sent to).
    burst_chats = {m.chat_id for m in Message.select().where(Message.to_number == OUR_NUMBER)}
    for worker in workers:
        logged = set(re.findall(r"sms out: chat (\S+) ", worker.log()))
        assert logged & burst_chats, worker.log()[-2000:]
    # Pacing is no failure: no attempt gave up (each paced job came back without using a retry).
    for worker in workers:
        assert "giving up" not in worker.log(), worker.log()[-2000:]
    # Every text was answered once.
    assert len({(m["To"], m["From"]) for m in sent}) == burst + others


@pytest.mark.parametrize(
    ("retries_left", "intervals"), [(3, [1, 2, 4]), (1, [1, 2, 4]), (0, None), (None, None)]
)
def test_a_paced_job_comes_back_after_the_wait_with_its_retries_intact(redis_conn, retries_left, intervals):
    from rq.job import Job

    from workers.jobs import _come_back_after

    job = Job.create("workers.jobs.reply_to_message", args=(1,), connection=redis_conn)
    job.retries_left, job.retry_intervals = retries_left, intervals
    before = []
    for left in range(retries_left or 0, 0, -1):  # what each real retry would wait, in order
        job.retries_left = left
        before.append(job.get_retry_interval())
    job.retries_left = retries_left

    _come_back_after(job, 2.3)
    assert job.get_retry_interval() == 3  # whole seconds, rounded up
    job.retries_left -= 1  # what Job.retry() does as it schedules the paced attempt
    assert job.retries_left == (retries_left or 0)
    after = []
    for left in range(job.retries_left, 0, -1):
        job.retries_left = left
        after.append(job.get_retry_interval())
    assert after == before


def test_a_paced_attempt_is_not_counted_as_one_of_the_jobs_retries(redis_conn, monkeypatch):
    from rq.job import Job

    from gateway.twilio.senders import SenderPaced
    from workers import jobs

    job = Job.create("workers.jobs.reply_to_message", args=(1,), connection=redis_conn)
    job.retries_left, job.retry_intervals = 1, [5]
    monkeypatch.setattr(jobs, "get_current_job", lambda: job)

    def paced(last: bool) -> int:
        assert last is False
        raise SenderPaced(OUR_NUMBER, 2.3)

    with pytest.raises(SenderPaced):
        jobs._attempt(paced)
    # One more retry, scheduled after the wait: RQ's retry uses it, and the agent's one is left.
    assert (job.retries_left, job.get_retry_interval()) == (2, 3)


def test_a_send_far_from_its_slot_is_put_off_not_failed(
    client, settings, fake_model, fake_twilio, redis_conn
):
    from gateway.twilio.senders import SenderPaced

    PhoneNumber.create(phone_number=OUR_NUMBER, max_mps=0.2)  # one send per 5 s
    assert reserve_slot(redis_conn, pace_key(settings, OUR_NUMBER), max_mps=0.2) == 0  # the slot now is used
    message = record(client, inbound_sms("hello"))
    fake_model.reply_with("Hi!")
    with pytest.raises(SenderPaced) as paced:
        replies.answer_message(settings, message.id, last_attempt=True)
    assert 0 < paced.value.wait <= 5  # comes back about when its slot nears
    assert fake_twilio.attempts == []
    # Nothing failed: the text waits for its reply, whose part is stored and free to send later.
    assert Message.get_by_id(message.id).reply_state == "pending"
    part = Message.get((Message.reply_to == message.id) & (Message.role == "agent"))
    assert (part.status, part.twilio_sid, part.error_code) == ("queued", None, None)
