"""GSSAPI (Kerberos V5, RFC 4752) client and its security layer, on python-gssapi.

Contract:

* Needs the optional ``gssapi`` package (``pip install pyvirtrpc[gssapi]``);
  :func:`available` says whether it imports.  Creating the mechanism
  without it raises VIR_ERR_AUTH_FAILED (domain RPC) saying so.  Credentials
  come from the Kerberos ticket cache; only an authorization name
  (VIR_CRED_USERNAME) is ever prompted for.
* Client-first, as Cyrus: :meth:`~GSSAPI.start` returns the first context
  token for ``<service>@<host>`` (flags mutual + sequence, plus integrity
  when a layer is allowed and confidentiality when more than SSF 1 is);
  :meth:`~GSSAPI.step` continues the context, then unwraps the server's
  4-byte layer offer, chooses confidentiality (SSF from the context, 56 if
  the library cannot say), integrity (1) or none within ``[min, max] -
  external`` SSF, and answers ``wrap(choice ‖ maxbuf ‖ authzid)``.
* :class:`GSSLayer` frames ``gss_wrap`` tokens with the ``u32 len`` SASL
  framing; outgoing plaintext per packet is bounded by
  ``gss_wrap_size_limit`` of the server's maxbuf.

Tested against a real MIT KDC and libvirtd in tests/test_sasl_gssapi.py
(confidentiality layer over TCP, no layer over unix, error text as virsh).
"""

from __future__ import annotations

from importlib import import_module

from .._gen import constants as C
from ..errors import make_error
from ._common import (
    DEFAULT_MAXBUF,
    SASL_BADPARAM,
    SASL_FAIL,
    SASL_TOOWEAK,
    SEC_MUTUAL_AUTH,
    SEC_NOACTIVE,
    SEC_NOANONYMOUS,
    SEC_NOPLAINTEXT,
    SEC_PASS_CREDENTIALS,
    CredentialRequest,
    Mechanism,
    SaslFailure,
    SecurityLayer,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

LAYER_NONE, LAYER_INTEGRITY, LAYER_CONFIDENTIALITY = 1, 2, 4
#: Cyrus's fallback when the GSS library cannot report the context's SSF
K5_MIN_SSF = 56
#: Cyrus's K5_MAX_SSF for modern Kerberos (AES)
K5_MAX_SSF = 256
#: GSS_C_SEC_CONTEXT_SASL_SSF
SASL_SSF_OID = "1.2.840.113554.1.2.2.5.15"

_MISSING = "GSSAPI needs the Python 'gssapi' package (pip install 'pyvirtrpc[gssapi]'), which is not installed"


_CACHE: list[Any] = []


def _module() -> Any:
    """python-gssapi, imported on first use (None when missing); the answer is cached."""
    if not _CACHE:
        try:
            _CACHE.append(import_module("gssapi"))
        except ImportError:
            _CACHE.append(None)
    return _CACHE[0]


def available() -> bool:
    """True when python-gssapi can be imported."""
    return _module() is not None


def missing_error(stage: str = "start") -> Any:
    """The error for a GSSAPI attempt without python-gssapi."""
    return make_error(
        C.VIR_ERR_AUTH_FAILED,
        C.VIR_FROM_RPC,
        f"Failed to {stage} SASL negotiation: {SASL_FAIL} (SASL({SASL_FAIL}): generic failure: {_MISSING})",
    )


class GSSAPI(Mechanism):
    """The GSSAPI client (see the module docstring)."""

    name = "GSSAPI"
    max_ssf = K5_MAX_SSF
    security_flags = SEC_NOPLAINTEXT | SEC_NOACTIVE | SEC_NOANONYMOUS | SEC_MUTUAL_AUTH | SEC_PASS_CREDENTIALS
    needs_password = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gssapi = _module()
        if self._gssapi is None:
            raise missing_error()
        self._ctx: Any = None
        self._authzid = ""
        self._state = 0
        self._qop = LAYER_NONE
        self._layer: Optional[GSSLayer] = None

    def _start(self) -> Optional[bytes]:
        if C.VIR_CRED_USERNAME in self.creds.supported:
            req = CredentialRequest(C.VIR_CRED_USERNAME, "Please enter your authorization name")
            self.creds.collect([req])
            self._authzid = req.result or ""
        if not self.host:
            raise SaslFailure(SASL_FAIL, "GSSAPI Failure: no serverFQDN")
        g = self._gssapi
        props = self.props
        flags = g.RequirementFlag.mutual_authentication | g.RequirementFlag.out_of_sequence_detection
        if props.max_ssf > props.external_ssf:
            flags |= g.RequirementFlag.integrity
            if props.max_ssf - props.external_ssf > 1:
                flags |= g.RequirementFlag.confidentiality
        try:
            name = g.Name(f"{self.service}@{self.host}", g.NameType.hostbased_service)
            self._ctx = g.SecurityContext(name=name, usage="initiate", flags=flags)
        except g.exceptions.GSSError as exc:
            raise SaslFailure(SASL_FAIL, _gss_text(exc)) from None
        self._state = 1
        return self._negotiate(None)

    def _step(self, challenge: Optional[bytes]) -> Optional[bytes]:
        if self._state == 1:
            return self._negotiate(challenge or None)
        if self._state == 2:
            return self._ssf_negotiation(challenge or b"")
        raise SaslFailure(SASL_FAIL, f"Invalid GSSAPI client step {self._state}")

    def _negotiate(self, token: Optional[bytes]) -> Optional[bytes]:
        g = self._gssapi
        try:
            out = self._ctx.step(token)
        except g.exceptions.GSSError as exc:
            raise SaslFailure(SASL_FAIL, _gss_text(exc)) from None
        actual = self._ctx.actual_flags
        if g.RequirementFlag.integrity not in actual:
            self._qop = LAYER_NONE
        elif g.RequirementFlag.confidentiality not in actual:
            self._qop = LAYER_NONE | LAYER_INTEGRITY
        else:
            self._qop = LAYER_NONE | LAYER_INTEGRITY | LAYER_CONFIDENTIALITY
        if self._ctx.complete:
            self._state = 2
        # No output token (the client's last context step): Cyrus gives NULL, libvirt sends nil=1.
        return bytes(out) if out else None

    def _context_ssf(self) -> int:
        g = self._gssapi
        try:
            raw = import_module("gssapi.raw")
            oid = g.OID.from_int_seq(SASL_SSF_OID)
            values = raw.inquire_sec_context_by_oid(self._ctx, oid)
        except (AttributeError, ImportError, NotImplementedError):
            return K5_MIN_SSF
        except g.exceptions.GSSError:
            return K5_MIN_SSF
        if len(values) != 1 or len(values[0]) != 4:
            raise SaslFailure(SASL_FAIL, "malformed SASL SSF from the GSS library")
        return int.from_bytes(values[0], "big")

    def _ssf_negotiation(self, data: bytes) -> bytes:
        g = self._gssapi
        try:
            offer = self._ctx.unwrap(data).message
        except g.exceptions.GSSError as exc:
            raise SaslFailure(SASL_FAIL, _gss_text(exc)) from None
        if len(offer) != 4:
            raise SaslFailure(SASL_FAIL, "token too short" if len(offer) < 4 else "token too long")
        mech_ssf = self._context_ssf()
        props = self.props
        external = props.external_ssf
        if props.min_ssf > mech_ssf + external:
            raise SaslFailure(SASL_TOOWEAK, "")
        if props.min_ssf > props.max_ssf:
            raise SaslFailure(SASL_BADPARAM, "")
        allowed = max(props.max_ssf - external, 0)
        need = max(props.min_ssf - external, 0)
        serverhas = offer[0]
        if self._qop & LAYER_CONFIDENTIALITY and need <= mech_ssf <= allowed and serverhas & LAYER_CONFIDENTIALITY:
            choice, self.ssf = LAYER_CONFIDENTIALITY, mech_ssf
        elif self._qop & LAYER_INTEGRITY and allowed >= 1 and need <= 1 and serverhas & LAYER_INTEGRITY:
            choice, self.ssf = LAYER_INTEGRITY, 1
        elif self._qop & LAYER_NONE and need <= 0 and serverhas & LAYER_NONE:
            choice, self.ssf = LAYER_NONE, 0
        else:
            raise SaslFailure(SASL_TOOWEAK, "")
        server_maxbuf = int.from_bytes(offer[1:4], "big")
        ours = min(props.maxbufsize, 0xFFFFFF)
        reply = bytes((choice,)) + (ours.to_bytes(3, "big") if choice > 1 else b"\0\0\0")
        reply += self._authzid.encode("utf-8")
        try:
            token = self._ctx.wrap(reply, False).message
        except g.exceptions.GSSError as exc:
            raise SaslFailure(SASL_FAIL, _gss_text(exc)) from None
        if self.ssf:
            try:
                limit = self._ctx.get_wrap_size_limit(server_maxbuf, True)
            except g.exceptions.GSSError:
                raise SaslFailure(SASL_FAIL, "") from None
            max_plain = server_maxbuf - (limit - server_maxbuf) if limit > server_maxbuf else limit
            self._layer = GSSLayer(self._ctx, self._gssapi, choice == LAYER_CONFIDENTIALITY, self.ssf, max_plain, ours)
        self._state = 3
        self.complete = True
        return bytes(token)

    def security_layer(self) -> Optional[SecurityLayer]:
        return self._layer if self.complete else None


def _gss_text(exc: Exception) -> str:
    """Cyrus's sasl_gss_seterror text: "GSSAPI Error: <major> (<minor>)" (never a secret)."""
    maj = getattr(exc, "maj_code", None)
    minor = getattr(exc, "min_code", None)
    statuses = getattr(exc, "get_all_statuses", None)
    if maj is not None and minor is not None and callable(statuses):
        try:
            return f"GSSAPI Error: {''.join(statuses(maj, True))} ({''.join(statuses(minor, False))})"
        except Exception:
            pass
    return "GSSAPI Failure (could not get major error message)"


class GSSLayer(SecurityLayer):
    """``gss_wrap``/``gss_unwrap`` under the SASL ``u32 len`` framing."""

    def __init__(
        self, ctx: Any, module: Any, confidential: bool, ssf: int, max_plaintext: int, our_maxbuf: int
    ) -> None:
        super().__init__(ssf, max(max_plaintext, 1), our_maxbuf or DEFAULT_MAXBUF)
        self._ctx = ctx
        self._gssapi = module
        self._conf = confidential
        self.name = "GSSAPI " + ("confidentiality" if confidential else "integrity")

    def _seal(self, chunk: bytes) -> bytes:
        return bytes(self._ctx.wrap(chunk, self._conf).message)

    def _unseal(self, body: bytes) -> bytes:
        try:
            return bytes(self._ctx.unwrap(body).message)
        except self._gssapi.exceptions.GSSError as exc:
            raise SaslFailure(SASL_FAIL, _gss_text(exc)) from None
