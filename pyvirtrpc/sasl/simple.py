"""PLAIN (RFC 4616) and CRAM-MD5 (RFC 2195) clients, as Cyrus 2.1.28.

Contract:

* :class:`Plain` is client-first and completes in :meth:`~Plain.start`:
  it returns ``authzid NUL authid NUL password`` (the authorization name
  is sent whenever one is given, even if equal to the authentication name,
  as Cyrus does).  No security layer.
* :class:`CramMD5` is server-first: :meth:`~CramMD5.start` returns None;
  the one :meth:`~CramMD5.step` answers ``authid SP hex(HMAC-MD5(password,
  challenge))`` and completes.  Challenges over 1024 bytes are refused.
* Both refuse to run (SASL_TOOWEAK) when ``min_ssf`` exceeds the external
  SSF, so libvirt never uses them on plain TCP.
"""

from __future__ import annotations

import hmac

from ._common import (
    SASL_BADPROT,
    SASL_FAIL,
    SASL_TOOWEAK,
    SEC_NOANONYMOUS,
    SEC_NOPLAINTEXT,
    SEC_PASS_CREDENTIALS,
    Mechanism,
    SaslFailure,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


class Plain(Mechanism):
    """The PLAIN client."""

    name = "PLAIN"
    security_flags = SEC_NOANONYMOUS | SEC_PASS_CREDENTIALS

    def _start(self) -> Optional[bytes]:
        if self.props.min_ssf > self.props.external_ssf:
            raise SaslFailure(SASL_TOOWEAK, "SSF requested of PLAIN plugin")
        authid, authzid, password = self._ask_identity()
        self.complete = True
        return b"\0".join((authzid.encode("utf-8"), authid.encode("utf-8"), password.encode("utf-8")))

    def _step(self, challenge: Optional[bytes]) -> Optional[bytes]:
        raise SaslFailure(SASL_FAIL, "PLAIN has no further step")


class CramMD5(Mechanism):
    """The CRAM-MD5 client."""

    name = "CRAM-MD5"
    security_flags = SEC_NOPLAINTEXT | SEC_NOANONYMOUS

    def _start(self) -> Optional[bytes]:
        return None

    def _step(self, challenge: Optional[bytes]) -> Optional[bytes]:
        if self.complete:
            raise SaslFailure(SASL_FAIL, "CRAM-MD5 has no further step")
        data = challenge or b""
        if len(data) > 1024:
            raise SaslFailure(SASL_BADPROT, "CRAM-MD5 input longer than 1024 bytes")
        if self.props.min_ssf > self.props.external_ssf:
            raise SaslFailure(SASL_TOOWEAK, "SSF requested of CRAM-MD5 plugin")
        authid, _authzid, password = self._ask_identity(authzid=False)
        digest = hmac.digest(password.encode("utf-8"), data, "md5").hex()
        self.complete = True
        return f"{authid} {digest}".encode()
