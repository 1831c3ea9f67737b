"""The SASL sub-handshake of an open (remote_driver.c ``remoteAuthSASL``), as steps.

Contract: :func:`sasl_steps` is a generator of handshake steps (see
:mod:`pyvirtrpc.core.handshake`) that returns a :class:`SaslResult`
(``sasl_ssf``, ``sasl_mech``):

1. ``AUTH_SASL_INIT`` gives the server's mechanism list;
2. the mechanism is chosen as libvirt + Cyrus do
   (:func:`pyvirtrpc.sasl.choose`): a forced ``auth=sasl.MECH`` must occur
   in the list (libvirt's case-sensitive ``strstr``: AUTH_FAILED/REMOTE
   "SASL mechanism %s not supported by server"), then the strongest one the
   credentials can serve;
3. ``AUTH_SASL_START`` then ``AUTH_SASL_STEP`` until both sides are
   complete (``nil`` is "no data", unlike empty data); the server may
   complete with data (``rspauth``), which the client checks locally;
4. on an insecure transport (plain TCP) the negotiated SSF must be >= 56
   (AUTH_FAILED/REMOTE "negotiation SSF %d was not strong enough"; below
   112 libvirt's deprecation warning is logged);
5. a layer with SSF > 0 is installed (``InstallLayer``) before any other
   packet.

Security properties are libvirt's: on a secure transport (TLS, unix, ssh)
min/max SSF 0, so no layer; on plain TCP min 56, max 100000 and no
plaintext or anonymous mechanisms.  Over TLS the channel's key size in bits
is the external SSF.

Credentials follow ``remoteAuthInteract``: a mechanism may only prompt for
the ``VIR_CRED_*`` types the application's ``auth`` lists (libvirt makes one
Cyrus callback per type; ``open()`` without ``auth`` offers none); each
prompt is first answered from auth.conf (``$LIBVIRT_AUTH_FILE``, the URI's
``authfile=``, ``$XDG_CONFIG_HOME/libvirt/auth.conf``,
``/etc/libvirt/auth.conf``; ``[auth-libvirt-HOST]`` or
``[auth-libvirt-default]`` -> ``[credentials-NAME]``, keys ``username``,
``authname``, ``password``, ``realm``), read only when a prompt comes; the
rest go to the application's callback in one batch, as libvirt-python
calls it: ``callback([[type, prompt, challenge, defresult, None], ...],
cbdata)`` filling index 4 and returning 0.  No callback: AUTH_FAILED/REMOTE
"No authentication callback available"; a callback returning < 0 (or
raising, or returning a non-int): "Failed to collect auth credentials".

Sans I/O: no socket, no clock; passwords are never logged nor put in an
error.
"""

from __future__ import annotations

from .._gen import constants as C
from .._gen import remote as R
from ..sasl import Credentials, SaslClient
from ..sasl._common import remote_auth_error
from .handshake import Call, InstallLayer, Log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Generator, Optional

    from ..config import AuthConfig
    from ..sasl import CredentialRequest, SecurityProps
    from .handshake import Step

#: the VIR_CRED_* types libvirt turns into Cyrus callbacks (remoteAuthCredVir2SASL)
SASL_CRED_TYPES = frozenset(
    (
        C.VIR_CRED_USERNAME,
        C.VIR_CRED_AUTHNAME,
        C.VIR_CRED_LANGUAGE,
        C.VIR_CRED_CNONCE,
        C.VIR_CRED_PASSPHRASE,
        C.VIR_CRED_ECHOPROMPT,
        C.VIR_CRED_NOECHOPROMPT,
        C.VIR_CRED_REALM,
    )
)

#: auth.conf key per credential type (remoteAuthFillFromConfig)
CONF_KEYS = {
    C.VIR_CRED_USERNAME: "username",
    C.VIR_CRED_AUTHNAME: "authname",
    C.VIR_CRED_PASSPHRASE: "password",
    C.VIR_CRED_REALM: "realm",
}


class SaslResult:
    """What the open keeps from SASL: the negotiated SSF and mechanism."""

    __slots__ = ("sasl_ssf", "sasl_mech")

    def __init__(self, ssf: int, mech: Optional[str]) -> None:
        self.sasl_ssf = ssf
        self.sasl_mech = mech

    def __repr__(self) -> str:
        return f"SaslResult(sasl_ssf={self.sasl_ssf}, sasl_mech={self.sasl_mech!r})"


def _split_auth(auth: Any) -> tuple[frozenset[int], Any, Any]:
    """libvirt-python's ``[credtypes, callback, cbdata]`` (or None)."""
    if auth is None:
        return frozenset(), None, None
    try:
        credtypes, callback, cbdata = auth
    except (TypeError, ValueError):
        raise remote_auth_error("the auth argument must be [credtypes, callback, cbdata]") from None
    types = set()
    for t in credtypes or ():
        try:
            types.add(int(t))
        except (TypeError, ValueError):
            continue
    return frozenset(types), callback, cbdata


class AuthCredentials(Credentials):
    """Credentials answered from auth.conf, then from the application's callback."""

    __slots__ = ("host", "authfile", "app_callback", "cbdata", "_config", "_config_loaded", "env")

    def __init__(
        self,
        host: str,
        authfile: Optional[str],
        credtypes: frozenset[int],
        callback: Any,
        cbdata: Any,
        env: Any = None,
    ) -> None:
        super().__init__(supported=credtypes & SASL_CRED_TYPES)
        self.host = host
        self.authfile = authfile
        self.app_callback = callback
        self.cbdata = cbdata
        self.env = env
        self._config: Optional[AuthConfig] = None
        self._config_loaded = False

    def __repr__(self) -> str:  # never shows any value
        return f"<AuthCredentials host={self.host!r} supported={sorted(self.supported)}>"

    def _auth_config(self) -> Optional[AuthConfig]:
        if not self._config_loaded:
            from ..config import AuthConfig, find_auth_file

            self._config_loaded = True
            params = [("authfile", self.authfile)] if self.authfile is not None else None
            path = find_auth_file(params, env=self.env)
            if path is not None:
                self._config = AuthConfig.load(path)
        return self._config

    def collect(self, requests: list[CredentialRequest]) -> None:
        """remoteAuthInteract: auth.conf first, then one callback for the rest."""
        config = None
        for req in requests:
            key = CONF_KEYS.get(req.type)
            if key is None or req.result is not None:
                continue
            if config is None:
                config = self._auth_config()
                if config is None:
                    break
            value = config.lookup("libvirt", self.host, key)
            if value is not None:
                req.result = value
        pending = [r for r in requests if r.result is None]
        if not pending:
            return
        cb = self.app_callback
        if cb is None:
            raise remote_auth_error("No authentication callback available")
        items: list[list[Any]] = [[r.type, r.prompt, r.challenge, r.defresult, None] for r in pending]
        try:
            ret = cb(items, self.cbdata)
        except Exception:
            # The application's exception may quote what the user typed:
            # libvirt-python prints it, we only report the failure.
            raise remote_auth_error("Failed to collect auth credentials") from None
        if isinstance(ret, bool) or not isinstance(ret, int) or ret < 0:
            raise remote_auth_error("Failed to collect auth credentials")
        if ret != 0:
            return  # libvirt-python copies the answers only for 0
        for req, item in zip(pending, items):
            value = item[4] if len(item) > 4 else None
            req.result = value if isinstance(value, str) else None


def make_credentials(plan: Any, auth: Any, env: Any = None) -> AuthCredentials:
    credtypes, callback, cbdata = _split_auth(auth)
    return AuthCredentials(plan.host or "localhost", plan.authfile, credtypes, callback, cbdata, env=env)


def sasl_steps(
    plan: Any, auth: Any, channel: Any, mech: Optional[str], *, props: Optional[SecurityProps] = None
) -> Generator[Step, Any, SaslResult]:
    """remoteAuthSASL as handshake steps (see the module docstring).

    ``props`` replaces libvirt's security properties (tests use it to make
    the client pick 3des or rc4-56 against a real daemon).
    """
    creds = make_credentials(plan, auth)
    secure = bool(getattr(channel, "is_secure", False))
    external = int(getattr(channel, "tls_key_bits", 0) or 0)
    client = SaslClient(
        creds, host=plan.host or "localhost", secure=secure, external_ssf=external, forced=mech, props=props
    )
    yield Log(10, "remote", "Client initialize SASL authentication (secure=%d, external SSF %d)", secure, external)
    init = yield Call(R.REMOTE_PROC_AUTH_SASL_INIT)
    name, data = client.start(init.mechlist)
    yield Log(10, "remote", "Server start negotiation with mech %s. Data %d bytes", name, len(data) if data else 0)
    reply = yield Call(
        R.REMOTE_PROC_AUTH_SASL_START,
        R.remote_auth_sasl_start_args(name, 1 if data is None else 0, data or b""),
    )
    while True:
        out = client.receive(bool(reply.complete), None if reply.nil else bytes(reply.data))
        if client.done:
            break
        reply = yield Call(
            R.REMOTE_PROC_AUTH_SASL_STEP,
            R.remote_auth_sasl_step_args(1 if out is None else 0, out or b""),
        )
    if client.warning:
        yield Log(30, "remote", "%s", client.warning)
    ssf = client.ssf
    yield Log(10, "remote", "SASL authentication complete: mech %s, SSF %d", name, ssf)
    layer = client.security_layer()
    if layer is not None:
        yield InstallLayer(layer)
    return SaslResult(ssf, name)
