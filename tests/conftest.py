"""Shared test plumbing.

``arun`` runs a coroutine on a fresh event loop, once on stdlib asyncio and once on uvloop (asyncpg's
_testbase does the same), and fails the test if any exception reached the loop's exception handler: an
exception swallowed by a task nobody awaited is a bug, not noise.
"""
from __future__ import annotations

import asyncio
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PCAPS = SHARED / "pcaps"


def pytest_collection_modifyitems(config, items):
    # Root-only tests must run in CI (which is root): a skip there would hide a regression.
    if os.geteuid() != 0 and os.environ.get("CI") == "true":
        raise pytest.UsageError("CI must run as root: the root-marked tests may not be skipped there")
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces, AF_PACKET)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=["asyncio", "uvloop"])
def arun(request):
    """Return ``run(coro, timeout=60)`` that executes on a fresh loop of the parametrized kind."""
    if request.param == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    errors: list[dict] = []

    def run(coro, timeout: float = 60.0):
        loop = factory()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            assert not errors, f"exceptions reached the event loop: {errors}"

    run.kind = request.param
    return run


@pytest.fixture
def pcaps_dir() -> pathlib.Path:
    if not PCAPS.is_dir():
        pytest.fail(f"the shared captures are missing: {PCAPS}")
    return PCAPS
