"""100 events per second for a minute, from the real daemon, with calls in between: none lost.

Marked ``slow`` (it takes a minute) but part of the normal run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import pyvirtrpc as libvirt
from tests.fakedaemon import default_loop_thread

libvirt.registerErrorHandler(lambda ctx, err: None, None)

RATE = 100  # events per second
DURATION = 60.0  # seconds
DOMXML = (
    "<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
    "<os><type arch='i686'>hvm</type></os></domain>"
)


@pytest.mark.slow
def test_100_events_per_second_for_a_minute(lab: Any) -> None:
    with default_loop_thread():
        conn = libvirt.open(lab.uris["unix"])
        producer = libvirt.open(lab.uris["unix"])
        received: list[tuple[str, int]] = []
        lock = threading.Lock()

        def cb(c: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
            with lock:
                received.append((dom.name(), event))

        stop = threading.Event()
        calls = [0]

        def caller() -> None:  # calls on the receiving connection all along: events interleave with replies
            while not stop.is_set():
                conn.getHostname()
                calls[0] += 1
                time.sleep(0.01)

        try:
            assert conn.setKeepAlive(5, 3) == 0
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
            th = threading.Thread(target=caller)
            th.start()
            pairs = int(RATE * DURATION / 2)  # each define + undefine makes two events
            period = 2.0 / RATE
            t0 = time.monotonic()
            for i in range(pairs):
                due = t0 + i * period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                dom = producer.defineXML(DOMXML.format(name=f"storm{i:05d}"))
                dom.undefine()
            produced_in = time.monotonic() - t0
            deadline = time.monotonic() + 30
            while len(received) < 2 * pairs and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            th.join(10)
            print(
                f"\nMEASURE {2 * pairs} events in {produced_in:.1f}s ({2 * pairs / produced_in:.0f}/s), "
                f"received {len(received)}, {calls[0]} calls meanwhile"
            )
            assert produced_in < DURATION + 5  # the producer kept the rate
            expected = []
            for i in range(pairs):
                expected += [
                    (f"storm{i:05d}", libvirt.VIR_DOMAIN_EVENT_DEFINED),
                    (f"storm{i:05d}", libvirt.VIR_DOMAIN_EVENT_UNDEFINED),
                ]
            assert received == expected  # none lost, none duplicated, in order
            assert calls[0] > 1000
            assert conn.isAlive() == 1
        finally:
            stop.set()
            conn.close()
            producer.close()
