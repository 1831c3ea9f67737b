"""Result conversions shared by the sync and asyncio APIs.

Contract: pure functions from generated ``remote_*_ret`` values (and the
connection facts they need) to the shapes libvirt-python returns.  No I/O.
"""

from __future__ import annotations

from ._gen import remote as R

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


def cstr(raw: bytes) -> str:
    """A C char array: up to the first NUL."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def node_info(ret: Any) -> list[Any]:
    # libvirt-python reports memory in MiB (libvirt-override.c: memory >> 10)
    return [cstr(ret.model), ret.memory >> 10, ret.cpus, ret.mhz, ret.nodes, ret.sockets, ret.cores, ret.threads]


def security_model(ret: Any) -> list[str]:
    # both are char arrays whose length includes the trailing NUL
    return [cstr(ret.model), cstr(ret.doi)]


def secure(transport_secure: bool, ret: Any) -> int:
    """remoteConnectIsSecure: the transport and the daemon's driver must both be secure."""
    return 1 if transport_secure and ret.secure else 0


def encrypted(channel_encrypted: bool, auth_type: int, ret: Any) -> int:
    """remoteConnectIsEncrypted: TLS or any SASL session, and a secure driver.

    libvirt counts every SASL-authenticated connection as encrypted, even a
    unix one with SSF 0 (virNetClientIsEncrypted checks for a SASL context).
    """
    enc = channel_encrypted or auth_type == R.REMOTE_AUTH_SASL
    return 1 if enc and ret.secure else 0


def domain_info(ret: Any) -> list[int]:
    return [ret.state, ret.maxMem, ret.memory, ret.nrVirtCpu, ret.cpuTime]


def parse_uuid(text: Any) -> Optional[bytes]:
    """virUUIDParse: 32 hex digits, with dashes (and spaces) allowed between them."""
    if not isinstance(text, str):
        return None
    hexstr = "".join(ch for ch in text.strip() if ch not in "- ")
    if len(hexstr) != 32:
        return None
    try:
        return bytes.fromhex(hexstr)
    except ValueError:
        return None


def format_uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
