"""Shared by the dovecot scenario's test files."""

import fcntl
import os

import pytest


@pytest.fixture(autouse=True)
def _dovecot_reload_lock(request, ephemeral_dir):
    """The verifier runs tests side by side, and a reload of Dovecot (a CA file
    pushed, a certificate renewed) drops the logins in progress. A test that
    reloads is named in its module's EXCLUSIVE_TESTS and runs alone: it takes
    this lock exclusively, every other test of the scenario shares it."""
    exclusive = getattr(request.module, "EXCLUSIVE_TESTS", ())
    mode = fcntl.LOCK_EX if request.node.originalname in exclusive else fcntl.LOCK_SH
    with open(os.path.join(ephemeral_dir, "dovecot-test.lock"), "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
