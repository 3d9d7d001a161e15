"""Module tests for hardened.mailhost.dkim_key, run as Ansible runs it.

Also the DKIM round trip: a message signed by dkimpy with the keys the module
wrote (RSA and Ed25519) verifies against the public keys read back from the
records file that mail_dns_records wrote (dkimpy's dnsfunc answers from that
file); a changed body fails.
"""

import json
import os
import pwd
import secrets
import stat
import subprocess

import dkim
import pytest

import module_runner

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")
SERVED = ["example.org", "example.net"]


def run(tmp_path, check=False, diff=False, **args):
    base = dict(domain="example.org", served_domains=SERVED, key_dir=str(tmp_path / "keys"))
    base.update(args)
    return module_runner.run_module("dkim_key", tmp_path, check=check, diff=diff, timeout=60, **base)


def private_texts(folder):
    """The private parts of each key file: the Ed25519 seed, and the PEM lines past the
    RSA modulus (the modulus itself is public: it is in the DNS record too)."""
    out = []
    for name in os.listdir(folder):
        if name.endswith(".private"):
            lines = [line for line in (folder / name).read_text().splitlines()
                     if line and "PRIVATE KEY" not in line]
            out.extend(lines[8:] if len(lines) > 1 else lines)
    assert out
    return out


def test_check_mode_then_real_run_then_no_change(tmp_path):
    checked, _proc = run(tmp_path, check=True, diff=True)
    assert checked["changed"] and not (tmp_path / "keys").exists()
    assert '"status": "active"' in checked["diff"]["after"]
    made, proc = run(tmp_path, diff=True)
    folder = tmp_path / "keys" / "example.org"
    assert made["changed"] and made["active"]["base"] == made["selectors"][0]["base"]
    assert len(made["dns_records"]) == 2
    assert {r["algorithm"] for r in made["dns_records"]} == {"rsa", "ed25519"}
    for name in os.listdir(folder):
        mode = stat.S_IMODE(os.stat(folder / name).st_mode)
        assert mode == (0o600 if name.endswith(".private") else 0o640), name
    # Never a private key in the result, the diff or anything the module printed.
    output = proc.stdout + proc.stderr + json.dumps(made)
    for secret in private_texts(folder):
        assert secret not in output
    again, _proc = run(tmp_path, diff=True)
    assert again["changed"] is False
    assert again["dns_records"] == made["dns_records"]
    checked_again, _proc = run(tmp_path, check=True)
    assert checked_again["changed"] is False


@pytest.mark.parametrize("args, message", [
    (dict(domain="foreign.test"), "not a domain this host serves"),
    (dict(selector="2026_12"), "selector"),
    (dict(selector="ABC"), "selector"),
    (dict(state="absent"), "selector"),
    (dict(owner="hm-no-such-user"), "does not exist"),
])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, args, message):
    result, _proc = run(tmp_path, **args)
    assert result["failed"] and message in result["msg"]
    assert not (tmp_path / "keys").exists()


@needs_root
def test_owner_and_group_for_the_signer(tmp_path):
    name = "hmtest-dkim-%s" % secrets.token_hex(3)
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", name],
                   check=True, timeout=30)
    try:
        user = pwd.getpwnam(name)
        made, _proc = run(tmp_path, owner=name, group=name)
        assert made["changed"]
        folder = tmp_path / "keys" / "example.org"
        for path in [folder] + [folder / n for n in os.listdir(folder)]:
            info = os.stat(path)
            assert (info.st_uid, info.st_gid) == (user.pw_uid, user.pw_gid), path
        assert run(tmp_path, owner=name, group=name)[0]["changed"] is False
        # Back to root: a change of owner is a change, and then stable.
        assert run(tmp_path, owner="root", group="root")[0]["changed"] is True
        assert os.stat(made["active"]["rsa_file"]).st_uid == 0
    finally:
        subprocess.run(["userdel", name], check=False, timeout=30, capture_output=True)


MESSAGE = (b"From: Ann <ann@example.org>\r\n"
           b"To: Bob <bob@example.net>\r\n"
           b"Subject: signed twice\r\n"
           b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
           b"Message-ID: <dkim-test@example.org>\r\n"
           b"\r\n"
           b"Hello Bob,\r\nthis message carries an RSA and an Ed25519 signature.\r\n")


def test_dkim_round_trip_through_the_generated_records(tmp_path):
    keys, _proc = run(tmp_path)
    records, _proc = module_runner.run_module(
        "mail_dns_records", tmp_path, host="mx1", dest=str(tmp_path / "dns"), domains=["example.org"],
        served_domains=SERVED, mail_host="mail.example.org", dkim=keys["dns_records"])
    assert records["changed"], records
    # The DNS answers come from the plain records file, as a resolver would give them.
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    published = {}
    for line in (tmp_path / "dns" / "mx1.records").read_text().splitlines():
        name, rtype, value = line.split(None, 2)
        if rtype == "TXT":
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
            assert all(len(s) <= 255 for s in rdata.strings)
            published[name.encode()] = b"".join(rdata.strings)
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name)
        return published.get(name if name.endswith(b".") else name + b".")

    active = keys["active"]
    signed = MESSAGE
    for alg, sel_key, file_key in (("rsa-sha256", "rsa", "rsa_file"),
                                   ("ed25519-sha256", "ed25519", "ed25519_file")):
        with open(active[file_key], "rb") as handle:
            private = handle.read()
        header = dkim.sign(signed, active[sel_key].encode(), b"example.org", private,
                           include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                           signature_algorithm=alg.encode())
        signed = header + signed
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=ed25519-sha256" in signed and b"a=rsa-sha256" in signed

    def verifies(message, idx):
        try:
            return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.ValidationError:
            return False

    assert verifies(signed, 0) and verifies(signed, 1)
    assert sorted(asked) == sorted([("%s._domainkey.example.org." % active["rsa"]).encode(),
                                    ("%s._domainkey.example.org." % active["ed25519"]).encode()])
    tampered = signed.replace(b"Hello Bob", b"Hello Eve")
    assert not verifies(tampered, 0) and not verifies(tampered, 1)
    # Another key under the same selector (a record that does not match) fails too.
    (tmp_path / "other").mkdir()
    other, _proc = run(tmp_path / "other", domain="example.org")
    published.update({("%s._domainkey.example.org." % r["selector"]).encode(): r["value"].encode()
                      for r in other["dns_records"]})
    assert not verifies(signed, 0) and not verifies(signed, 1)


def _without_cryptography(tmp_path):
    """A folder whose ``cryptography`` package fails to import, as on a host without it."""
    shadow = tmp_path / "no-cryptography" / "cryptography"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named cryptography")\n')
    return str(shadow.parent)


def test_check_mode_on_a_fresh_host_without_cryptography(tmp_path):
    # site.yml --check on a new host: the signer's package (which brings the
    # library) is not installed yet; check mode must still say what it would do.
    shadow = _without_cryptography(tmp_path)
    checked, _proc = run(tmp_path, check=True, path_first=shadow)
    assert checked["changed"] and not checked.get("failed"), checked
    assert not (tmp_path / "keys").exists()
    # A real run without the library refuses with the library named, and writes nothing.
    refused, _proc = run(tmp_path, path_first=shadow)
    assert refused["failed"] and "cryptography" in refused["msg"]
    assert not (tmp_path / "keys").exists()


def test_check_mode_without_cryptography_refuses_to_read_existing_keys(tmp_path):
    run(tmp_path)
    before = sorted(os.listdir(tmp_path / "keys" / "example.org"))
    checked, _proc = run(tmp_path, check=True, path_first=_without_cryptography(tmp_path))
    assert checked["failed"] and "cryptography library" in checked["msg"], checked
    assert sorted(os.listdir(tmp_path / "keys" / "example.org")) == before
