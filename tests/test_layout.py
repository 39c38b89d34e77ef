"""The layout the package docstrings promise: no import cycles, and lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "workers")

# What each part may never import (module-level or inside functions): the layering of
# docs/ARCHITECTURE.md, read from the bottom up.
FORBIDDEN = {
    "gateway.storage": ("gateway.agent", "gateway.conversations", "gateway.twilio", "gateway.api", "workers"),
    "gateway.agent": ("gateway.conversations", "gateway.api", "gateway.twilio.webhooks", "workers"),
    "gateway.conversations": ("gateway.api", "gateway.twilio.webhooks", "workers"),
    "gateway.twilio.client": ("gateway.conversations", "gateway.agent", "gateway.api"),
    "gateway.twilio.signature": ("gateway.conversations", "gateway.agent", "gateway.api"),
    "gateway.twilio.keywords": ("gateway.conversations", "gateway.agent", "gateway.api"),
    "gateway.api": ("gateway.twilio.webhooks", "workers"),
}


def module_name(path: Path) -> str:
    """The dotted name of a source file under the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the gateway and the workers (migrations are frozen scripts, not modules)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def imports_of(path: Path, known: dict[str, Path], *, top_level_only: bool) -> set[str]:
    """The project modules a file imports (functions' lazy imports included unless top_level_only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gateway.agent import llm` imports the module gateway.agent.llm.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_cycles():
    """Following every import (lazy ones too) from any module never leads back to it."""
    known = all_modules()
    graph = {name: imports_of(path, known, top_level_only=False) - {name} for name, path in known.items()}
    # A package's __init__ importing its own submodules is how blueprints register, not a cycle.
    for name in graph:
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    cycles.append(" -> ".join([*path, dep]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(part):
    """Each part imports only what its package docstring allows."""
    known = all_modules()
    offences = []
    for name, path in known.items():
        if name != part and not name.startswith(part + "."):
            continue
        for dep in imports_of(path, known, top_level_only=False):
            if any(dep == bad or dep.startswith(bad + ".") for bad in FORBIDDEN[part]):
                offences.append(f"{name} imports {dep}")
    assert not offences, "\n".join(offences)


def test_every_package_says_what_it_holds():
    """Each sub-package's __init__ has a docstring naming what it holds."""
    for init in sorted((ROOT / "gateway").rglob("__init__.py")):
        if "migrations" in init.parts:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"


# Every function path an earlier release put on RQ (jobs and cron entries name their function by
# dotted path in Redis). A job queued before an upgrade runs after it only if its path still imports.
QUEUED_BY_EARLIER_RELEASES = (
    "workers.jobs.reply_to_message",
    "workers.jobs.send_opening",
    "workers.jobs.sweep_unanswered",
    "workers.jobs.close_silent_chats",
    "workers.memory_jobs.update_summary",
    "workers.memory_jobs.update_profile",
    "workers.memory_jobs.analyze_chat",
)


@pytest.mark.parametrize("path", QUEUED_BY_EARLIER_RELEASES)
def test_jobs_queued_before_an_upgrade_still_find_their_function(path):
    """RQ resolves a queued job's function the way it does when the job runs."""
    from rq.utils import import_attribute

    assert callable(import_attribute(path))
