"""GSSAPI (Kerberos) against a REAL MIT KDC and a REAL libvirtd, both private to this test session.

Needs (Debian): krb5-kdc krb5-admin-server krb5-user libsasl2-modules-gssapi-mit,
and python-gssapi (``pip install 'pyvirtrpc[gssapi]'``, built against libkrb5-dev).
Without them the tests are skipped with that reason (a failure under CI).

The KDC (realm PVR.TEST, random port on 127.0.0.1) holds alice and
libvirt/<hostname>; libvirtd is started from libvirtd-lab.sh's ``prepare``
command with KRB5_CONFIG/KRB5_KTNAME added, offering GSSAPI and DIGEST-MD5.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_sasl_daemon import LAB_SCRIPTS, Raw, _unavailable, expected_hostname

from pyvirtrpc._gen import constants as C
from pyvirtrpc._gen import remote as R
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.sasl import Credentials, SaslClient

pytestmark = pytest.mark.daemon

REALM = "PVR.TEST"
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "libvirtd", "unshare")


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(pred: Any, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


# TODO(harness): switch to a conftest Kerberos lab fixture
@pytest.fixture(scope="module")
def krb_lab() -> Iterator[dict[str, Any]]:
    missing = [t for t in TOOLS if _which(t) is None]
    if importlib.util.find_spec("gssapi") is None:
        missing.append("python-gssapi")
    if not any(Path(d, "libgssapiv2.so.2").exists() for d in ("/usr/lib/x86_64-linux-gnu/sasl2", "/usr/lib/sasl2")):
        missing.append("libsasl2-modules-gssapi-mit")
    script = next((p for p in LAB_SCRIPTS if p.exists()), None)
    if script is None:
        missing.append("libvirtd-lab.sh")
    if missing or os.geteuid() != 0:
        _unavailable(f"GSSAPI lab needs root and: {', '.join(missing) or 'root'}")
    assert script is not None
    host = socket.gethostname()
    k = Path(tempfile.mkdtemp(prefix="pvr-krb-", dir="/tmp"))
    d = k / "lab"
    port = _free_port()
    (k / "krb5.conf").write_text(
        "[libdefaults]\n"
        f"  default_realm = {REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n"
        "  rdns = false\n  dns_canonicalize_hostname = false\n  udp_preference_limit = 1\n"
        f"[realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n"
        f"[domain_realm]\n  {host} = {REALM}\n"
    )
    (k / "kdc.conf").write_text(
        f"[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n"
        f"[realms]\n  {REALM} = {{\n    database_name = {k}/principal\n    key_stash_file = {k}/stash\n"
        f"    acl_file = {k}/kadm5.acl\n  }}\n[logging]\n  kdc = FILE:{k}/kdc.log\n"
    )
    env = dict(os.environ, KRB5_CONFIG=str(k / "krb5.conf"), KRB5_KDC_PROFILE=str(k / "kdc.conf"),
               KRB5CCNAME=f"FILE:{k}/ccache")
    kdc_pid = None
    lab_started = False
    try:
        def run(*argv: str, stdin: str | None = None) -> None:
            subprocess.run(argv, env=env, input=stdin, text=True, check=True, capture_output=True, timeout=60)

        run("kdb5_util", "create", "-s", "-P", "master-pw", "-r", REALM)
        run("kadmin.local", "-r", REALM, "-q", "addprinc -pw wonderland alice")
        run("kadmin.local", "-r", REALM, "-q", f"addprinc -randkey libvirt/{host}")
        run("kadmin.local", "-r", REALM, "-q", f"ktadd -k {k}/libvirt.keytab libvirt/{host}")
        run("krb5kdc", "-P", str(k / "kdc.pid"))
        assert _wait(lambda: (k / "kdc.pid").exists() and (k / "kdc.pid").read_text().strip())
        kdc_pid = int((k / "kdc.pid").read_text())
        run("kinit", "alice", stdin="wonderland\n")

        tcp = _free_port()
        subprocess.run(["bash", str(script), "prepare", "--tcp-port", str(tcp), "--no-tls", "--auth-unix-rw", "sasl",
                        "--mechs", "gssapi digest-md5", str(d)], check=True, capture_output=True, timeout=120)
        daemon_env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
                      f"SASL_CONF_PATH={d}/sasl2", f"LIBVIRT_DRIVER_DIR={d}/nodrivers",
                      f"KRB5_CONFIG={k}/krb5.conf", f"KRB5_KTNAME=FILE:{k}/libvirt.keytab"]
        daemon = ["/usr/sbin/libvirtd", "--daemon", "--listen", "--config", f"{d}/libvirtd.conf",
                  "--pid-file", f"{d}/libvirtd.pid"]
        # a private /run, as libvirtd-lab.sh does, keeps the system token off the host
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs -o mode=0755 lab-run /run && exec "$@"', "lab", *daemon_env, *daemon],
                       check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        lab_started = True
        sock = d / "run" / "libvirt-sock"

        def ready() -> bool:
            if not sock.exists():
                return False
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=1).close()
                return True
            except OSError:
                return False

        assert _wait(ready), (d / "libvirtd.log").read_text(errors="replace")
        yield {"dir": k, "lab": d, "host": host, "tcp": tcp, "unix": str(sock), "env": env}
    finally:
        if lab_started:
            subprocess.run(["bash", str(script), "stop", str(d)], capture_output=True, timeout=60)
        if kdc_pid is not None:
            try:
                os.kill(kdc_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(k, ignore_errors=True)


@pytest.fixture
def krb_env(krb_lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for key in ("KRB5_CONFIG", "KRB5CCNAME"):
        monkeypatch.setenv(key, krb_lab["env"][key])
    return krb_lab


def test_gssapi_over_tcp_with_a_confidentiality_layer(krb_env: dict[str, Any]) -> None:
    conn = Raw(socket.create_connection(("127.0.0.1", krb_env["tcp"]), timeout=20))
    # a password is available, yet Cyrus ranks GSSAPI above DIGEST-MD5 (virsh takes it too)
    client = SaslClient(Credentials(authname="alice", password="wonderland"), host=krb_env["host"], secure=False)
    try:
        assert conn.authenticate(client) == "GSSAPI"
        assert client.ssf >= 56 and conn.layer is not None and conn.layer.ssf == client.ssf
        assert conn.hostname() == expected_hostname()
        # bigger than any one wrap token: split by us, and by the daemon on the way back
        text = "k" * 150_000
        xml = (f"<domain type='test'><name>gss-big</name><memory>8192</memory>"
               f"<os><type>hvm</type></os><description>{text}</description></domain>")
        dom = conn.call(R.REMOTE_PROC_DOMAIN_DEFINE_XML, R.remote_domain_define_xml_args(xml)).dom
        try:
            got = conn.call(R.REMOTE_PROC_DOMAIN_GET_XML_DESC, R.remote_domain_get_xml_desc_args(dom, 0)).xml
            assert text in got
        finally:
            conn.call(R.REMOTE_PROC_DOMAIN_UNDEFINE, R.remote_domain_undefine_args(dom))
    finally:
        conn.close()


def test_gssapi_over_unix_without_a_layer(krb_env: dict[str, Any]) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(krb_env["unix"])
    conn = Raw(s)
    client = SaslClient(Credentials(), host=krb_env["host"], secure=True)
    try:
        assert conn.authenticate(client) == "GSSAPI"
        assert client.ssf == 0 and conn.layer is None
        assert conn.hostname() == expected_hostname()
    finally:
        conn.close()


def test_gssapi_without_a_ticket_reports_like_virsh(krb_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = f"FILE:{krb_env['dir']}/no-such-ccache"
    monkeypatch.setenv("KRB5CCNAME", cache)
    conn = Raw(socket.create_connection(("127.0.0.1", krb_env["tcp"]), timeout=20))
    try:
        with pytest.raises(libvirtError) as ei:
            conn.authenticate(SaslClient(Credentials(), host=krb_env["host"], secure=False))
    finally:
        conn.sock.close()
    err = ei.value
    assert (err.get_error_code(), err.get_error_domain()) == (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC)
    env = dict(krb_env["env"], KRB5CCNAME=cache)
    uri = f"test+tcp://{krb_env['host']}:{krb_env['tcp']}/default"
    p = subprocess.run(["virsh", "-c", uri, "hostname"], env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1] == f"error: {err}"


def test_c_client_agrees_on_gssapi(krb_env: dict[str, Any]) -> None:
    """virsh, with the same ticket and no password at hand, authenticates with GSSAPI too."""
    uri = f"test+tcp://{krb_env['host']}:{krb_env['tcp']}/default"
    p = subprocess.run(["virsh", "-c", uri, "hostname"], env=krb_env["env"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == expected_hostname()  # no password anywhere: only GSSAPI could do it
