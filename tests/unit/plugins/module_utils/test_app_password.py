import grp
import os
import pwd
import stat

import pytest

from ansible_collections.hardened.mailhost.plugins.module_utils import _app_password as ap

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def store(tmp_path):
    return ap.AppPasswordFile(str(tmp_path / "app-passwords"), group=MY_GROUP, owner=ME)


def _text(store):
    with open(store.path, encoding="utf-8") as handle:
        return handle.read()


def test_present_creates_hash_only_and_returns_password_once(store):
    changed, password = store.present(ME, "phone")
    assert changed and password
    text = _text(store)
    assert password not in text
    line = [l for l in text.splitlines() if not l.startswith("#")][0]
    login, hashed, rest = line.split(":", 2)
    assert login == ME + "+phone"
    assert hashed.startswith("{SHA512-CRYPT}$6$")
    assert rest == ":::::user=" + ME  # uid, gid, gecos, home, shell empty
    assert ap.verify_password(password, hashed)
    assert not ap.verify_password(password + "x", hashed)
    # second run: nothing changes, no password is handed out again
    assert store.present(ME, "phone") == (False, None)
    assert _text(store) == text


def test_file_mode_and_group(store):
    store.present(ME, "phone")
    info = os.stat(store.path)
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_gid == grp.getgrnam(MY_GROUP).gr_gid


def test_wrong_mode_is_fixed_without_new_password(store):
    store.present(ME, "phone")
    before = _text(store)
    os.chmod(store.path, 0o644)
    assert store.present(ME, "phone") == (True, None)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o640
    assert _text(store) == before


def test_regenerate_replaces_the_hash(store):
    first = store.present(ME, "phone")[1]
    old = _text(store)
    changed, second = store.present(ME, "phone", regenerate=True)
    assert changed and second and second != first
    new_hash = [l for l in _text(store).splitlines() if l.startswith(ME + "+phone:")][0].split(":")[1]
    assert ap.verify_password(second, new_hash)
    assert not ap.verify_password(first, new_hash)
    assert _text(store) != old


def test_several_devices_list_and_remove(store):
    store.present(ME, "phone")
    store.present(ME, "laptop")
    assert [e["device"] for e in store.list()] == ["laptop", "phone"]
    assert store.list(device="phone") == [{"user": ME, "device": "phone", "login": ME + "+phone"}]
    assert store.absent(ME, "phone") is True
    assert store.absent(ME, "phone") is False
    assert [e["login"] for e in store.list()] == [ME + "+laptop"]
    assert "+phone" not in _text(store)


def test_absent_on_missing_file_changes_nothing(store):
    assert store.absent(ME, "phone") is False
    assert not os.path.exists(store.path)


def test_check_mode_writes_nothing(store):
    assert store.present(ME, "phone", check_mode=True) == (True, None)
    assert not os.path.exists(store.path)
    store.present(ME, "phone")
    before = _text(store)
    assert store.present(ME, "phone", check_mode=True) == (False, None)
    assert store.present(ME, "phone", regenerate=True, check_mode=True) == (True, None)
    assert store.absent(ME, "phone", check_mode=True) is True
    assert _text(store) == before


@pytest.mark.parametrize("user", ["", "Alice", "1abc", "-x", "a:b", "a+b", "a b", "x" * 33, None])
def test_bad_user_names(store, user):
    with pytest.raises(ap.AppPasswordError, match="invalid user name"):
        store.present(user, "phone")
    assert not os.path.exists(store.path)


@pytest.mark.parametrize("device", ["", "Phone", "-x", "a+b", "a:b", "a b", "x" * 33, "ph/one"])
def test_bad_device_labels(store, device):
    with pytest.raises(ap.AppPasswordError, match="invalid device label"):
        store.present(ME, device)
    assert not os.path.exists(store.path)


def test_unknown_user_is_refused(store):
    with pytest.raises(ap.AppPasswordError, match="does not exist on this host"):
        store.present("nosuchuser-hm", "phone")
    assert not os.path.exists(store.path)


def test_missing_group_is_refused(tmp_path):
    store = ap.AppPasswordFile(str(tmp_path / "f"), group="nosuchgroup-hm", owner=ME)
    with pytest.raises(ap.AppPasswordError, match="group 'nosuchgroup-hm' does not exist"):
        store.present(ME, "phone")
    assert not os.path.exists(store.path)


def test_missing_folder_is_refused(tmp_path):
    store = ap.AppPasswordFile(str(tmp_path / "nope" / "f"), group=MY_GROUP, owner=ME)
    with pytest.raises(ap.AppPasswordError, match="does not exist: install Dovecot"):
        store.present(ME, "phone")


@pytest.mark.parametrize("line", [
    "alice:{PLAIN}secret",
    "alice+phone:{SHA512-CRYPT}$6$abc$def::::::user=bob",
    "alice+phone:$6$abc$def::::::user=alice",
])
def test_foreign_lines_are_an_error_and_file_is_kept(store, line):
    with open(store.path, "w", encoding="utf-8") as handle:
        handle.write(line + "\n")
    with pytest.raises(ap.AppPasswordError, match="line 1 is not an app password entry"):
        store.present(ME, "phone")
    assert _text(store) == line + "\n"


def test_duplicate_login_is_an_error(store):
    store.present(ME, "phone")
    entry = [l for l in _text(store).splitlines() if not l.startswith("#")][0]
    with open(store.path, "a", encoding="utf-8") as handle:
        handle.write(entry + "\n")
    with pytest.raises(ap.AppPasswordError, match="repeats the login"):
        store.list()


def test_generated_passwords_are_random_and_well_formed():
    seen = {ap.generate_password() for _attempt in range(200)}
    assert len(seen) == 200
    for password in seen:
        groups = password.split("-")
        assert len(groups) == ap.GROUPS
        assert all(len(g) == ap.GROUP_LENGTH and set(g) <= set(ap.ALPHABET) for g in groups)


def test_known_hash_verifies():
    # Drepper's SHA-crypt test vector in Dovecot's passwd-file notation.
    stored = ("{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68"
              "u4OTLiBFdcbYEdFCoEOfaS35inz1")
    assert ap.verify_password("Hello world!", stored)
    assert not ap.verify_password("Hello world?", stored)
    assert not ap.verify_password("Hello world!", stored[len("{SHA512-CRYPT}"):])


def test_same_size_rewrite_moves_mtime_on(store):
    """Dovecot rereads the file only when mtime (seconds) or size changed."""
    store.present(ME, "phone")
    first = os.stat(store.path)
    store.present(ME, "phone", regenerate=True)  # same length, usually the same second
    second = os.stat(store.path)
    assert second.st_size == first.st_size
    assert int(second.st_mtime) != int(first.st_mtime)
