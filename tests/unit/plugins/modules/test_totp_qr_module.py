"""Module tests for hardened.mailhost.totp_qr (run as a script, like Ansible
does), plus the ansible-doc rendering of both TOTP modules."""

import os
import stat
import subprocess
import sys

import pytest

import module_runner

from ansible_collections.hardened.mailhost.plugins.module_utils import _totp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))))
COLLECTIONS = os.path.join(ROOT, ".collections")


def run_module(tmp_path, check=False, **args):
    result, proc = module_runner.run_module("totp_qr", tmp_path, check=check, timeout=60, **args)
    return result, proc.stdout + proc.stderr


def test_module_writes_files_and_never_echoes_secrets(tmp_path):
    secret = _totp.generate_secret()
    uri = _totp.build_uri(secret, "mail.example.org", "alice@mail")
    codes = ["12345678", "23456789"]
    dest = str(tmp_path / "out")
    result, output = run_module(tmp_path, uri=uri, dest=dest, name="alice@mail", owner="mail1",
                                scratch_codes=codes, tty=True)
    assert result["changed"]
    # The code goes to a terminal when there is one, never into the result.
    assert isinstance(result["shown_on_tty"], bool) and "terminal" not in result
    assert result["files"] == [os.path.join(dest, n) for n in
                               ("alice@mail.png", "alice@mail.svg", "alice@mail-recovery.txt")]
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in result["files"])
    # no_log options: the URI, the secret and the codes are not in the output
    # (the invocation shows them masked).
    for value in [uri, secret] + codes:
        assert value not in output
    assert result["invocation"]["module_args"]["uri"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"

    again, _output = run_module(tmp_path, uri=uri, dest=dest, name="alice@mail", owner="mail1",
                                scratch_codes=codes)
    assert again["changed"] is False
    forced, _output = run_module(tmp_path, uri=uri, dest=dest, name="alice@mail", owner="mail1",
                                 scratch_codes=codes, force=True)
    assert forced["changed"]
    other, _output = run_module(tmp_path, uri=_totp.build_uri(_totp.generate_secret(), "m", "a"),
                                dest=dest, name="alice@mail", owner="mail2")
    assert other["failed"] and "belongs to mail1" in other["msg"] and "mail2" in other["msg"]


def test_module_check_mode(tmp_path):
    dest = str(tmp_path / "out")
    result, _output = run_module(tmp_path, check=True, dest=dest, name="alice", owner="mail1",
                                 uri=_totp.build_uri(_totp.generate_secret(), "m", "a"))
    assert result["changed"] and result["shown_on_tty"] is False
    assert not os.path.exists(dest)


@pytest.mark.parametrize("args,message", [
    (dict(name="../x"), "name must be a file base name"),
    (dict(formats=["jpg"]), "value of formats must be one or more of: png, svg"),
    (dict(uri="otpauth://hotp/a:b?secret=JBSWY3DPEHPK3PXP"), "not an otpauth://totp/ URI"),
    (dict(scratch_codes=["12"]), "scratch_codes must be a list of 8-digit codes"),
])
def test_module_bad_input(tmp_path, args, message):
    dest = str(tmp_path / "out")
    full = dict(uri=_totp.build_uri(_totp.generate_secret(), "m", "a"), dest=dest,
                name="alice", owner="mail1")
    full.update(args)
    result, _output = run_module(tmp_path, **full)
    assert result["failed"] and message in result["msg"], result["msg"]
    assert not os.path.exists(dest)


@pytest.mark.parametrize("module", ["totp_secret", "totp_qr"])
def test_ansible_doc_renders(module):
    ansible_doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([ansible_doc, "-t", "module", "hardened.mailhost." + module],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "hardened.mailhost.%s" % module in proc.stdout
    assert "ERROR" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert "no_log: true" in proc.stdout


# ------------------------------------------------------------ list form (codes:)

def _entries(count, codes=True):
    entries, secrets = [], []
    for index in range(count):
        secret = _totp.generate_secret()
        secrets.append(secret)
        entry = {"uri": _totp.build_uri(secret, "mail.example.org", "u%d@mail" % index), "name": "u%d@mail1" % index}
        if codes:
            entry["scratch_codes"] = ["%08d" % (10000000 + index)]
        entries.append(entry)
    return entries, secrets


def test_list_form_writes_every_entry_in_one_run_without_secrets(tmp_path):
    dest = str(tmp_path / "out")
    entries, secrets = _entries(3)
    entries[2].pop("scratch_codes")
    result, output = run_module(tmp_path, codes=entries, dest=dest, owner="mail1")
    assert result["changed"] and [c["name"] for c in result["codes"]] == ["u0@mail1", "u1@mail1", "u2@mail1"]
    assert all(c["changed"] for c in result["codes"])
    names = sorted(os.listdir(dest))
    assert names == sorted(["u0@mail1.png", "u0@mail1.svg", "u0@mail1-recovery.txt",
                            "u1@mail1.png", "u1@mail1.svg", "u1@mail1-recovery.txt",
                            "u2@mail1.png", "u2@mail1.svg", ".owners"])
    assert all(stat.S_IMODE(os.stat(os.path.join(dest, n)).st_mode) == 0o600 for n in names)
    assert len(result["files"]) == 8
    for value in secrets + [e["uri"] for e in entries] + ["10000000", "10000001"]:
        assert value not in output
    again, _output = run_module(tmp_path, codes=entries, dest=dest, owner="mail1")
    assert again["changed"] is False and not any(c["changed"] for c in again["codes"])
    # An empty list changes nothing.
    empty, _output = run_module(tmp_path, codes=[], dest=str(tmp_path / "none"), owner="mail1")
    assert empty["changed"] is False and empty["codes"] == [] and not os.path.exists(str(tmp_path / "none"))


def test_list_form_one_bad_entry_names_it_and_writes_nothing(tmp_path):
    dest = str(tmp_path / "out")
    entries, _secrets = _entries(3)
    entries[1]["uri"] = "otpauth://hotp/nope?secret=AAAA"
    result, output = run_module(tmp_path, codes=entries, dest=dest, owner="mail1")
    assert result["failed"] and "codes[1] (u1@mail1)" in result["msg"] and "nothing was written" in result["msg"]
    assert not os.path.exists(dest)
    # A file of another host in the way of the last entry: refused, the first ones not written either.
    os.makedirs(dest, mode=0o700)
    entries, _secrets = _entries(3)
    first, _output = run_module(tmp_path, codes=[entries[2]], dest=dest, owner="mail2")
    assert first["changed"]
    result, _output = run_module(tmp_path, codes=entries, dest=dest, owner="mail1")
    assert result["failed"] and "codes[2] (u2@mail1)" in result["msg"] and "belongs to mail2" in result["msg"]
    assert sorted(n for n in os.listdir(dest) if not n.startswith(".")) == \
        ["u2@mail1-recovery.txt", "u2@mail1.png", "u2@mail1.svg"]
    # Two entries with one name: refused before anything.
    entries, _secrets = _entries(2)
    entries[1]["name"] = entries[0]["name"]
    result, _output = run_module(tmp_path, codes=entries, dest=str(tmp_path / "dup"), owner="mail1")
    assert result["failed"] and "u0@mail1 given twice" in result["msg"]
    assert not os.path.exists(str(tmp_path / "dup"))


def test_list_form_check_mode_and_exclusive_options(tmp_path):
    dest = str(tmp_path / "out")
    entries, _secrets = _entries(2)
    result, _output = run_module(tmp_path, check=True, codes=entries, dest=dest, owner="mail1")
    assert result["changed"] and all(c["changed"] for c in result["codes"]) and not os.path.exists(dest)
    result, _output = run_module(tmp_path, codes=entries, uri=entries[0]["uri"], name="x", dest=dest, owner="mail1")
    assert result["failed"] and "mutually exclusive" in result["msg"]
    result, _output = run_module(tmp_path, dest=dest, owner="mail1")
    assert result["failed"] and "one of the following is required" in result["msg"]
