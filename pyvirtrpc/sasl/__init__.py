"""Pure-Python, sans-I/O SASL client for libvirt's remote protocol.

What it replaces: Cyrus SASL 2.1.28 as libvirt's C client drives it
(remote_driver.c ``remoteAuthSASL``, virnetsaslcontext.c, virnetsocket.c).

Contract (details in each module's docstring):

* :class:`SaslClient` runs the AUTH_SASL_START/STEP loop logic;
  :func:`choose` picks the mechanism Cyrus would; :func:`create` builds a
  :class:`Mechanism` by name (DIGEST-MD5, SCRAM-SHA-1/224/256/384/512,
  PLAIN, CRAM-MD5, and GSSAPI when python-gssapi is installed).
* :class:`Credentials` answers prompts with libvirt's rules (auth.conf
  values first, then the application's callback, only for the VIR_CRED_*
  types it supports).
* A completed mechanism's :meth:`Mechanism.security_layer` (None for SSF 0)
  is a :class:`SecurityLayer`: ``encode(plaintext) -> bytes`` and the
  incremental ``feed(raw) -> plaintext``, to sit under the RPC framing.
* Every failure is a :class:`~pyvirtrpc.errors.libvirtError` with the code,
  domain and message the C client gives; no secret is ever put in one.

No I/O, no clock, no threads, no logging; randomness from :mod:`secrets`.
"""

from __future__ import annotations

from ._common import (
    DEFAULT_MAXBUF,
    CredentialRequest,
    Credentials,
    Mechanism,
    SecurityLayer,
    SecurityProps,
)
from .client import MECHANISMS, RANKED, SaslClient, choose, create, implemented
from .digestmd5 import DigestLayer, DigestMD5
from .gss import GSSAPI
from .scram import ScramSHA1, ScramSHA224, ScramSHA256, ScramSHA384, ScramSHA512
from .simple import CramMD5, Plain

__all__ = [
    "DEFAULT_MAXBUF",
    "MECHANISMS",
    "RANKED",
    "CramMD5",
    "CredentialRequest",
    "Credentials",
    "DigestLayer",
    "DigestMD5",
    "GSSAPI",
    "Mechanism",
    "Plain",
    "SaslClient",
    "ScramSHA1",
    "ScramSHA224",
    "ScramSHA256",
    "ScramSHA384",
    "ScramSHA512",
    "SecurityLayer",
    "SecurityProps",
    "choose",
    "create",
    "implemented",
]
