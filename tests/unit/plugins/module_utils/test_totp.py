"""Unit tests for _totp: the .google_authenticator file that pam_google_authenticator reads.

The tests run as the current user (root in CI) with ``path`` in a temporary
folder, and check the result with pyotp, an independent TOTP implementation.
"""

import base64
import os
import pwd
import stat

import pyotp
import pytest

from ansible_collections.hardened.mailhost.plugins.module_utils import _totp

ME = pwd.getpwuid(os.getuid())


def settings(**kwargs):
    return _totp.Settings(**kwargs)


def ensure(path, **kwargs):
    kwargs.setdefault("issuer", "mail.example.org")
    kwargs.setdefault("label", "%s@mail" % ME.pw_name)
    return _totp.ensure(ME.pw_name, path=str(path), **kwargs)


def snapshot(path):
    info = os.lstat(path)
    return path.read_bytes(), info.st_ino, info.st_mtime_ns, stat.S_IMODE(info.st_mode)


def write_file(path, text, mode=0o400):
    path.write_text(text)
    os.chmod(path, mode)


@pytest.fixture
def target(tmp_path):
    return tmp_path / ".google_authenticator"


# --- secret, codes and URI ------------------------------------------------

def test_secret_is_160_bit_base32_and_random():
    first, second = _totp.generate_secret(), _totp.generate_secret()
    assert len(first) == 32 and first != second
    assert len(base64.b32decode(first)) == 20
    assert _totp.SECRET_RE.match(first)


def test_scratch_codes_are_unique_eight_digit_codes_the_pam_module_accepts():
    codes = _totp.generate_scratch_codes(10)
    assert len(set(codes)) == 10
    for code in codes:
        # pam_google_authenticator only accepts 10000000..99999999
        assert len(code) == 8 and 10000000 <= int(code) <= 99999999


def test_uri_is_read_back_by_pyotp_with_quoting():
    secret = _totp.generate_secret()
    uri = _totp.build_uri(secret, "Mail & Co", "alice smith@mx/1")
    assert uri.startswith("otpauth://totp/Mail%20%26%20Co:alice%20smith%40mx%2F1?secret=")
    assert uri.endswith("&issuer=Mail%20%26%20Co&algorithm=SHA1&digits=6&period=30")
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert parsed.issuer == "Mail & Co"
    assert parsed.name == "alice smith@mx/1"
    assert parsed.digits == 6 and parsed.interval == 30


@pytest.mark.parametrize("issuer,label,message", [
    ("a:b", "alice", "issuer must not contain ':'"),
    ("mail", "al:ice", "label must not contain ':'"),
    ("", "alice", "issuer must be a non-empty string"),
    ("mail", "ali\nce", "label must not contain control characters"),
])
def test_uri_rejects_bad_issuer_or_label(issuer, label, message):
    with pytest.raises(_totp.TotpError, match=message):
        _totp.build_uri(_totp.generate_secret(), issuer, label)


# --- creation ---------------------------------------------------------------

def test_new_file_has_the_exact_pam_format_and_verifies_with_pyotp(target):
    result = ensure(target, settings=settings(scratch_codes=3))
    assert result["changed"] and result["created"] and not result["rotated"]
    lines = target.read_text().split("\n")
    assert lines == [
        result["secret"],
        '" RATE_LIMIT 2 30',
        '" WINDOW_SIZE 3',
        '" DISALLOW_REUSE',
        '" TOTP_AUTH',
    ] + result["scratch_codes"] + [""]
    assert len(result["scratch_codes"]) == 3
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o400
    assert (info.st_uid, info.st_gid) == (ME.pw_uid, ME.pw_gid)
    # The file's secret, the returned secret and the URI give the same codes.
    file_totp = pyotp.TOTP(lines[0])
    assert pyotp.TOTP(result["secret"]).verify(file_totp.now())
    assert pyotp.parse_uri(result["uri"]).now() == file_totp.now()
    # ... and another secret does not (ten steps: a chance collision is ~1e-60).
    other = pyotp.TOTP(_totp.generate_secret())
    steps = range(1732450000, 1732450300, 30)
    assert [other.at(t) for t in steps] != [file_totp.at(t) for t in steps]
    parsed = _totp.parse(target.read_text())
    assert parsed.rate_limit == (2, 30) and parsed.window_size == 3
    assert parsed.disallow_reuse and parsed.totp
    assert parsed.scratch_codes == result["scratch_codes"]
    assert sorted(os.listdir(target.parent)) == [target.name]


def test_options_are_written_as_asked(target):
    result = ensure(target, settings=settings(rate_limit_logins=5, rate_limit_seconds=120,
                                              window_size=7, disallow_reuse=False))
    assert target.read_text() == "%s\n\" RATE_LIMIT 5 120\n\" WINDOW_SIZE 7\n\" TOTP_AUTH\n" % (
        result["secret"])


def test_rate_limit_zero_leaves_out_the_line(target):
    result = ensure(target, settings=settings(rate_limit_logins=0))
    assert target.read_text() == "%s\n\" WINDOW_SIZE 3\n\" DISALLOW_REUSE\n\" TOTP_AUTH\n" % (
        result["secret"])


def test_default_issuer_and_label(target):
    result = _totp.ensure(ME.pw_name, path=str(target))
    parsed = pyotp.parse_uri(result["uri"])
    assert parsed.issuer == _totp.default_issuer()
    assert parsed.name == "%s@%s" % (ME.pw_name, __import__("socket").gethostname().split(".")[0])


# --- idempotence -------------------------------------------------------------

def test_second_run_changes_nothing_and_returns_no_secret(target):
    ensure(target, settings=settings(scratch_codes=2))
    before = snapshot(target)
    result = ensure(target, settings=settings(scratch_codes=2))
    assert result["changed"] is False and result["created"] is False
    assert "secret" not in result and "uri" not in result and "scratch_codes" not in result
    assert snapshot(target) == before


def pam_mutated(result):
    """The file as the PAM module leaves it after a few logins: attempt times on
    RATE_LIMIT, used steps on DISALLOW_REUSE, skew lines inserted after the
    secret, first scratch code consumed."""
    codes = result["scratch_codes"]
    return "\n".join([
        result["secret"],
        '" RESETTING_TIME_SKEW 57748331+1 57748332+1',
        '" TIME_SKEW 1',
        '" RATE_LIMIT 2 30 1732450000 1732450012',
        '" WINDOW_SIZE 3',
        '" DISALLOW_REUSE 57748333 57748334',
        '" TOTP_AUTH',
    ] + codes[1:]) + "\n"


def test_file_mutated_by_the_pam_module_is_unchanged(target):
    created = ensure(target, settings=settings(scratch_codes=3))
    write_file(target, pam_mutated(created))
    before = snapshot(target)
    result = ensure(target, settings=settings(scratch_codes=3))
    assert result["changed"] is False
    assert snapshot(target) == before


def test_option_change_rewrites_with_same_secret_and_keeps_runtime_state(target):
    created = ensure(target, settings=settings(scratch_codes=3))
    write_file(target, pam_mutated(created))
    result = ensure(target, settings=settings(scratch_codes=3, window_size=5,
                                              rate_limit_logins=3, rate_limit_seconds=60))
    assert result["changed"] and not result["created"] and not result["rotated"]
    assert "secret" not in result
    assert sorted(result["reasons"]) == ["rate limit", "window size"]
    assert target.read_text().split("\n") == [
        created["secret"],
        '" RATE_LIMIT 3 60 1732450000 1732450012',
        '" WINDOW_SIZE 5',
        '" DISALLOW_REUSE 57748333 57748334',
        '" TOTP_AUTH',
        '" RESETTING_TIME_SKEW 57748331+1 57748332+1',
        '" TIME_SKEW 1',
    ] + created["scratch_codes"][1:] + [""]
    assert stat.S_IMODE(target.stat().st_mode) == 0o400
    assert ensure(target, settings=settings(scratch_codes=3, window_size=5, rate_limit_logins=3,
                                            rate_limit_seconds=60))["changed"] is False


def test_turning_options_off_drops_their_lines_and_state(target):
    created = ensure(target)
    write_file(target, pam_mutated(created))
    result = ensure(target, settings=settings(rate_limit_logins=0, disallow_reuse=False))
    assert sorted(result["reasons"]) == ["disallow reuse", "rate limit"]
    assert target.read_text().split("\n")[:4] == [
        created["secret"], '" WINDOW_SIZE 3', '" TOTP_AUTH',
        '" RESETTING_TIME_SKEW 57748331+1 57748332+1']


def test_fewer_scratch_codes_left_is_unchanged_more_are_trimmed(target):
    created = ensure(target, settings=settings(scratch_codes=4))
    assert ensure(target, settings=settings(scratch_codes=6))["changed"] is False
    result = ensure(target, settings=settings(scratch_codes=1))
    assert result["changed"] and result["reasons"] == ["too many scratch codes"]
    assert _totp.parse(target.read_text()).scratch_codes == created["scratch_codes"][:1]
    ensure(target, settings=settings(scratch_codes=0))
    assert _totp.parse(target.read_text()).scratch_codes == []
    assert _totp.parse(target.read_text()).secret == created["secret"]


def test_file_from_the_google_authenticator_tool_with_step_size_30_is_kept(target):
    secret = _totp.generate_secret()
    write_file(target, '%s\n" RATE_LIMIT 2 30\n" STEP_SIZE 30\n" WINDOW_SIZE 3\n'
                       '" DISALLOW_REUSE\n" TOTP_AUTH\n' % secret)
    assert ensure(target)["changed"] is False
    write_file(target, '%s\n" RATE_LIMIT 2 30\n" STEP_SIZE 60\n" WINDOW_SIZE 3\n'
                       '" DISALLOW_REUSE\n" TOTP_AUTH\n' % secret)
    result = ensure(target)
    assert result["reasons"] == ["step size"]
    assert "STEP_SIZE" not in target.read_text()


def test_loose_mode_is_fixed_without_touching_the_secret(target):
    created = ensure(target)
    os.chmod(target, 0o644)
    result = ensure(target)
    assert result["changed"] and result["reasons"] == ["permissions"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o400
    assert _totp.parse(target.read_text()).secret == created["secret"]


def test_rotate_makes_a_new_secret_every_run(target):
    created = ensure(target, settings=settings(scratch_codes=2))
    write_file(target, pam_mutated(created))
    result = ensure(target, rotate=True, settings=settings(scratch_codes=2))
    assert result["changed"] and result["created"] and result["rotated"]
    assert result["secret"] != created["secret"]
    assert set(result["scratch_codes"]).isdisjoint(created["scratch_codes"])
    # Runtime state belonged to the old secret.
    assert target.read_text().split("\n")[:5] == [
        result["secret"], '" RATE_LIMIT 2 30', '" WINDOW_SIZE 3', '" DISALLOW_REUSE',
        '" TOTP_AUTH']
    assert pyotp.parse_uri(result["uri"]).secret == result["secret"]
    again = ensure(target, rotate=True, settings=settings(scratch_codes=2))
    assert again["changed"] and again["secret"] != result["secret"]


def test_a_login_during_the_update_is_not_undone(target, monkeypatch):
    """The PAM module consumes a scratch code between our read and our write:
    the update must start again from the new content, not restore the code."""
    created = ensure(target, settings=settings(scratch_codes=3))
    real_read = _totp._read_existing
    calls = []

    def read_then_pam_login(path):
        text, info = real_read(path)
        if not calls:
            # What pam_google_authenticator does: write "<file>~", rename it.
            tmp = target.parent / (target.name + "~")
            write_file(tmp, pam_mutated(created))
            os.rename(tmp, target)
        calls.append(path)
        return text, info

    monkeypatch.setattr(_totp, "_read_existing", read_then_pam_login)
    result = ensure(target, settings=settings(scratch_codes=3, window_size=5))
    assert result["changed"] and len(calls) == 2
    parsed = _totp.parse(target.read_text())
    assert parsed.window_size == 5
    assert parsed.scratch_codes == created["scratch_codes"][1:]
    assert parsed.reuse_state == ["57748333", "57748334"]


# --- malformed files ---------------------------------------------------------

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
GOOD_TAIL = '" RATE_LIMIT 2 30\n" WINDOW_SIZE 3\n" DISALLOW_REUSE\n" TOTP_AUTH\n'


@pytest.mark.parametrize("content,reason", [
    ("", "the file is empty"),
    ("not-base32!\n" + GOOD_TAIL, "line 1 is not a base32 secret"),
    ("jbswy3dpehpk3pxp\n" + GOOD_TAIL, "line 1 is not a base32 secret"),
    ("JBSWY3DP\n" + GOOD_TAIL, "line 1 is not a base32 secret"),
    (SECRET + '\n" RATE_LIMIT 2 30\n" HOTP_COUNTER 1\n', "counter-based \\(HOTP\\)"),
    (SECRET + '\n" RATE_LIMIT 2 30\n" WINDOW_SIZE 3\n', "no TOTP_AUTH line"),
    (SECRET + "\n" + GOOD_TAIL + "hello world\n", "line 6 is neither an option line"),
    (SECRET + "\n" + GOOD_TAIL + "01234567\n", "line 6 is neither an option line"),
    (SECRET + "\n" + GOOD_TAIL + '" FROBNICATE 1\n', "line 6: unknown option line FROBNICATE"),
    (SECRET + "\n" + GOOD_TAIL + '" WINDOW_SIZE 5\n', "option WINDOW_SIZE appears twice"),
    (SECRET + '\n" RATE_LIMIT two 30\n" TOTP_AUTH\n', "RATE_LIMIT holds a value"),
    (SECRET + '\n" WINDOW_SIZE 0\n" TOTP_AUTH\n', "WINDOW_SIZE needs one number"),
    (SECRET + "\n\0" + GOOD_TAIL, "NUL bytes"),
    (SECRET + "\n" + GOOD_TAIL + "caf\u00e9\n", "not printable ASCII"),
])
def test_malformed_file_is_an_error_and_stays_untouched(target, content, reason):
    target.write_bytes(content.encode("utf-8"))
    os.chmod(target, 0o400)
    before = snapshot(target)
    with pytest.raises(_totp.MalformedFile, match=reason) as info:
        ensure(target)
    assert "rotate: true" in str(info.value)
    assert SECRET not in str(info.value)
    assert snapshot(target) == before
    result = ensure(target, rotate=True)
    assert result["rotated"] and _totp.parse(target.read_text()).secret == result["secret"]


def test_file_owned_by_someone_else_is_an_error_unless_rotate(target):
    ensure(target)
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    os.chown(target, 65534, 65534)
    before = snapshot(target)
    with pytest.raises(_totp.MalformedFile, match="owned by uid 65534"):
        ensure(target)
    assert snapshot(target) == before
    result = ensure(target, rotate=True)
    assert result["rotated"] and target.stat().st_uid == ME.pw_uid


def test_symlink_is_refused_and_rotate_replaces_the_link_not_its_target(target, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target.symlink_to(victim)
    with pytest.raises(_totp.MalformedFile, match="not a regular file"):
        ensure(target)
    ensure(target, rotate=True)
    assert not target.is_symlink() and victim.read_text() == "precious\n"


# --- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(rate_limit_logins=11), "rate_limit_logins must be between 0 and 10"),
    (dict(rate_limit_logins=-1), "rate_limit_logins must be between 0 and 10"),
    (dict(rate_limit_seconds=10), "rate_limit_seconds must be between 15 and 600"),
    (dict(rate_limit_seconds=601), "rate_limit_seconds must be between 15 and 600"),
    (dict(window_size=0), "window_size must be between 1 and 21"),
    (dict(window_size=22), "window_size must be between 1 and 21"),
    (dict(scratch_codes=11), "scratch_codes must be between 0 and 10"),
    (dict(window_size="3"), "window_size must be an integer"),
    (dict(disallow_reuse="yes"), "disallow_reuse must be a boolean"),
])
def test_out_of_range_options_fail_and_change_nothing(target, kwargs, message):
    ensure(target)
    before = snapshot(target)
    with pytest.raises(_totp.TotpError, match=message):
        ensure(target, settings=settings(**kwargs))
    assert snapshot(target) == before


def test_missing_file_with_bad_options_is_not_created(target):
    with pytest.raises(_totp.TotpError):
        ensure(target, settings=settings(window_size=99))
    assert not os.path.lexists(target)


@pytest.mark.parametrize("name", ["Root", "1abc", "a b", "x" * 33, "../etc", "", "al;ice"])
def test_bad_user_name(name):
    with pytest.raises(_totp.TotpError, match="invalid user name"):
        _totp.ensure(name)


def test_unknown_user():
    with pytest.raises(_totp.TotpError, match="user hmtest-nosuchuser does not exist"):
        _totp.ensure("hmtest-nosuchuser")


def test_missing_home():
    entry = pwd.getpwnam("nobody")
    assert not os.path.isdir(entry.pw_dir)
    with pytest.raises(_totp.TotpError,
                       match="home directory %s of user nobody does not exist" % entry.pw_dir):
        _totp.ensure("nobody")


def test_relative_path_and_missing_folder(tmp_path):
    with pytest.raises(_totp.TotpError, match="path must be absolute"):
        _totp.ensure(ME.pw_name, path="relative/file")
    with pytest.raises(_totp.TotpError, match="folder of path .* does not exist"):
        _totp.ensure(ME.pw_name, path=str(tmp_path / "nope" / "file"))


# --- check mode, diff, absent ---------------------------------------------

def test_check_mode_writes_nothing_and_returns_no_secret(target):
    result = ensure(target, check_mode=True, settings=settings(scratch_codes=2))
    assert result["changed"] and result["created"]
    assert "secret" not in result and "uri" not in result
    assert not os.path.lexists(target) and os.listdir(target.parent) == []
    ensure(target)
    before = snapshot(target)
    result = ensure(target, check_mode=True, settings=settings(window_size=5))
    assert result["changed"] and result["reasons"] == ["window size"]
    assert snapshot(target) == before
    result = ensure(target, check_mode=True, rotate=True)
    assert result["changed"] and result["rotated"] and "secret" not in result
    assert snapshot(target) == before
    assert ensure(target, check_mode=True, state="absent")["changed"]
    assert snapshot(target) == before


def test_diff_shows_options_never_the_secret_or_codes(target):
    created = ensure(target, settings=settings(scratch_codes=3))
    write_file(target, pam_mutated(created))
    diffs = [created["diff"]]
    diffs.append(ensure(target, settings=settings(scratch_codes=3, window_size=5))["diff"])
    rotated = ensure(target, rotate=True, settings=settings(scratch_codes=3))
    diffs.append(rotated["diff"])
    diffs.append(ensure(target, state="absent")["diff"])
    secrets_seen = [created["secret"], rotated["secret"]] + created["scratch_codes"] + \
        rotated["scratch_codes"]
    for diff in diffs:
        text = diff["before"] + diff["after"]
        for value in secrets_seen:
            assert value not in text
    assert diffs[1] == {
        "before": '<secret>\n" RATE_LIMIT 2 30\n" WINDOW_SIZE 3\n" DISALLOW_REUSE\n'
                  '" TOTP_AUTH\n<scratch code>\n<scratch code>\n',
        "after": '<secret>\n" RATE_LIMIT 2 30\n" WINDOW_SIZE 5\n" DISALLOW_REUSE\n'
                 '" TOTP_AUTH\n<scratch code>\n<scratch code>\n',
    }
    assert diffs[2]["before"].startswith("<secret (current)>\n")
    assert diffs[2]["after"].startswith("<secret (new)>\n")


def test_absent_removes_the_file_and_is_idempotent(target):
    ensure(target)
    result = ensure(target, state="absent")
    assert result["changed"] and not os.path.lexists(target)
    assert ensure(target, state="absent")["changed"] is False


def test_absent_removes_even_a_malformed_file(target):
    write_file(target, "garbage\n")
    assert ensure(target, state="absent")["changed"]
    assert not os.path.lexists(target)


def test_fifo_is_refused_without_blocking(target):
    os.mkfifo(target, 0o600)
    with pytest.raises(_totp.MalformedFile, match="not a regular file"):
        ensure(target)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
