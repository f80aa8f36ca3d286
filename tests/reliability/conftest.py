import pytest


def pytest_collection_modifyitems(items):
    """The fault-injection suite is slow by nature (CI runs it; the fast loop, -m "not slow", skips it)."""
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
