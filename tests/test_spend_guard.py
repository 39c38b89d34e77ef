"""The spend guard: replies per person and tokens per day capped in Redis, for every worker at once.

Floods are counted where the money goes, at the fake model: calls never exceed the caps, and the
person gets at most one notice per window.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.agent import spend
from gateway.conversations.agents import default_agent
from gateway.queue import JobSerializer, job_queue, queue_name
from gateway.storage.models import Agent, Message, MessageKind, ReplyState, Role
from tests.conftest import GATEWAY_API_KEY, ROOT, SimpleWorker, WorkerProcess, post_twilio, wait_for
from tests.payloads import PERSON, inbound_sms
from workers import context

SMS = "/twilio/sms"
AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def run_jobs(settings, redis_conn) -> None:
    """Run every queued job in this process, as the worker would."""
    queue = job_queue(queue_name(settings), redis_conn)
    SimpleWorker([queue], connection=redis_conn, serializer=JobSerializer).work(
        burst=True, with_scheduler=False
    )


def capped_default_agent(**caps) -> Agent:
    """The default agent (it answers unknown numbers) with these caps."""
    agent = default_agent()
    Agent.update(**caps).where(Agent.agent_id == agent.agent_id).execute()
    return Agent.get_by_id(agent.agent_id)


def notices() -> list[Message]:
    """The gateway notices stored so far."""
    return list(Message.select().where(Message.kind == MessageKind.NOTICE.value).order_by(Message.id))


def test_admission_counts_each_reply_once_and_notifies_once(configured):
    """Under the cap replies are admitted (a retried one is not counted again); over it, one notice."""
    agent = capped_default_agent(replies_per_person_per_hour=2)
    assert spend.admit_reply(configured, agent, PERSON, 1) is None
    assert spend.admit_reply(configured, agent, PERSON, 1) is None  # the same reply, retried
    assert spend.admit_reply(configured, agent, PERSON, 2) is None
    first = spend.admit_reply(configured, agent, PERSON, 3)
    second = spend.admit_reply(configured, agent, PERSON, 4)
    assert (first.state, first.notify) == (ReplyState.RATE_LIMITED, True)
    assert (second.state, second.notify) == (ReplyState.RATE_LIMITED, False)
    assert spend.admit_reply(configured, agent, "+14155550100", 5) is None  # another person


def test_token_budgets_stop_replies_and_background_calls(configured):
    """A spent agent budget refuses replies (budget_exhausted) and memory/analysis calls."""
    agent = capped_default_agent(tokens_per_day=100)
    spend.record_tokens(configured, agent.agent_id, 60, 50)
    refusal = spend.admit_reply(configured, agent, PERSON, 1)
    assert refusal.state is ReplyState.BUDGET_EXHAUSTED
    assert "budget" in spend.budget_refusal(configured, agent)
    gateway_only = configured.model_copy(update={"spend_gateway_tokens_per_day": 10})
    assert "gateway" in spend.budget_refusal(gateway_only, None)


def test_a_flood_from_one_number_is_capped_at_the_model(
    client, configured, redis_conn, fake_model, fake_twilio
):
    """200 texts from one number, answered as they come: the model is called at most the hourly cap,
    the rest are recorded rate_limited with the reason, and the person gets one notice."""
    capped_default_agent(replies_per_person_per_hour=3, limit_notice_message="Slow down, please.")
    for burst in range(20):
        for i in range(10):
            assert post_twilio(client, SMS, inbound_sms(f"text {burst}-{i}")).status_code == 200
        run_jobs(configured, redis_conn)

    assert len(fake_model.requests) == 3
    inbound = list(Message.select().where(Message.role == Role.USER.value))
    assert len(inbound) == 200
    states = {m.reply_state for m in inbound}
    assert states == {ReplyState.ANSWERED.value, ReplyState.RATE_LIMITED.value}
    limited = [m for m in inbound if m.reply_state == ReplyState.RATE_LIMITED.value]
    assert all("cap of 3 replies per hour" in m.error_message for m in limited)
    [notice] = notices()
    assert notice.content == "Slow down, please." and notice.twilio_sid
    assert [m["Body"] for m in fake_twilio.messages].count("Slow down, please.") == 1

    chat = client.get(f"/v1/chats/{notice.chat_id}", headers=AUTH).get_json()
    shown = {m["error_code"] for m in chat["messages"] if m["role"] == "user"}
    assert "rate_limited" in shown


def test_a_flood_from_fifty_numbers_stays_within_the_token_budget(
    client, configured, redis_conn, fake_model, fake_twilio
):
    """50 numbers x 4 texts against a small daily token budget: calls stop once it is spent, each
    person over it gets one notice (none when the notice is off), and usage shows the spend."""
    # Each call reserves its prompt estimate + max_tokens, so the cap must hold a few calls.
    capped_default_agent(replies_per_person_per_hour=2, tokens_per_day=400, max_tokens=10)
    people = [f"+1415555{n:04d}" for n in range(50)]
    for round_ in range(4):
        for person in people:
            post_twilio(client, SMS, inbound_sms(f"hello number {round_}", From=person))
        run_jobs(configured, redis_conn)

    calls = len(fake_model.requests)
    used = spend.agent_usage(configured, default_agent())["tokens_today"]
    # Each call is made only when its reservation fits: the budget is never passed.
    assert 0 < calls <= 2 * 50
    assert 0 < used <= 400
    exhausted = Message.select().where(Message.reply_state == ReplyState.BUDGET_EXHAUSTED.value).count()
    limited = Message.select().where(Message.reply_state == ReplyState.RATE_LIMITED.value).count()
    assert exhausted > 0
    answered = Message.select().where(Message.reply_state == ReplyState.ANSWERED.value).count()
    assert answered + exhausted + limited == 200
    by_person: dict[str, int] = {}
    for notice in notices():
        by_person[notice.to_number] = by_person.get(notice.to_number, 0) + 1
    assert by_person and max(by_person.values()) == 1


def test_a_notice_set_to_empty_is_not_sent(client, configured, redis_conn, fake_model, fake_twilio):
    """limit_notice_message "" turns the notice off: the texts are still recorded rate_limited."""
    capped_default_agent(replies_per_person_per_hour=1, limit_notice_message="")
    for i in range(3):
        post_twilio(client, SMS, inbound_sms(f"hi {i}"))
        run_jobs(configured, redis_conn)
    assert len(fake_model.requests) == 1
    assert notices() == []
    assert Message.select().where(Message.reply_state == ReplyState.RATE_LIMITED.value).count() == 2


def test_max_tokens_reaches_the_model(client, configured, redis_conn, fake_model):
    """The agent's max_tokens is in the request the model receives."""
    capped_default_agent(max_tokens=77)
    post_twilio(client, SMS, inbound_sms("hi"))
    run_jobs(configured, redis_conn)
    assert fake_model.wait_for_requests(1)[0]["max_tokens"] == 77


def test_two_worker_processes_race_on_one_cap(client, app, settings, redis_conn, fake_model, tmp_path):
    """One person texts 12 of our numbers at once; two worker processes answer in parallel; the cap of
    5 replies an hour holds exactly: 5 model calls, 7 texts rate_limited, one notice."""
    capped_default_agent(replies_per_person_per_hour=5)
    fake_model.latency = 0.2  # keep both workers busy at once
    workers = [WorkerProcess(settings, tmp_path / f"worker{i}.log") for i in range(2)]
    for worker in workers:
        worker.start()
    try:
        for n in range(12):
            post_twilio(client, SMS, inbound_sms("race", To=f"+1500555{n:04d}"))
        wait_for(
            lambda: (
                Message.select()
                .where((Message.role == Role.USER.value) & (Message.reply_state == ReplyState.PENDING.value))
                .count()
                == 0
            ),
            timeout=60,
            message="every text answered or refused",
        )
    finally:
        for worker in workers:
            worker.stop()
    assert len(fake_model.requests) == 5
    assert Message.select().where(Message.reply_state == ReplyState.RATE_LIMITED.value).count() == 7
    assert len(notices()) == 1


def test_admission_is_atomic_across_processes(configured):
    """Two processes admitting replies as fast as they can never pass the cap together."""
    agent = capped_default_agent(replies_per_person_per_hour=25)
    script = (
        "import sys; from gateway.config import Settings; from gateway.agent import spend; "
        "from gateway.storage.models import Agent; "
        "s = Settings.model_validate_json(sys.argv[1]); "
        "a = Agent(agent_id=sys.argv[2], replies_per_person_per_hour=25); "
        "print(sum(spend.admit_reply(s, a, '+14155550123', f'{sys.argv[3]}-{i}') is None for i in range(40)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, configured.model_dump_json(), agent.agent_id, tag],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    admitted = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert sum(admitted) == 25


def test_reservations_are_atomic_across_processes(configured, redis_conn):
    """Two processes reserving calls of up to 50 tokens against a cap of 1,000 and settling each at
    the 40 it used: the tokens counted never pass the cap, and nothing stays reserved."""
    agent = capped_default_agent(tokens_per_day=1000)
    script = (
        "import sys; from gateway.config import Settings; from gateway.agent import spend; "
        "from gateway.storage.models import Agent; "
        "s = Settings.model_validate_json(sys.argv[1]); "
        "a = Agent(agent_id=sys.argv[2], tokens_per_day=1000)\n"
        "made = 0\n"
        "for i in range(60):\n"
        "    try:\n"
        "        r = spend.reserve(s, a, 50)\n"
        "    except spend.OverBudget:\n"
        "        continue\n"
        "    made += 1; r.settle(30, 10)\n"
        "print(made)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, configured.model_dump_json(), agent.agent_id],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    made = sum(int(p.communicate(timeout=60)[0].strip()) for p in procs)
    used = spend.agent_usage(configured, agent)["tokens_today"]
    assert used == 40 * made
    assert used <= 1000
    # Once the last calls settled, what is left is less than one reservation: the cap was used up.
    assert used > 1000 - 50
    day = spend._windows(spend.utcnow())[1]
    assert int(redis_conn.get(spend.agent_reserved_key(configured, agent.agent_id, day)) or 0) == 0


def test_a_refused_reservation_holds_nothing_and_a_failed_call_releases_it(configured):
    """A reservation that would pass the cap is refused whole; a released one gives its tokens back."""
    agent = capped_default_agent(tokens_per_day=100)
    held = spend.reserve(configured, agent, 80)
    with pytest.raises(spend.OverBudget, match="agent's daily budget of 100"):
        spend.reserve(configured, agent, 30)
    assert "spent" in spend.budget_refusal(configured, agent, need=30)
    held.release()
    spend.reserve(configured, agent, 30).settle(20, 5)
    assert spend.agent_usage(configured, agent)["tokens_today"] == 25
    gateway_only = configured.model_copy(update={"spend_gateway_tokens_per_day": 40})
    with pytest.raises(spend.OverBudget, match="gateway's daily budget of 40"):
        spend.reserve(gateway_only, None, 20)


def test_usage_is_readable(configured):
    """Usage against the caps reads back from Redis (the API shows it)."""
    agent = capped_default_agent(tokens_per_day=1000, max_tokens=100)
    spend.record_tokens(configured, agent.agent_id, 10, 5)
    spend.admit_reply(configured, agent, PERSON, 1)
    usage = spend.agent_usage(configured, agent, person=PERSON)
    assert usage["tokens_today"] == 15 and usage["tokens_per_day"] == 1000
    assert usage["replies_today"] == 1 and usage["person"]["replies_this_hour"] == 1
    assert spend.gateway_usage(configured)["tokens_today"] == 15


def test_two_worker_processes_race_on_one_token_budget(
    client, app, settings, redis_conn, fake_model, tmp_path
):
    """Texts from 40 numbers answered by two worker processes, 8 calls at a time each, against a
    small daily token budget: the tokens counted (as the fake model reports them) never pass the
    budget, the texts not answered are recorded budget_exhausted, and nothing stays reserved."""
    cap = 1200
    agent = capped_default_agent(tokens_per_day=cap, max_tokens=20, replies_per_person_per_hour=0)
    fake_model.latency = 0.3  # many calls in flight at once, across both workers
    workers = [
        WorkerProcess(settings, tmp_path / f"worker{i}.log", {"WORKER_CONCURRENCY": "8"}) for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for n in range(40):
            post_twilio(client, SMS, inbound_sms("what is on the menu today", From=f"+1415555{n:04d}"))
        wait_for(
            lambda: (
                Message.select()
                .where((Message.role == Role.USER.value) & (Message.reply_state == ReplyState.PENDING.value))
                .count()
                == 0
            ),
            timeout=120,
            message="every text answered or refused",
        )
    finally:
        for worker in workers:
            worker.stop()
    answers = list(Message.select().where((Message.role == Role.AGENT.value) & (Message.kind == "text")))
    reported = sum((m.prompt_tokens or 0) + (m.completion_tokens or 0) for m in answers)
    usage = spend.agent_usage(settings, agent)
    assert len(fake_model.requests) == len(answers) > 0
    assert usage["tokens_today"] == reported
    assert reported <= cap
    assert fake_model.max_in_flight > 1  # the calls did race
    states = [m.reply_state for m in Message.select().where(Message.role == Role.USER.value)]
    assert states.count(ReplyState.ANSWERED.value) == len(answers)
    assert states.count(ReplyState.BUDGET_EXHAUSTED.value) == 40 - len(answers) > 0
    refused = Message.select().where(Message.reply_state == ReplyState.BUDGET_EXHAUSTED.value)
    assert all("budget" in m.error_message for m in refused)
    day = spend._windows(spend.utcnow())[1]
    assert not redis_conn.get(spend.agent_reserved_key(settings, agent.agent_id, day))


def test_analysis_stops_retrying_a_model_that_answers_prose(configured, redis_conn, fake_model):
    """A post-chat analysis answered without JSON is asked once more, then given up: two calls, not four."""
    from rq import Retry

    from gateway.agent.analysis import ANALYSIS_JOB, ANALYSIS_RETRIES
    from gateway.storage.models import Chat, ChatType

    chat = Chat.create(agent=default_agent(), chat_type=ChatType.API.value)
    Message.create(chat=chat, role=Role.USER.value, content="hi")
    fake_model.reply_with("It went fine, I think.")
    queue = job_queue(queue_name(configured), redis_conn)
    job = queue.enqueue(ANALYSIS_JOB, chat.chat_id, retry=Retry(max=ANALYSIS_RETRIES))
    run_jobs(configured, redis_conn)
    assert len(fake_model.requests) == 2
    assert Chat.get_by_id(chat.chat_id).chat_analysis is None
    assert job.get_status() == "finished"
