"""The worker (workers/pool.py, runner.py) builds on RQ internals; this names one gone after an upgrade.

pyproject.toml pins rq to the minor version pool.py was written against. Before raising the pin,
run this file against the new rq: every name the code imports from rq (read from the source), and
every name pool.py and runner.py call, override or read, must still exist (an override of a method
RQ no longer has is never called, silently).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# (module, name) pairs the code imports from rq: read from the source, so a new import is checked
# without anyone remembering to list it here.
def _rq_imports() -> list[tuple[str, str]]:
    """Every `from rq... import name` in gateway/ and workers/."""
    found = set()
    for path in sorted([*ROOT.joinpath("gateway").rglob("*.py"), *ROOT.joinpath("workers").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rq":
                found.update((node.module, alias.name) for alias in node.names)
    return sorted(found)


IMPORTED = _rq_imports()

# Class attributes pool.py calls, overrides (RQ must still call them) or reads.
CLASS_ATTRIBUTES = {
    "rq.worker.SimpleWorker": [
        # overridden hooks
        "work", "execute_job", "cleanup_execution", "serialize", "refresh", "get_heartbeat_ttl",
        "connection_timeout", "handle_payload", "request_stop", "request_force_stop",
        "request_stop_execution", "_install_signal_handlers", "_start_scheduler", "stop_scheduler",
        "run_maintenance_tasks", "_pubsub_exception_handler", "subscribe", "unsubscribe",
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
    # workers/runner.py: the cron thread
    "rq.cron.CronJob": ["enqueue", "job_history_key"],
    "rq.cron.CronScheduler": [
        "enqueue_jobs", "save", "heartbeat", "calculate_sleep_interval", "register_birth", "register_death",
    ],
}  # fmt: skip

# Attributes set by RQ's constructors that pool.py reads or writes.
WORKER_INSTANCE_ATTRIBUTES = [
    "_ordered_queues", "_stop_requested", "_shutdown_requested_date", "_stopped_job_id",
    "scheduler", "serializer", "connection", "key", "name", "log", "queues", "worker_ttl",
    "job_monitoring_interval", "_exc_handlers", "pubsub_channel_name",
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
    "rq.cron.CronJob.__init__": [
        "queue_name", "func_name", "interval", "job_timeout", "result_ttl", "failure_ttl",
    ],
    "rq.cron.CronScheduler.__init__": ["connection", "name"],
    "rq.cron_job_registry.add": ["enqueue_timestamp"],
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
        f"rq {version('rq')} has no {what}, which the worker uses (workers/pool.py, workers/runner.py): "
        "keep rq at the version pinned in pyproject.toml, or adapt the worker"
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
    """Every name the code imports from rq."""
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


def test_cron_instance_attributes_exist(redis_conn):
    """What workers/runner.py reads on RQ's cron objects, or appends to (a job named by dotted path)."""
    from rq.cron import CronJob, CronScheduler

    scheduler = CronScheduler(connection=redis_conn, name="rq-internals")
    for attr in ("_cron_jobs", "name"):
        assert hasattr(scheduler, attr), _missing(f"CronScheduler instance attribute {attr}")
    assert isinstance(scheduler._cron_jobs, list), _missing("CronScheduler._cron_jobs as a list")
    job = CronJob(queue_name="rq-internals", func_name="workers.jobs.sweep_unanswered", interval=60)
    for attr in ("name", "func_name", "args", "kwargs", "job_options", "job_history_key"):
        assert hasattr(job, attr), _missing(f"CronJob instance attribute {attr}")
