"""Mechanism registry, Cyrus's mechanism choice, and libvirt's SASL client loop.

Contract:

* :data:`MECHANISMS` maps each implemented mechanism name to its class;
  :func:`create` builds one (an unknown name is Cyrus's SASL_NOMECH, GSSAPI
  without python-gssapi a clear VIR_ERR_AUTH_FAILED).
* :func:`choose` returns the mechanism the C client (libvirt +
  Cyrus 2.1.28 ``sasl_client_start``) would pick: a forced ``auth=sasl.MECH``
  must occur in the server's list as libvirt's case-sensitive ``strstr``
  requires (else AUTH_FAILED/REMOTE "SASL mechanism %s not supported by
  server"); then Cyrus walks its own mechanisms strongest first
  (SCRAM-SHA-512/384/256/224/1, GSSAPI, DIGEST-MD5, CRAM-MD5, PLAIN) and
  takes the first one the server lists (case-insensitively) that has its
  prompts (a password needs VIR_CRED_PASSPHRASE), reaches ``min_ssf`` and
  has every required security flag.  None: AUTH_FAILED/RPC "Failed to start
  SASL negotiation: -4 (SASL(-4): no mechanism available: No worthy mechs
  found)".
* :class:`SaslClient` is remote_driver.c's ``remoteAuthSASL`` without the
  I/O: ``start(mechlist)`` gives the AUTH_SASL_START arguments, each
  ``receive(complete, data)`` takes a START/STEP reply and gives the next
  STEP's data until :attr:`SaslClient.done`; then, on an insecure transport,
  the negotiated SSF must be at least 56 (else AUTH_FAILED/REMOTE
  "negotiation SSF %d was not strong enough") and :attr:`warning` holds
  libvirt's below-112 warning for the caller to log.
"""

from __future__ import annotations

from functools import cmp_to_key

from .._gen import constants as C
from ._common import (
    DEFAULT_MAXBUF,
    SASL_DATA_MAX,
    SASL_NOMECH,
    SEC_FORWARD_SECRECY,
    SEC_MUTUAL_AUTH,
    SEC_NOACTIVE,
    SEC_NOANONYMOUS,
    SEC_NODICTIONARY,
    SEC_NOPLAINTEXT,
    Credentials,
    Mechanism,
    SecurityLayer,
    SecurityProps,
    negotiation_error,
    remote_auth_error,
)
from .digestmd5 import DigestMD5
from .gss import GSSAPI, missing_error
from .gss import available as gssapi_available
from .scram import ScramSHA1, ScramSHA224, ScramSHA256, ScramSHA384, ScramSHA512
from .simple import CramMD5, Plain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Collection, Optional

#: Every mechanism this package implements, by its SASL name.
MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (ScramSHA512, ScramSHA384, ScramSHA256, ScramSHA224, ScramSHA1, GSSAPI, DigestMD5, CramMD5, Plain)
}

#: libvirt warns (VIR_WARN) below this negotiated SSF on plain TCP.
SSF_WARNING_LEVEL = 112


#: the security flags Cyrus ranks by, most important first
_RANKED_FLAGS = (SEC_NOANONYMOUS, SEC_NOPLAINTEXT, SEC_MUTUAL_AUTH, SEC_NOACTIVE, SEC_NODICTIONARY, SEC_FORWARD_SECRECY)


def _compare(a: type[Mechanism], b: type[Mechanism]) -> int:
    """Cyrus's ``mech_compare`` (lib/client.c): >0 when ``a`` is stronger."""
    diff = a.security_flags ^ b.security_flags
    for flag in _RANKED_FLAGS:
        if diff & a.security_flags & flag:
            return 1
        if diff & b.security_flags & flag:
            return -1
    if a.channel_binding != b.channel_binding:
        return 1 if a.channel_binding else -1
    if a.max_ssf != b.max_ssf:
        return 1 if a.max_ssf > b.max_ssf else -1
    if a.hash_bits != b.hash_bits:
        return 1 if a.hash_bits > b.hash_bits else -1
    return 0


#: The client's mechanisms, strongest first, as Cyrus orders its plugin list.
RANKED: tuple[type[Mechanism], ...] = tuple(sorted(MECHANISMS.values(), key=cmp_to_key(_compare), reverse=True))


def implemented(name: str) -> bool:
    """Whether ``name`` (exact SASL name) can be used here (GSSAPI needs python-gssapi)."""
    cls = MECHANISMS.get(name)
    if cls is None:
        return False
    return cls is not GSSAPI or gssapi_available()


def _no_mech(detail: str = "No worthy mechs found") -> Any:
    return negotiation_error("start", SASL_NOMECH, detail)


def create(
    name: str,
    creds: Credentials,
    *,
    service: str = "libvirt",
    host: str = "localhost",
    external_ssf: int = 0,
    min_ssf: int = 0,
    max_ssf: int = 0,
    maxbufsize: int = DEFAULT_MAXBUF,
    props: Optional[SecurityProps] = None,
    **options: Any,
) -> Mechanism:
    """A fresh client mechanism ``name`` (case-insensitive).

    ``props`` overrides the SSF keywords.  ``options`` are mechanism test
    hooks (``cnonce=`` for DIGEST-MD5, ``nonce=`` for SCRAM).
    """
    cls = MECHANISMS.get(name.upper())
    if cls is None:
        raise _no_mech()
    if cls is GSSAPI and not gssapi_available():
        raise missing_error()
    if props is None:
        props = SecurityProps(min_ssf, max_ssf, external_ssf, maxbufsize)
    return cls(creds, service=service, host=host, props=props, **options)


def _split_mechlist(mechlist: str) -> list[str]:
    """Cyrus's reading of a mechanism list: any non ``[A-Za-z0-9_-]`` separates."""
    names: list[str] = []
    cur: list[str] = []
    for ch in mechlist + " ":
        if ch.isascii() and (ch.isalnum() or ch in "_-"):
            cur.append(ch)
        elif cur:
            names.append("".join(cur))
            cur = []
    # Without channel-binding data Cyrus never considers the -PLUS variants.
    return [n for n in names if not (len(n) > 5 and n.upper().endswith("-PLUS"))]


def choose(
    mechlist: str,
    supported: Collection[int],
    props: SecurityProps,
    forced: Optional[str] = None,
) -> str:
    """The mechanism the C client picks (see the module docstring).

    ``supported`` is the set of VIR_CRED_* types the credential source
    answers (``Credentials.supported``).
    """
    if forced is not None:
        if forced not in mechlist:  # libvirt: strstr(mechlist, wantmech)
            raise remote_auth_error(f"SASL mechanism {forced} not supported by server")
        mechlist = forced
    offered = {n.upper() for n in _split_mechlist(mechlist)}
    if not offered:
        raise _no_mech("")
    minssf = props.musthave
    flags = props.flags
    # With a strong enough external layer nothing counts as plaintext any more.
    if props.min_ssf <= props.external_ssf and props.external_ssf > 1:
        flags &= ~SEC_NOPLAINTEXT
    gss_missing = False
    for cls in RANKED:
        if cls.name not in offered:
            continue
        if cls is GSSAPI and not gssapi_available():
            gss_missing = True  # as if the Cyrus GSSAPI plugin were not installed
            continue
        if cls.needs_password and C.VIR_CRED_PASSPHRASE not in supported:
            continue
        if minssf > cls.max_ssf:
            continue
        if (flags ^ cls.security_flags) & flags:
            continue
        return cls.name
    if gss_missing:
        raise missing_error()
    raise _no_mech()


class SaslClient:
    """libvirt's client side of AUTH_SASL_INIT/START/STEP, sans I/O.

    ::

        sc = SaslClient(creds, host=host, secure=False)      # plain TCP
        mech, data = sc.start(init_ret.mechlist)              # data None -> nil=1
        reply = call(AUTH_SASL_START, (mech, data is None, data or b""))
        while True:
            data = sc.receive(reply.complete, None if reply.nil else reply.data)
            if sc.done:
                break
            reply = call(AUTH_SASL_STEP, (data is None, data or b""))
        layer = sc.security_layer()   # install under the RPC framing if not None

    ``secure`` is libvirt's ``is_secure`` (TLS, unix, ssh); over TLS pass
    the TLS key size in bits as ``external_ssf``.  ``forced`` is the
    mechanism from ``auth=sasl.MECH``.  ``options`` go to the mechanism
    (test hooks) and ``props`` replaces libvirt's security properties.
    """

    def __init__(
        self,
        creds: Credentials,
        *,
        host: str = "localhost",
        secure: bool,
        external_ssf: int = 0,
        forced: Optional[str] = None,
        service: str = "libvirt",
        props: Optional[SecurityProps] = None,
        **options: Any,
    ) -> None:
        self.creds = creds
        self.host = host
        self.secure = secure
        self.forced = forced
        self.service = service
        self.props = props if props is not None else SecurityProps.for_libvirt(secure, external_ssf)
        self._options = options
        self.mechanism: Optional[Mechanism] = None
        #: authentication finished on both sides
        self.done = False
        #: libvirt's VIR_WARN text when a plain-TCP layer is below SSF 112
        self.warning: Optional[str] = None

    def __repr__(self) -> str:
        name = self.mechanism.name if self.mechanism else None
        return f"<SaslClient mech={name} done={self.done} secure={self.secure}>"

    @property
    def ssf(self) -> int:
        return self.mechanism.ssf if self.mechanism is not None else 0

    def start(self, mechlist: str) -> tuple[str, Optional[bytes]]:
        """Pick and start the mechanism: ``(mech, data)`` for AUTH_SASL_START."""
        if self.mechanism is not None:
            raise RuntimeError("SaslClient.start() called twice")
        name = choose(mechlist, self.creds.supported, self.props, self.forced)
        self.mechanism = mech = create(
            name, self.creds, service=self.service, host=self.host, props=self.props, **self._options
        )
        data = mech.start()
        if data is not None and len(data) > SASL_DATA_MAX:
            raise remote_auth_error(f"SASL negotiation data too long: {len(data)} bytes")
        return name, data

    def receive(self, complete: bool, data: Optional[bytes]) -> Optional[bytes]:
        """Take a START/STEP reply; return the next STEP's data (None: nil).

        When :attr:`done` becomes true the return value is meaningless and
        nothing more is sent.
        """
        mech = self.mechanism
        if mech is None:
            raise RuntimeError("SaslClient.receive() before start()")
        if self.done:
            raise RuntimeError("SaslClient.receive() after authentication finished")
        if complete and mech.complete:
            self._finish()
            return None
        out = mech.step(data)
        if complete and mech.complete:
            self._finish()
            return None
        return out

    def _finish(self) -> None:
        mech = self.mechanism
        assert mech is not None
        if not self.secure:
            ssf = mech.ssf
            if ssf < 56:  # "56 == DES level, good for Kerberos"
                raise remote_auth_error(f"negotiation SSF {ssf} was not strong enough")
            if ssf < SSF_WARNING_LEVEL:
                self.warning = (
                    f"negotiation SSF {ssf} lower than {SSF_WARNING_LEVEL} will be deprecated. "
                    "Please upgrade your ciphers."
                )
        self.done = True

    def security_layer(self) -> Optional[SecurityLayer]:
        """The negotiated layer (None when SSF is 0), once :attr:`done`."""
        if not self.done or self.mechanism is None:
            return None
        return self.mechanism.security_layer()
