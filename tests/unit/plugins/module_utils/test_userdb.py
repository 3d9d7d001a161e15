import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt, _userdb

needs_db_dump = pytest.mark.skipif(shutil.which("db_dump") is None, reason="db-util (db_dump) missing")


def db_dump(filename):
    """Entries as read by Berkeley DB's own db_dump (an independent reader)."""
    out = subprocess.run(["db_dump", "-p", filename], capture_output=True, text=True, check=True).stdout
    header, _sep, body = out.partition("HEADER=END\n")
    assert "type=hash" in header
    lines = [line[1:] for line in body.split("DATA=END")[0].splitlines()]
    return dict(zip(lines[0::2], lines[1::2]))


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "sudo_pin")


@needs_db_dump
def test_created_entry_is_sha512_crypt_readable_by_db_dump(db):
    result = _userdb.ensure_pin(db, "alice", pin="482916")
    assert result["changed"] and result["action"] == "created"
    assert result["db"] == db + ".db"
    assert "pin" not in result
    entries = db_dump(db + ".db")
    assert list(entries) == ["alice"]
    value = entries["alice"]
    assert value.startswith("$6$") and _crypt.is_sha512_crypt(value)
    assert _crypt.verify("482916", value)
    assert not _crypt.verify("482917", value)
    assert stat.S_IMODE(os.stat(db + ".db").st_mode) == 0o600
    assert os.listdir(os.path.dirname(db)) == ["sudo_pin.db"]  # no temporary leftovers


def test_same_pin_is_idempotent_and_file_untouched(db):
    _userdb.ensure_pin(db, "alice", pin="482916")
    before = open(db + ".db", "rb").read()
    inode = os.stat(db + ".db").st_ino
    result = _userdb.ensure_pin(db, "alice", pin="482916")
    assert not result["changed"] and result["action"] == "none"
    assert open(db + ".db", "rb").read() == before
    assert os.stat(db + ".db").st_ino == inode


@needs_db_dump
def test_other_pin_updates_only_that_user(db):
    _userdb.ensure_pin(db, "alice", pin="482916")
    _userdb.ensure_pin(db, "bob", pin="739105")
    bob_before = db_dump(db + ".db")["bob"]
    result = _userdb.ensure_pin(db, "alice", pin="550729")
    assert result["changed"] and result["action"] == "updated"
    entries = db_dump(db + ".db")
    assert _crypt.verify("550729", entries["alice"])
    assert entries["bob"] == bob_before


@needs_db_dump
def test_absent_removes_and_is_idempotent(db):
    _userdb.ensure_pin(db, "alice", pin="482916")
    _userdb.ensure_pin(db, "bob", pin="739105")
    assert _userdb.ensure_pin(db, "alice", state="absent")["action"] == "removed"
    assert list(db_dump(db + ".db")) == ["bob"]
    assert not _userdb.ensure_pin(db, "alice", state="absent")["changed"]


def test_absent_without_database_creates_nothing(db):
    result = _userdb.ensure_pin(db, "alice", state="absent")
    assert not result["changed"]
    assert not os.path.exists(db + ".db")


@needs_db_dump
def test_generate_returns_pin_once_and_keeps_it(db):
    first = _userdb.ensure_pin(db, "alice", generate=True, generate_length=8)
    pin = first["pin"]
    assert first["changed"] and len(pin) == 8 and pin.isdigit()
    assert _crypt.verify(pin, db_dump(db + ".db")["alice"])
    second = _userdb.ensure_pin(db, "alice", generate=True)
    assert not second["changed"] and "pin" not in second
    assert _crypt.verify(pin, db_dump(db + ".db")["alice"])
    rotated = _userdb.ensure_pin(db, "alice", generate=True, rotate=True)
    assert rotated["action"] == "updated" and rotated["pin"] != pin
    assert _crypt.verify(rotated["pin"], db_dump(db + ".db")["alice"])


def test_generated_pins_pass_policy_and_differ():
    policy = _userdb.PinPolicy(min_length=6)
    pins = {policy.generate(6) for _attempt in range(50)}
    assert len(pins) > 45
    for pin in pins:
        policy.check("alice", pin)
    letters = _userdb.PinPolicy(digits_only=False).generate(12)
    assert len(letters) == 12 and not letters.isdigit()


def test_check_mode_changes_nothing_and_generates_nothing(db):
    result = _userdb.ensure_pin(db, "alice", generate=True, check_mode=True)
    assert result["changed"] and "pin" not in result
    assert not os.path.exists(db + ".db")
    _userdb.ensure_pin(db, "alice", pin="482916")
    before = open(db + ".db", "rb").read()
    assert _userdb.ensure_pin(db, "alice", pin="550729", check_mode=True)["changed"]
    assert _userdb.ensure_pin(db, "alice", state="absent", check_mode=True)["changed"]
    assert open(db + ".db", "rb").read() == before


def test_propose_draws_a_pin_and_writes_nothing(db):
    for check_mode in (False, True):
        drawn = _userdb.ensure_pin(db, "alice", generate=True, propose=True, generate_length=9,
                                   check_mode=check_mode)
        assert drawn["action"] == "created" and not drawn["changed"]
        assert len(drawn["pin"]) == 9 and drawn["pin"].isdigit()
        assert not os.path.exists(db + ".db")
    # Stored afterwards as a given PIN, it is what the user has.
    _userdb.ensure_pin(db, "alice", pin=drawn["pin"])
    before = open(db + ".db", "rb").read()
    again = _userdb.ensure_pin(db, "alice", generate=True, propose=True)
    assert again["action"] == "none" and "pin" not in again and not again["changed"]
    rotated = _userdb.ensure_pin(db, "alice", generate=True, rotate=True, propose=True)
    assert rotated["action"] == "updated" and rotated["pin"] != drawn["pin"]
    assert open(db + ".db", "rb").read() == before
    assert _crypt.verify(drawn["pin"], _userdb.UserDB(db).read()["alice"])


def test_diff_never_contains_secret(db):
    result = _userdb.ensure_pin(db, "alice", pin="482916")
    assert result["diff"] == {"before": "alice: no PIN\n", "after": "alice: PIN set (new)\n"}
    assert "482916" not in repr(result)


@pytest.mark.parametrize("pin,fragment", [
    ("12345", "too short"),
    ("48291a", "digits 0-9 only"),
    ("４８２９１６", "digits 0-9 only"),  # full-width digits are not 0-9
    ("111111", "trivial"),
    ("123456", "trivial"),
    ("987654", "trivial"),
    ("", "empty"),
    ("9" * 65, "too long"),
])
def test_policy_errors_change_nothing(db, pin, fragment):
    _userdb.ensure_pin(db, "alice", pin="482916")
    before = open(db + ".db", "rb").read()
    with pytest.raises(_userdb.PinPolicyError, match=fragment):
        _userdb.ensure_pin(db, "alice", pin=pin)
    assert open(db + ".db", "rb").read() == before
    assert _crypt.verify("482916", _userdb.UserDB(db).read()["alice"])


@pytest.mark.parametrize("user,pin", [("alice", "alice"), ("alice", "ALICE"), ("alice", "ecila"),
                                      ("alice", "xalice9"), ("482916", "482916")])
def test_policy_refuses_user_name(db, user, pin):
    policy = _userdb.PinPolicy(digits_only=False, min_length=5)
    with pytest.raises(_userdb.PinPolicyError, match="user name"):
        _userdb.ensure_pin(db, user, pin=pin, policy=policy)
    assert not os.path.exists(db + ".db")


def test_letters_allowed_when_not_digits_only(db):
    policy = _userdb.PinPolicy(digits_only=False)
    assert _userdb.ensure_pin(db, "alice", pin="tr0ub4dor", policy=policy)["changed"]


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(), "needs a pin or generate"),
    (dict(pin="482916", generate=True), "either pin or generate"),
    (dict(pin="482916", rotate=True), "rotate only applies"),
    (dict(state="absent", pin="482916"), "neither pin nor generate"),
    (dict(pin="482916", propose=True), "propose only applies with generate"),
    (dict(state="absent", generate=False, propose=True), "neither pin nor generate"),
    (dict(state="gone"), "present or absent"),
])
def test_bad_requests(db, kwargs, fragment):
    with pytest.raises(_userdb.PinPolicyError, match=fragment):
        _userdb.ensure_pin(db, "alice", **kwargs)
    assert not os.path.exists(db + ".db")


@pytest.mark.parametrize("user", ["", "al ice", "alice:x", "../root", "-rf", None])
def test_bad_user_names(db, user):
    with pytest.raises(_userdb.PinPolicyError, match="not a valid user name"):
        _userdb.ensure_pin(db, user, pin="482916")


def test_path_with_db_suffix_or_relative_is_refused(tmp_path):
    with pytest.raises(_userdb.UserDBError, match="without .db"):
        _userdb.ensure_pin(str(tmp_path / "sudo_pin.db"), "alice", pin="482916")
    with pytest.raises(_userdb.UserDBError, match="absolute"):
        _userdb.ensure_pin("sudo_pin", "alice", pin="482916")
    assert os.listdir(tmp_path) == []


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises((_userdb.UserDBError, OSError)):
        _userdb.ensure_pin(str(tmp_path / "nope" / "sudo_pin"), "alice", pin="482916")


def test_corrupt_database_is_not_overwritten(db):
    with open(db + ".db", "wb") as handle:
        handle.write(b"this is not a berkeley db")
    with pytest.raises(_userdb.UserDBError, match="cannot read"):
        _userdb.ensure_pin(db, "alice", pin="482916")
    assert open(db + ".db", "rb").read() == b"this is not a berkeley db"


def test_wrong_mode_is_repaired(db):
    _userdb.ensure_pin(db, "alice", pin="482916")
    os.chmod(db + ".db", 0o644)
    result = _userdb.ensure_pin(db, "alice", pin="482916")
    assert result["changed"] and result["action"] == "fixed_permissions"
    assert stat.S_IMODE(os.stat(db + ".db").st_mode) == 0o600
    assert _crypt.verify("482916", _userdb.UserDB(db).read()["alice"])


def test_failed_rename_keeps_old_database(db, monkeypatch):
    _userdb.ensure_pin(db, "alice", pin="482916")
    before = open(db + ".db", "rb").read()

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(_userdb.os, "rename", boom)
    with pytest.raises(OSError):
        _userdb.ensure_pin(db, "alice", pin="550729")
    assert open(db + ".db", "rb").read() == before
    assert os.listdir(os.path.dirname(db)) == ["sudo_pin.db"]


@needs_db_dump
def test_database_written_by_db_load_is_read(db):
    hashed = _crypt.sha512_crypt("482916")
    subprocess.run(["db_load", "-T", "-t", "hash", db + ".db"], input="alice\n%s\n" % hashed,
                   text=True, check=True)
    os.chmod(db + ".db", 0o600)
    assert not _userdb.ensure_pin(db, "alice", pin="482916")["changed"]
    assert _userdb.ensure_pin(db, "alice", pin="550729")["action"] == "updated"
