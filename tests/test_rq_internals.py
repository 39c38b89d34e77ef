"""workers/pool.py builds on RQ internals; this names the one that went missing after an RQ upgrade.

pyproject.toml pins rq to the minor version pool.py was written against. Before raising the pin,
run this file against the new rq: every name pool.py imports, calls, overrides or reads must still
exist (an override of a method RQ no longer has is never called, silently).
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (module, name) that pool.py imports.
IMPORTED = [
    ("rq.command", "parse_payload"),
    ("rq.defaults", "DEFAULT_LOGGING_DATE_FORMAT"),
    ("rq.defaults", "DEFAULT_LOGGING_FORMAT"),
    ("rq.exceptions", "DequeueTimeout"),
    ("rq.exceptions", "NoSuchJobError"),
    ("rq.exceptions", "StopRequested"),
    ("rq.executions", "Execution"),
    ("rq.job", "Job"),
    ("rq.job", "JobStatus"),
    ("rq.queue", "Queue"),
    ("rq.rate_limit", "RateLimitRegistry"),  # workers/jobs.py, freeing a chat's leaked slot
    ("rq.registry", "StartedJobRegistry"),
    ("rq.registry", "clean_registries"),
    ("rq.scheduler", "RQScheduler"),
    ("rq.scripts", "release_lock"),
    ("rq.timeouts", "BaseDeathPenalty"),
    ("rq.timeouts", "JobTimeoutException"),
    ("rq.utils", "current_timestamp"),
    ("rq.utils", "now"),
    ("rq.utils", "utcparse"),
    ("rq.worker", "SimpleWorker"),
    ("rq.worker", "Worker"),
    ("rq.worker", "WorkerStatus"),
    ("rq.worker_registration", "clean_worker_registry"),
    ("rq.worker_registration", "register"),
    ("rq.worker.base", "BaseWorker"),
    ("rq.worker.base", "DequeueStrategy"),
]

# Class attributes pool.py calls, overrides (RQ must still call them) or reads.
CLASS_ATTRIBUTES = {
    "rq.worker.SimpleWorker": [
        # overridden hooks
        "work", "execute_job", "cleanup_execution", "serialize", "refresh", "get_heartbeat_ttl",
        "connection_timeout", "handle_payload", "request_stop", "request_force_stop",
        "request_stop_execution", "_install_signal_handlers", "_start_scheduler", "stop_scheduler",
        "run_maintenance_tasks", "_pubsub_exception_handler",
        # called
        "prepare_execution", "perform_job", "set_state", "heartbeat", "bootstrap",
        "check_for_suspension", "should_run_maintenance_tasks", "run_maintenance_tasks",
        "reorder_queues", "get_redis_server_version", "set_shutdown_requested_date", "teardown",
        "clean_registries", "clean_group_registries", "redis_worker_namespace_prefix", "handle_job_failure",
        # read
        "death_penalty_class", "queue_class", "job_class", "log_job_description",
    ],
    "rq.worker.base.BaseWorker": ["get_heartbeat_ttl"],
    "rq.queue.Queue": [
        "dequeue_any", "enqueue_job", "fetch_job", "intermediate_queue", "registry_cleaning_key",
    ],
    "rq.intermediate_queue.IntermediateQueue": ["get_job_ids", "remove", "cleanup"],
    "rq.job.Job": ["heartbeat", "retry", "started_job_registry", "key", "key_for", "fetch", "get_status"],
    "rq.registry.StartedJobRegistry": ["cleanup"],
    "rq.rate_limit.RateLimitRegistry": ["from_job", "cleanup"],
    "rq.executions.Execution": ["heartbeat"],
    "rq.scheduler.RQScheduler": [
        "Status", "work", "_install_signal_handlers", "acquire_locks", "release_locks",
        "register_birth", "register_death", "enqueue_scheduled_jobs", "heartbeat", "save", "stop",
        "get_locking_key",
    ],
    "rq.timeouts.BaseDeathPenalty": ["setup_death_penalty", "cancel_death_penalty"],
    "rq.worker.WorkerStatus": ["IDLE"],
    "rq.worker.base.DequeueStrategy": ["DEFAULT"],
    "rq.scheduler.RQScheduler.Status": ["STARTED"],
}  # fmt: skip

# Attributes set by RQ's constructors that pool.py reads or writes.
WORKER_INSTANCE_ATTRIBUTES = [
    "_ordered_queues", "_stop_requested", "_shutdown_requested_date", "_stopped_job_id",
    "scheduler", "serializer", "connection", "key", "name", "log", "queues", "worker_ttl",
    "job_monitoring_interval", "_exc_handlers",
]  # fmt: skip
SCHEDULER_INSTANCE_ATTRIBUTES = [
    "_status", "_stop_requested", "_process", "acquired_locks", "log", "_queue_names",
    "_acquired_locks", "_scheduled_job_registries", "interval", "connection",
]  # fmt: skip

# Keyword arguments pool.py passes to RQ's methods.
KEYWORDS = {
    "rq.worker.SimpleWorker.__init__": ["maintenance_interval", "connection", "job_monitoring_interval"],
    "rq.worker.SimpleWorker.heartbeat": ["pipeline"],
    "rq.worker.SimpleWorker.cleanup_execution": ["job", "pipeline", "execution"],
    "rq.worker.SimpleWorker.perform_job": ["job", "queue", "execution"],
    "rq.queue.Queue.dequeue_any": ["connection", "job_class", "serializer", "death_penalty_class"],
    "rq.job.Job.heartbeat": ["pipeline", "xx"],
    "rq.executions.Execution.heartbeat": ["pipeline"],
    "rq.scheduler.RQScheduler.__init__": [
        "connection", "logging_level", "date_format", "log_format", "serializer", "name",
    ],
    "rq.registry.StartedJobRegistry.cleanup": ["timestamp", "exception_handlers"],
}  # fmt: skip


def _resolve(dotted: str):
    """The object named `module.Class.attr...`, importing the longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def _missing(what: str) -> str:
    """The failure message: which name, and what to do about it."""
    return (
        f"rq {version('rq')} has no {what}, which workers/pool.py uses: "
        "keep rq at the version pinned in pyproject.toml, or adapt workers/pool.py"
    )


def test_rq_is_pinned_to_one_minor_version():
    """pyproject pins rq below the next minor release, and the installed rq satisfies the pin."""
    text = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"rq>=(\d+)\.(\d+)(?:\.\d+)?,<(\d+)\.(\d+)"', text)
    assert pin, "pyproject.toml must pin rq as rq>=X.Y,<X.(Y+1)"
    low_major, low_minor, high_major, high_minor = map(int, pin.groups())
    assert (high_major, high_minor) == (low_major, low_minor + 1), pin.group(0)
    assert tuple(map(int, version("rq").split(".")[:2])) == (low_major, low_minor)


@pytest.mark.parametrize(("module", "name"), IMPORTED)
def test_imported_names_exist(module, name):
    """Every name pool.py imports from rq."""
    assert hasattr(importlib.import_module(module), name), _missing(f"{module}.{name}")


@pytest.mark.parametrize(
    "dotted", [f"{owner}.{attr}" for owner, attrs in CLASS_ATTRIBUTES.items() for attr in attrs]
)
def test_class_attributes_exist(dotted):
    """Every method and class attribute pool.py calls, overrides or reads."""
    owner, attr = dotted.rsplit(".", 1)
    assert hasattr(_resolve(owner), attr), _missing(dotted)


@pytest.mark.parametrize(("dotted", "names"), KEYWORDS.items())
def test_keyword_arguments_exist(dotted, names):
    """Every keyword argument pool.py passes to an RQ method is still accepted by name."""
    parameters = inspect.signature(_resolve(dotted)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name in names:
        assert name in parameters or takes_any, _missing(f"parameter {name!r} of {dotted}")


def test_instance_attributes_exist(redis_conn):
    """Attributes RQ's constructors set that pool.py reads or writes (needs a Redis: RQ names the client)."""
    from rq.scheduler import RQScheduler
    from rq.timeouts import BaseDeathPenalty
    from rq.worker import SimpleWorker

    worker = SimpleWorker(["rq-internals"], connection=redis_conn)
    for attr in WORKER_INSTANCE_ATTRIBUTES:
        assert hasattr(worker, attr), _missing(f"SimpleWorker instance attribute {attr}")
    scheduler = RQScheduler(worker.queues, connection=redis_conn)
    for attr in SCHEDULER_INSTANCE_ATTRIBUTES:
        assert hasattr(scheduler, attr), _missing(f"RQScheduler instance attribute {attr}")
    assert hasattr(BaseDeathPenalty(1, Exception), "_timeout"), _missing("BaseDeathPenalty._timeout")
