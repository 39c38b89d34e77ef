"""Jobs are JSON in Redis: data, never code; pickles from older versions run only if they are plain data."""

from __future__ import annotations

import json
import pathlib
import pickle
import zlib

import pytest
from rq import Queue
from rq.job import JobStatus

from gateway.queue import JobSerializer, fetch_job, queue_name, reply_job_id
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
