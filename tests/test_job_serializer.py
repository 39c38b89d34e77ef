"""Jobs are JSON in Redis: data, never code; pickles from older versions run only if they are plain data."""

from __future__ import annotations

import json
import pathlib
import pickle
import zlib

import pytest
from rq import Queue
from rq.job import JobStatus

from gateway.agent.memory import profile_job_id
from gateway.queue import JobSerializer, fetch_job, job_queue, queue_name, reply_job_id
from gateway.storage.models import Message
from tests.conftest import post_twilio, wait_for
from tests.payloads import inbound_sms


class Planted:
    """What an attacker with write access to Redis would plant: unpickling it creates a file."""

    def __init__(self, path: str) -> None:
        """The file the payload would create."""
        self.path = path

    def __reduce__(self):
        """Unpickling calls open(path, "w")."""
        return (open, (self.path, "w"))


def test_the_webhooks_reply_job_is_json_in_redis(client, redis_conn):
    """The job the webhook queues is stored as JSON: function path and arguments, nothing else."""
    form = inbound_sms("Hello")
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    raw = zlib.decompress(redis_conn.hget(f"rq:job:{reply_job_id(message.id)}", "data"))  # RQ zips it
    assert json.loads(raw) == ["workers.jobs.reply_to_message", None, [message.id], {}]


def test_serializer_refuses_pickled_code_and_reads_plain_legacy_data(tmp_path):
    """A pickle naming a callable is refused; a plain-data pickle (an old job's args) is read."""
    marker = tmp_path / "owned"
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        JobSerializer.loads(pickle.dumps(("tests.jobs_for_tests.tick", None, (Planted(str(marker)),), {})))
    assert not marker.exists()
    legacy = pickle.dumps(("workers.jobs.reply_to_message", None, (7,), {}), protocol=pickle.HIGHEST_PROTOCOL)
    assert JobSerializer.loads(legacy) == ("workers.jobs.reply_to_message", None, (7,), {})
    with pytest.raises(TypeError):
        JobSerializer.dumps({"when": pathlib.Path("/")})  # not JSON: refused at enqueue


def test_worker_skips_a_planted_pickle_and_runs_the_rest(settings, redis_conn, worker, tmp_path):
    """The real worker fails a job pickled with code (no file appears), runs an old plain-data pickle
    and a JSON job after it, and keeps running."""
    marker = tmp_path / "owned"
    old_style = Queue(queue_name(settings), connection=redis_conn)  # RQ's default: pickle
    planted = old_style.enqueue("tests.jobs_for_tests.tick", Planted(str(marker)))
    legacy = old_style.enqueue("tests.jobs_for_tests.tick", "legacy-ran")
    fresh = old_style.enqueue("tests.jobs_for_tests.tick", "fresh-ran", at_front=False)
    wait_for(lambda: redis_conn.llen("legacy-ran") == 1, message="the plain legacy job ran")
    wait_for(lambda: redis_conn.llen("fresh-ran") == 1, message="the next job ran")
    wait_for(
        lambda: fetch_job(planted.id, redis_conn).get_status() == JobStatus.FAILED,
        message="the planted job failed",
    )
    assert not marker.exists()
    # The job records its run before RQ records it finished (in the same thread, a moment later).
    wait_for(
        lambda: fetch_job(legacy.id, redis_conn).get_status() == JobStatus.FINISHED,
        message="the legacy job finished",
    )
    assert fresh.id and worker.proc is not None and worker.proc.poll() is None


def test_the_pool_entry_point_fails_planted_pickles_and_keeps_working(redis_server, redis_conn, tmp_path):
    """`python -m workers.pool` reads jobs as JSON: a pickled job planted in its queue and one planted
    in the scheduled registry fail with the refusal as their reason, a plain job with a pickled `meta`
    runs with that meta left unread; no payload runs, and the worker goes on to the next job."""
    from datetime import timedelta

    from tests.test_worker_pool import PoolProcess

    markers = [tmp_path / f"owned-{i}" for i in range(3)]
    name = f"pool-{tmp_path.name[-12:]}"
    old_style = Queue(name, connection=redis_conn)  # RQ's default: pickle
    planted = [
        old_style.enqueue("tests.jobs_for_tests.tick", Planted(str(markers[0]))),
        old_style.enqueue_in(timedelta(seconds=1), "tests.jobs_for_tests.tick", Planted(str(markers[1]))),
    ]
    meta_planted = old_style.enqueue(
        "tests.jobs_for_tests.tick", "meta-ran", meta={"x": Planted(str(markers[2]))}
    )
    worker = PoolProcess(redis_server.url, name, tmp_path / "pool.log", concurrency=2)
    try:
        wait_for(
            lambda: all(fetch_job(job.id, redis_conn).get_status() == JobStatus.FAILED for job in planted),
            message="every planted job failed",
        )
        for job in planted:
            reason = fetch_job(job.id, redis_conn).latest_result().exc_string
            assert "refused to load io.open from a pickled job" in reason, reason
        wait_for(
            lambda: fetch_job(meta_planted.id, redis_conn).get_status() == JobStatus.FINISHED,
            message="the plain job with a planted meta finished",
        )
        fresh = job_queue(name, redis_conn).enqueue("tests.jobs_for_tests.tick", "fresh-ran")
        wait_for(
            lambda: fetch_job(fresh.id, redis_conn).get_status() == JobStatus.FINISHED, message="fresh job"
        )
        assert worker.proc.poll() is None, worker.log()
        assert not any(marker.exists() for marker in markers)
    finally:
        worker.stop()


def test_erasing_a_person_never_unpickles_their_queued_jobs(client, settings, redis_conn, tmp_path):
    """`smsgw contacts erase` and DELETE /v1/contacts/{n} fetch the person's jobs as JSON: a job
    planted with a pickled `meta` (RQ unpickles meta as it fetches) is deleted, its payload never runs."""
    from tests.payloads import PERSON
    from tests.test_contacts import AUTH, cli

    for how in ("cli", "api"):
        marker = tmp_path / f"owned-{how}"
        old_style = Queue(queue_name(settings), connection=redis_conn)
        planted = old_style.enqueue(
            "tests.jobs_for_tests.tick",
            "x",
            job_id=profile_job_id(f"phone:{PERSON}"),
            meta={"x": Planted(str(marker))},
        )
        if how == "cli":
            assert "1 jobs" in cli(settings, "contacts", "erase", "--yes", PERSON).stdout
        else:
            response = client.delete(f"/v1/contacts/{PERSON}", headers=AUTH)
            assert response.status_code == 200, response.get_json()
        assert not marker.exists()
        assert not redis_conn.exists(planted.key)


RQ_READERS = {"Queue", "Job.fetch", "Job.fetch_many", "Worker", "SimpleWorker", "ThreadPoolWorker"}


def test_every_queue_and_job_the_code_builds_names_the_json_serializer():
    """Every RQ Queue, Job.fetch and worker built in gateway/, workers/ and bench/ passes `serializer=`:
    RQ's default is pickle, so one forgotten argument would make Redis a code path again."""
    import ast

    root = pathlib.Path(__file__).resolve().parent.parent
    missing = []
    for path in [*root.glob("gateway/**/*.py"), *root.glob("workers/*.py"), *root.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in RQ_READERS and not any(k.arg == "serializer" for k in node.keywords):
                missing.append(f"{path.relative_to(root)}:{node.lineno} {name}(...)")
    assert not missing, "RQ objects built without the JSON serializer:\n" + "\n".join(missing)
