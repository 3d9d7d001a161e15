import shutil
import subprocess

import pytest

from ansible_collections.hardened.mailhost.plugins.module_utils import _crypt

# Known answers from Ulrich Drepper's SHA-crypt specification.
KNOWN = [
    ("$6$saltstring", "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("$6$rounds=10000$saltstringsaltstring", "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/"
     "UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
]


@pytest.mark.parametrize("setting,phrase,expected", KNOWN)
def test_known_answers(setting, phrase, expected):
    assert _crypt.crypt(phrase, setting) == expected
    assert _crypt.verify(phrase, expected)


def test_sha512_crypt_with_explicit_salt_and_rounds():
    assert _crypt.sha512_crypt("Hello world!", salt="saltstring") == KNOWN[0][2]
    assert _crypt.sha512_crypt("Hello world!", salt="saltstringsaltst", rounds=10000) == KNOWN[1][2]


def test_random_salt_differs_and_verifies():
    first = _crypt.sha512_crypt("4711")
    second = _crypt.sha512_crypt("4711")
    assert first != second
    for hashed in (first, second):
        assert hashed.startswith("$6$")
        assert _crypt.is_sha512_crypt(hashed)
        assert len(hashed.split("$")[2]) == _crypt.SALT_LENGTH
        assert _crypt.verify("4711", hashed)
        assert not _crypt.verify("4712", hashed)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
def test_matches_independent_implementation():
    hashed = _crypt.sha512_crypt("pin 123 ü", salt="AbCdEfGh01234567")
    other = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", "AbCdEfGh01234567", "-stdin"],
        input="pin 123 ü\n", capture_output=True, text=True, check=True).stdout.strip()
    assert hashed == other


@pytest.mark.parametrize("bad", ["", "x" * 17, "bad$salt", "sälz"])
def test_bad_salt_rejected(bad):
    with pytest.raises(_crypt.CryptError):
        _crypt.sha512_crypt("x", salt=bad)


@pytest.mark.parametrize("rounds", [999, 10 ** 9])
def test_bad_rounds_rejected(rounds):
    with pytest.raises(_crypt.CryptError):
        _crypt.sha512_crypt("x", rounds=rounds)


def test_nul_in_password_rejected():
    with pytest.raises(_crypt.CryptError):
        _crypt.sha512_crypt("12\x0034")


def test_unknown_setting_is_an_error_not_a_token():
    with pytest.raises(_crypt.CryptError):
        _crypt.crypt("x", "$1")


@pytest.mark.parametrize("hashed", ["", "*", "!", "$6$broken", None, "plain"])
def test_verify_false_on_garbage(hashed):
    assert not _crypt.verify("x", hashed)


def test_is_sha512_crypt():
    assert _crypt.is_sha512_crypt(KNOWN[1][2])
    assert not _crypt.is_sha512_crypt("$5$salt$abc")
    assert not _crypt.is_sha512_crypt(KNOWN[0][2] + "x")
