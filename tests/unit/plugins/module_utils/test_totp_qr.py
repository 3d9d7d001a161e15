"""Unit tests for _totp_qr: QR files, terminal text and the recovery sheet.

segno cannot decode QR codes, so the files are checked against the module
matrix of the URI: the PNG is decoded pixel by pixel (a small PNG reader
below), the SVG path is replayed, the terminal half blocks are read back.
That proves the files hold exactly the QR code of that URI; that segno's
encoder is right is taken from segno.
"""

import datetime
import os
import re
import stat
import struct
import zlib

import pyotp
import pytest
import segno

from ansible_collections.hardened.mailhost.plugins.module_utils import _controller_files, _totp, _totp_qr

SCALE, BORDER = _totp_qr.SCALE, _totp_qr.BORDER
OWNER = "mail1.example.org"


def ensure(uri, dest, name, owner=OWNER, **kwargs):
    return _totp_qr.ensure(uri, dest, name, owner, **kwargs)


@pytest.fixture(autouse=True)
def tty(monkeypatch):
    """What would reach the operator's terminal (never a real one in tests)."""
    shown = []

    def fake_show(text):
        shown.append(text)
        return True

    monkeypatch.setattr(_controller_files, "show_on_tty", fake_show)
    return shown


def new_uri(label="alice@mail"):
    return _totp.build_uri(_totp.generate_secret(), "mail.example.org", label)


def expected_matrix(uri):
    return [[bool(v) for v in row]
            for row in segno.make(uri, error="m", micro=False).matrix]


def with_border(matrix, border):
    width = len(matrix) + 2 * border
    blank = [False] * width
    return ([blank[:] for _row in range(border)]
            + [[False] * border + row + [False] * border for row in matrix]
            + [blank[:] for _row in range(border)])


def read_png_gray1(data):
    """Pixels (True = black) of a 1-bit grayscale, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _comp, _filter, interlace = header
    assert (depth, colour, interlace) == (1, 0, 0), header
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - 1] if i else 0
            up, up_left = prev[i], (prev[i - 1] if i else 0)
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rows.append([not (line[x // 8] >> (7 - x % 8)) & 1 for x in range(width)])
    return rows


def png_modules(data):
    pixels = read_png_gray1(data)
    size = len(pixels) // SCALE
    assert len(pixels) == size * SCALE == len(pixels[0])
    modules = []
    for my in range(size):
        row = []
        for mx in range(size):
            block = {pixels[my * SCALE + dy][mx * SCALE + dx]
                     for dy in range(SCALE) for dx in range(SCALE)}
            assert len(block) == 1, "module %d,%d is not a solid square" % (mx, my)
            row.append(block.pop())
        modules.append(row)
    return modules


def svg_modules(text):
    """Replay segno's path: absolute M, then relative m moves and h runs."""
    size = int(re.search(r'width="(\d+)"', text).group(1)) // SCALE
    assert 'transform="scale(%d)"' % SCALE in text
    path = re.search(r' d="([^"]+)"', text).group(1)
    grid = [[False] * size for _row in range(size)]
    x = y = 0.0
    for op, args in re.findall(r"([MmHhVv])([-0-9. ]+)", path):
        nums = [float(n) for n in args.split()]
        if op == "M":
            x, y = nums
        elif op == "m":
            x, y = x + nums[0], y + nums[1]
        elif op == "h":
            for i in range(int(nums[0])):
                grid[int(y)][int(x) + i] = True
            x += nums[0]
        else:
            raise AssertionError("unexpected path command %s" % op)
    return grid


def terminal_modules(lines):
    """segno draws light modules; two rows per line (upper/lower half blocks)."""
    grid = []
    for line in lines:
        top = [ch in "\u2588\u2580" for ch in line]
        bottom = [ch in "\u2588\u2584" for ch in line]
        grid += [[not v for v in top], [not v for v in bottom]]
    return grid


@pytest.fixture
def dest(tmp_path):
    return str(tmp_path / "enrolment")


def test_png_svg_and_terminal_encode_the_uri(dest):
    uri = new_uri()
    result = ensure(uri, dest, "alice")
    assert result["changed"]
    assert result["files"] == [os.path.join(dest, "alice.png"), os.path.join(dest, "alice.svg")]
    want = with_border(expected_matrix(uri), BORDER)
    with open(result["files"][0], "rb") as handle:
        assert png_modules(handle.read()) == want
    with open(result["files"][1]) as handle:
        assert svg_modules(handle.read()) == want
    term = terminal_modules(_totp_qr.terminal_lines(_totp_qr.make_qr(uri)))
    want_term = with_border(expected_matrix(uri), _totp_qr.TERMINAL_BORDER)
    assert term[:len(want_term)] == want_term
    # The checks can tell two URIs apart.
    assert want != with_border(expected_matrix(new_uri()), BORDER)


def test_modes_folder_0700_files_0600(dest):
    result = ensure(new_uri(), dest, "alice", scratch_codes=["12345678"])
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    for path in result["files"]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(dest)) == [".owners", "alice-recovery.txt", "alice.png", "alice.svg"]


def test_existing_folder_mode_is_enforced(dest):
    uri = new_uri()
    ensure(uri, dest, "alice")
    os.chmod(dest, 0o755)
    before = snapshot([os.path.join(dest, "alice.png")])
    result = ensure(uri, dest, "alice")
    assert result["changed"]
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    assert snapshot([os.path.join(dest, "alice.png")]) == before


def snapshot(paths):
    return [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths]


def test_idempotent_same_uri_unchanged_new_uri_rewritten(dest):
    uri = new_uri()
    first = ensure(uri, dest, "alice", scratch_codes=["12345678", "23456789"])
    before = snapshot(first["files"])
    again = ensure(uri, dest, "alice", scratch_codes=["12345678", "23456789"],
                   today=datetime.date(2031, 1, 1))
    assert again == {"changed": False, "files": first["files"], "shown_on_tty": False}
    assert snapshot(first["files"]) == before
    other = ensure(new_uri(), dest, "alice", scratch_codes=["12345678", "23456789"])
    assert other["changed"]
    png, svg, sheet = first["files"]
    assert snapshot([png, svg]) != before[:2]
    # Same codes, same date kept: the sheet was not touched.
    assert snapshot([sheet]) == before[2:]


def test_force_reports_a_change_and_shows_the_code_again(dest, tty):
    uri = new_uri()
    first = ensure(uri, dest, "alice", tty=True)
    assert first["shown_on_tty"] and len(tty) == 1
    forced = ensure(uri, dest, "alice", force=True, tty=True)
    assert forced["changed"] and forced["shown_on_tty"]
    assert tty[1] == tty[0]


def test_new_code_goes_to_the_terminal_never_into_the_result(dest, tty):
    uri = new_uri("bob@mail")
    result = ensure(uri, dest, "bob", tty=True)
    assert result["changed"] and result["shown_on_tty"] is True
    assert set(result) == {"changed", "files", "shown_on_tty"}
    assert len(tty) == 1 and "bob@mail" in tty[0]
    lines = tty[0].split("\n")
    qr_lines = [line for line in lines if line and set(line) <= set(" \u2580\u2584\u2588")]
    want = with_border(expected_matrix(uri), _totp_qr.TERMINAL_BORDER)
    assert terminal_modules(qr_lines)[:len(want)] == want
    # Unchanged: nothing shown. Check mode: nothing shown. tty off: nothing shown.
    assert ensure(uri, dest, "bob", tty=True)["shown_on_tty"] is False
    assert ensure(new_uri(), dest, "bob", tty=True, check_mode=True)["shown_on_tty"] is False
    assert ensure(new_uri(), dest, "bob")["shown_on_tty"] is False
    assert len(tty) == 1


def test_another_hosts_file_is_refused_never_overwritten(dest):
    first = ensure(new_uri(), dest, "demo", owner="host-a.example", scratch_codes=["12345678"])
    before = {path: open(path, "rb").read() for path in first["files"]}
    with pytest.raises(_totp_qr.QrError) as info:
        ensure(new_uri(), dest, "demo", owner="host-b.example", scratch_codes=["23456789"])
    assert "host-a.example" in str(info.value) and "host-b.example" in str(info.value)
    assert "secret=" not in str(info.value)
    assert {path: open(path, "rb").read() for path in first["files"]} == before


def _enrol_in_shared_folder(args):
    dest, index = args
    result = _totp_qr.ensure(new_uri("user%d@mail" % index), dest, "user%d" % index, "host-%d" % index,
                             scratch_codes=["1234567%d" % (index % 10)])
    return result["files"]


def test_many_hosts_at_once_in_one_new_folder(tmp_path):
    """Forks creating the same folder together never fail with 'File exists'."""
    import multiprocessing  # pylint: disable=import-outside-toplevel

    ctx = multiprocessing.get_context("fork")
    for round_no in range(5):
        dest = str(tmp_path / ("round%d" % round_no) / "shared" / "totp")
        with ctx.Pool(8) as pool:
            results = pool.map(_enrol_in_shared_folder, [(dest, i) for i in range(8)])
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.dirname(dest)).st_mode) == 0o700
        for index, files in enumerate(results):
            assert all(os.path.exists(path) for path in files)
            assert _controller_files.owner_of(files[0]) == "host-%d" % index


def test_damaged_or_loose_file_is_repaired(dest):
    uri = new_uri()
    first = ensure(uri, dest, "alice")
    with open(first["files"][0], "rb") as handle:
        good = handle.read()
    with open(first["files"][0], "wb") as handle:
        handle.write(good[:100])
    os.chmod(first["files"][1], 0o644)
    result = ensure(uri, dest, "alice")
    assert result["changed"]
    with open(first["files"][0], "rb") as handle:
        assert handle.read() == good
    assert stat.S_IMODE(os.stat(first["files"][1]).st_mode) == 0o600


def test_formats_selects_files(dest):
    result = ensure(new_uri(), dest, "bob", formats=["svg"])
    assert result["files"] == [os.path.join(dest, "bob.svg")]
    assert sorted(os.listdir(dest)) == [".owners", "bob.svg"]


def test_recovery_sheet_names_neither_user_nor_host(dest):
    uri = _totp.build_uri(_totp.generate_secret(), "mail.example.org", "alice@mx")
    codes = ["12345678", "87654321", "55554444"]
    result = ensure(uri, dest, "alice", scratch_codes=codes, today=datetime.date(2030, 5, 17))
    sheet = result["files"][-1]
    assert sheet == os.path.join(dest, "alice-recovery.txt")
    with open(sheet) as handle:
        text = handle.read()
    for identifying in ("alice", "mx", "mail.example.org", "example", "Issuer", "Account"):
        assert identifying not in text, identifying
    assert "Created: 2030-05-17\n" in text
    for number, code in enumerate(codes, 1):
        assert "%2d. %s %s\n" % (number, code[:4], code[4:]) in text
    assert "Verification code:" in text
    assert pyotp.parse_uri(uri).secret not in text


def test_recovery_sheet_identity_on_request(dest):
    uri = _totp.build_uri(_totp.generate_secret(), "Mail & Co", "alice smith@mx")
    codes = ["12345678", "87654321", "55554444"]
    result = ensure(uri, dest, "alice", scratch_codes=codes, sheet_identity=True,
                    today=datetime.date(2030, 5, 17))
    sheet = result["files"][-1]
    with open(sheet) as handle:
        text = handle.read()
    assert "Issuer:  Mail & Co\n" in text and "Account: alice smith@mx\n" in text
    assert "Created: 2030-05-17\n" in text
    forced = ensure(uri, dest, "alice", scratch_codes=codes, force=True, sheet_identity=True,
                    today=datetime.date(2030, 6, 1))
    assert forced["changed"]
    with open(sheet) as handle:
        assert "Created: 2030-06-01\n" in handle.read()


def test_check_mode_writes_nothing(dest):
    result = ensure(new_uri(), dest, "alice", scratch_codes=["12345678"],
                    check_mode=True)
    assert result["changed"] and result["shown_on_tty"] is False
    assert not os.path.exists(dest)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="../evil"), "name must be a file base name"),
    (dict(name="a/b"), "name must be a file base name"),
    (dict(name="a b"), "name must be a file base name"),
    (dict(name=".."), "name must be a file base name"),
    (dict(uri="https://example.org/?secret=ABC"), "not an otpauth://totp/ URI"),
    (dict(uri="otpauth://hotp/x:y?secret=JBSWY3DPEHPK3PXP&counter=1"), "not an otpauth://totp/"),
    (dict(uri="otpauth://totp/x:y?issuer=x"), "no secret parameter"),
    (dict(uri="otpauth://totp/x y?secret=JBSWY3DPEHPK3PXP"), "without spaces"),
    (dict(formats=["gif"]), "unknown format 'gif'"),
    (dict(formats=[]), "formats must list at least one"),
    (dict(scratch_codes=["1234"]), "scratch_codes must be a list of 8-digit codes"),
    (dict(dest="relative/dir"), "dest must be an absolute folder path"),
    (dict(owner=""), "owner must name whose files these are"),
])
def test_bad_input_is_refused_without_writing(dest, kwargs, message):
    args = dict(uri=new_uri(), dest=dest, name="alice", owner=OWNER)
    args.update(kwargs)
    with pytest.raises(_totp_qr.QrError, match=message) as info:
        _totp_qr.ensure(**args)
    assert "secret=" not in str(info.value)
    assert not os.path.exists(dest)


def test_dest_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(_totp_qr.QrError, match="exists and is not a folder"):
        ensure(new_uri(), str(target), "alice")
    assert target.read_text() == "x"
