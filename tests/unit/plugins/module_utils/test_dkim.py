"""DKIM key sets: made once, rotated through pending -> active -> retired, never leaking a key."""

import base64
import datetime
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ansible_collections.hardened.mailhost.plugins.module_utils import _dkim

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)


def request(tmp_path, **kw):
    args = dict(domain="example.org", served_domains=["example.org", "example.net"],
                key_dir=str(tmp_path / "keys"))
    args.update(kw)
    return _dkim.KeyRequest(**args)


def secrets_in(folder):
    """The Ed25519 seed and the PEM lines past the RSA modulus (which is public)."""
    out = []
    for name in os.listdir(folder):
        if name.endswith(".private"):
            lines = [line for line in (folder / name).read_text().splitlines()
                     if line and "PRIVATE KEY" not in line]
            out.extend(lines[8:] if len(lines) > 1 else lines)
    assert len(out) > 10
    return out


def test_first_run_makes_rsa_2048_and_ed25519_active_0600(tmp_path):
    result = _dkim.ensure(request(tmp_path), now=T0)
    folder = tmp_path / "keys" / "example.org"
    assert result["changed"] and result["active"]["rsa"] == "202612r"
    assert result["active"]["ed25519"] == "202612e"
    assert sorted(os.listdir(folder)) == ["202612e.private", "202612r.private", "selectors.json"]
    for name in ("202612e.private", "202612r.private"):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750
    key = serialization.load_pem_private_key((folder / "202612r.private").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    # Ed25519: the base64 seed alone, 44 bytes, no newline (what dkimpy's dknewkey writes).
    assert len((folder / "202612e.private").read_bytes()) == 44
    seed = base64.b64decode((folder / "202612e.private").read_bytes(), validate=True)
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    records = dict((r["selector"], r["value"]) for r in result["dns_records"])
    raw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert records["202612e"] == "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert records["202612r"] == "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    # No private material anywhere in the result, the diff included.
    text = json.dumps(result)
    for secret in secrets_in(folder):
        assert secret.strip() not in text
    assert "PRIVATE" not in text


def test_second_run_is_no_change_and_keeps_keys(tmp_path):
    first = _dkim.ensure(request(tmp_path), now=T0)
    folder = tmp_path / "keys" / "example.org"
    before = (folder / "202612r.private").read_bytes()
    again = _dkim.ensure(request(tmp_path), now=T0 + datetime.timedelta(days=40))
    assert again["changed"] is False and again["reasons"] == []
    assert again["dns_records"] == first["dns_records"]
    assert (folder / "202612r.private").read_bytes() == before


def test_check_mode_writes_nothing_and_reports(tmp_path):
    result = _dkim.ensure(request(tmp_path), check_mode=True, now=T0)
    assert result["changed"] and result["reasons"] == ["new key set 202612 (active)"]
    assert result["dns_records"] == []
    assert not (tmp_path / "keys").exists()


def test_rotation_publishes_first_then_switches_after_grace(tmp_path):
    _dkim.ensure(request(tmp_path), now=T0)
    later = T0 + datetime.timedelta(days=70)
    started = _dkim.ensure(request(tmp_path, rotate=True, grace_days=7), now=later)
    assert started["changed"] and started["active"]["base"] == "202612"
    statuses = dict((s["base"], s["status"]) for s in started["selectors"])
    assert statuses == {"202612": "active", "202702": "pending"}
    # Both sets are published while the old one still signs.
    assert sorted(r["selector"] for r in started["dns_records"]) == ["202612e", "202612r",
                                                                     "202702e", "202702r"]
    pending = [s for s in started["selectors"] if s["status"] == "pending"][0]
    assert pending["switch_after"] == "2027-02-17T10:00:00Z"
    # Same options inside the grace period: nothing (no second new set either).
    wait = _dkim.ensure(request(tmp_path, rotate=True, grace_days=7), now=later + datetime.timedelta(days=3))
    assert wait["changed"] is False and wait["active"]["base"] == "202612"
    # After the grace period the signer switches; the old set stays published, retired.
    switched = _dkim.ensure(request(tmp_path, grace_days=7), now=later + datetime.timedelta(days=7))
    assert switched["changed"] and switched["reasons"] == ["switched signing to key set 202702"]
    statuses = dict((s["base"], s["status"]) for s in switched["selectors"])
    assert statuses == {"202612": "retired", "202702": "active"}
    assert switched["active"]["rsa_file"].endswith("/example.org/202702r.private")
    assert len(switched["dns_records"]) == 4
    # The retired set is removed on request; the active one cannot be.
    with pytest.raises(_dkim.DkimError, match="active"):
        _dkim.ensure(request(tmp_path, selector="202702", state="absent"), now=later)
    removed = _dkim.ensure(request(tmp_path, selector="202612", state="absent"), now=later)
    assert removed["changed"] and len(removed["dns_records"]) == 2
    assert sorted(os.listdir(tmp_path / "keys" / "example.org")) == [
        "202702e.private", "202702r.private", "selectors.json"]
    again = _dkim.ensure(request(tmp_path, selector="202612", state="absent"), now=later)
    assert again["changed"] is False


def test_rotate_left_on_rotates_at_most_monthly_and_never_errs(tmp_path):
    def run(days, **kw):
        return _dkim.ensure(request(tmp_path, rotate=True, grace_days=40, **kw),
                            now=T0 + datetime.timedelta(days=days))

    assert run(0)["reasons"] == ["new key set 202612 (active)"]
    assert run(10)["changed"] is False                      # same month: nothing
    assert run(35)["reasons"] == ["new key set 202701 (pending)"]
    assert run(70)["changed"] is False                      # Feb: 202701 still pending
    switched = run(75)                                      # grace over: switch only
    assert switched["reasons"] == ["switched signing to key set 202701"]
    assert run(76)["reasons"] == ["new key set 202702 (pending)"]
    assert run(77)["changed"] is False
    statuses = [(s["base"], s["status"]) for s in run(78)["selectors"]]
    assert statuses == [("202612", "retired"), ("202701", "active"), ("202702", "pending")]


def test_a_second_rotation_waits_for_the_pending_one(tmp_path):
    _dkim.ensure(request(tmp_path), now=T0)
    _dkim.ensure(request(tmp_path, selector="next1"), now=T0)
    with pytest.raises(_dkim.DkimError, match="still waiting"):
        _dkim.ensure(request(tmp_path, selector="next2"), now=T0)


@pytest.mark.parametrize("kw, message", [
    (dict(domain="foreign.test"), "not a domain this host serves"),
    (dict(domain="exa mple.org"), "not a domain name"),
    (dict(selector="2026_12"), "selector"),
    (dict(selector="Bad"), "selector"),
    (dict(selector="-x"), "selector"),
    (dict(rsa_suffix="R!"), "rsa_suffix"),
    (dict(rsa_suffix="x", ed25519_suffix="x"), "must differ"),
    (dict(owner="no-such-user-hm"), "does not exist"),
    (dict(state="absent"), "needs the selector"),
    (dict(grace_days=-1), "grace_days"),
    (dict(served_domains=[]), "served_domains is empty"),
])
def test_bad_input_is_refused_and_nothing_written(tmp_path, kw, message):
    with pytest.raises(_dkim.DkimError, match=message):
        _dkim.ensure(request(tmp_path, **kw), now=T0)
    assert not (tmp_path / "keys").exists()


def test_selector_clash_with_an_existing_selector_is_refused(tmp_path):
    _dkim.ensure(request(tmp_path, selector="2026"), now=T0)
    # base "2026r" + suffix "e" would not clash, but "2026" + "r" as RSA of base "2026" exists:
    with pytest.raises(_dkim.DkimError, match="already used"):
        _dkim.ensure(request(tmp_path, selector="2026r", rsa_suffix="", ed25519_suffix="x"), now=T0)


def test_wrong_mode_is_fixed_and_a_missing_key_is_an_error(tmp_path):
    _dkim.ensure(request(tmp_path), now=T0)
    key = tmp_path / "keys" / "example.org" / "202612r.private"
    os.chmod(key, 0o644)
    fixed = _dkim.ensure(request(tmp_path), now=T0)
    assert fixed["changed"] and "owner or mode" in fixed["reasons"][0]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    os.unlink(key)
    with pytest.raises(_dkim.DkimError, match="missing"):
        _dkim.ensure(request(tmp_path), now=T0)


def test_a_foreign_state_file_is_refused(tmp_path):
    folder = tmp_path / "keys" / "example.org"
    folder.mkdir(parents=True)
    (folder / "selectors.json").write_text("{}")
    with pytest.raises(_dkim.DkimError, match="not a key state file"):
        _dkim.ensure(request(tmp_path), now=T0)
