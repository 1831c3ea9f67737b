"""Shared pieces of the SASL client: errors, credentials, security properties,
and the two base classes every mechanism and security layer derives from.

Contract:

* :class:`Mechanism` is one client-side SASL exchange, sans I/O.  Call
  :meth:`Mechanism.start` once (it returns the initial response, or None
  for "no data", which libvirt sends as ``nil=1``), then
  :meth:`Mechanism.step` with each server challenge (None for a server
  ``nil``) until :attr:`Mechanism.complete` is true.  ``start`` plays
  Cyrus's ``sasl_client_start`` and ``step`` its ``sasl_client_step``: a
  failure in either raises the libvirtError the C client reports
  (``VIR_ERR_AUTH_FAILED``, domain RPC, "Failed to start|step SASL
  negotiation: <code> (SASL(<code>): <text>: <detail>)").  After
  completion :attr:`Mechanism.ssf` is the negotiated layer's strength and
  :meth:`Mechanism.security_layer` returns the layer (None for SSF 0).
* :class:`SecurityLayer` wraps the byte stream after authentication:
  :meth:`SecurityLayer.encode` turns plaintext of any length into one or
  more SASL packets (``u32 len`` + body, at most :attr:`max_plaintext`
  plaintext bytes each); :meth:`SecurityLayer.feed` takes raw bytes cut
  anywhere and returns the plaintext of every packet completed so far.  A
  bad packet raises ``VIR_ERR_INTERNAL_ERROR``/RPC "failed to decode SASL
  data: -1 (generic failure)" exactly as libvirt's
  ``virNetSASLSessionDecode`` does, and the decoder stays failed.
* :class:`Credentials` answers the credential prompts a mechanism needs,
  with libvirt's rules (``remoteAuthInteract``): a mechanism asks only for
  the ``VIR_CRED_*`` types the source lists in ``supported`` (libvirt
  registers one Cyrus callback per type the application's auth callback
  accepts); values given up front (auth.conf) answer first, the callback
  gets the rest in one batch.

Secrets never appear in exception text and nothing here logs.  Randomness
comes from :mod:`secrets`.  No I/O, no clock, no threads.
"""

from __future__ import annotations

import os
from struct import Struct

from .._gen import constants as C
from ..errors import libvirtError, make_error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations only
    from typing import Callable, ClassVar, Iterable, Optional

    CredentialCallback = Callable[["list[CredentialRequest]"], object]

# ------------------------------------------------------------ Cyrus codes
# sasl.h result codes; the numbers appear in libvirt's error messages.
SASL_OK = 0
SASL_CONTINUE = 1
SASL_FAIL = -1
SASL_NOMECH = -4
SASL_BADPROT = -5
SASL_BADPARAM = -7
SASL_BADSERV = -10
SASL_WRONGMECH = -11
SASL_BADAUTH = -13
SASL_TOOWEAK = -15

_ERRSTRING = {
    SASL_FAIL: "generic failure",
    -2: "no memory available",
    -3: "overflowed buffer",
    SASL_NOMECH: "no mechanism available",
    SASL_BADPROT: "bad protocol / cancel",
    -6: "can't request information until later in exchange",
    SASL_BADPARAM: "invalid parameter supplied",
    -8: "transient failure (e.g., weak key)",
    -9: "integrity check failed",
    SASL_BADSERV: "server failed mutual authentication step",
    SASL_WRONGMECH: "mechanism doesn't support requested feature",
    SASL_BADAUTH: "authentication failure",
    -14: "authorization failure",
    SASL_TOOWEAK: "mechanism too weak for this user",
    -16: "encryption needed to use mechanism",
}

# sasl.h security flags (sasl_security_properties_t.security_flags)
SEC_NOPLAINTEXT = 0x0001
SEC_NOACTIVE = 0x0002
SEC_NODICTIONARY = 0x0004
SEC_FORWARD_SECRECY = 0x0008
SEC_NOANONYMOUS = 0x0010
SEC_PASS_CREDENTIALS = 0x0020
SEC_MUTUAL_AUTH = 0x0040

#: libvirt's ``maxbufsize`` on both sides (virnetsaslcontext.c: ``1 << 16``).
DEFAULT_MAXBUF = 65536
#: ``REMOTE_AUTH_SASL_DATA_MAX`` in remote_protocol.x.
SASL_DATA_MAX = 65536

_U32 = Struct(">I")


def errstring(code: int) -> str:
    """Cyrus's ``sasl_errstring`` for ``code``."""
    return _ERRSTRING.get(code, "undefined error!")


def negotiation_error(stage: str, code: int, detail: str = "") -> libvirtError:
    """What libvirt reports when ``sasl_client_start``/``_step`` fails.

    ``stage`` is "start" or "step"; ``detail`` is Cyrus's ``sasl_seterror``
    text (never a secret).  Shaped as virNetSASLSessionClientStart/Step:
    VIR_ERR_AUTH_FAILED, domain RPC, ``"%d (%s)"`` with ``sasl_errdetail``.
    """
    text = f"Failed to {stage} SASL negotiation: {code} (SASL({code}): {errstring(code)}: {detail})"
    return make_error(C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_RPC, text)


def remote_auth_error(detail: str) -> libvirtError:
    """An AUTH_FAILED raised by remote_driver.c itself (domain REMOTE)."""
    return make_error(C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_REMOTE, detail)


def decode_error(reason: str) -> libvirtError:
    """libvirt's ``virNetSASLSessionDecode`` failure (INTERNAL_ERROR, RPC).

    Cyrus answers every bad packet with SASL_FAIL, so the message is always
    "failed to decode SASL data: -1 (generic failure)".  ``reason`` (never
    secret) says what was wrong and is kept as the exception's ``reason``.
    """
    detail = f"failed to decode SASL data: {SASL_FAIL} (generic failure)"
    exc = make_error(C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, detail)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


class SaslFailure(Exception):
    """Internal: a mechanism step failed with a Cyrus code and detail text.

    :class:`Mechanism` turns it into the libvirtError of the current stage;
    it never escapes the package.
    """

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


# ------------------------------------------------------------ credentials
class CredentialRequest:
    """One prompt, shaped as libvirt's ``virConnectCredential``.

    ``type`` is a ``VIR_CRED_*`` value; the answer goes into ``result``
    (a str; None leaves it unanswered).
    """

    __slots__ = ("type", "prompt", "challenge", "defresult", "result")

    def __init__(
        self, type: int, prompt: str, challenge: Optional[str] = None, defresult: Optional[str] = None
    ) -> None:
        self.type = type
        self.prompt = prompt
        self.challenge = challenge
        self.defresult = defresult
        self.result: Optional[str] = None

    def __repr__(self) -> str:  # never shows the result: it may be a password
        return f"<CredentialRequest type={self.type} prompt={self.prompt!r}>"


#: auth.conf key for each credential type (remoteAuthFillFromConfig).
_CONF_KEYS = {
    C.VIR_CRED_USERNAME: "username",
    C.VIR_CRED_AUTHNAME: "authname",
    C.VIR_CRED_PASSPHRASE: "password",
    C.VIR_CRED_REALM: "realm",
}


class Credentials:
    """Answers a mechanism's prompts as libvirt's remote driver does.

    ``supported`` is the set of ``VIR_CRED_*`` types the application's auth
    callback accepts (``virConnectAuth.credtype``); it decides which prompts
    a mechanism may raise at all and so which mechanisms are usable (Cyrus
    skips a mechanism whose required prompts have no callback).  Without
    ``supported`` it is the types given as values plus, with a callback,
    AUTHNAME and PASSPHRASE.

    ``authname``/``username``/``password``/``realm`` are answers known up
    front (auth.conf keys of the same names): they fill matching prompts
    first.  As in libvirt, ``username`` is VIR_CRED_USERNAME, which Cyrus
    asks as the *authorization* name; ``authname`` is the login.  Whatever is left
    goes to ``callback(requests)`` in one batch; the callback sets each
    request's ``result`` and returns anything but False (a libvirt-python
    style callback returning -1 counts as failure too).  No callback for
    a prompt that needs one gives libvirt's "No authentication callback
    available"; a failing callback gives "Failed to collect auth
    credentials" (both VIR_ERR_AUTH_FAILED, domain REMOTE).

    ``fallback_authname`` plays Cyrus's built-in AUTHNAME callback, used
    when the application does not handle VIR_CRED_AUTHNAME: ``$USER``, else
    ``$USERNAME``.
    """

    __slots__ = ("_values", "callback", "supported", "fallback_authname")

    def __init__(
        self,
        *,
        authname: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        realm: Optional[str] = None,
        callback: Optional[CredentialCallback] = None,
        supported: Optional[Iterable[int]] = None,
        fallback_authname: Optional[str] = None,
    ) -> None:
        values = {
            C.VIR_CRED_AUTHNAME: authname,
            C.VIR_CRED_USERNAME: username,
            C.VIR_CRED_PASSPHRASE: password,
            C.VIR_CRED_REALM: realm,
        }
        self._values: dict[int, str] = {k: v for k, v in values.items() if v is not None}
        self.callback = callback
        if supported is None:
            types = set(self._values)
            if callback is not None:
                types |= {C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE}
            self.supported: frozenset[int] = frozenset(types)
        else:
            self.supported = frozenset(supported)
        if fallback_authname is None:
            fallback_authname = os.environ.get("USER") or os.environ.get("USERNAME")
        self.fallback_authname = fallback_authname

    def __repr__(self) -> str:  # values may be secrets
        return f"<Credentials supported={sorted(self.supported)} callback={self.callback is not None}>"

    def collect(self, requests: list[CredentialRequest]) -> None:
        """Fill every request's ``result`` or raise (remoteAuthInteract)."""
        pending = []
        for req in requests:
            value = self._values.get(req.type)
            if value is not None:
                req.result = value
            else:
                pending.append(req)
        if not pending:
            return
        if self.callback is None:
            raise remote_auth_error("No authentication callback available")
        try:
            ok = self.callback(pending)
        except libvirtError:
            raise
        except Exception:
            # The application's exception text is not ours to repeat (it may
            # hold what the user typed); libvirt reports a failed callback so.
            raise remote_auth_error("Failed to collect auth credentials") from None
        if ok is False or (isinstance(ok, int) and not isinstance(ok, bool) and ok < 0):
            raise remote_auth_error("Failed to collect auth credentials")


def credential_name(cred_type: int) -> str:
    """The auth.conf key for a credential type ("authname", "password", ...)."""
    return _CONF_KEYS.get(cred_type, str(cred_type))


# ------------------------------------------------------ security properties
class SecurityProps:
    """Cyrus's ``sasl_security_properties_t`` plus the external SSF.

    :meth:`for_libvirt` gives what libvirt's remoteAuthSASL sets: on a
    secure transport (TLS, unix, ssh) min/max SSF 0 and no flags; on plain
    TCP min 56, max 100000, NOANONYMOUS|NOPLAINTEXT.  Over TLS the TLS key
    size in bits is the external SSF.
    """

    __slots__ = ("min_ssf", "max_ssf", "external_ssf", "maxbufsize", "flags")

    def __init__(
        self,
        min_ssf: int = 0,
        max_ssf: int = 0,
        external_ssf: int = 0,
        maxbufsize: int = DEFAULT_MAXBUF,
        flags: int = 0,
    ) -> None:
        self.min_ssf = min_ssf
        self.max_ssf = max_ssf
        self.external_ssf = external_ssf
        self.maxbufsize = maxbufsize
        self.flags = flags

    @classmethod
    def for_libvirt(cls, secure: bool, external_ssf: int = 0) -> SecurityProps:
        if secure:
            return cls(0, 0, external_ssf, DEFAULT_MAXBUF, 0)
        return cls(56, 100000, external_ssf, DEFAULT_MAXBUF, SEC_NOANONYMOUS | SEC_NOPLAINTEXT)

    @property
    def limit(self) -> int:
        """Most SSF a mechanism's own layer may add (Cyrus ``limit``)."""
        return max(self.max_ssf - self.external_ssf, 0)

    @property
    def musthave(self) -> int:
        """Least SSF a mechanism's own layer must add (Cyrus ``musthave``)."""
        return max(self.min_ssf - self.external_ssf, 0)

    def __repr__(self) -> str:
        return (
            f"SecurityProps(min_ssf={self.min_ssf}, max_ssf={self.max_ssf}, external_ssf={self.external_ssf}, "
            f"maxbufsize={self.maxbufsize}, flags={self.flags:#x})"
        )


# ------------------------------------------------------------- mechanisms
class Mechanism:
    """Base class of a client mechanism (see the module docstring).

    Subclasses set the class attributes Cyrus's chooser reads (``name``,
    ``max_ssf``, ``security_flags``, ``channel_binding``, ``hash_bits``,
    ``needs_password``) and implement :meth:`_start` and :meth:`_step`,
    raising :class:`SaslFailure` on error.
    """

    name: ClassVar[str] = ""
    #: the strongest layer the mechanism can offer (Cyrus plug ``max_ssf``)
    max_ssf: ClassVar[int] = 0
    security_flags: ClassVar[int] = 0
    #: SASL_FEAT_CHANNEL_BINDING (ranks SCRAM above GSSAPI in Cyrus)
    channel_binding: ClassVar[bool] = False
    #: SASL_SET_HASH_STRENGTH_BITS, the last tie-breaker in Cyrus's ranking
    hash_bits: ClassVar[int] = 0
    #: the mechanism's required prompts include a password (Cyrus's default
    #: AUTHNAME+PASS); AUTHNAME always has Cyrus's built-in fallback
    needs_password: ClassVar[bool] = True

    def __init__(
        self,
        creds: Credentials,
        *,
        service: str = "libvirt",
        host: str = "localhost",
        props: Optional[SecurityProps] = None,
    ) -> None:
        self.creds = creds
        self.service = service
        self.host = host
        self.props = props if props is not None else SecurityProps()
        #: the client side has finished (Cyrus returned SASL_OK)
        self.complete = False
        #: strength of the negotiated layer (0: none)
        self.ssf = 0
        self._started = False
        self._failed: Optional[libvirtError] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} complete={self.complete} ssf={self.ssf}>"

    # public API -----------------------------------------------------------
    def start(self) -> Optional[bytes]:
        """The initial response (None: send nothing, ``nil=1``)."""
        if self._failed is not None:
            raise self._failed
        if self._started:
            raise self._fail("start", SaslFailure(SASL_BADPARAM, "start() called twice"))
        self._started = True
        try:
            return self._start()
        except SaslFailure as f:
            raise self._fail("start", f) from None

    def step(self, challenge: Optional[bytes]) -> Optional[bytes]:
        """Answer one server challenge (None for a server ``nil``)."""
        if self._failed is not None:
            raise self._failed
        if not self._started:
            raise self._fail("step", SaslFailure(SASL_BADPARAM, "step() before start()"))
        try:
            return self._step(challenge)
        except SaslFailure as f:
            raise self._fail("step", f) from None

    def security_layer(self) -> Optional[SecurityLayer]:
        """The layer to install after authentication, None for SSF 0 (the same object on every call)."""
        return None

    # subclass hooks -------------------------------------------------------
    def _start(self) -> Optional[bytes]:
        raise NotImplementedError

    def _step(self, challenge: Optional[bytes]) -> Optional[bytes]:
        raise NotImplementedError

    def _fail(self, stage: str, f: SaslFailure) -> libvirtError:
        self._failed = negotiation_error(stage, f.code, f.detail)
        return self._failed

    # helpers for subclasses ----------------------------------------------
    def _ask_identity(
        self, *, authzid: bool = True, password: bool = True, extra: Iterable[CredentialRequest] = ()
    ) -> tuple[str, str, str]:
        """authid, authzid ("" for none) and password, as Cyrus's plugins get them.

        Prompts are raised only for supported types, in Cyrus's order
        (authorization name, authentication name, password, then ``extra``)
        and in one batch.
        """
        sup = self.creds.supported
        reqs: list[CredentialRequest] = []
        user_req = auth_req = pass_req = None
        if authzid and C.VIR_CRED_USERNAME in sup:
            user_req = CredentialRequest(C.VIR_CRED_USERNAME, "Please enter your authorization name")
            reqs.append(user_req)
        if C.VIR_CRED_AUTHNAME in sup:
            auth_req = CredentialRequest(C.VIR_CRED_AUTHNAME, "Please enter your authentication name")
            reqs.append(auth_req)
        if password:
            if C.VIR_CRED_PASSPHRASE not in sup:
                raise SaslFailure(SASL_FAIL, "Unable to find a callback: 16388")
            pass_req = CredentialRequest(C.VIR_CRED_PASSPHRASE, "Please enter your password")
            reqs.append(pass_req)
        reqs.extend(extra)
        if reqs:
            self.creds.collect(reqs)
        if auth_req is not None:
            authid = auth_req.result
            if authid is None:
                raise SaslFailure(SASL_BADPARAM, "Unexpectedly missing a prompt result in _plug_get_simple")
        else:
            authid = self.creds.fallback_authname
            if authid is None:
                raise SaslFailure(SASL_FAIL, "Unable to find a callback: 16386")
        zid = (user_req.result or "") if user_req is not None else ""
        secret = ""
        if pass_req is not None:
            if pass_req.result is None:
                raise SaslFailure(SASL_BADPARAM, "Unexpectedly missing a prompt result in _plug_get_password")
            secret = pass_req.result
        return authid, zid, secret


# ---------------------------------------------------------- security layer
class SecurityLayer:
    """Base of a negotiated SASL security layer (see the module docstring).

    Subclasses implement :meth:`_seal` (one plaintext chunk of at most
    :attr:`max_plaintext` bytes to one packet body) and :meth:`_unseal`
    (one packet body to plaintext; raise :class:`SaslFailure` if bad).
    This class does the ``u32 len`` framing both ways.
    """

    #: a short name for humans ("digest-md5 rc4", ...)
    name: str = ""

    def __init__(self, ssf: int, max_plaintext: int, max_incoming: int = DEFAULT_MAXBUF) -> None:
        if max_plaintext < 1:
            raise ValueError("a security layer must carry at least one byte per packet")
        #: strength of the layer in bits (SASL_SSF)
        self.ssf = ssf
        #: largest plaintext per outgoing packet (Cyrus SASL_MAXOUTBUF)
        self.max_plaintext = max_plaintext
        #: largest ``len`` of an incoming packet we accept (our maxbuf)
        self.max_incoming = max_incoming
        self._buf = bytearray()
        self._error: Optional[libvirtError] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ssf={self.ssf} max_plaintext={self.max_plaintext}>"

    def encode(self, data: bytes) -> bytes:
        """SASL packets for ``data`` (several if it exceeds :attr:`max_plaintext`)."""
        n = self.max_plaintext
        pack = _U32.pack
        if len(data) <= n:
            body = self._seal(bytes(data))
            return pack(len(body)) + body
        out = bytearray()
        view = memoryview(data)
        for i in range(0, len(data), n):
            body = self._seal(bytes(view[i:i + n]))
            out += pack(len(body))
            out += body
        return bytes(out)

    def feed(self, raw: bytes) -> bytes:
        """Plaintext of every SASL packet completed by ``raw`` (maybe b"")."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if not buf and len(raw) >= 4:
            # fast path: exactly one whole SASL packet (a typical reply)
            n = _U32.unpack_from(raw, 0)[0]
            if n + 4 == len(raw) and 0 < n <= self.max_incoming:
                try:
                    return self._unseal(raw[4:])
                except SaslFailure as f:
                    self._error = decode_error(f.detail)
                    raise self._error from None
        buf += raw
        out = bytearray()
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 4:
                n = _U32.unpack_from(buf, pos)[0]
                if n == 0:
                    raise SaslFailure(SASL_FAIL, "zero-length SASL packet")
                if n > self.max_incoming:
                    raise SaslFailure(SASL_FAIL, f"encoded packet size too big ({n} > {self.max_incoming})")
                if end - pos - 4 < n:
                    break
                out += self._unseal(bytes(buf[pos + 4:pos + 4 + n]))
                pos += 4 + n
        except SaslFailure as f:
            buf.clear()
            self._error = decode_error(f.detail)
            raise self._error from None
        if pos:
            del buf[:pos]
        return bytes(out)

    @property
    def buffered(self) -> int:
        """Raw bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def _seal(self, chunk: bytes) -> bytes:
        raise NotImplementedError

    def _unseal(self, body: bytes) -> bytes:
        raise NotImplementedError
