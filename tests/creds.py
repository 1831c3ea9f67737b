"""Credentials for the SASL tests: our openAuth callback and the C binding's, side by side."""

from __future__ import annotations

from typing import Any, Callable

from pyvirtrpc._gen import constants as C

#: the credential types the callbacks below answer
AUTH = [C.VIR_CRED_AUTHNAME, C.VIR_CRED_PASSPHRASE]

#: for ``peer(PEER_OPEN, uri=..., user=..., password=...)``: the C binding's
#: openAuth with the same answers, then hostname, isSecure, isEncrypted (or the error)
PEER_OPEN = """
def cb(creds, opaque):
    for c in creds:
        c[4] = args['user'] if c[0] == libvirt.VIR_CRED_AUTHNAME else args['password']
    return 0
try:
    c = libvirt.openAuth(args['uri'], [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], cb, None], 0)
    result = {'ok': [c.getHostname(), c.isSecure(), c.isEncrypted()]}
    c.close()
except libvirt.libvirtError as e:
    result = {'err': err(e)}
"""


def make_callback(user: str, password: str) -> Callable[[list[list[Any]], Any], int]:
    """An openAuth callback answering AUTHNAME with ``user`` and everything else with ``password``."""

    def cb(creds: list[list[Any]], opaque: Any) -> int:
        for c in creds:
            c[4] = user if c[0] == C.VIR_CRED_AUTHNAME else password
        return 0

    return cb


#: the lab's SASL user
callback = make_callback("alice", "wonderland")
