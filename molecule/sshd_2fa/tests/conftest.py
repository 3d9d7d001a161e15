"""The scenario verifies twice: default mode, then key_and_totp (side_effect.yml)."""

import pytest


@pytest.fixture(autouse=True)
def _phase_gate(request):
    instance = request.getfixturevalue("instance") if "instance" in request.fixturenames else None
    if instance is None:
        return
    marker = instance.host.file("/etc/hm-test-phase")
    phase = marker.content_string.strip() if marker.exists else "default"
    wanted = "key_and_totp" if request.node.get_closest_marker("key_and_totp") else "default"
    if phase != wanted:
        pytest.skip("runs in the %s phase; this is the %s phase" % (wanted, phase))
