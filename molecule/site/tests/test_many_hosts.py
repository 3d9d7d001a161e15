"""Many hosts at once with ONE shared controller folder (issue 17).

The converge ran site.yml against three hosts with forks > 1 and the same
sshd_2fa_enroll_dest and sudo_pin_generated_dest for all of them (molecule.yml).
Proven here, through the real services:

- every host's QR code and generated PIN is in the shared folder under a name
  that carries user and host, 0600 in a 0700 folder, and the folder's
  ``.owners`` ledger names that host;
- the QR code (decoded from the PNG with zbarimg) gives codes that host's sshd
  accepts; bob's generated PIN makes him root with sudo on its host and is
  refused on the others;
- three issue_cert.yml runs at the same moment into one bundle folder all
  succeed, lose and overwrite nothing, the CA index holds all three, and after
  one push each bundle relays on 465 of its host;
- a file recorded for one host is never overwritten by another host's run:
  the run is refused naming both hosts, the file is unchanged, and the new
  secret is not enabled on the refused host.
"""

import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid

import pyotp
import pytest
import yaml

from hmtest import mailbox, smtp
from hmtest.instances import load_instances

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as _fh:
    _CFG = yaml.safe_load(_fh)["provisioner"]["inventory"]["group_vars"]
PASSWORDS = _CFG["all"]["hm_site_passwords"]

INSTANCES = load_instances()


def shared(ephemeral_dir, *parts):
    return os.path.join(ephemeral_dir, "shared", *parts)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def ledger(folder):
    """The folder's .owners ledger as {file name: owner}."""
    owners = {}
    with open(os.path.join(folder, ".owners"), encoding="utf-8") as handle:
        for line in handle:
            name, _, owner = line.rstrip("\n").partition("\t")
            owners[name] = owner
    return owners


def ansible_env(ephemeral_dir):
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ephemeral_dir, "ansible.cfg"))


def inventory_dir():
    return os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])


def playbook(ephemeral_dir, name, *extra, timeout=300):
    """Run hardened.mailhost.NAME (or a path) as the converge does; the process, whatever its end."""
    target = name if name.endswith(".yml") else "hardened.mailhost." + name
    return subprocess.run(["ansible-playbook", "-i", inventory_dir(), target, *extra],
                          env=ansible_env(ephemeral_dir), capture_output=True, text=True,
                          timeout=timeout, check=False)


def plant(ephemeral_dir, path, owner, content):
    """Write a file recorded for ``owner`` with the collection's own plugin."""
    proc = subprocess.run(
        ["ansible", "localhost", "-i", inventory_dir(), "-m", "hardened.mailhost.controller_secret",
         "-a", json.dumps({"path": path, "owner": owner, "content": content})],
        env=ansible_env(ephemeral_dir), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------ files on the controller

def test_each_host_has_its_own_files_in_the_shared_folders(ephemeral_dir):
    totp_dir, pin_dir = shared(ephemeral_dir, "totp"), shared(ephemeral_dir, "sudo_pin")
    assert len(INSTANCES) == 3, INSTANCES
    for folder in (totp_dir, pin_dir):
        assert mode(folder) == 0o700, folder
        assert mode(os.path.join(folder, ".owners")) == 0o600
    totp_owners, pin_owners = ledger(totp_dir), ledger(pin_dir)
    for inst in INSTANCES:
        for user in ("alice", "bob"):
            for name in ("%s@%s.png" % (user, inst.name), "%s@%s.svg" % (user, inst.name)):
                path = os.path.join(totp_dir, name)
                assert mode(path) == 0o600, path
                assert totp_owners[name] == inst.name, totp_owners
        pin = "bob@%s.pin" % inst.name
        assert mode(os.path.join(pin_dir, pin)) == 0o600
        assert pin_owners[pin] == inst.name, pin_owners
    # Nothing else: one QR pair per user and host, one PIN per host (the others' are set).
    assert sorted(os.listdir(pin_dir)) == sorted([".owners"] + ["bob@%s.pin" % i.name for i in INSTANCES])
    # Besides alice's and bob's, only the generated users' (issue 16, test_many_users.py) of
    # the first Debian 12 and 13 host.
    assert not [n for n in os.listdir(totp_dir) if n != ".owners" and not re.match(
        r"^((alice|bob)@hm-site-|u[0-9]{3}@hm-site-debian1[23][.-])", n)]


def qr_secret(path):
    """The otpauth URI in a QR PNG, read as a phone would (zbarimg)."""
    out = subprocess.run(["zbarimg", "--quiet", "--raw", path], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out.startswith("otpauth://totp/"), "not an otpauth URI"
    return pyotp.parse_uri(out)


def read_pin(ephemeral_dir, inst):
    with open(shared(ephemeral_dir, "sudo_pin", "bob@%s.pin" % inst.name), encoding="utf-8") as handle:
        return handle.read().strip()


def fresh_code(generator):
    """A code of a 30 s window no earlier test used (reuse is refused by design)."""
    left = 30 - time.time() % 30
    if left < 5:
        time.sleep(left + 0.5)
    return generator.now()


@pytest.mark.parametrize("inst", INSTANCES, ids=[i.platform for i in INSTANCES])
def test_qr_code_logs_in_and_pin_makes_root_on_its_host_only(ephemeral_dir, inst):
    generator = qr_secret(shared(ephemeral_dir, "totp", "bob@%s.png" % inst.name))
    # The QR holds this host's secret, not another's.
    assert generator.secret == mailbox.totp(inst, "bob").secret
    others = [i for i in INSTANCES if i is not inst]
    pin = read_pin(ephemeral_dir, inst)
    other_pins = [read_pin(ephemeral_dir, i) for i in others]
    assert pin not in other_pins
    with mailbox.interactive_session(inst.port(22), "bob", {"verification code": fresh_code(generator),
                                                            "password": PASSWORDS["bob"]}) as session:
        assert session.result.ok, session.result
        # Another host's PIN does not make bob root here ...
        status, out, err = session.run("sudo -S -k id -un", stdin=other_pins[0] + "\n")
        assert status != 0 and out == "", err
        # ... the PIN generated for this host does.
        status, out, err = session.run("sudo -S -k id -un", stdin=pin + "\n")
        assert (status, out.strip()) == (0, "root"), err


# ------------------------------------------------------------ issue_cert.yml, three at once

def test_three_issue_cert_runs_at_once_then_each_bundle_relays_on_its_host(ephemeral_dir, tmp_path):
    bundles = shared(ephemeral_dir, "bundles")
    run = uuid.uuid4().hex[:6]
    jobs = []
    for inst in INSTANCES:
        device = "multi-%s-%s" % (run, inst.platform)
        jobs.append((inst, device, subprocess.Popen(
            ["ansible-playbook", "-i", inventory_dir(), "hardened.mailhost.issue_cert", "--tags", "ca",
             "-e", "cert_email=bob@example.test", "-e", "cert_name=Bob", "-e", "cert_device=" + device,
             "-e", "cert_bundle_dir=" + bundles, "-e", "cert_bundle_keep_seconds=0"],
            env=ansible_env(ephemeral_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    outputs = [(inst, device, proc.communicate(timeout=300)[0], proc.returncode) for inst, device, proc in jobs]
    for inst, device, out, rc in outputs:
        assert rc == 0, "%s: %s" % (device, out[-3000:])
    assert mode(bundles) == 0o700
    serials = set()
    for inst, device, _out, _rc in outputs:
        base = os.path.join(bundles, "bob@example.test_%s" % device)
        assert mode(base + ".p12") == 0o600 and mode(base + ".pass") == 0o600
        with open(base + ".pass", encoding="utf-8") as handle:
            cert, key, parsed = mailbox.pkcs12_to_pem(base + ".p12", handle.read().strip(), tmp_path)
        # Each bundle holds its own device's certificate (none overwritten by another run).
        serials.add(parsed.serial_number)
        inst.bundle = {"cert": cert, "key": key, "device": device}
    assert len(serials) == 3
    # The CA's own reader, from the installed copy the scenario runs.
    sys.path.insert(0, os.environ["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep)[0])
    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority
    records = CertificateAuthority(os.path.join(ephemeral_dir, "ca")).info()["certificates"]
    for _inst, device, _out, _rc in outputs:
        assert [r for r in records if r["device"] == device and r["email"] == "bob@example.test"], device
    # The password files are recorded in the bundle folder's ledger.
    owners = ledger(bundles)
    assert all(owners.get("bob@example.test_%s.pass" % device) for _i, device, _o, _r in outputs), owners
    # One push to every host, then each bundle relays on 465 of its host.
    push = playbook(ephemeral_dir, "issue_cert", "--tags", "push")
    assert push.returncode == 0, push.stdout[-3000:] + push.stderr[-2000:]
    for inst, _device, _out, _rc in outputs:
        tok = uuid.uuid4().hex[:16]
        sent = smtp.attempt(inst.port(465), "bob@example.test", "alice@example.test", tok,
                            implicit_tls=True, cert=inst.bundle["cert"], key=inst.bundle["key"])
        assert sent.stage == "sent", (inst, sent)


# ------------------------------------------------------------ collisions are refused

def test_pin_file_recorded_for_another_host_is_refused_naming_both(ephemeral_dir):
    host_a, host_b = INSTANCES[0], INSTANCES[1]
    user = "carol" + uuid.uuid4().hex[:4]
    host_b.run("useradd", "--create-home", user)
    path = shared(ephemeral_dir, "sudo_pin", "%s@%s.pin" % (user, host_b.name))
    plant(ephemeral_dir, path, host_a.name, "planted\n")
    extra = {"sudo_pin_users": [{"name": "alice", "pin": _CFG["all"]["hm_site_pin"]},
                                {"name": "bob", "generate": True},
                                {"name": user, "generate": True}]}
    proc = playbook(ephemeral_dir, "site", "--limit", host_b.name, "--tags", "sudo_pin",
                    "-e", json.dumps(extra))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "belongs to %s" % host_a.name in out and "run for %s" % host_b.name in out, out[-3000:]
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "planted\n"
    assert ledger(os.path.dirname(path))[os.path.basename(path)] == host_a.name
    # The new PIN was never stored on host B: the user has no entry.
    probe = host_b.run("python3", "-c", "import dbm.ndbm, sys; d = dbm.ndbm.open('/etc/security/sudo_pin', 'r');"
                       " print(sys.argv[1].encode() in d)", user)
    assert probe.stdout.strip() == "False", probe


def test_qr_file_recorded_for_another_host_is_refused_naming_both(ephemeral_dir):
    host_a, host_b = INSTANCES[0], INSTANCES[2]
    user = "dave" + uuid.uuid4().hex[:4]
    host_b.run("useradd", "--create-home", user)
    path = shared(ephemeral_dir, "totp", "%s@%s.png" % (user, host_b.name))
    plant(ephemeral_dir, path, host_a.name, "planted")
    proc = playbook(ephemeral_dir, "enroll_totp", "-e", "target=" + host_b.name, "-e", "totp_show_qr=false",
                    "-e", json.dumps({"sshd_2fa_users": [user]}))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "belongs to %s" % host_a.name in out and "run for %s" % host_b.name in out, out[-3000:]
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "planted"
    assert ledger(os.path.dirname(path))[os.path.basename(path)] == host_a.name
    # The secret shown to nobody was taken back: the user has none on host B.
    assert not host_b.host.file("/home/%s/.google_authenticator" % user).exists
