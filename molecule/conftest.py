"""Shared pytest wiring for every Molecule scenario's verifier.

Molecule's testinfra verifier runs pytest on ``molecule/<scenario>/tests``;
pytest loads this conftest because the repository root (pytest.ini) is the
rootdir. Tests ask for the ``instance`` fixture and run once per platform.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))

from hmtest.instances import load_instances  # noqa: E402


def pytest_generate_tests(metafunc):
    if "instance" in metafunc.fixturenames:
        instances = load_instances()
        metafunc.parametrize("instance", instances, ids=[i.platform for i in instances], scope="module")


@pytest.fixture(scope="session")
def ephemeral_dir():
    """Molecule's per-scenario scratch folder on the controller (keys, CA, QR codes)."""
    return os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
