"""The Connections chapter's integrated example (section 3.9, ex28.c), in Python.

Usage::

    python examples/connections.py [URI]        # URI defaults to $LIBVIRT_DEFAULT_URI

It runs on pyvirtrpc by default (``import pyvirtrpc as libvirt``); with
``--c-binding`` it runs the same code on libvirt-python, for comparison.

The C program's steps, in order, with the same output lines (stdout unless
marked stderr).  Where C passes a NULL pointer to force an error
(``virConnectGetVersion(conn, NULL)``), which Python cannot do, the example
looks up a domain that does not exist instead: it also fails, and shows the
same handler dispatch.  The per-connection handler (``virConnSetErrorFunc``)
has no libvirt-python binding; pyvirtrpc offers it as an extension method of
the same name, and with the C binding the example falls back to the global
handler.  ``virConnectAuthPtrDefault`` (prompting on the terminal) has no
Python equivalent either: the example passes an auth callback that answers
from ``$LIBVIRT_USERNAME``/``$LIBVIRT_PASSWORD`` (or prompts).
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

if "--c-binding" in sys.argv:
    sys.argv.remove("--c-binding")
    import libvirt  # type: ignore[import-not-found]
else:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import pyvirtrpc as libvirt  # type: ignore[no-redef]

FIELDS = ("Code", "Domain", "Message", "Level", "str1", "str2", "str3", "int1", "int2")


def print_error(title: str, err: Any) -> None:
    print(title, file=sys.stderr)
    for name, value in zip(FIELDS, err):
        print(f" {name}: {value}", file=sys.stderr)


def global_handler(ctx: Any, err: Any) -> None:
    print_error("Global handler, failure of libvirt library call:", err)


def conn_handler(ctx: Any, err: Any) -> None:
    print_error("Connection handler, failure of libvirt library call:", err)


def auth_callback(creds: list[list[Any]], cbdata: Any) -> int:
    """virConnectAuthPtrDefault's job: fill every credential asked for."""
    for cred in creds:
        if cred[0] in (libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_USERNAME):
            cred[4] = os.environ.get("LIBVIRT_USERNAME") or input(f"{cred[1]}: ")
        elif cred[0] in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
            cred[4] = os.environ.get("LIBVIRT_PASSWORD") or getpass.getpass(f"{cred[1]}: ")
        elif cred[0] == libvirt.VIR_CRED_ECHOPROMPT:
            cred[4] = input(f"{cred[1]}: ")
        else:
            cred[4] = cred[3] or ""
    return 0


AUTH = [
    [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_USERNAME, libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_ECHOPROMPT,
     libvirt.VIR_CRED_NOECHOPROMPT, libvirt.VIR_CRED_REALM],
    auth_callback,
    None,
]


def main() -> int:
    uri = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LIBVIRT_DEFAULT_URI")
    libvirt.registerErrorHandler(global_handler, None)

    opened: list[Any] = []

    def fail(rc: int) -> int:
        print(f"Failed to open connection to {uri}", file=sys.stderr)
        for c in reversed(opened):
            c.close()
        return rc

    attempts = [
        (lambda: libvirt.open(uri), 1),
        (lambda: libvirt.openReadOnly(uri), 2),
        (lambda: libvirt.openAuth(uri, AUTH, 0), 3),
        (lambda: libvirt.openAuth(uri, AUTH, libvirt.VIR_CONNECT_RO), 3),  # the C example returns 3 twice
    ]
    for opener, rc in attempts:
        try:
            opened.append(opener())
        except libvirt.libvirtError:
            return fail(rc)
    conn1, conn2, conn3, conn4 = opened

    has_conn_handler = hasattr(conn1, "virConnSetErrorFunc")
    if has_conn_handler:
        conn1.virConnSetErrorFunc(conn_handler, None)

    for conn in (conn1, conn2):
        try:
            conn.lookupByName("no-such-domain-ex28")
        except libvirt.libvirtError:
            print("virConnectGetVersion failed", file=sys.stderr)

    if has_conn_handler:
        conn1.virConnSetErrorFunc(None, None)
    libvirt.registerErrorHandler(None, None)

    try:
        caps = conn1.getCapabilities()
    except libvirt.libvirtError as e:
        print(f"virConnectGetCapabilities failed: {e}", file=sys.stderr)
        caps = None
    print(f"Capabilities of connection 1:\n{caps}")

    try:
        host = conn2.getHostname()
    except libvirt.libvirtError as e:
        print(f"virConnectGetVersion failed: {e}", file=sys.stderr)  # sic: the C example's message
        host = None
    print(f"Connection 2 hostname: {host}")

    try:
        vcpus = conn3.getMaxVcpus(None)
    except libvirt.libvirtError as e:
        print(f"virConnectGetMaxVcpus failed: {e}", file=sys.stderr)
        vcpus = -1
    print(f"Maximum number of cpus supported on connection 3: {vcpus}")

    try:
        free = conn4.getFreeMemory()
        if free == 0:
            print("virNodeGetFreeMemory failed", file=sys.stderr)
    except libvirt.libvirtError as e:
        print(f"virNodeGetFreeMemory failed: {e}", file=sys.stderr)
    # the C example never prints the value

    info = conn1.getInfo()
    print("Node information from connection 1:")
    print(f" Model: {info[0]}")
    print(f" Memory size: {info[1] * 1024}kb")  # getInfo() is in MiB in Python; ex12 prints KiB
    print(f" Number of CPUs: {info[2]}")
    print(f" MHz of CPUs: {info[3]}")
    print(f" Number of NUMA nodes: {info[4]}")
    print(f" Number of CPU sockets: {info[5]}")
    print(f" Number of CPU cores per socket: {info[6]}")
    print(f" Number of CPU threads per core: {info[7]}")

    print("Node Cells Free Memory from connection 1:")
    for i, free_bytes in enumerate(conn1.getCellsFreeMemory(0, info[4])):
        print(f" Cell {i}: {free_bytes // 1024}kb free memory")

    print(f"Virtualization type from connection 2: {conn2.getType()}")
    print(f"Virtualization version from connection 3: {conn3.getVersion()}")
    print(f"Libvirt version from connection 4: {conn4.getLibVersion()}")
    print(f"Canonical URI from connection 1: {conn1.getURI()}")
    print(f"Connection 2 is {'not ' if conn2.isEncrypted() == 0 else ''}encrypted")
    print(f"Connection 3 is {'not ' if conn3.isSecure() == 0 else ''}secure")
    model = conn4.getSecurityModel()
    print(f"Connection 4 Security Model = {model[0]}, DOI = {model[1]}")

    for c in (conn4, conn3, conn2, conn1):
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
