"""CA store: certificates and CRLs checked with an independent verifier (openssl CLI)."""

import datetime
import json
import multiprocessing
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca
from ansible_collections.hardened.mailhost.plugins.module_utils._ca import (
    CAError,
    CAExistsError,
    CertificateAuthority,
)

PASS = "correct horse battery"
UTC = datetime.timezone.utc


def openssl(*args, check=True):
    proc = subprocess.run(("openssl",) + args, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("openssl %s failed: %s%s" % (" ".join(args), proc.stdout, proc.stderr))
    return proc


def snapshot(folder):
    """Every file below folder (except the lock) with content and mode."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name == ".lock":
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, folder)] = (handle.read(), stat.S_IMODE(os.stat(path).st_mode))
    return out


@pytest.fixture(scope="module")
def ca_template(tmp_path_factory):
    """One initialised CA, copied per test (EC keygen is cheap but init derives a key)."""
    folder = tmp_path_factory.mktemp("tmpl") / "ca"
    CertificateAuthority(str(folder), PASS).init(organization="Example Mail")
    return folder


@pytest.fixture
def ca(tmp_path, ca_template):
    folder = tmp_path / "ca"
    os.mkdir(str(folder), 0o700)
    os.mkdir(str(folder / "export"), 0o700)
    for rel, (data, mode) in snapshot(str(ca_template)).items():
        path = folder / rel
        path.write_bytes(data)
        os.chmod(str(path), mode)
    return CertificateAuthority(str(folder), PASS)


def write(path, data):
    with open(str(path), "wb") as handle:
        handle.write(data)
    return str(path)


def verify(ca, tmp_path, cert_pem, crl=True):
    """openssl verify of cert_pem against the CA (and its CRL); returns the process."""
    leaf = write(tmp_path / "leaf.pem", cert_pem)
    if crl:
        with open(ca.dovecot_export_path, "rb") as handle:
            bundle = write(tmp_path / "bundle.pem", handle.read())
        return openssl("verify", "-crl_check", "-purpose", "sslclient", "-CAfile", bundle, leaf,
                       check=False)
    return openssl("verify", "-purpose", "sslclient", "-CAfile", ca.path("ca.crt"), leaf, check=False)


# ------------------------------------------------------------------ init
def test_init_creates_protected_files_and_a_proper_ca(ca_template):
    assert stat.S_IMODE(os.stat(str(ca_template)).st_mode) == 0o700
    for name in ("ca.key", "ca.crt", "crl.pem", "index.sqlite3", "export/.state",
                 "export/postfix_relay_clientcerts", "export/dovecot_ca_crl.pem"):
        assert stat.S_IMODE(os.stat(str(ca_template / name)).st_mode) == 0o600, name
    cert = x509.load_pem_x509_certificate((ca_template / "ca.crt").read_bytes())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    key_pem = (ca_template / "ca.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_pem, password=None)
    serialization.load_pem_private_key(key_pem, password=PASS.encode())
    # openssl agrees it is a CA that signed itself
    out = openssl("x509", "-in", str(ca_template / "ca.crt"), "-noout", "-text").stdout
    assert "CA:TRUE, pathlen:0" in out
    assert (ca_template / "export/postfix_relay_clientcerts").read_text() == ""


def test_init_rsa_option(tmp_path):
    info = CertificateAuthority(str(tmp_path / "rsa"), PASS).init(key_type="rsa-3072")
    assert info["ca"]["key_type"] == "rsa-3072"
    cert = x509.load_pem_x509_certificate((tmp_path / "rsa/ca.crt").read_bytes())
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 3072


def test_init_refuses_existing_ca_and_short_passphrase(ca, tmp_path):
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAExistsError):
        CertificateAuthority(ca.ca_dir, PASS).init()
    assert snapshot(ca.ca_dir) == before
    # 15 characters: one short of the minimum for a new CA; nothing is written
    with pytest.raises(CAError, match="at least 16 characters"):
        CertificateAuthority(str(tmp_path / "new"), "fifteen-chars-x").init()
    assert not (tmp_path / "new").exists()
    with pytest.raises(CAError, match="key type"):
        CertificateAuthority(str(tmp_path / "new"), PASS).init(key_type="dsa")


# ----------------------------------------------------------------- issue
def test_issue_makes_a_client_certificate_openssl_accepts(ca, tmp_path):
    issued = ca.issue("Ann@Example.ORG", "Ann Example", "phone")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ann@example.org"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Ann Example"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "phone"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["ann@example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=119, hours=23) < lifetime <= datetime.timedelta(days=120)
    assert cert.serial_number == issued.serial_number == int(issued.serial, 16)
    assert cert.serial_number.bit_length() > 64  # random, not a counter
    assert verify(ca, tmp_path, issued.cert_pem).returncode == 0
    # fingerprint as openssl (and Postfix) print it
    fp = openssl("x509", "-in", write(tmp_path / "c.pem", issued.cert_pem), "-noout",
                 "-fingerprint", "-sha256").stdout.strip().split("=", 1)[1]
    assert fp == issued.fingerprint
    # key matches certificate; the key is never stored in the CA folder
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert all(issued.key_pem not in data for data, _mode in snapshot(ca.ca_dir).values())
    line = "%s ann@example.org\n" % issued.fingerprint
    with open(ca.postfix_export_path) as handle:
        assert handle.read() == line


def test_pkcs12_modern_and_legacy(ca, tmp_path):
    modern = ca.issue("bob@example.org", "Bob", "laptop")
    legacy = ca.issue("bob@example.org", "Bob", "old-iphone", pkcs12_legacy=True)
    assert modern.pkcs12_password != legacy.pkcs12_password
    assert len(modern.pkcs12_password) >= 20
    for issued in (modern, legacy):
        key, cert, extra = pkcs12.load_key_and_certificates(
            issued.pkcs12_bytes, issued.pkcs12_password.encode())
        assert cert.public_bytes(serialization.Encoding.PEM) == issued.cert_pem
        assert extra[0].fingerprint(hashes.SHA256()) == ca.certificate().fingerprint(hashes.SHA256())
        with pytest.raises(ValueError):
            pkcs12.load_key_and_certificates(issued.pkcs12_bytes, b"wrong")
    info_modern = openssl("pkcs12", "-info", "-noout", "-in", write(tmp_path / "m.p12", modern.pkcs12_bytes),
                          "-passin", "pass:" + modern.pkcs12_password)
    info_legacy = openssl("pkcs12", "-info", "-noout", "-in", write(tmp_path / "l.p12", legacy.pkcs12_bytes),
                          "-passin", "pass:" + legacy.pkcs12_password)
    text_modern = info_modern.stdout + info_modern.stderr
    text_legacy = info_legacy.stdout + info_legacy.stderr
    assert "AES-256-CBC" in text_modern and "sha256" in text_modern
    assert "3-KeyTripleDES" in text_legacy and "sha1" in text_legacy.lower()
    assert "AES" not in text_legacy


def test_duplicate_is_refused_and_replace_revokes_the_old_one(ca, tmp_path):
    first = ca.issue("carl@example.org", "Carl", "phone")
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAError, match="already has a valid certificate.*replace: true"):
        ca.issue("CARL@example.org", "Carl", "phone")
    assert snapshot(ca.ca_dir) == before
    other_device = ca.issue("carl@example.org", "Carl", "tablet")
    second = ca.issue("carl@example.org", "Carl", "phone", replace=True)
    assert [r["serial"] for r in second.replaced] == [first.serial]
    assert second.replaced[0]["revocation_reason"] == "superseded"
    bad = verify(ca, tmp_path, first.cert_pem)
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr
    assert verify(ca, tmp_path, second.cert_pem).returncode == 0
    assert verify(ca, tmp_path, other_device.cert_pem).returncode == 0
    with open(ca.postfix_export_path) as handle:
        lines = handle.read().splitlines()
    assert set(lines) == {"%s carl@example.org" % c.fingerprint for c in (second, other_device)}


def test_expired_certificate_does_not_block_and_leaves_the_map(ca, tmp_path):
    old = ca.issue("dora@example.org", "Dora", "phone", days=-1)
    assert verify(ca, tmp_path, old.cert_pem, crl=False).returncode != 0
    with open(ca.postfix_export_path) as handle:
        assert old.fingerprint not in handle.read()
    statuses = {c["serial"]: c["status"] for c in ca.info()["certificates"]}
    assert statuses[old.serial] == "expired"
    new = ca.issue("dora@example.org", "Dora", "phone")
    assert new.replaced == []
    future = ca.issue("dora@example.org", "Dora", "spare",
                      not_before=datetime.datetime.now(UTC) + datetime.timedelta(days=2),
                      not_after=datetime.datetime.now(UTC) + datetime.timedelta(days=9))
    info = {c["serial"]: c for c in ca.info()["certificates"]}
    assert info[future.serial]["status"] == "not_yet_valid"
    assert info[new.serial]["status"] == "valid" and info[new.serial]["days_left"] in (119, 120)
    with open(ca.postfix_export_path) as handle:
        assert handle.read() == "%s dora@example.org\n" % new.fingerprint


def test_certificate_may_not_outlive_the_ca(ca):
    with pytest.raises(CAError, match="outlive the CA"):
        ca.issue("eve@example.org", "Eve", "phone", days=40000)


@pytest.mark.parametrize("email", ["", "no-at-sign", "a@b", "a b@example.org", "ann@exa_mple.org",
                                   "ann@-example.org", "ann@example.org\n", "ännä@example.org",
                                   "x" * 250 + "@example.org"])
def test_malformed_email_changes_nothing(ca, email):
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAError, match="e-mail"):
        ca.issue(email, "Name", "phone")
    assert snapshot(ca.ca_dir) == before


@pytest.mark.parametrize("device", ["", "-phone", ".phone", "my phone", "phone/1", "ph\u00f6ne",
                                    "x" * 65, "phone\n", "a;b", "../x"])
def test_bad_device_label_changes_nothing(ca, device):
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAError, match="device label"):
        ca.issue("ann@example.org", "Ann", device)
    assert snapshot(ca.ca_dir) == before


def test_good_device_labels(ca):
    for label in ("a", "Phone-2", "mac.book_pro", "9" * 64):
        ca.issue("gil@example.org", "Gil", label)


def test_bad_name_and_key_type(ca):
    before = snapshot(ca.ca_dir)
    for name in ("", "   ", "x" * 65, "Ann\x00"):
        with pytest.raises(CAError, match="name"):
            ca.issue("ann@example.org", name, "phone")
    with pytest.raises(CAError, match="key type"):
        ca.issue("ann@example.org", "Ann", "phone", key_type="ed448")
    assert snapshot(ca.ca_dir) == before


def test_rsa_device_key(ca, tmp_path):
    issued = ca.issue("ivy@example.org", "Ivy", "old-android", key_type="rsa-2048")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.public_key().key_size == 2048
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert verify(ca, tmp_path, issued.cert_pem).returncode == 0


# ------------------------------------------------------------ bad CA state
def test_wrong_passphrase_changes_nothing(ca):
    before = snapshot(ca.ca_dir)
    wrong = CertificateAuthority(ca.ca_dir, "not the passphrase")
    for action in (lambda: wrong.issue("ann@example.org", "Ann", "phone"),
                   wrong.crl,
                   lambda: wrong.plan_issue("ann@example.org", "Ann", "phone")):
        with pytest.raises(CAError, match="wrong passphrase"):
            action()
    assert snapshot(ca.ca_dir) == before
    with pytest.raises(CAError, match="passphrase is required"):
        CertificateAuthority(ca.ca_dir).issue("ann@example.org", "Ann", "phone")
    # read-only use needs no passphrase
    assert CertificateAuthority(ca.ca_dir).info()["ca"]["expired"] is False


def test_missing_ca(tmp_path):
    missing = CertificateAuthority(str(tmp_path / "nothing"), PASS)
    for action in (lambda: missing.issue("ann@example.org", "Ann", "phone"),
                   missing.info, missing.crl, lambda: missing.revoke("01")):
        with pytest.raises(CAError, match="no CA in"):
            action()
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("victim,content,message", [
    ("ca.key", b"garbage", "corrupt"),
    ("ca.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "corrupt"),
    ("index.sqlite3", b"not a database at all, just some bytes" * 200, "corrupt"),
    ("index.sqlite3", b"", "corrupt"),
])
def test_corrupt_ca_changes_nothing(ca, victim, content, message):
    with open(ca.path(victim), "wb") as handle:
        handle.write(content)
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAError, match=message):
        ca.issue("ann@example.org", "Ann", "phone")
    assert snapshot(ca.ca_dir) == before


def test_incomplete_ca_and_mismatched_key(ca, tmp_path):
    other = CertificateAuthority(str(tmp_path / "other"), PASS)
    other.init()
    with open(other.path("ca.key"), "rb") as src, open(ca.path("ca.key"), "wb") as dst:
        dst.write(src.read())
    with pytest.raises(CAError, match="does not belong"):
        ca.issue("ann@example.org", "Ann", "phone")
    os.unlink(ca.path("ca.key"))
    with pytest.raises(CAError, match="incomplete, missing ca.key"):
        CertificateAuthority(ca.ca_dir, PASS).issue("ann@example.org", "Ann", "phone")


def test_expired_ca_refuses_to_sign(tmp_path):
    now = datetime.datetime.now(UTC)
    old = CertificateAuthority(str(tmp_path / "old"), PASS)
    old.init(not_before=now - datetime.timedelta(days=400), not_after=now - datetime.timedelta(days=1))
    assert old.info()["ca"]["expired"] is True
    before = snapshot(old.ca_dir)
    with pytest.raises(CAError, match="CA certificate expired"):
        old.issue("ann@example.org", "Ann", "phone")
    with pytest.raises(CAError, match="CA certificate expired"):
        old.crl()
    assert snapshot(old.ca_dir) == before


# ---------------------------------------------------------------- revoke/CRL
def test_revoke_by_serial_with_reason_and_crl_checked_by_openssl(ca, tmp_path):
    keep = ca.issue("fay@example.org", "Fay", "laptop")
    lost = ca.issue("fay@example.org", "Fay", "phone")
    number = ca.crl_status()["number"]
    done = ca.revoke(lost.serial_number, reason="key_compromise")
    assert [r["serial"] for r in done] == [lost.serial]
    status = ca.crl_status()
    assert status["number"] == number + 1 and status["revoked_serials"] == [lost.serial]
    assert status["missing"] == [] and status["signature_valid"]
    crl_text = openssl("crl", "-in", ca.path("crl.pem"), "-noout", "-text",
                       "-CAfile", ca.path("ca.crt")).stdout
    assert "Key Compromise" in crl_text
    assert "X509v3 CRL Number" in crl_text
    verified = openssl("crl", "-in", ca.path("crl.pem"), "-noout", "-CAfile", ca.path("ca.crt"))
    assert "verify OK" in verified.stdout + verified.stderr
    rejected = verify(ca, tmp_path, lost.cert_pem)
    assert rejected.returncode != 0 and "certificate revoked" in rejected.stdout + rejected.stderr
    assert verify(ca, tmp_path, keep.cert_pem).returncode == 0
    with open(ca.postfix_export_path) as handle:
        assert handle.read() == "%s fay@example.org\n" % keep.fingerprint
    # the Dovecot file is the CA followed by this CRL
    with open(ca.dovecot_export_path, "rb") as handle:
        bundle = handle.read()
    with open(ca.path("ca.crt"), "rb") as c, open(ca.path("crl.pem"), "rb") as r:
        assert bundle == c.read() + r.read()
    # revoking again changes nothing
    before = snapshot(ca.ca_dir)
    assert ca.revoke(lost.serial) == []
    assert ca.revoke(("fay@example.org", "phone")) == []
    assert snapshot(ca.ca_dir) == before


def test_revoke_by_device_and_serial_forms(ca, tmp_path):
    a = ca.issue("hal@example.org", "Hal", "phone")
    b = ca.issue("hal@example.org", "Hal", "tablet")
    assert ca.plan_revoke(("hal@example.org", "phone"))[0]["serial"] == a.serial
    done = ca.revoke(("HAL@example.org", "phone"), reason="cessation_of_operation")
    assert [r["serial"] for r in done] == [a.serial]
    colon = ":".join(b.serial[i:i + 2] for i in range(0, len(b.serial), 2)).lower()
    assert ca.plan_revoke(colon)[0]["serial"] == b.serial
    assert ca.plan_revoke("0x" + b.serial)[0]["serial"] == b.serial
    assert verify(ca, tmp_path, b.cert_pem).returncode == 0


def test_revoke_bad_input_changes_nothing(ca):
    ca.issue("ian@example.org", "Ian", "phone")
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAError, match="unknown to the CA"):
        ca.revoke("DEADBEEF")
    with pytest.raises(CAError, match="not a hex number"):
        ca.revoke("xyz")
    with pytest.raises(CAError, match="ever issued"):
        ca.revoke(("ian@example.org", "laptop"))
    with pytest.raises(CAError, match="revocation reason"):
        ca.revoke(("ian@example.org", "phone"), reason="because")
    with pytest.raises(CAError, match="device label"):
        ca.revoke(("ian@example.org", "bad label"))
    assert snapshot(ca.ca_dir) == before


def test_crl_next_update_is_configurable(ca, tmp_path):
    status = ca.crl(next_update_days=3)
    assert 2.99 < status["days_left"] <= 3
    crl = x509.load_pem_x509_crl(open(ca.path("crl.pem"), "rb").read())
    assert crl.next_update_utc - crl.last_update_utc == datetime.timedelta(days=3)
    status2 = ca.crl()
    assert status2["number"] == status["number"] + 1 and 29.99 < status2["days_left"] <= 30
    with pytest.raises(CAError, match="1-3650 days"):
        ca.crl(next_update_days=0)


def test_info_lists_every_certificate(ca):
    a = ca.issue("joe@example.org", "Joe", "phone")
    b = ca.issue("joe@example.org", "Joe", "laptop")
    ca.revoke(b.serial)
    info = ca.info()
    assert info["ca"]["subject"] == "O=Example Mail,CN=hardened.mailhost client CA"
    assert info["ca"]["days_left"] in (3649, 3650)
    by_serial = {c["serial"]: c for c in info["certificates"]}
    assert by_serial[a.serial]["status"] == "valid"
    assert by_serial[a.serial]["fingerprint_sha256"] == a.fingerprint
    assert by_serial[b.serial]["status"] == "revoked"
    assert by_serial[b.serial]["revocation_reason"] == "unspecified"
    assert "pkcs12" not in json.dumps(info) and "PRIVATE" not in json.dumps(info)


def test_exports_are_deterministic(ca):
    for i in range(5):
        ca.issue("u%d@example.org" % (4 - i), "U", "d")
    assert ca.exports_current()
    before = snapshot(ca.ca_dir)
    assert ca.export_postfix_map()[1] is False
    assert ca.export_dovecot_ca_crl()[1] is False
    assert ca.refresh_exports() is False
    assert snapshot(ca.ca_dir) == before
    with open(ca.postfix_export_path) as handle:
        emails = [line.split(" ")[1] for line in handle.read().splitlines()]
    assert emails == ["u%d@example.org" % i for i in range(5)]
    os.unlink(ca.postfix_export_path)
    assert not ca.exports_current()
    assert ca.export_postfix_map()[1] is True
    assert ca.exports_current()


def test_index_survives_a_new_object_and_foreign_ca_is_rejected(ca, tmp_path):
    issued = ca.issue("kim@example.org", "Kim", "phone")
    again = CertificateAuthority(ca.ca_dir, PASS)
    assert [c["serial"] for c in again.info()["certificates"]] == [issued.serial]
    foreign = CertificateAuthority(str(tmp_path / "foreign"), PASS)
    foreign.init()
    stranger = foreign.issue("kim@example.org", "Kim", "phone")
    assert verify(ca, tmp_path, stranger.cert_pem).returncode != 0


# -------------------------------------------------------------- concurrency
def _issue_many(ca_dir, worker, count):
    ca = CertificateAuthority(ca_dir, PASS)
    for i in range(count):
        ca.issue("w%d-%d@example.org" % (worker, i), "Worker", "dev")


def test_concurrent_issuing_keeps_the_index_consistent(ca):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_issue_many, args=(ca.ca_dir, n, 25)) for n in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(120)
        assert proc.exitcode == 0
    records = CertificateAuthority(ca.ca_dir).info()["certificates"]
    emails = sorted(rec["email"] for rec in records)
    assert emails == sorted("w%d-%d@example.org" % (n, i) for n in range(4) for i in range(25))
    assert len({rec["serial"] for rec in records}) == 100
    with open(ca.postfix_export_path) as handle:
        assert len(handle.read().splitlines()) == 100
    assert [n for n in os.listdir(ca.ca_dir) if n.startswith(".") and n != ".lock"] == []


def test_concurrent_duplicates_yield_exactly_one(ca):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def attempt():
        try:
            CertificateAuthority(ca.ca_dir, PASS).issue("race@example.org", "Race", "phone")
            queue.put("ok")
        except CAError:
            queue.put("refused")

    procs = [ctx.Process(target=attempt) for _number in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    results = sorted(queue.get(timeout=10) for _proc in procs)
    assert results == ["ok", "refused", "refused", "refused"]


def test_parse_serial_and_time_helpers():
    assert _ca.parse_serial(255) == "FF"
    assert _ca.parse_serial("0a:bc") == "0ABC"
    with pytest.raises(CAError):
        _ca.parse_serial(True)
    with pytest.raises(CAError):
        _ca.parse_serial(-3)
    stamp = _ca.parse_time("2030-01-02T03:04:05Z")
    assert stamp == datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(ValueError):
        _ca.parse_time("2030-01-02 03:04:05")


def test_unreadable_crl_is_reported_and_repaired(ca):
    with open(ca.path("crl.pem"), "w") as handle:
        handle.write("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    status = ca.crl_status()
    assert status["exists"] and status["corrupt"] and not status["signature_valid"]
    assert ca.check()["subject"]  # the CA itself is fine
    repaired = ca.crl()
    assert not repaired["corrupt"] and repaired["signature_valid"]
    os.unlink(ca.path("crl.pem"))
    assert ca.crl_status()["exists"] is False


def test_cached_index_sees_changes_made_by_another_process(ca):
    first = ca.issue("lea@example.org", "Lea", "phone")
    other = CertificateAuthority(ca.ca_dir, PASS)
    other.revoke(first.serial, reason="superseded")
    ca.issue("lea@example.org", "Lea", "laptop")  # the first object writes the index again
    records = {rec["serial"]: rec for rec in CertificateAuthority(ca.ca_dir).info()["certificates"]}
    assert records[first.serial]["state"] == "revoked"
    assert records[first.serial]["revocation_reason"] == "superseded"
    assert len(records) == 2
    assert ca.crl_status()["revoked_serials"] == [first.serial]


# ------------------------------------------------------- the key at rest
OLD_PASS = "old-pass8"  # 9 characters: allowed by earlier versions (minimum 8)


def kdf_of_key_file(path):
    """PBES2 parameters of an encrypted PKCS#8 file as openssl asn1parse reads them."""
    out = openssl("asn1parse", "-in", str(path)).stdout
    assert "PBES2" in out and "PBKDF2" in out, out
    params = out.split("PBKDF2", 1)[1]
    # the first INTEGER after the salt is the iteration count, printed in hex
    iterations = int(params.split("prim: INTEGER", 1)[1].split(":", 1)[1].split()[0], 16)
    return {"iterations": iterations, "prf": "hmacWithSHA256" in params,
            "aes256": "aes-256-cbc" in params}


def make_old_ca(folder, passphrase=OLD_PASS):
    """A CA as an earlier version left it: cryptography's BestAvailableEncryption key (2,048 rounds)."""
    CertificateAuthority(str(folder), PASS).init()
    key_path = os.path.join(str(folder), "ca.key")
    with open(key_path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), PASS.encode())
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(passphrase.encode())))
    assert kdf_of_key_file(key_path)["iterations"] == 2048
    return str(folder)


def test_new_ca_key_uses_600000_pbkdf2_sha256_rounds(ca_template):
    kdf = kdf_of_key_file(ca_template / "ca.key")
    assert kdf == {"iterations": 600000, "prf": True, "aes256": True}
    # openssl (not our code) decrypts it with the passphrase, and refuses a wrong one
    openssl("pkcs8", "-in", str(ca_template / "ca.key"), "-passin", "pass:" + PASS, "-nocrypt",
            "-topk8", "-out", os.devnull)
    assert openssl("pkcs8", "-in", str(ca_template / "ca.key"), "-passin", "pass:wrong-passphrase-x",
                   "-out", os.devnull, check=False).returncode != 0
    info = CertificateAuthority(str(ca_template)).info()["ca"]["key_encryption"]
    assert info["iterations"] == 600000 and info["current"]


def test_old_2048_round_ca_with_short_passphrase_still_issues_with_warnings(tmp_path):
    folder = make_old_ca(tmp_path / "old")
    ca = CertificateAuthority(folder, OLD_PASS)
    issued = ca.issue("ann@example.org", "Ann", "phone")
    assert verify(ca, tmp_path, issued.cert_pem).returncode == 0
    text = " ".join(ca.warnings)
    assert "2048 rounds" in text and "rekey: true" in text and "fewer than 16 characters" in text
    assert OLD_PASS not in text
    assert CertificateAuthority(folder).info()["ca"]["key_encryption"]["current"] is False


def test_rekey_changes_the_file_and_the_old_passphrase_no_longer_opens_it(tmp_path):
    folder = make_old_ca(tmp_path / "old")
    key_path = os.path.join(folder, "ca.key")
    new_pass = "a much longer new passphrase"
    with pytest.raises(CAError, match="at least 16"):
        CertificateAuthority(folder, OLD_PASS).rekey()  # the old short one is not good enough
    with pytest.raises(CAError, match="new_passphrase has 15"):
        CertificateAuthority(folder, OLD_PASS).rekey(new_passphrase="fifteen-chars-x")
    before = snapshot(folder)
    planned = CertificateAuthority(folder, OLD_PASS).rekey(new_passphrase=new_pass, check_only=True)
    assert planned["changed"] and planned["passphrase_changed"] and planned["before"]["iterations"] == 2048
    assert snapshot(folder) == before
    ca = CertificateAuthority(folder, OLD_PASS)
    done = ca.rekey(new_passphrase=new_pass)
    assert done["changed"] and done["after"]["iterations"] == 600000 and ca.warnings == []
    assert snapshot(folder)["ca.key"] != before["ca.key"]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert kdf_of_key_file(key_path) == {"iterations": 600000, "prf": True, "aes256": True}
    with open(key_path, "rb") as handle:
        data = handle.read()
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(data, OLD_PASS.encode())
    with pytest.raises(CAError, match="wrong passphrase"):
        CertificateAuthority(folder, OLD_PASS).check()
    # the same CA key (same certificate) under the new passphrase, and it still signs
    renewed = CertificateAuthority(folder, new_pass)
    assert renewed.issue("bob@example.org", "Bob", "phone").serial and renewed.warnings == []
    # a repeated run (vault not yet updated) changes nothing; a wrong pair is refused
    again = CertificateAuthority(folder, OLD_PASS).rekey(new_passphrase=new_pass)
    assert not again["changed"]
    with pytest.raises(CAError, match="neither the passphrase nor new_passphrase"):
        CertificateAuthority(folder, "not the passphrase at all").rekey(new_passphrase="nor is this one, sorry")
    assert not CertificateAuthority(folder, new_pass).rekey()["changed"]


def test_the_key_is_derived_once_per_object(ca, monkeypatch):
    """600,000 rounds cost ~0.1-0.5 s: one CA object (one module run) pays them once."""
    calls = []
    real = serialization.load_pem_private_key
    monkeypatch.setattr(_ca.serialization, "load_pem_private_key",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    ca.check()
    ca.plan_issue("ann@example.org", "Ann", "phone")
    first = ca.issue("ann@example.org", "Ann", "phone")
    ca.issue("ann@example.org", "Ann", "phone", replace=True)
    ca.revoke(first.serial)
    ca.crl()
    assert len(calls) == 1 and ca._key_loads == 1


# ------------------------------------------------- identity = whole address
def test_address_outside_the_served_domains_needs_relay_only(ca):
    served = ["Example.org", "mail.example.net"]
    before = snapshot(ca.ca_dir)
    with pytest.raises(CAError, match="outside the mail domains this host serves"):
        ca.issue("demo@partner.example", "Demo", "phone", allowed_domains=served)
    with pytest.raises(CAError, match="outside"):  # a subdomain is another domain
        ca.plan_issue("demo@sub.example.org", "Demo", "phone", allowed_domains=served)
    with pytest.raises(CAError, match="cannot be marked relay-only"):
        ca.issue("ann@EXAMPLE.org", "Ann", "phone", allowed_domains=served, relay_only=True)
    with pytest.raises(CAError, match="relay_only needs the list"):
        ca.issue("demo@partner.example", "Demo", "phone", relay_only=True)
    with pytest.raises(CAError, match="not a domain name"):
        ca.issue("ann@example.org", "Ann", "phone", allowed_domains=["bad domain"])
    assert snapshot(ca.ca_dir) == before
    ann = ca.issue("ann@example.org", "Ann", "phone", allowed_domains=served)
    relay = ca.issue("demo@partner.example", "Demo", "printer", allowed_domains=served, relay_only=True)
    assert ann.record["relay_only"] is False and relay.record["relay_only"] is True
    listed = {c["email"]: c["relay_only"] for c in ca.info()["certificates"]}
    assert listed == {"ann@example.org": False, "demo@partner.example": True}
    # without a list nothing is checked (the behaviour of earlier versions)
    assert ca.issue("carl@other.example", "Carl", "phone").record["relay_only"] is False
