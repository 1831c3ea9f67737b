"""Logging through libvirt's environment variables (chapter 3.8), against the real daemon.

Each case runs a small program in a fresh interpreter (the variables are
read once per process, as libvirt does) and looks at what it logged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = r"""
import sys
import pyvirtrpc as libvirt
libvirt.registerErrorHandler(lambda ctx, err: None, None)
uri, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
def cb(creds, opaque):
    for c in creds:
        c[4] = user if c[0] == libvirt.VIR_CRED_AUTHNAME else password
    return 0
conn = libvirt.openAuth(uri, [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], cb, None], 0)
print(conn.getHostname())
try:
    conn.lookupByName("no-such-domain")
except libvirt.libvirtError:
    pass
conn.close()
print("logging imported" if "logging" in sys.modules else "logging not imported")
"""


def run(uri: str, env: dict[str, str], user: str = "", password: str = "") -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LIBVIRT_")}
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, uri, user, password],
        capture_output=True, text=True, timeout=60, env=full, check=True,
    )


def test_debug_to_a_file_logs_every_packet_decoded(lab: Any, tmp_path: Path) -> None:
    log = tmp_path / "client.log"
    r = run(lab.info["uris"]["unix"], {"LIBVIRT_DEBUG": "1", "LIBVIRT_LOG_OUTPUTS": f"1:file:{log}"})
    assert r.stdout.splitlines()[0] == "vm"
    text = log.read_text()
    # program, procedure name, type, serial, status and size, both directions
    assert "> prog=0x20008086 proc=REMOTE_PROC_AUTH_LIST type=CALL serial=0 status=OK size=28" in text
    assert "< prog=0x20008086 proc=REMOTE_PROC_CONNECT_GET_HOSTNAME type=REPLY" in text
    assert "proc=REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME type=REPLY" in text and "status=ERROR" in text
    assert "proc=REMOTE_PROC_CONNECT_CLOSE type=CALL" in text
    assert " : pyvirtrpc.rpc : " in text  # the category, as libvirt's log lines carry theirs
    assert r.stderr == ""  # only the file output was asked for


def test_stderr_output_and_filters(lab: Any) -> None:
    uri = lab.info["uris"]["unix"]
    # default priority error, but rpc at debug: the packets are shown
    r = run(uri, {"LIBVIRT_DEBUG": "error", "LIBVIRT_LOG_FILTERS": "1:rpc", "LIBVIRT_LOG_OUTPUTS": "1:stderr"})
    assert "proc=REMOTE_PROC_CONNECT_GET_HOSTNAME" in r.stderr
    # a filter for another category only: no packet lines
    r = run(uri, {"LIBVIRT_DEBUG": "error", "LIBVIRT_LOG_FILTERS": "1:remote", "LIBVIRT_LOG_OUTPUTS": "1:stderr"})
    assert "proc=REMOTE_PROC" not in r.stderr
    # an output above debug drops debug records even when the level lets them through
    r = run(uri, {"LIBVIRT_DEBUG": "1", "LIBVIRT_LOG_OUTPUTS": "3:stderr"})
    assert "proc=REMOTE_PROC" not in r.stderr
    # LIBVIRT_DEBUG alone logs to stderr (libvirt's default output)
    r = run(uri, {"LIBVIRT_DEBUG": "debug"})
    assert "proc=REMOTE_PROC_CONNECT_OPEN" in r.stderr


def test_invalid_values_are_ignored_with_a_warning(lab: Any) -> None:
    r = run(lab.info["uris"]["unix"], {"LIBVIRT_DEBUG": "loud", "LIBVIRT_LOG_FILTERS": "x:rpc 1:rpc"})
    assert r.stdout.splitlines()[0] == "vm"
    assert "ignoring invalid LIBVIRT_DEBUG value 'loud'" in r.stderr
    assert "ignoring invalid LIBVIRT_LOG_FILTERS entry 'x:rpc'" in r.stderr
    assert "proc=REMOTE_PROC_CONNECT_GET_HOSTNAME" in r.stderr  # the valid filter still applies


def test_no_variables_no_logging(lab: Any) -> None:
    r = run(lab.info["uris"]["unix"], {})
    assert r.stdout.splitlines() == ["vm", "logging not imported"]
    assert r.stderr == ""


def test_secrets_are_never_logged(lab_sasl: Any, tmp_path: Path) -> None:
    """A SASL login at debug level logs mechanisms and sizes, never the password or SASL data."""
    info = lab_sasl.info
    log = tmp_path / "sasl.log"
    user, password = info["sasl"]["user"], info["sasl"]["password"]
    for mech in ("SCRAM-SHA-256", "DIGEST-MD5", "PLAIN"):
        uri = info["uris"]["unix"] + f"&auth=sasl.{mech}"
        r = run(uri, {"LIBVIRT_DEBUG": "1", "LIBVIRT_LOG_OUTPUTS": f"1:file:{log}"}, user, password)
        assert r.stdout.splitlines()[0] == "vm"
    text = log.read_text()
    assert "SASL authentication complete: mech DIGEST-MD5" in text
    assert "proc=REMOTE_PROC_AUTH_SASL_STEP" in text
    assert password not in text
    assert "wonderland" not in text and "nonce=" not in text and "n,," not in text
