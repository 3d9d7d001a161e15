"""Controller-side secret files: race-free for many forks, never overwriting another host's."""

import multiprocessing
import os
import stat

import pytest

from ansible_collections.hardened.mailhost.plugins.module_utils import _controller_files as cf


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_writes_private_file_and_folders(tmp_path):
    target = tmp_path / "a" / "b" / "alice.pin"
    assert cf.write_owned_file(str(target), "12345678\n", "host1") is True
    assert target.read_text() == "12345678\n"
    assert _mode(target) == 0o600
    assert _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path / "a") == 0o700
    assert cf.owner_of(str(target)) == "host1"
    assert _mode(tmp_path / "a" / "b" / cf.OWNERS_FILE) == 0o600


def test_same_owner_same_bytes_is_no_change(tmp_path):
    target = tmp_path / "alice.pin"
    cf.write_owned_file(str(target), "1", "host1")
    assert cf.write_owned_file(str(target), "1", "host1") is False


def test_same_owner_may_rotate(tmp_path):
    target = tmp_path / "alice.pin"
    cf.write_owned_file(str(target), "1", "host1")
    assert cf.write_owned_file(str(target), "2", "host1") is True
    assert target.read_text() == "2"


def test_other_owner_is_refused_naming_both(tmp_path):
    target = tmp_path / "alice.pin"
    cf.write_owned_file(str(target), "secret-one", "host1")
    with pytest.raises(cf.ControllerFileError) as err:
        cf.write_owned_file(str(target), "secret-two", "host2")
    assert "host1" in str(err.value) and "host2" in str(err.value)
    assert "secret" not in str(err.value).replace(str(tmp_path), "")
    assert target.read_text() == "secret-one"


def test_unrecorded_file_with_other_bytes_is_refused(tmp_path):
    target = tmp_path / "alice.pin"
    target.write_text("left by hand")
    with pytest.raises(cf.ControllerFileError):
        cf.write_owned_file(str(target), "new", "host1")
    assert target.read_text() == "left by hand"


def test_symlink_in_the_way_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / "alice.pin").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(cf.ControllerFileError):
        cf.write_owned_file(str(tmp_path / "alice.pin"), "new", "host1")
    assert (tmp_path / "elsewhere").read_text() == "x"


def test_file_where_a_folder_should_be_is_refused(tmp_path):
    (tmp_path / "dest").write_text("x")
    with pytest.raises(cf.ControllerFileError, match="not a folder"):
        cf.write_owned_file(str(tmp_path / "dest" / "alice.pin"), "new", "host1")


def test_check_mode_writes_nothing(tmp_path):
    target = tmp_path / "new" / "alice.pin"
    assert cf.write_owned_file(str(target), "1", "host1", check_mode=True) is True
    assert not (tmp_path / "new").exists()


def test_bad_owner_and_mode_refused(tmp_path):
    with pytest.raises(cf.ControllerFileError):
        cf.write_owned_file(str(tmp_path / "f"), "1", "")
    with pytest.raises(cf.ControllerFileError):
        cf.write_owned_file(str(tmp_path / "f"), "1", "h", mode=0o644)
    with pytest.raises(cf.ControllerFileError):
        cf.write_owned_file(str(tmp_path / cf.OWNERS_FILE), "1", "h")
    assert list(tmp_path.iterdir()) == []


def test_remove_only_own_file(tmp_path):
    target = tmp_path / "b.p12"
    cf.write_owned_file(str(target), b"\x00bundle", "host1")
    with pytest.raises(cf.ControllerFileError):
        cf.remove_owned_file(str(target), "host2")
    assert target.exists()
    assert cf.remove_owned_file(str(target), "host1") is True
    assert not target.exists() and cf.owner_of(str(target)) is None
    assert cf.remove_owned_file(str(target), "host1") is False


def _writer(args):
    folder, owner, rounds = args
    results = []
    for i in range(rounds):
        # Each owner writes its own file and also tries the one contested name.
        own = os.path.join(folder, "sub%d" % (i % 3), "%s.pin" % owner)
        cf.write_owned_file(own, "pin-of-%s-%d" % (owner, i), owner)
        try:
            cf.write_owned_file(os.path.join(folder, "sub%d" % (i % 3), "shared.png"),
                                "png-of-%s" % owner, owner)
            results.append("won")
        except cf.ControllerFileError as exc:
            assert "belongs to" in str(exc), str(exc)
            results.append("refused")
    return owner, results


def test_many_processes_at_once_never_fail_and_never_overwrite(tmp_path):
    owners = ["host%02d" % n for n in range(8)]
    rounds = 30
    with multiprocessing.get_context("fork").Pool(len(owners)) as pool:
        outcome = dict(pool.map(_writer, [(str(tmp_path), o, rounds) for o in owners], chunksize=1))
    for sub in range(3):
        folder = tmp_path / ("sub%d" % sub)
        assert _mode(folder) == 0o700
        last = max(i for i in range(rounds) if i % 3 == sub)
        for owner in owners:
            assert (folder / ("%s.pin" % owner)).read_text() == "pin-of-%s-%d" % (owner, last)
            assert cf.owner_of(str(folder / ("%s.pin" % owner))) == owner
        winner = cf.owner_of(str(folder / "shared.png"))
        # The first writer keeps the contested file; everyone else was refused, loudly.
        assert (folder / "shared.png").read_text() == "png-of-%s" % winner
        leftovers = [n for n in os.listdir(folder) if n.startswith(".") and n != cf.OWNERS_FILE]
        assert leftovers == []
    for owner, results in outcome.items():
        assert len(results) == rounds
