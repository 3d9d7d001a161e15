"""issue_cert.yml, revoke_cert.yml and refresh_crl.yml run for real on the controller.

ansible-playbook runs against the implicit localhost with a CA in a temporary
folder; the group mailhosts is empty (or its play skipped with --tags ca), so
the push plays reach no host (their tasks are exercised by the Postfix and
Dovecot scenarios).
"""

import json
import os
import re
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PASS = "playbook test passphrase"


def ca_dir_of(tmp_path):
    return tmp_path / "home" / ".hardened-mailhost" / "ca"


def bundle_dir_of(tmp_path):
    return tmp_path / "home" / ".hardened-mailhost" / "bundles"


def listing(folder):
    """Files of a folder, without controller_secret's .owners ledger."""
    return sorted(name for name in os.listdir(str(folder)) if not name.startswith("."))


def playbook(tmp_path, name, inventory=None, args=(), env_extra=None, **extra):
    extra_vars = dict(hardened_ca_dir=str(ca_dir_of(tmp_path)), hardened_ca_passphrase=PASS)
    extra_vars.update(extra)
    env = dict(os.environ,
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    env.update(env_extra or {})
    argv = ["ansible-playbook", os.path.join(ROOT, "playbooks", name), "-e", json.dumps(extra_vars)]
    if inventory is not None:
        path = tmp_path / ("inventory-%d.yml" % len(list(tmp_path.glob("inventory-*.yml"))))
        path.write_text(json.dumps(inventory))
        argv += ["-i", str(path)]
    proc = subprocess.run(argv + list(args), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert PASS not in proc.stdout + proc.stderr
    return proc


def bundle_password(bundle):
    """The password from the 0600 file beside the bundle, proven to open the bundle."""
    password_file = bundle.parent / (bundle.name[:-len(".p12")] + ".pass")
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    password = password_file.read_text()
    key, certificate, _chain = pkcs12.load_key_and_certificates(bundle.read_bytes(), password.encode())
    assert key is not None and certificate is not None
    return password


def test_issue_revoke_refresh(tmp_path):
    cert = dict(cert_email="Ann@Example.org", cert_name="Ann Example", cert_device="phone",
                cert_bundle_keep_seconds=0)
    issued = playbook(tmp_path, "issue_cert.yml", **cert)
    ca_dir = ca_dir_of(tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    bundle = bundle_dir_of(tmp_path) / "ann@example.org_phone.p12"
    assert stat.S_IMODE(bundle.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    password = bundle_password(bundle)
    assert password not in issued.stdout + issued.stderr
    assert "Password file (0600): %s" % str(bundle)[:-len(".p12")] + ".pass" in issued.stdout
    fingerprint = re.search(r"SHA-256 ([0-9A-F:]{95})", issued.stdout).group(1)
    postfix_map = ca_dir / "export" / "postfix_relay_clientcerts"
    assert postfix_map.read_text() == "%s ann@example.org\n" % fingerprint

    # same device again: clear message, nothing changed
    index_before = (ca_dir / "index.sqlite3").read_bytes()
    bundle.unlink()
    bundle.with_suffix(".pass").unlink()
    again = playbook(tmp_path, "issue_cert.yml", **cert)
    assert again.returncode != 0
    assert "already has a valid certificate" in again.stdout
    assert (ca_dir / "index.sqlite3").read_bytes() == index_before and not bundle.exists()

    # bad device label
    bad_request = dict(cert)
    bad_request["cert_device"] = "my phone"
    bad = playbook(tmp_path, "issue_cert.yml", **bad_request)
    assert bad.returncode != 0 and "device label" in bad.stdout

    # revoke by e-mail + device: gone from the Postfix map, listed in the CRL
    revoked = playbook(tmp_path, "revoke_cert.yml", cert_email="ann@example.org",
                       cert_device="phone", cert_reason="key_compromise")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "Revoked: " in revoked.stdout
    assert postfix_map.read_text() == ""
    crl_text = subprocess.run(["openssl", "crl", "-in", str(ca_dir / "crl.pem"), "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
    assert "Key Compromise" in crl_text
    unknown = playbook(tmp_path, "revoke_cert.yml", cert_serial="ABCDEF12")
    assert unknown.returncode != 0 and "unknown to the CA" in unknown.stdout

    number = int(re.search(r"X509v3 CRL Number: *\n *(\d+)", crl_text).group(1))
    refreshed = playbook(tmp_path, "refresh_crl.yml")
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert "CRL %d valid until" % (number + 1) in refreshed.stdout


def test_bundle_removed_after_keep_time_and_on_request(tmp_path):
    cert = dict(cert_email="bob@example.org", cert_name="Bob", cert_device="laptop")
    timed = playbook(tmp_path, "issue_cert.yml", cert_bundle_keep_seconds=1,
                     cert_legacy_pkcs12=True, **cert)
    assert timed.returncode == 0, timed.stdout + timed.stderr
    bundles = bundle_dir_of(tmp_path)
    assert "legacy 3DES" in timed.stdout and listing(bundles) == []
    kept = playbook(tmp_path, "issue_cert.yml", cert_bundle_keep_seconds=0,
                    cert_replace=True, **cert)
    assert kept.returncode == 0 and "Replaced (revoked): " in kept.stdout
    assert listing(bundles) == ["bob@example.org_laptop.p12", "bob@example.org_laptop.pass"]
    bundle_password(bundles / "bob@example.org_laptop.p12")
    removed = playbook(tmp_path, "issue_cert.yml", cert_bundle_remove=True,
                       cert_email="bob@example.org", cert_device="laptop")
    assert removed.returncode == 0 and listing(bundles) == []


@pytest.mark.parametrize("name,extra,message", [
    ("issue_cert.yml", dict(cert_email="a@example.org"), "Give cert_email, cert_name and cert_device"),
    ("revoke_cert.yml", dict(), "Give either cert_serial"),
    ("refresh_crl.yml", dict(hardened_ca_passphrase=""), "Give the CA passphrase"),
])
def test_playbooks_refuse_incomplete_requests(tmp_path, name, extra, message):
    proc = playbook(tmp_path, name, **extra)
    assert proc.returncode != 0 and message in proc.stdout
    assert not ca_dir_of(tmp_path).exists()


def jsonl_events(proc):
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["_event"] == "v2_playbook_on_stats", proc.stdout[-2000:] + proc.stderr
    return events


def test_issue_cert_records_no_secret_in_jsonl(tmp_path):
    """Issue 12 item 3: the bundle password and the CA passphrase reach no callback record.

    The whole run is recorded by ansible.posix.jsonl (what AWX job events and
    navigator artifacts store); the password is read back from its 0600 file
    and proven to open the bundle before the output is searched for it.
    """
    proc = playbook(tmp_path, "issue_cert.yml", args=["--tags", "ca"],
                    env_extra={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.jsonl"},
                    cert_email="ann@example.org", cert_name="Ann Example", cert_device="phone",
                    cert_bundle_keep_seconds=0, hardened_mailhost_mail_domains=["example.org"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    events = jsonl_events(proc)
    bundle = bundle_dir_of(tmp_path) / "ann@example.org_phone.p12"
    password = bundle_password(bundle)
    recorded = proc.stdout + proc.stderr
    assert password not in recorded and PASS not in recorded
    # the run did hand it over: the message task names the 0600 file
    messages = [json.dumps(e["hosts"]) for e in events if e["_event"] == "v2_runner_on_ok"
                and "Say where" in e["task"]["name"]]
    assert messages and str(bundle)[:-len(".p12")] + ".pass" in messages[0]


def domain_inventory(**domains):
    """Two mail hosts (local connections, never contacted with --tags ca), each with its own list."""
    hosts = dict((name, {"ansible_connection": "local", "hardened_mailhost_mail_domains": value})
                 for name, value in domains.items())
    return {"mailhosts": {"hosts": hosts}}


def index_records(tmp_path):
    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority
    records = CertificateAuthority(str(ca_dir_of(tmp_path))).info()["certificates"]
    return dict(((r["email"], r["device"]), r) for r in records)


def test_issue_cert_refuses_addresses_outside_the_served_domains(tmp_path):
    inventory = domain_inventory(mx1=["example.org"], mx2=["Example.NET"])
    request = dict(cert_name="Someone", cert_device="phone", cert_bundle_keep_seconds=0)
    for email in ("ann@example.org", "bob@EXAMPLE.net"):  # the union of both hosts' lists
        ok = playbook(tmp_path, "issue_cert.yml", inventory=inventory, args=["--tags", "ca"],
                      cert_email=email, **request)
        assert ok.returncode == 0, ok.stdout[-3000:]
        assert "Mailbox identity" in ok.stdout
    index_before = (ca_dir_of(tmp_path) / "index.sqlite3").read_bytes()
    refused = playbook(tmp_path, "issue_cert.yml", inventory=inventory, args=["--tags", "ca"],
                       cert_email="demo@partner.example", **request)
    assert refused.returncode != 0
    assert "demo@partner.example is outside the mail domains this host serves (example.net, example.org)" \
        in refused.stdout
    assert "cert_relay_only=true" in refused.stdout
    assert (ca_dir_of(tmp_path) / "index.sqlite3").read_bytes() == index_before
    assert not (bundle_dir_of(tmp_path) / "demo@partner.example_phone.p12").exists()
    relay = playbook(tmp_path, "issue_cert.yml", inventory=inventory, args=["--tags", "ca"],
                     cert_email="demo@partner.example", cert_relay_only=True, **request)
    assert relay.returncode == 0, relay.stdout[-3000:]
    assert "Relay-only identity" in relay.stdout
    records = index_records(tmp_path)
    assert records[("demo@partner.example", "phone")]["relay_only"] is True
    assert records[("ann@example.org", "phone")]["relay_only"] is False
    # relay-only for a served address is refused (its certificate would open the mailbox)
    served = playbook(tmp_path, "issue_cert.yml", inventory=inventory, args=["--tags", "ca"],
                      cert_email="carl@example.org", cert_relay_only=True, **request)
    assert served.returncode != 0 and "cannot be marked relay-only" in served.stdout


def test_issue_cert_domains_fall_back_to_localhost_then_warn(tmp_path):
    request = dict(cert_name="Someone", cert_device="phone", cert_bundle_keep_seconds=0)
    # no mailhosts: localhost's own list decides
    refused = playbook(tmp_path, "issue_cert.yml", cert_email="demo@partner.example",
                       hardened_mailhost_mail_domains=["example.org"], **request)
    assert refused.returncode != 0 and "outside the mail domains this host serves (example.org)" in refused.stdout
    # no list anywhere: the behaviour of earlier versions, with a warning
    unchecked = playbook(tmp_path, "issue_cert.yml", cert_email="demo@partner.example", **request)
    assert unchecked.returncode == 0, unchecked.stdout[-3000:]
    assert "WARNING: no hardened_mailhost_mail_domains is set" in unchecked.stdout
    laptop = dict(request)
    laptop.update(cert_device="laptop", cert_email="ann@example.org", hardened_mailhost_mail_domains="example.org")
    bad = playbook(tmp_path, "issue_cert.yml", **laptop)
    assert bad.returncode != 0 and "must be a list of domain names" in bad.stdout


REKEY_PLAY = """
- name: Re-encrypt the CA key through the ca role
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: hardened.mailhost.ca
"""


def test_old_ca_keeps_working_and_the_role_re_encrypts_it(tmp_path):
    """A CA of an earlier version (2,048 rounds, 9-character passphrase) issues; ca_rekey upgrades it."""
    from cryptography.hazmat.primitives import serialization

    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority

    old_pass, new_pass = "old-pass9", "the new CA passphrase, long enough"
    ca_dir = ca_dir_of(tmp_path)
    CertificateAuthority(str(ca_dir), PASS).init()
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), PASS.encode())
    (ca_dir / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(old_pass.encode())))
    issued = playbook(tmp_path, "issue_cert.yml", hardened_ca_passphrase=old_pass, cert_email="ann@example.org",
                      cert_name="Ann", cert_device="phone", cert_bundle_keep_seconds=0)
    assert issued.returncode == 0, issued.stdout[-3000:]
    assert "2048 rounds" in issued.stdout + issued.stderr  # the warning
    assert old_pass not in issued.stdout + issued.stderr
    bundle_password(bundle_dir_of(tmp_path) / "ann@example.org_phone.p12")
    # a new CA with a 15-character passphrase is refused by the role before anything is made
    other = tmp_path / "other"
    short = playbook(tmp_path, "issue_cert.yml", hardened_ca_passphrase="fifteen-chars-x",
                     hardened_ca_dir=str(other), cert_email="ann@example.org", cert_name="Ann",
                     cert_device="phone", cert_bundle_keep_seconds=0)
    assert short.returncode != 0 and "at least 16 characters" in short.stdout and not other.exists()
    (tmp_path / "rekey.yml").write_text(REKEY_PLAY)
    before = (ca_dir / "ca.key").read_bytes()
    for attempt in (1, 2):  # the second run finds nothing to do
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
        extra = dict(hardened_ca_dir=str(ca_dir), hardened_ca_passphrase=old_pass, ca_rekey=True,
                     ca_new_passphrase=new_pass)
        proc = subprocess.run(["ansible-playbook", str(tmp_path / "rekey.yml"), "-e", json.dumps(extra)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert old_pass not in proc.stdout + proc.stderr and new_pass not in proc.stdout + proc.stderr
        assert ("changed=1" if attempt == 1 else "changed=0") in proc.stdout
    assert (ca_dir / "ca.key").read_bytes() != before
    asn1 = subprocess.run(["openssl", "asn1parse", "-in", str(ca_dir / "ca.key")], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    assert "INTEGER           :0927C0" in asn1  # 600,000 rounds
    assert playbook(tmp_path, "refresh_crl.yml", hardened_ca_passphrase=old_pass).returncode != 0
    assert playbook(tmp_path, "refresh_crl.yml", hardened_ca_passphrase=new_pass).returncode == 0


def test_issue_cert_for_a_list_in_one_run(tmp_path):
    """Onboarding: a list of devices, one module run; each bundle 0600 with its 0600 .pass;
    no password in any callback record (jsonl); one bad entry -> nothing for anyone."""
    devices = [dict(email="User%d@example.org" % i, name="User %d" % i, device="phone") for i in range(4)]
    bad = devices + [dict(email="eve@example.org", name="Eve", device="my phone")]
    refused = playbook(tmp_path, "issue_cert.yml", args=["--tags", "ca"], cert_devices=bad,
                       cert_bundle_keep_seconds=0, hardened_mailhost_mail_domains=["example.org"])
    assert refused.returncode != 0
    assert "entry 5 (eve@example.org / my phone): device label 'my phone' is invalid" in refused.stdout
    assert "nothing was issued" in refused.stdout
    assert index_records(tmp_path) == {}
    assert not bundle_dir_of(tmp_path).exists() or listing(bundle_dir_of(tmp_path)) == []

    proc = playbook(tmp_path, "issue_cert.yml", args=["--tags", "ca"],
                    env_extra={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.jsonl"},
                    cert_devices=devices, cert_bundle_keep_seconds=0,
                    hardened_mailhost_mail_domains=["example.org"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    events = jsonl_events(proc)
    issue_tasks = [e for e in events if e["_event"] == "v2_runner_on_ok"
                   and e["task"]["name"].startswith("Issue every certificate")]
    assert len(issue_tasks) == 1  # one module run for the whole list
    recorded = proc.stdout + proc.stderr
    folder = bundle_dir_of(tmp_path)
    assert listing(folder) == sorted("user%d@example.org_phone.%s" % (i, ext) for i in range(4)
                                     for ext in ("p12", "pass"))
    for i in range(4):
        bundle = folder / ("user%d@example.org_phone.p12" % i)
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
        password = bundle_password(bundle)
        assert password not in recorded
    messages = [json.dumps(e["hosts"]) for e in events if e["_event"] == "v2_runner_on_ok"
                and "Say where the bundles" in e["task"]["name"]]
    assert messages and str(folder / "user3@example.org_phone.pass") in messages[0]
    assert len(index_records(tmp_path)) == 4

    removed = playbook(tmp_path, "issue_cert.yml", args=["--tags", "ca"], cert_devices=devices,
                       cert_bundle_remove=True)
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert listing(folder) == []


def test_issue_cert_from_a_csv_file(tmp_path):
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("email,device,name\nann@example.org,phone,Ann Example\nbob@example.org,laptop,Bob\n")
    proc = playbook(tmp_path, "issue_cert.yml", args=["--tags", "ca"], cert_devices_csv=str(csv_file),
                    cert_bundle_keep_seconds=0, hardened_mailhost_mail_domains=["example.org"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(index_records(tmp_path)) == [("ann@example.org", "phone"), ("bob@example.org", "laptop")]
    for name in ("ann@example.org_phone.p12", "bob@example.org_laptop.p12"):
        bundle_password(bundle_dir_of(tmp_path) / name)
    mixed = playbook(tmp_path, "issue_cert.yml", args=["--tags", "ca"], cert_devices_csv=str(csv_file),
                     cert_email="ann@example.org")
    assert mixed.returncode != 0 and "Give either cert_devices" in mixed.stdout
