"""SCRAM-SHA-* (RFC 5802, RFC 7677) clients without channel binding, as Cyrus 2.1.28.

Contract:

* Client-first: :meth:`~Scram.start` asks the credentials and returns
  ``gs2-header ‖ client-first-message-bare`` with gs2 header ``"n,,"`` (or
  ``"n,a=<authzid>,"`` when an authorization name is given: Cyrus sends it
  even if it equals the authentication name), the user name escaped
  (``=`` -> ``=3D``, ``,`` -> ``=2C``) and a 32-character base64 nonce from
  :mod:`secrets`.
* The first :meth:`~Scram.step` checks the server-first message the way
  Cyrus does (order ``r,s,i``; no mandatory extension ``m=``; the nonce
  must extend ours; non-empty base64 salt; iteration count 1..65536) and
  returns the client-final message with the proof.  The second checks the
  server signature (``v=``; a mismatch is SASL_BADAUTH "ServerSignature
  mismatch", ``e=`` or anything else SASL_BADPROT) and completes.
* SCRAM adds no security layer (SSF 0); Cyrus refuses it (SASL_TOOWEAK)
  when ``min_ssf`` exceeds the external SSF, so libvirt never uses it on
  plain TCP.
* The password is used as given (UTF-8), without SASLprep, as Cyrus does.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from base64 import b64decode, b64encode
from binascii import Error as B64Error

from ._common import (
    SASL_BADAUTH,
    SASL_BADPROT,
    SASL_FAIL,
    SASL_TOOWEAK,
    SEC_MUTUAL_AUTH,
    SEC_NOACTIVE,
    SEC_NOANONYMOUS,
    SEC_NOPLAINTEXT,
    Mechanism,
    SaslFailure,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

#: Cyrus refuses to compute more iterations than this.
MAX_ITERATIONS = 0x10000


def saslname(name: str) -> str:
    """RFC 5802 ``saslname`` escaping of a user name."""
    return name.replace("=", "=3D").replace(",", "=2C")


def salted_password(hash_name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """``Hi(password, salt, i)`` (PBKDF2 with HMAC-<hash>)."""
    return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)


class Scram(Mechanism):
    """Base of the SCRAM-SHA-* mechanisms; subclasses set ``name``, ``hash_name``, ``hash_bits``."""

    hash_name = ""
    max_ssf = 0
    security_flags = SEC_NOPLAINTEXT | SEC_NOACTIVE | SEC_NOANONYMOUS | SEC_MUTUAL_AUTH
    channel_binding = True

    def __init__(self, *args: Any, nonce: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: test hook: a fixed client nonce (RFC vectors); normally random
        self._fixed_nonce = nonce
        self._state = 0
        self._password = b""
        self._nonce = ""
        self._gs2 = ""
        self._first_bare = ""
        self._server_sig = b""

    def _start(self) -> Optional[bytes]:
        if self.props.min_ssf > self.props.external_ssf:
            raise SaslFailure(SASL_TOOWEAK, f"SSF requested of {self.name} plugin")
        authid, authzid, password = self._ask_identity()
        self._password = password.encode("utf-8")
        self._nonce = self._fixed_nonce or b64encode(secrets.token_bytes(24)).decode("ascii")
        self._gs2 = f"n,a={saslname(authzid)}," if authzid else "n,,"
        self._first_bare = f"n={saslname(authid)},r={self._nonce}"
        self._state = 1
        return (self._gs2 + self._first_bare).encode("utf-8")

    def _step(self, challenge: Optional[bytes]) -> Optional[bytes]:
        if self._state == 1:
            out = self._final(challenge or b"")
            self._state = 2
            return out
        if self._state == 2:
            self._verify(challenge or b"")
            self._state = 3
            self.complete = True
            return None
        raise SaslFailure(SASL_FAIL, f"Invalid {self.name} client step {self._state}")

    def _final(self, data: bytes) -> bytes:
        mech = self.name
        if not data:
            raise SaslFailure(SASL_BADPROT, f"{mech} input expected")
        if len(data) < 3 or data[1:2] != b"=":
            raise SaslFailure(SASL_BADPROT, f"Invalid {mech} input")
        if data[:1] == b"m":
            raise SaslFailure(SASL_BADPROT, f"Unsupported mandatory extension to {mech}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslFailure(SASL_BADPROT, f"Invalid {mech} input") from None
        attrs = text.split(",")
        if not attrs[0].startswith("r="):
            raise SaslFailure(SASL_BADPROT, f"Nonce (r=) expected in {mech} input")
        if len(attrs) < 2 or not attrs[1].startswith("s="):
            raise SaslFailure(SASL_BADPROT, f"Salt (s=) expected after the nonce in {mech} input")
        if len(attrs) < 3 or not attrs[2].startswith("i="):
            raise SaslFailure(SASL_BADPROT, f"iteration-count expected after the salt in {mech} input")
        nonce = attrs[0][2:]
        counter = attrs[2][2:]
        if not counter.isdigit() or not counter.isascii():
            raise SaslFailure(SASL_BADPROT, f"Invalid iteration-count in {mech} input")
        iterations = int(counter)
        if iterations < 1:
            raise SaslFailure(SASL_BADPROT, f"Invalid iteration-count in {mech} input")
        if iterations > MAX_ITERATIONS:
            raise SaslFailure(SASL_BADPROT, "iteration-count is too big, refusing to compute")
        if len(nonce) <= len(self._nonce) or not nonce.startswith(self._nonce):
            raise SaslFailure(
                SASL_BADPROT, "The nonce received from the server doesn't start from the nonce sent by the client"
            )
        if not attrs[1][2:]:
            raise SaslFailure(SASL_BADPROT, "The salt can't be empty")
        try:
            salt = b64decode(attrs[1][2:], validate=True)
        except (B64Error, ValueError):
            raise SaslFailure(SASL_BADPROT, "Invalid base64 encoding of the salt") from None

        salted = salted_password(self.hash_name, self._password, salt, iterations)
        self._password = b""
        client_key = hmac.digest(salted, b"Client Key", self.hash_name)
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        without_proof = f"c={b64encode(self._gs2.encode('utf-8')).decode('ascii')},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", self.hash_name)
        self._server_sig = hmac.digest(server_key, auth_message, self.hash_name)
        return f"{without_proof},p={b64encode(proof).decode('ascii')}".encode("ascii")

    def _verify(self, data: bytes) -> None:
        mech = self.name
        if len(data) < 3:
            raise SaslFailure(SASL_BADPROT, f"Invalid {mech} input expected")
        if not data.startswith(b"v="):
            raise SaslFailure(SASL_BADPROT, f"ServerSignature expected in {mech} input")
        value = data[2:].split(b",", 1)[0]
        try:
            sig = b64decode(value, validate=True)
        except (B64Error, ValueError):
            raise SaslFailure(SASL_BADPROT, f"Invalid base64 encoding of the server proof in {mech} input") from None
        if len(sig) != len(self._server_sig):
            raise SaslFailure(SASL_BADPROT, f"Invalid server proof (truncated) in {mech} input")
        if not hmac.compare_digest(sig, self._server_sig):
            raise SaslFailure(SASL_BADAUTH, "ServerSignature mismatch")


class ScramSHA1(Scram):
    name = "SCRAM-SHA-1"
    hash_name = "sha1"
    hash_bits = 160


class ScramSHA224(Scram):
    name = "SCRAM-SHA-224"
    hash_name = "sha224"
    hash_bits = 224


class ScramSHA256(Scram):
    name = "SCRAM-SHA-256"
    hash_name = "sha256"
    hash_bits = 256


class ScramSHA384(Scram):
    name = "SCRAM-SHA-384"
    hash_name = "sha384"
    hash_bits = 384


class ScramSHA512(Scram):
    name = "SCRAM-SHA-512"
    hash_name = "sha512"
    hash_bits = 512
