"""Fixtures shared by the least-core tests."""

import signal
import threading

import pytest


@pytest.fixture
def default_signal_handlers():
    """Run a test with Python's own SIGINT/SIGTERM handlers: coreopt installs its handlers only
    over those, and another library of the same test session (Ray) may have replaced them with
    handlers that would end pytest itself."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    if threading.current_thread() is threading.main_thread():
        for sig, handler in saved.items():
            signal.signal(sig, handler)
