"""Helpers shared by the tests of transports that run a child (ext ``command=``, ssh).

Errors are compared with the C binding's as field dicts.  When the child
exits at once, whether the client's first write comes before it goes (the
read then fails: "Cannot recv data: <stderr>: Connection reset by peer") or
after (EPIPE, "Cannot write data") is a race in every client, the C one
included; the ``*_open_error`` helpers retry past the second outcome so that
the first one can be compared exactly.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

import pytest

import pyvirtrpc as libvirt
from pyvirtrpc import aio

TIMEOUT = 30.0


def fields(exc: BaseException) -> dict[str, Any]:
    """The parts of a libvirtError that must match the C client's."""
    err = getattr(exc, "err", None)
    assert err is not None, exc
    return {"code": err[0], "domain": err[1], "message": err[2], "int1": err[7]}


def peer_fields(exc: Any) -> dict[str, Any]:
    i = exc.info
    return {"code": i["code"], "domain": i["domain"], "message": i["message"], "int1": i["int1"]}


def c_open_error(peer: Any, uri: str, **kw: Any) -> dict[str, Any]:
    """The C binding's open error, past its spawn race.

    When the child dies before the C client's first write, libvirt reports
    "Cannot write data: Broken pipe" instead of the child's words (its usual
    "Cannot recv data: <stderr>: Connection reset by peer"); retry then.
    """
    for _ in range(10):
        with pytest.raises(Exception) as theirs:
            peer("libvirt.open(args['uri'])", uri=uri, **kw)
        t = peer_fields(theirs.value)
        if t["message"] != "Cannot write data: Broken pipe":
            return t
    pytest.fail(f"the C binding lost its race 10 times in a row: {t}")


def _past_the_race(open_: Callable[[], Any]) -> dict[str, Any]:
    for _ in range(10):
        with pytest.raises(libvirt.libvirtError) as ours:
            open_()
        f = fields(ours.value)
        if not f["message"].startswith("Cannot write data"):
            return f
    pytest.fail(f"lost the spawn race 10 times in a row: {f}")


def our_open_error(uri: str) -> dict[str, Any]:
    """Our open error, past the same race (ours then says "Cannot write data: <stderr>: Broken pipe")."""
    return _past_the_race(lambda: libvirt.open(uri, timeout=TIMEOUT))


def our_async_open_error(uri: str) -> dict[str, Any]:
    """The asyncio client's open error, past the same race."""

    async def main() -> None:
        await asyncio.wait_for(aio.open(uri, timeout=TIMEOUT), TIMEOUT)

    return _past_the_race(lambda: asyncio.run(main()))


def gone(pid: int) -> bool:
    """Reaped: no /proc entry at all (a zombie still has one)."""
    return not os.path.exists(f"/proc/{pid}")


def script(path: Path, body: str) -> str:
    """An executable /bin/sh script at ``path``; its path."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)
