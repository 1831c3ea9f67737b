"""The sans-I/O protocol core: everything a libvirt client does except I/O.

Contract: the modules of this package take bytes and give bytes, calls and
events; they never import ``socket``, ``ssl``, ``asyncio``, ``threading``,
``select``, ``time``, ``logging`` or ``subprocess`` (a test scans their
imports), and time comes in as a ``now`` argument.  The sync client, the
asyncio client and the tests' fake daemon are thin drivers around them.
"""
