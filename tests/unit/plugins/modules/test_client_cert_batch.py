"""client_cert with a list (certs) or a CSV file (certs_csv): all or nothing, each bundle 0600.

The module runs for real as a script (module_runner); bundles are opened with
their returned passwords, the certificates verified with openssl.
"""

import json
import os
import stat
import subprocess

import pytest

import module_runner
from cryptography.hazmat.primitives.serialization import pkcs12

from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority

PASS = "module test passphrase"


def run(tmp_path, check=False, diff=False, **args):
    args.setdefault("ca_dir", str(tmp_path / "ca"))
    args.setdefault("passphrase", PASS)
    result, proc = module_runner.run_module("client_cert", tmp_path, check=check, diff=diff, **args)
    assert PASS not in proc.stdout + proc.stderr
    return result


def files(folder):
    out = {}
    for root, _dirs, names in os.walk(str(folder)):
        for name in names:
            if name != ".lock":
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, str(folder))] = handle.read()
    return out


@pytest.fixture
def ca(tmp_path):
    authority = CertificateAuthority(str(tmp_path / "ca"), PASS)
    authority.init()
    return authority


def devices(count, **extra):
    out = [dict(email="User%02d@Example.org" % i, name="User %d" % i, device="phone") for i in range(count)]
    for entry in out:
        entry.update(extra)
    return out


def test_certs_list_issues_every_bundle_in_one_run(tmp_path, ca):
    bundles = tmp_path / "bundles"
    check = run(tmp_path, check=True, diff=True, certs=devices(12), pkcs12_dir=str(bundles),
                allowed_domains=["example.org"])
    assert check["changed"] and len(check["certificates"]) == 12
    assert "pkcs12_password" not in json.dumps(check) and not bundles.exists()
    assert ca.info()["certificates"] == []
    entries = devices(12)
    entries[3]["pkcs12_legacy"] = True
    entries[4]["pkcs12_path"] = str(tmp_path / "elsewhere" / "four.p12")
    result = run(tmp_path, diff=True, certs=entries, pkcs12_dir=str(bundles), allowed_domains=["example.org"])
    assert result["changed"] and len(result["certificates"]) == 12
    assert stat.S_IMODE(bundles.stat().st_mode) == 0o700
    passwords = set()
    for number, out in enumerate(result["certificates"]):
        assert out["email"] == "user%02d@example.org" % number and out["device"] == "phone"
        expected = str(tmp_path / "elsewhere" / "four.p12") if number == 4 else \
            str(bundles / ("user%02d@example.org_phone.p12" % number))
        assert out["pkcs12_path"] == expected
        assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
        with open(expected, "rb") as handle:
            key, cert, chain = pkcs12.load_key_and_certificates(handle.read(), out["pkcs12_password"].encode())
        assert key is not None and len(chain) == 1
        assert cert.serial_number == int(out["serial"], 16)
        passwords.add(out["pkcs12_password"])
    assert len(passwords) == 12
    legacy = subprocess.run(["openssl", "pkcs12", "-info", "-noout", "-in", result["certificates"][3]["pkcs12_path"],
                             "-passin", "pass:" + result["certificates"][3]["pkcs12_password"]],
                            capture_output=True, text=True, timeout=30, check=False)
    assert "pbeWithSHA1And3-KeyTripleDES-CBC" in legacy.stdout + legacy.stderr
    with open(ca.postfix_export_path) as handle:
        assert len(handle.read().splitlines()) == 12
    assert "user11@example.org" in result["diff"]["after"] and "PRIVATE" not in json.dumps(result["diff"])


@pytest.mark.parametrize("change,message", [
    (lambda e: e[5].update(device="my phone"), "entry 6 (User05@Example.org / my phone): device label"),
    (lambda e: e[5].update(email="x@partner.example"), "entry 6 (x@partner.example / phone): x@partner.example "
                                                       "is outside the mail domains"),
    (lambda e: e[5].update(email="user01@example.org"), "entry 6 (user01@example.org / phone): "),
    (lambda e: e[5].update(email="taken@example.org"), "entry 6 (taken@example.org / phone): taken@example.org "
                                                       "already has a valid certificate"),
    (lambda e: e[5].update(days=2000), "entry 6 (User05@Example.org / phone): days must be between 1 and 825"),
    (lambda e: e[5].pop("name"), "entry 6 (User05@Example.org / phone): name is required"),
    (lambda e: e[5].update(colour="red"), "entry 6 (User05@Example.org / phone): unknown keys colour"),
    (lambda e: e[5].update(pkcs12_path="BUNDLE"), "entry 6 (User05@Example.org / phone): "),
])
def test_one_bad_entry_fails_the_run_and_issues_nothing(tmp_path, ca, change, message):
    ca.issue("taken@example.org", "Taken", "phone")
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "existing.p12").write_bytes(b"an earlier bundle")
    entries = devices(8)
    change(entries)
    if entries[5].get("pkcs12_path") == "BUNDLE":
        entries[5]["pkcs12_path"] = str(bundles / "existing.p12")
    before = files(tmp_path / "ca")
    for check in (True, False):
        result = run(tmp_path, check=check, certs=entries, pkcs12_dir=str(bundles), allowed_domains=["example.org"])
        assert result["failed"] and message in result["msg"] and result["msg"].endswith("nothing was issued"), \
            result["msg"]
        assert files(tmp_path / "ca") == before
        assert sorted(os.listdir(str(bundles))) == ["existing.p12"]


def test_certs_csv(tmp_path, ca):
    bundles = tmp_path / "bundles"
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text('email,device,name,relay_only\nann@example.org,phone,"Example, Ann",false\n\n'
                        'bob@example.org,laptop,Bob,no\nalerts@partner.example,nagios,Monitoring,true\n')
    result = run(tmp_path, certs_csv=str(csv_file), pkcs12_dir=str(bundles), allowed_domains=["example.org"])
    assert [(c["email"], c["device"], c["relay_only"]) for c in result["certificates"]] == [
        ("ann@example.org", "phone", False), ("bob@example.org", "laptop", False),
        ("alerts@partner.example", "nagios", True)]
    names = {c["email"]: c["name"] for c in ca.info()["certificates"]}
    assert names["ann@example.org"] == "Example, Ann"
    before = files(tmp_path / "ca")
    for text, message in [
            ("email,device\nann@example.org,tablet\n", "needs the header email,device,name"),
            ("email,device,name\ncy@example.org,tablet,Cy\ndi@example.org,tab let,Di\n",
             "devices.csv line 3 (di@example.org / tab let): device label"),
            ("email,device,name\ncy@example.org,tablet\n", "devices.csv line 2: 2 fields, the header has 3"),
            ("email,device,name,days\ncy@example.org,tablet,Cy,ten\n", "days must be a number"),
            ("email,device,name\n", "lists no device")]:
        csv_file.write_text(text)
        failed = run(tmp_path, certs_csv=str(csv_file), pkcs12_dir=str(bundles), allowed_domains=["example.org"])
        assert failed["failed"] and message in failed["msg"], failed["msg"]
        assert files(tmp_path / "ca") == before
    missing = run(tmp_path, certs_csv=str(tmp_path / "nope.csv"), pkcs12_dir=str(bundles))
    assert missing["failed"] and "cannot read the CSV file" in missing["msg"]


def test_batch_options_are_checked(tmp_path, ca):
    both = run(tmp_path, certs=devices(1), certs_csv="x.csv", pkcs12_dir=str(tmp_path))
    assert both["failed"] and "mutually exclusive" in both["msg"]
    mixed = run(tmp_path, certs=devices(1), email="ann@example.org", pkcs12_dir=str(tmp_path))
    assert mixed["failed"] and "email is not used with certs" in mixed["msg"]
    no_dir = run(tmp_path, certs=devices(1))
    assert no_dir["failed"] and "give pkcs12_dir" in no_dir["msg"]
    revoke = run(tmp_path, state="revoked", certs=devices(1), pkcs12_dir=str(tmp_path))
    assert revoke["failed"] and "only used with state=present" in revoke["msg"]
    stray = run(tmp_path, pkcs12_dir=str(tmp_path), email="ann@example.org", name="Ann", device="phone",
                pkcs12_path=str(tmp_path / "a.p12"))
    assert stray["failed"] and "pkcs12_dir is only used with certs" in stray["msg"]
    assert ca.info()["certificates"] == []
