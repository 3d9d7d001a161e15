"""Module tests for client_ca, client_cert, client_crl and client_ca_info.

Each module runs for real, as a script with an ``ANSIBLE_MODULE_ARGS`` file
(how Ansible hands a module its arguments); results are checked against the
files on disk and with the openssl CLI as an independent verifier.
"""

import datetime
import json
import os
import secrets
import stat
import subprocess

import pytest

import module_runner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority

PASS = "module test passphrase"


def run(tmp_path, module, check=False, diff=False, **args):
    result, proc = module_runner.run_module(module, tmp_path, check=check, diff=diff, **args)
    for secret in ("passphrase", "new_passphrase"):
        if args.get(secret):
            assert args[secret] not in proc.stdout + proc.stderr
    result["_raw"] = proc.stdout
    return result


def warnings_of(result):
    """The warnings as one text (ansible-core 2.19 returns them as dicts)."""
    return json.dumps(result.get("warnings", []))


def snapshot(folder):
    out = {}
    for root, _dirs, files in os.walk(str(folder)):
        for name in files:
            if name != ".lock":
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, str(folder))] = handle.read()
    return out


def verify(tmp_path, ca_dir, cert_pem):
    leaf = tmp_path / ("leaf-%s.pem" % secrets.token_hex(3))
    leaf.write_text(cert_pem)
    proc = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile",
                           os.path.join(str(ca_dir), "export", "dovecot_ca_crl.pem"), str(leaf)],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def ca_dir(tmp_path):
    folder = tmp_path / "ca"
    result = run(tmp_path, "client_ca", ca_dir=str(folder), passphrase=PASS)
    assert result["changed"] and result["created"]
    return folder


def cert_args(folder, tmp_path, **extra):
    args = dict(ca_dir=str(folder), passphrase=PASS, email="ann@example.org", name="Ann Example",
                device="phone", pkcs12_path=str(tmp_path / "bundles" / secrets.token_hex(4) / "b.p12"))
    args.update(extra)
    return args


# -------------------------------------------------------------- client_ca
def test_client_ca_creates_once_and_checks_afterwards(tmp_path):
    folder = tmp_path / "new-ca"
    check = run(tmp_path, "client_ca", check=True, diff=True, ca_dir=str(folder), passphrase=PASS)
    assert check["changed"] and check["created"] and "would be created" in check["diff"]["after"]
    assert not folder.exists()
    first = run(tmp_path, "client_ca", diff=True, ca_dir=str(folder), passphrase=PASS,
                organization="Example Mail", key_type="ec-p384", days=365)
    assert first["changed"] and first["ca"]["key_type"] == "ec-p384"
    assert first["ca"]["subject"] == "O=Example Mail,CN=hardened.mailhost client CA"
    assert "PRIVATE" not in first["_raw"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    before = snapshot(folder)
    second = run(tmp_path, "client_ca", ca_dir=str(folder), passphrase=PASS, key_type="rsa-4096")
    assert not second["changed"] and not second["created"]
    assert second["ca"]["fingerprint_sha256"] == first["ca"]["fingerprint_sha256"]
    assert snapshot(folder) == before


def test_client_ca_errors_change_nothing(tmp_path, ca_dir):
    before = snapshot(ca_dir)
    wrong = run(tmp_path, "client_ca", ca_dir=str(ca_dir), passphrase="Not-The-Right-One")
    assert wrong["failed"] and "wrong passphrase" in wrong["msg"]
    for check in (True, False):  # 15 characters: refused for a new CA, nothing written
        short = run(tmp_path, "client_ca", check=check, ca_dir=str(tmp_path / "x"), passphrase="fifteen-chars-x")
        assert short["failed"] and "at least 16 characters" in short["msg"] and not (tmp_path / "x").exists()
    (ca_dir / "index.sqlite3").write_text("{broken")
    broken = run(tmp_path, "client_ca", ca_dir=str(ca_dir), passphrase=PASS)
    assert broken["failed"] and "corrupt" in broken["msg"]
    (ca_dir / "index.sqlite3").write_bytes(before["index.sqlite3"])
    os.unlink(str(ca_dir / "ca.crt"))
    partial = run(tmp_path, "client_ca", ca_dir=str(ca_dir), passphrase=PASS)
    assert partial["failed"] and "incomplete" in partial["msg"]
    assert not (ca_dir / "ca.crt").exists()  # never silently re-created


# ------------------------------------------------------------ client_cert
def test_client_cert_issues_bundle_and_refuses_duplicate(tmp_path, ca_dir):
    args = cert_args(ca_dir, tmp_path)
    result = run(tmp_path, "client_cert", diff=True, **args)
    assert result["changed"] and result["replaced"] == []
    bundle = args["pkcs12_path"]
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(bundle)).st_mode) == 0o700
    with open(bundle, "rb") as handle:
        key, cert, extra = pkcs12.load_key_and_certificates(handle.read(),
                                                            result["pkcs12_password"].encode())
    assert key is not None and len(extra) == 1
    assert cert.public_bytes(serialization.Encoding.PEM).decode() == result["cert_pem"]
    ok, out = verify(tmp_path, ca_dir, result["cert_pem"])
    assert ok, out
    assert result["subject"] == "OU=phone,O=Ann Example,CN=ann@example.org"
    assert result["serial"] in result["diff"]["after"] and result["diff"]["before"] == ""
    assert result["pkcs12_password"] not in json.dumps(result["diff"])
    with open(str(ca_dir / "export" / "postfix_relay_clientcerts")) as handle:
        assert handle.read() == "%s ann@example.org\n" % result["fingerprint_sha256"]

    before = snapshot(ca_dir)
    again = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path))
    assert again["failed"] and "already has a valid certificate" in again["msg"]
    checked = run(tmp_path, "client_cert", check=True, **cert_args(ca_dir, tmp_path))
    assert checked["failed"] and "replace: true" in checked["msg"]
    assert snapshot(ca_dir) == before

    replace_args = cert_args(ca_dir, tmp_path, replace=True, pkcs12_legacy=True)
    dry = run(tmp_path, "client_cert", check=True, diff=True, **replace_args)
    assert dry["changed"] and dry["replaced"] == [result["serial"]] and "serial" not in dry
    assert snapshot(ca_dir) == before and not os.path.exists(replace_args["pkcs12_path"])
    new = run(tmp_path, "client_cert", **replace_args)
    assert new["replaced"] == [result["serial"]]
    ok, out = verify(tmp_path, ca_dir, result["cert_pem"])
    assert not ok and "revoked" in out
    assert verify(tmp_path, ca_dir, new["cert_pem"])[0]


def test_client_cert_bad_input(tmp_path, ca_dir):
    before = snapshot(ca_dir)
    cases = [
        (dict(email="not-an-address"), "not a valid e-mail"),
        (dict(device="my phone"), "device label"),
        (dict(device="../../etc"), "device label"),
        (dict(name=""), "name is required"),
        (dict(days=0), "between 1 and 825"),
        (dict(days=826), "between 1 and 825, got 826"),
        (dict(email="demo@partner.example", allowed_domains=["example.org"]),
         "outside the mail domains this host serves"),
        (dict(allowed_domains=["example.org"], relay_only=True), "cannot be marked relay-only"),
        (dict(relay_only=True), "relay_only needs the list"),
        (dict(passphrase="Not-The-Right-One"), "wrong passphrase"),
        (dict(ca_dir=str(tmp_path / "missing")), "no CA in"),
        (dict(serial="01"), "only used with state=revoked"),
    ]
    for extra, message in cases:
        for check in (False, True):
            result = run(tmp_path, "client_cert", check=check, **cert_args(ca_dir, tmp_path, **extra))
            assert result["failed"] and message in result["msg"], (extra, result["msg"])
    existing = tmp_path / "exists.p12"
    existing.write_text("old")
    result = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path, pkcs12_path=str(existing)))
    assert result["failed"] and "already exists" in result["msg"]
    assert existing.read_text() == "old"
    assert snapshot(ca_dir) == before


def test_client_cert_revoke(tmp_path, ca_dir):
    phone = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path))
    laptop = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path, device="laptop"))
    base = dict(ca_dir=str(ca_dir), passphrase=PASS, state="revoked")
    before = snapshot(ca_dir)
    dry = run(tmp_path, "client_cert", check=True, diff=True, email="ann@example.org",
              device="phone", reason="key_compromise", **base)
    assert dry["changed"] and dry["revoked"] == [phone["serial"]]
    assert "key_compromise" in dry["diff"]["after"]
    assert snapshot(ca_dir) == before
    done = run(tmp_path, "client_cert", email="ann@example.org", device="phone",
               reason="key_compromise", **base)
    assert done["changed"] and done["revoked"] == [phone["serial"]]
    assert not verify(tmp_path, ca_dir, phone["cert_pem"])[0]
    assert verify(tmp_path, ca_dir, laptop["cert_pem"])[0]
    again = run(tmp_path, "client_cert", email="ann@example.org", device="phone", **base)
    assert not again["changed"] and again["revoked"] == []
    by_serial = run(tmp_path, "client_cert", serial=laptop["serial"].lower(), **base)
    assert by_serial["changed"] and by_serial["revoked"] == [laptop["serial"]]
    with open(str(ca_dir / "export" / "postfix_relay_clientcerts")) as handle:
        assert handle.read() == ""
    before = snapshot(ca_dir)
    for extra, message in [
        (dict(serial="ABCDEF"), "unknown to the CA"),
        (dict(serial="zz"), "not a hex number"),
        (dict(email="ann@example.org", device="tablet"), "ever issued"),
        (dict(email="ann@example.org"), "needs serial, or email and device"),
        (dict(serial="01", email="ann@example.org"), "not both"),
    ]:
        request = dict(base)
        request.update(extra)
        result = run(tmp_path, "client_cert", **request)
        assert result["failed"] and message in result["msg"], result["msg"]
    request = dict(base)
    request.update(passphrase="Not-The-Right-One", email="ann@example.org", device="phone")
    wrong = run(tmp_path, "client_cert", check=True, **request)
    assert not wrong.get("failed") and not wrong["changed"]  # nothing to revoke, no key needed
    assert snapshot(ca_dir) == before


def test_client_cert_refuses_expired_ca(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    folder = tmp_path / "old"
    CertificateAuthority(str(folder), PASS).init(
        not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(minutes=1))
    before = snapshot(folder)
    result = run(tmp_path, "client_cert", **cert_args(folder, tmp_path))
    assert result["failed"] and "CA certificate expired" in result["msg"]
    crl = run(tmp_path, "client_crl", ca_dir=str(folder), passphrase=PASS, force=True)
    assert crl["failed"] and "expired" in crl["msg"]
    assert snapshot(folder) == before


# ------------------------------------------------------------- client_crl
def test_client_crl_refresh_rules(tmp_path, ca_dir):
    base = dict(ca_dir=str(ca_dir), passphrase=PASS)
    first = run(tmp_path, "client_crl", **base)
    assert not first["changed"] and first["reasons"] == []
    number = first["crl"]["number"]
    dry = run(tmp_path, "client_crl", check=True, diff=True, force=True, **base)
    assert dry["changed"] and dry["crl_signed"] and dry["crl"]["number"] == number
    forced = run(tmp_path, "client_crl", force=True, next_update_days=5, **base)
    assert forced["changed"] and forced["crl"]["number"] == number + 1
    assert 4.99 < forced["crl"]["days_left"] <= 5
    # 5 days left is less than half of the CA default (30): next run re-signs for 30 days
    renewed = run(tmp_path, "client_crl", **base)
    assert renewed["changed"] and any("expires in" in r for r in renewed["reasons"])
    assert renewed["crl"]["days_left"] > 29.9
    assert not run(tmp_path, "client_crl", **base)["changed"]
    os.unlink(str(ca_dir / "export" / "postfix_relay_clientcerts"))
    exports = run(tmp_path, "client_crl", **base)
    assert exports["changed"] and exports["exports_changed"] and not exports["crl_signed"]
    os.unlink(str(ca_dir / "crl.pem"))
    missing = run(tmp_path, "client_crl", **base)
    assert missing["changed"] and "missing" in missing["reasons"]
    assert (ca_dir / "crl.pem").exists()
    (ca_dir / "crl.pem").write_text("-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    repaired = run(tmp_path, "client_crl", **base)
    assert repaired["changed"] and repaired["reasons"] == ["unreadable"]
    assert repaired["crl"]["signature_valid"] and not repaired["crl"]["corrupt"]
    bad = run(tmp_path, "client_crl", next_update_days=5, min_valid_days=5, **base)
    assert bad["failed"] and "min_valid_days" in bad["msg"]
    wrong = run(tmp_path, "client_crl", ca_dir=str(ca_dir), passphrase="Not-The-Right-One")
    assert wrong["failed"] and "wrong passphrase" in wrong["msg"]


# --------------------------------------------------------- client_ca_info
def test_client_ca_info(tmp_path, ca_dir):
    run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path))
    bob = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path, email="bob@example.org"))
    run(tmp_path, "client_cert", ca_dir=str(ca_dir), passphrase=PASS, state="revoked",
        serial=bob["serial"])
    info = run(tmp_path, "client_ca_info", ca_dir=str(ca_dir))
    assert not info["changed"] and len(info["certificates"]) == 2
    assert info["crl"]["revoked_serials"] == [bob["serial"]]
    revoked = run(tmp_path, "client_ca_info", ca_dir=str(ca_dir), status=["revoked"])
    assert [c["serial"] for c in revoked["certificates"]] == [bob["serial"]]
    ann = run(tmp_path, "client_ca_info", ca_dir=str(ca_dir), email="ANN@example.org")
    assert [c["email"] for c in ann["certificates"]] == ["ann@example.org"]
    assert ann["certificates"][0]["days_left"] in (119, 120)
    missing = run(tmp_path, "client_ca_info", ca_dir=str(tmp_path / "none"))
    assert missing["failed"] and "no CA in" in missing["msg"]


def test_client_cert_days_over_the_limit_writes_nothing(tmp_path, ca_dir):
    """826 days: one over the CA/Browser Forum limit; clear message, no bundle, index unchanged."""
    before = snapshot(ca_dir)
    args = cert_args(ca_dir, tmp_path, days=826)
    result = run(tmp_path, "client_cert", **args)
    assert result["failed"] and result["msg"].startswith("days must be between 1 and 825, got 826")
    assert "nothing was issued" in result["msg"]
    assert not os.path.exists(args["pkcs12_path"]) and not os.path.exists(os.path.dirname(args["pkcs12_path"]))
    assert snapshot(ca_dir) == before
    ok = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path, days=825))
    assert ok["changed"] and ok["serial"]


def test_client_cert_served_domains_and_relay_only(tmp_path, ca_dir):
    served = ["Example.org"]
    before = snapshot(ca_dir)
    outside = cert_args(ca_dir, tmp_path, email="demo@partner.example", allowed_domains=served)
    refused = run(tmp_path, "client_cert", **outside)
    assert refused["failed"] and "outside the mail domains this host serves (example.org)" in refused["msg"]
    assert "relay_only" in refused["msg"] and not os.path.exists(outside["pkcs12_path"])
    assert snapshot(ca_dir) == before
    relay = run(tmp_path, "client_cert", diff=True, relay_only=True, **outside)
    assert relay["changed"] and relay["relay_only"] is True and "relay_only: True" in relay["diff"]["after"]
    mailbox = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path, allowed_domains=served))
    assert mailbox["changed"] and mailbox["relay_only"] is False and not mailbox.get("warnings")
    unchecked = run(tmp_path, "client_cert", **cert_args(ca_dir, tmp_path, device="laptop"))
    assert "allowed_domains is not set" in warnings_of(unchecked)
    listed = run(tmp_path, "client_ca_info", ca_dir=str(ca_dir))["certificates"]
    assert {(c["email"], c["device"], c["relay_only"]) for c in listed} == {
        ("demo@partner.example", "phone", True), ("ann@example.org", "phone", False),
        ("ann@example.org", "laptop", False)}


OLD_PASS = "old-pass8"  # allowed by earlier versions (8 characters minimum)
NEW_PASS = "a new and much longer CA passphrase"


def make_old_ca(folder):
    """A CA as an earlier version wrote it: BestAvailableEncryption (2,048 PBKDF2 rounds)."""
    CertificateAuthority(str(folder), PASS).init()
    key_path = folder / "ca.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), PASS.encode())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(OLD_PASS.encode())))
    return folder


def iterations_by_openssl(key_path):
    """PBKDF2 iteration count as ``openssl asn1parse`` prints it (hex INTEGER after the salt)."""
    out = subprocess.run(["openssl", "asn1parse", "-in", str(key_path)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    params = out.split(":PBKDF2", 1)[1]
    return int(params.split("prim: INTEGER", 1)[1].split(":", 1)[1].split()[0], 16)


def test_client_ca_new_key_has_600000_rounds(tmp_path, ca_dir):
    assert iterations_by_openssl(ca_dir / "ca.key") == 600000
    info = run(tmp_path, "client_ca_info", ca_dir=str(ca_dir))["ca"]["key_encryption"]
    assert info == {"scheme": "pbes2", "kdf": "pbkdf2", "iterations": 600000, "prf": "hmacWithSHA256",
                    "cipher": "aes-256-cbc", "current": True}


def test_old_ca_still_works_and_is_re_encrypted_on_request(tmp_path):
    folder = make_old_ca(tmp_path / "old")
    assert iterations_by_openssl(folder / "ca.key") == 2048
    old = dict(ca_dir=str(folder), passphrase=OLD_PASS)
    # the old CA opens and still issues, with warnings that name no secret
    checked = run(tmp_path, "client_ca", **old)
    assert not checked["changed"] and not checked["ca"]["key_encryption"]["current"]
    issued = run(tmp_path, "client_cert", **cert_args(folder, tmp_path, passphrase=OLD_PASS))
    assert issued["changed"] and verify(tmp_path, folder, issued["cert_pem"])[0]
    text = warnings_of(issued)
    assert "2048 rounds" in text and "fewer than 16 characters" in text and "rekey: true" in text
    # refused: rekey under the short passphrase, a short new one, new_passphrase without rekey
    before = snapshot(folder)
    for extra, message in [(dict(rekey=True), "at least 16 characters"),
                           (dict(rekey=True, new_passphrase="fifteen-chars-x"), "new_passphrase has 15"),
                           (dict(new_passphrase=NEW_PASS), "only used with rekey: true")]:
        result = run(tmp_path, "client_ca", **dict(old, **extra))
        assert result["failed"] and message in result["msg"], result["msg"]
    # check mode plans it and writes nothing
    planned = run(tmp_path, "client_ca", check=True, diff=True, rekey=True, new_passphrase=NEW_PASS, **old)
    assert planned["changed"] and planned["rekeyed"] and "2048 rounds" in planned["diff"]["before"]
    assert "600000 rounds" in planned["diff"]["after"] and "passphrase: new" in planned["diff"]["after"]
    assert snapshot(folder) == before
    done = run(tmp_path, "client_ca", diff=True, rekey=True, new_passphrase=NEW_PASS, **old)
    assert done["changed"] and done["rekeyed"] and not done.get("warnings")
    assert done["ca"]["key_encryption"]["iterations"] == 600000
    after = snapshot(folder)
    assert after["ca.key"] != before["ca.key"]
    assert {k: v for k, v in after.items() if k != "ca.key"} == {k: v for k, v in before.items() if k != "ca.key"}
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert iterations_by_openssl(folder / "ca.key") == 600000
    # the old passphrase no longer opens it (our modules and openssl agree); the new one does
    wrong = run(tmp_path, "client_crl", **old)
    assert wrong["failed"] and "wrong passphrase" in wrong["msg"]
    assert subprocess.run(["openssl", "pkey", "-in", str(folder / "ca.key"), "-passin", "pass:" + OLD_PASS,
                           "-noout"], capture_output=True, timeout=30, check=False).returncode != 0
    assert subprocess.run(["openssl", "pkey", "-in", str(folder / "ca.key"), "-passin", "pass:" + NEW_PASS,
                           "-noout"], capture_output=True, timeout=30, check=False).returncode == 0
    renewed = run(tmp_path, "client_cert", **cert_args(folder, tmp_path, passphrase=NEW_PASS, device="laptop",
                                                       allowed_domains=["example.org"]))
    assert renewed["changed"] and not renewed.get("warnings")
    # a repeated run (vault not yet updated) and a run with the new passphrase change nothing
    again = run(tmp_path, "client_ca", rekey=True, new_passphrase=NEW_PASS, **old)
    assert not again["changed"] and not again["rekeyed"]
    assert not run(tmp_path, "client_ca", ca_dir=str(folder), passphrase=NEW_PASS, rekey=True)["changed"]


def test_one_key_derivation_per_module_run(tmp_path, ca_dir, monkeypatch):
    """client_cert's issue path (plan, issue, with the check) pays the 600,000 rounds once."""
    from cryptography.hazmat.primitives import serialization as real_serialization

    from ansible_collections.hardened.mailhost.plugins.module_utils import _ca
    from ansible_collections.hardened.mailhost.plugins.modules import client_cert

    calls = []
    real = real_serialization.load_pem_private_key
    monkeypatch.setattr(_ca.serialization, "load_pem_private_key",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))

    class FakeModule:
        check_mode = False
        _diff = True
        params = dict(cert_args(ca_dir, tmp_path, replace=False, days=120, key_type="ec-p256",
                                pkcs12_legacy=False, serial=None, allowed_domains=["example.org"],
                                relay_only=False))

        @staticmethod
        def warn(text):
            raise AssertionError(text)

    ca = _ca.CertificateAuthority(str(ca_dir), PASS)
    result = client_cert.present(FakeModule(), ca)
    assert result["serial"] and len(calls) == 1
