"""Run a snippet under the C binding (python3-libvirt on /usr/bin/python3) for side-by-side tests.

Contract: ``Peer()(code, **args)`` runs ``code`` in a fresh
``/usr/bin/python3 -I`` process with ``libvirt`` imported (its default error
handler silenced, so nothing is printed to stderr), ``json``, ``args`` (the
keyword arguments, through JSON) and two helpers in scope:

* ``open_auth(uri, user=None, password=None, flags=0)``: ``libvirt.openAuth``
  with a callback answering AUTHNAME/PASSPHRASE (``libvirt.open`` alone
  cannot do SASL without a callback);
* ``err(e)``: a ``libvirtError`` as a dict (code, domain, message, level,
  str1..3, int1, int2, text);
* ``run_event_loop()``: libvirt's default event loop, registered and run in a
  daemon thread (events, close callbacks, keepalive need one).

The snippet returns its result either by assigning ``result`` (any JSON
value) or by printing JSON as its last stdout line.  An uncaught
``libvirtError`` raises :class:`PeerLibvirtError` here (``.err`` is the C
binding's 9-tuple); any other exception raises :class:`PeerError` with the
peer's traceback.  JSON turns tuples into lists.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Mapping, Optional

from .lab import MissingTool

PYTHON = "/usr/bin/python3"
_MARK = "\x1e__pyvirtrpc_peer_result__ "

_WRAPPER = r"""
import json, sys, traceback
req = json.loads(sys.stdin.read())
import libvirt
libvirt.registerErrorHandler(lambda ctx, e: None, None)

def err(e):
    t = e.err or (None,) * 9
    return {"code": t[0], "domain": t[1], "message": t[2], "level": t[3], "str1": t[4], "str2": t[5],
            "str3": t[6], "int1": t[7], "int2": t[8], "text": str(e)}

def open_auth(uri, user=None, password=None, flags=0):
    def cb(creds, opaque):
        for c in creds:
            if c[0] == libvirt.VIR_CRED_AUTHNAME:
                c[4] = user
            elif c[0] in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                c[4] = password
        return 0
    kinds = [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT]
    return libvirt.openAuth(uri, [kinds, cb, None], flags)

def run_event_loop():
    import threading
    libvirt.virEventRegisterDefaultImpl()
    def _run():
        while True:
            libvirt.virEventRunDefaultImpl()
    threading.Thread(target=_run, daemon=True).start()

ns = {"libvirt": libvirt, "json": json, "args": req["args"], "err": err, "open_auth": open_auth,
      "run_event_loop": run_event_loop, "__name__": "__peer__"}
try:
    exec(compile(req["code"], "<peer snippet>", "exec"), ns)
    out = {"ok": True, "has_result": "result" in ns, "result": ns.get("result")}
except libvirt.libvirtError as e:
    out = {"ok": False, "libvirtError": err(e), "err": list(e.err) if e.err else None}
except BaseException:
    out = {"ok": False, "exception": traceback.format_exc()}
sys.stdout.flush()
sys.stdout.write("\n" + MARK + json.dumps(out) + "\n")
""".replace("MARK", repr(_MARK))


class PeerError(RuntimeError):
    """The peer snippet failed (not with a libvirtError), or its output was not JSON."""


class PeerLibvirtError(Exception):
    """The peer snippet raised ``libvirt.libvirtError``; mirrors its accessors."""

    def __init__(self, info: Mapping[str, Any], err: Optional[list[Any]]) -> None:
        super().__init__(info.get("text"))
        self.info = dict(info)
        self.err = tuple(err) if err is not None else None

    def get_error_code(self) -> Optional[int]:
        return self.info.get("code")

    def get_error_domain(self) -> Optional[int]:
        return self.info.get("domain")

    def get_error_message(self) -> Optional[str]:
        return self.info.get("message")

    def get_error_level(self) -> Optional[int]:
        return self.info.get("level")


class Peer:
    def __init__(self, python: str = PYTHON) -> None:
        self.python = python

    def check(self) -> str:
        """Raise :class:`MissingTool` unless the C binding imports; return its version string."""
        if not os.path.exists(self.python):
            raise MissingTool(f"{self.python} missing (apt-get install python3)")
        r = subprocess.run(
            [self.python, "-I", "-c", "import libvirt; print(libvirt.getVersion())"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if r.returncode != 0:
            raise MissingTool(
                f"the C binding does not import under {self.python} "
                f"(apt-get install --no-install-recommends python3-libvirt): {r.stderr.strip()[-300:]}"
            )
        return r.stdout.strip()

    def run(
        self, code: str, *, timeout: float = 60.0, env: Optional[Mapping[str, str]] = None, **args: Any
    ) -> tuple[Any, str]:
        """Run ``code``; return ``(result, stdout before the result)``."""
        e = dict(os.environ)
        e.update(env or {})
        r = subprocess.run(
            [self.python, "-I", "-c", _WRAPPER],
            input=json.dumps({"code": code, "args": args}),
            capture_output=True, text=True, timeout=timeout, env=e, check=False,
        )
        head, sep, tail = r.stdout.rpartition(_MARK)
        if not sep:
            raise PeerError(f"peer died (rc={r.returncode}) without a result:\n{r.stdout}\n{r.stderr}")
        out = json.loads(tail)
        head = head[:-1] if head.endswith("\n") else head
        if not out["ok"]:
            if "libvirtError" in out:
                raise PeerLibvirtError(out["libvirtError"], out["err"])
            raise PeerError(f"peer snippet failed:\n{out['exception']}{r.stderr}")
        if out["has_result"]:
            return out["result"], head
        lines = [ln for ln in head.splitlines() if ln.strip()]
        if not lines:
            return None, head
        try:
            return json.loads(lines[-1]), head
        except ValueError as exc:
            raise PeerError(f"peer's last stdout line is not JSON: {lines[-1][:200]!r}") from exc

    def __call__(self, code: str, *, timeout: float = 60.0, env: Optional[Mapping[str, str]] = None,
                 **args: Any) -> Any:
        return self.run(code, timeout=timeout, env=env, **args)[0]
