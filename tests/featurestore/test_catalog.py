"""The root's lock on a fingerprint: a second holder waits, and is told where the lock is."""

import threading
import time

import pytest

from featurestore import catalog
from tests import helpers


def test_a_second_holder_of_a_fingerprint_waits_and_other_fingerprints_do_not(tmp_path):
    events = []

    def second():
        with catalog.lock(tmp_path, "abc", on_wait=lambda path: events.append(("waiting", path))):
            events.append("held")

    with catalog.lock(tmp_path, "abc") as lock:
        assert lock == tmp_path / ".locks" / "abc.lock"
        thread = threading.Thread(target=second)
        thread.start()
        helpers.wait_until(lambda: events, 30, "the second holder to wait on the lock")
        with catalog.lock(tmp_path, "other", on_wait=lambda path: pytest.fail("another fingerprint waited")):
            pass
        time.sleep(0.1)
        assert events == [("waiting", lock)]
    helpers.join(thread, 5, "the second holder of the lock")
    assert events == [("waiting", lock), "held"]
    assert catalog.stores_in(tmp_path) == []  # the lock directory is not a store
