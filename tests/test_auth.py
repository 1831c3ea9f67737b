"""Credentials for SASL: the openAuth callback and auth.conf, side by side with the C binding.

The C client asks Cyrus for the credentials a mechanism needs, but only for
the ``VIR_CRED_*`` types the application's callback accepts; each prompt
is answered from auth.conf first (``LIBVIRT_AUTH_FILE``, ``authfile=``,
``$XDG_CONFIG_HOME/libvirt/auth.conf``, ``/etc/libvirt/auth.conf``;
``[auth-libvirt-HOST]`` or ``[auth-libvirt-default]`` ->
``[credentials-NAME]``), and the callback gets the rest in one batch.  Every
case runs under both libraries and must give the same outcome, the same
prompts, and the same error.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest

import pyvirtrpc
from pyvirtrpc._gen import constants as C
from pyvirtrpc.core.auth import AuthCredentials
from pyvirtrpc.errors import libvirtError
from pyvirtrpc.sasl import CredentialRequest
from tests.harness.lab import Lab
from tests.harness.peer import Peer

TIMEOUT = 20.0
SECRET = "wonderland"

PEER_OPEN = """
calls = []
def cb(creds, opaque):
    calls.append([[c[0], c[1], c[2]] for c in creds])
    if args['behaviour'] == 'raise':
        raise RuntimeError('typed: ' + args['password'])
    if args['behaviour'] == 'none':
        return None
    if args['behaviour'] != 'noresult':
        for c in creds:
            if c[0] == libvirt.VIR_CRED_AUTHNAME:
                c[4] = args['user']
            elif c[0] == libvirt.VIR_CRED_PASSPHRASE:
                c[4] = args['password']
    return -1 if args['behaviour'] == 'minus1' else 0
try:
    if args['credtypes'] is None:
        c = libvirt.open(args['uri'])
    else:
        c = libvirt.openAuth(args['uri'], [args['credtypes'], None if args['behaviour'] == 'nocb' else cb, None], 0)
    result = {'ok': [c.getHostname(), c.isSecure(), c.isEncrypted()], 'calls': calls}
    c.close()
except libvirt.libvirtError as e:
    result = {'err': err(e), 'calls': calls}
"""

DEFAULT_TYPES = [C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE]


def ours(
    uri: str,
    credtypes: Optional[list[int]],
    behaviour: str,
    user: str,
    password: str,
) -> dict[str, Any]:
    calls: list[Any] = []

    def cb(creds: list[list[Any]], opaque: Any) -> Any:
        calls.append([c[:3] for c in creds])
        if behaviour == "raise":
            raise RuntimeError("typed: " + password)
        if behaviour == "none":
            return None
        if behaviour != "noresult":
            for c in creds:
                if c[0] == C.VIR_CRED_AUTHNAME:
                    c[4] = user
                elif c[0] == C.VIR_CRED_PASSPHRASE:
                    c[4] = password
        return -1 if behaviour == "minus1" else 0

    try:
        if credtypes is None:
            conn = pyvirtrpc.open(uri, timeout=TIMEOUT)
        else:
            auth = [credtypes, None if behaviour == "nocb" else cb, None]
            conn = pyvirtrpc.openAuth(uri, auth, 0, timeout=TIMEOUT)
    except libvirtError as e:
        assert e.err is not None
        t = e.err
        return {"err": {"code": t[0], "domain": t[1], "message": t[2], "int1": t[7]}, "calls": calls}
    try:
        return {"ok": [conn.getHostname(), conn.isSecure(), conn.isEncrypted()], "calls": calls}
    finally:
        conn.close()


def compare(
    peer: Peer,
    monkeypatch: pytest.MonkeyPatch,
    uri: str,
    *,
    credtypes: Optional[list[int]] = DEFAULT_TYPES,
    behaviour: str = "answer",
    user: str = "alice",
    password: str = SECRET,
    env: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """Both libraries, same environment; outcomes and prompts must match. Returns ours."""
    env = env or {}
    c = peer(PEER_OPEN, uri=uri, credtypes=credtypes, behaviour=behaviour, user=user, password=password, env=env)
    for k in ("LIBVIRT_AUTH_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mine = ours(uri, credtypes, behaviour, user, password)
    if "ok" in c:
        assert mine.get("ok") == c["ok"], (mine, c)
    else:
        want = {k: c["err"][k] for k in ("code", "domain", "message", "int1")}
        assert mine.get("err") == want, (mine, c)
    # the same prompts, in the same batches: type and prompt text (and the
    # challenge text where our SASL mechanisms provide it)
    assert [[x[:2] for x in batch] for batch in mine["calls"]] == [[x[:2] for x in batch] for batch in c["calls"]]
    return mine


def write_auth(path: Path, groups: dict[str, dict[str, str]]) -> Path:
    text = "".join(f"[{g}]\n" + "".join(f"{k}={v}\n" for k, v in kv.items()) + "\n" for g, kv in groups.items())
    path.write_text(text)
    return path


GOOD = {"authname": "alice", "password": SECRET}
BAD = {"authname": "alice", "password": "not-it"}


# ---------------------------------------------------------------- auth.conf
def test_auth_file_answers_everything(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    # the callback would fail: it must not even be called
    r = compare(peer, monkeypatch, lab.uris["tcp"], behaviour="minus1", env={"LIBVIRT_AUTH_FILE": lab.authfile})
    assert r["ok"] == ["vm", 1, 1] and r["calls"] == []


def test_authfile_uri_parameter(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    r = compare(peer, monkeypatch, f"{lab.uris['tcp']}?authfile={lab.authfile}", behaviour="minus1")
    assert r["ok"] == ["vm", 1, 1]


def test_libvirt_auth_file_beats_authfile(
    lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = write_auth(tmp_path / "bad.conf", {"credentials-x": BAD, "auth-libvirt-default": {"credentials": "x"}})
    uri = f"{lab.uris['tcp']}?authfile={lab.authfile}"
    r = compare(peer, monkeypatch, uri, behaviour="minus1", env={"LIBVIRT_AUTH_FILE": str(bad)})
    assert r["err"]["message"] == "authentication failed: authentication failed"


def test_xdg_config_home(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "libvirt").mkdir()
    write_auth(
        tmp_path / "libvirt" / "auth.conf", {"credentials-x": GOOD, "auth-libvirt-default": {"credentials": "x"}}
    )
    r = compare(peer, monkeypatch, lab.uris["tcp"], behaviour="minus1", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert r["ok"] == ["vm", 1, 1]


def test_host_group_before_default(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = write_auth(
        tmp_path / "auth.conf",
        {
            "credentials-good": GOOD,
            "credentials-bad": BAD,
            "auth-libvirt-127.0.0.1": {"credentials": "bad"},
            "auth-libvirt-default": {"credentials": "good"},
        },
    )
    r = compare(peer, monkeypatch, lab.uris["tcp"], behaviour="minus1", env={"LIBVIRT_AUTH_FILE": str(conf)})
    assert r["err"]["message"] == "authentication failed: authentication failed"
    # "localhost" is another host: the default group answers
    localhost = lab.uris["tcp"].replace("127.0.0.1", "localhost")
    r = compare(peer, monkeypatch, localhost, behaviour="minus1", env={"LIBVIRT_AUTH_FILE": str(conf)})
    assert r["ok"] == ["vm", 1, 1]


def test_partial_auth_file_asks_the_rest(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = write_auth(
        tmp_path / "auth.conf", {"credentials-x": {"authname": "alice"}, "auth-libvirt-default": {"credentials": "x"}}
    )
    r = compare(peer, monkeypatch, lab.uris["tcp"], env={"LIBVIRT_AUTH_FILE": str(conf)})
    assert r["ok"] == ["vm", 1, 1]
    assert [[x[:2] for x in b] for b in r["calls"]] == [[[C.VIR_CRED_PASSPHRASE, "Please enter your password"]]]


def test_auth_file_errors(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = write_auth(tmp_path / "auth.conf", {"auth-libvirt-default": {"credentials": "missing"}})
    r = compare(peer, monkeypatch, lab.uris["tcp"], env={"LIBVIRT_AUTH_FILE": str(conf)})
    assert r["err"]["code"] == C.VIR_ERR_CONF_SYNTAX
    conf = write_auth(tmp_path / "auth2.conf", {"auth-libvirt-default": {"nothing": "here"}})
    r = compare(peer, monkeypatch, lab.uris["tcp"], env={"LIBVIRT_AUTH_FILE": str(conf)})
    assert r["err"]["code"] == C.VIR_ERR_CONF_SYNTAX


def test_auth_file_over_tls_sasl(lab_sasl: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    for mech in ("SCRAM-SHA-256", "PLAIN"):
        uri = f"{lab_sasl.uris['tls']}&auth=sasl.{mech}"
        r = compare(peer, monkeypatch, uri, behaviour="minus1", env={"LIBVIRT_AUTH_FILE": lab_sasl.authfile})
        assert r["ok"] == ["vm", 1, 1] and r["calls"] == []


# ----------------------------------------------------------------- callback
def test_prompts(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    r = compare(peer, monkeypatch, lab.uris["tcp"])
    assert [[x[:2] for x in b] for b in r["calls"]] == [
        [
            [C.VIR_CRED_AUTHNAME, "Please enter your authentication name"],
            [C.VIR_CRED_PASSPHRASE, "Please enter your password"],
        ]
    ]
    types = [C.VIR_CRED_USERNAME, C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE, C.VIR_CRED_REALM, C.VIR_CRED_EXTERNAL]
    r = compare(peer, monkeypatch, lab.uris["tcp"], credtypes=types)
    assert [x[0] for x in r["calls"][0]] == [C.VIR_CRED_USERNAME, C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_prompts_per_mechanism(
    lab: Lab, lab_sasl: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    mechs = ["DIGEST-MD5"] if transport == "tcp" else ["SCRAM-SHA-256", "SCRAM-SHA-1", "DIGEST-MD5", "PLAIN"]
    for mech in mechs:
        base = lab.uris["tcp"] + "?" if transport == "tcp" else lab_sasl.uris["tls"] + "&"
        compare(peer, monkeypatch, f"{base}auth=sasl.{mech}", credtypes=[1, 2, 5])


@pytest.mark.parametrize("behaviour", ["minus1", "raise", "nocb", "noresult"])
def test_callback_failures(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    r = compare(peer, monkeypatch, lab.uris["tcp"], behaviour=behaviour)
    assert "err" in r
    assert SECRET not in r["err"]["message"]
    if behaviour in ("minus1", "raise"):
        assert r["err"]["message"] == "authentication failed: Failed to collect auth credentials"
    if behaviour == "nocb":
        assert r["err"]["message"] == "authentication failed: No authentication callback available"


def test_callback_returning_none(lab: Lab) -> None:
    # libvirt-python leaves a TypeError set and its openAuth raises SystemError;
    # here it is the failed callback it means
    r = ours(lab.uris["tcp"], DEFAULT_TYPES, "none", "alice", SECRET)
    assert r["err"] == {
        "code": C.VIR_ERR_AUTH_FAILED,
        "domain": C.VIR_FROM_REMOTE,
        "message": "authentication failed: Failed to collect auth credentials",
        "int1": -1,
    }


def test_open_without_auth_offers_no_callbacks(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    # libvirt.open() gives Cyrus no callbacks at all, so auth.conf is never asked
    r = compare(peer, monkeypatch, lab.uris["tcp"], credtypes=None, env={"LIBVIRT_AUTH_FILE": lab.authfile})
    assert r["err"]["message"].endswith("No worthy mechs found)")


@pytest.mark.parametrize("user_env,ok", [("alice", True), ("mallory", False)])
def test_authname_from_the_environment(
    lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, user_env: str, ok: bool
) -> None:
    # a callback for the password only: Cyrus takes the authentication name from $USER
    r = compare(peer, monkeypatch, lab.uris["tcp"], credtypes=[C.VIR_CRED_PASSPHRASE], env={"USER": user_env})
    assert ("ok" in r) is ok


def test_wrong_password_is_not_in_the_error(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    r = compare(peer, monkeypatch, lab.uris["tcp"], password="hunter2-secret")
    assert "hunter2" not in repr(r["err"])


# ---------------------------------------------------------- auth type choice
@pytest.mark.parametrize(
    "auth,message",
    [
        ("polkit", "authentication failed: requested authentication type polkit rejected"),
        ("foo", "authentication failed: unknown authentication type foo"),
    ],
)
def test_forced_auth_types(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch, auth: str, message: str) -> None:
    r = compare(peer, monkeypatch, f"{lab.uris['tcp']}?auth={auth}")
    assert r["err"]["message"] == message and r["err"]["domain"] == C.VIR_FROM_REMOTE


def test_forced_sasl_on_a_none_socket(lab: Lab, peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    r = compare(peer, monkeypatch, f"{lab.uris['unix']}&auth=sasl")
    assert r["err"]["message"] == "authentication failed: requested authentication type sasl rejected"


# ------------------------------------------------------------- unit: lookup
def test_credentials_lookup_is_lazy_and_per_prompt(tmp_path: Path) -> None:
    conf = write_auth(
        tmp_path / "auth.conf",
        {"credentials-x": {"authname": "alice", "realm": "lab"}, "auth-libvirt-h": {"credentials": "x"}},
    )
    asked: list[list[Any]] = []

    def cb(items: list[list[Any]], opaque: Any) -> int:
        asked.append([i[:2] for i in items])
        for i in items:
            i[4] = "pw"
        return 0

    creds = AuthCredentials("h", str(conf), frozenset({2, 5, 8}), cb, None, env={})
    assert creds._config is None  # nothing read before a prompt
    reqs = [CredentialRequest(2, "a"), CredentialRequest(5, "p"), CredentialRequest(8, "r")]
    creds.collect(reqs)
    assert [r.result for r in reqs] == ["alice", "pw", "lab"]
    assert asked == [[[5, "p"]]]
    assert "pw" not in repr(creds) and "alice" not in repr(creds)


# ------------------------------------------------------------------ polkit
# libvirtd here has no polkit (it needs dbus and polkitd), so the fake daemon
# plays the server's side; both clients talk to it.
@pytest.mark.parametrize(
    "outcome",
    [
        None,
        (C.VIR_ERR_AUTH_CANCELLED, C.VIR_FROM_POLKIT, "authentication cancelled: no agent is available"),
        (C.VIR_ERR_AUTH_UNAVAILABLE, C.VIR_FROM_POLKIT, "authentication unavailable: no polkit agent available"),
        (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_POLKIT, "authentication failed: access denied by policy"),
    ],
)
@pytest.mark.parametrize("forced", [False, True])
def test_polkit(peer: Peer, tmp_path: Path, outcome: Optional[tuple[int, int, str]], forced: bool) -> None:
    from pyvirtrpc._gen import remote as R
    from tests.fakedaemon import Fail, FakeDaemon

    def polkit(p: Any, call: Any) -> Any:
        if outcome is not None:
            raise Fail(*outcome)
        return R.remote_auth_polkit_ret(1)

    with FakeDaemon(tmp_path) as fake:
        fake.handlers["AUTH_LIST"] = lambda p, call: R.remote_auth_list_ret([R.REMOTE_AUTH_POLKIT])
        fake.handlers["AUTH_POLKIT"] = polkit
        uri = fake.uri + ("&auth=polkit" if forced else "")
        code = (
            "try:\n"
            "    c = libvirt.open(args['uri']); result = {'ok': c.getHostname()}; c.close()\n"
            "except libvirt.libvirtError as e:\n"
            "    result = {'err': list(e.err)}\n"
        )
        c = peer(code, uri=uri)
        try:
            conn = pyvirtrpc.open(uri, timeout=TIMEOUT)
            mine: dict[str, Any] = {"ok": conn.getHostname()}
            conn.close()
        except libvirtError as e:
            assert e.err is not None
            mine = {"err": list(e.err)}
        assert mine == c
        for p in fake.peers:
            # FakeDaemon leaves a peer's socket open when the client hung up first
            p.sock.close()
    with warnings.catch_warnings():
        # ... and sometimes one more (a race in its accept thread): collect it here,
        # quietly, rather than let it surface as an unraisable warning in another test
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    if outcome is None:
        assert mine == {"ok": "fakehost"}
    else:
        assert mine["err"][:3] == list(outcome)
