"""pytest hooks for the CI policy: under ``CI`` a skipped test fails the run.

Contract: :func:`in_ci` is true when the ``CI`` environment variable is set
to anything but ``""``, ``0``, ``false`` or ``no``.  :func:`unavailable`
is what a fixture calls when the environment lacks something (libvirtd, sshd,
the C binding...): it fails the test in CI and skips it otherwise, with the
reason either way.  The hooks record every skipped test (``xfail`` is not a
skip) and, in CI, turn a run that would have passed into a failure, listing
the skipped tests.  ``tests/conftest.py`` imports these hooks; another run
can load them with ``-p tests.harness.pytest_ci``.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import pytest

_SKIPPED: list[tuple[str, str]] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Fail (CI) or skip (a developer's machine) because the environment lacks something."""
    if in_ci():
        pytest.fail(f"CI is set, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = ""
        if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            reason = str(report.longrepr[2])
        _SKIPPED.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if in_ci() and _SKIPPED:
        tr = terminalreporter
        tr.section("CI: skipped tests count as failures", red=True, bold=True)
        for nodeid, reason in _SKIPPED:
            tr.line(f"SKIPPED {nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _SKIPPED and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
