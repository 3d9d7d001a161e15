"""The CA index in SQLite: migration from index.json, incremental exports, batches, kills.

Every check reads the files the way the services do (the Postfix map as text,
the CRL and the Dovecot file with cryptography) and compares them with the
index read through a fresh, read-only CertificateAuthority.
"""

import datetime
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time

import pytest
from cryptography import x509

from ansible_collections.hardened.mailhost.plugins.module_utils import _ca, _ca_exports, _ca_index
from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CAError, CertificateAuthority

PASS = "correct horse battery"
UTC = datetime.timezone.utc


def files(folder):
    out = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name != ".lock":
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, folder)] = handle.read()
    return out


def expected_map(info, now=None):
    stamp = _ca.iso(now or _ca.utcnow())
    rows = sorted((c["email"], c["device"], c["fingerprint_sha256"]) for c in info["certificates"]
                  if c["state"] == "valid" and c["not_before"] <= stamp < c["not_after"])
    return "".join("%s %s\n" % (fp, email) for email, _device, fp in rows)


def assert_in_step(ca_dir):
    """The CRL, the Postfix map and the Dovecot file say what the index says."""
    reader = CertificateAuthority(ca_dir)
    info = reader.info()
    with open(reader.postfix_export_path) as handle:
        assert handle.read() == expected_map(info)
    crl = reader.load_crl()
    revoked = sorted(c["serial"] for c in info["certificates"] if c["state"] == "revoked")
    assert sorted(_ca.serial_hex(entry.serial_number) for entry in crl) == revoked
    assert crl.is_signature_valid(reader.certificate().public_key())
    with reader._reading() as idx:
        number = idx.crl_number
        generation = idx.generation
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
    with open(reader.path("ca.crt"), "rb") as ca_file, open(reader.path("crl.pem"), "rb") as crl_file, \
            open(reader.dovecot_export_path, "rb") as dovecot:
        assert dovecot.read() == ca_file.read() + crl_file.read()
    assert reader._exports.state()["generation"] == generation
    return info


@pytest.fixture
def ca(tmp_path):
    authority = CertificateAuthority(str(tmp_path / "ca"), PASS)
    authority.init()
    return authority


# ------------------------------------------------------------ migration
def make_legacy_ca(folder):
    """A CA folder exactly as the index.json versions left it.

    The certificates are real (issued and revoked by the CA code), then the
    index is written back in the format-1 layout those versions wrote (one
    record per line), and the SQLite file and the exports' state removed.
    """
    ca = CertificateAuthority(str(folder), PASS)
    ca.init(crl_next_update_days=20)
    ca.issue("ann@example.org", "Ann", "phone")
    ca.issue("ann@example.org", "Ann", "laptop")
    old = ca.issue("bob@example.org", "Bob", "phone")
    ca.issue("bob@example.org", "Bob", "phone", replace=True)
    ca.issue("zoe@example.org", "Zoe", "tablet", days=-1)  # expired: not in the map
    ca.revoke(("ann@example.org", "laptop"), reason="key_compromise")
    with ca._reading() as idx:
        head = {"format": 1, "crl_number": idx.crl_number, "crl_next_update_days": idx.crl_next_update_days}
        records = idx.all()
    lines = [json.dumps(rec, sort_keys=True) for rec in records]
    data = "%s, \"certificates\": [\n%s\n]}\n" % (json.dumps(head, sort_keys=True)[:-1], ",\n".join(lines))
    with open(str(folder / "index.json"), "w") as handle:
        handle.write(data)
    os.chmod(str(folder / "index.json"), 0o600)
    os.unlink(str(folder / "index.sqlite3"))
    os.unlink(str(folder / "export" / ".state"))
    return old.serial


def test_legacy_ca_is_read_without_change_and_migrated_by_the_first_change(tmp_path):
    folder = tmp_path / "ca"
    old_bob = make_legacy_ca(folder)
    before = files(str(folder))
    legacy_bytes = before["index.json"]
    reader = CertificateAuthority(str(folder))
    info = reader.info()  # read-only use reads index.json as it is
    assert len(info["certificates"]) == 5 and info["crl_next_update_days"] == 20
    assert reader.crl_status()["missing"] == [] and reader.exports_current()
    assert reader.plan_revoke(("ann@example.org", "phone"))
    assert files(str(folder)) == before  # nothing written, nothing converted

    ca = CertificateAuthority(str(folder), PASS)
    ca.issue("cy@example.org", "Cy", "phone")
    after = files(str(folder))
    assert "index.json" not in after and after["index.json.migrated"] == legacy_bytes
    assert os.stat(str(folder / "index.sqlite3")).st_mode & 0o777 == 0o600
    migrated = assert_in_step(str(folder))
    assert [c["serial"] for c in migrated["certificates"]][:5] == [c["serial"] for c in info["certificates"]]
    for old, new in zip(info["certificates"], migrated["certificates"]):
        assert dict(old, days_left=0) == dict(new, days_left=0)
    assert {c["serial"]: c["revocation_reason"] for c in migrated["certificates"]}[old_bob] == "superseded"
    # the CRL number goes on from the old index's
    assert ca.crl_status()["number"] == json.loads(legacy_bytes)["crl_number"]
    ca.revoke(("cy@example.org", "phone"))
    assert ca.crl_status()["number"] == json.loads(legacy_bytes)["crl_number"] + 1

    # idempotent: a second run does not migrate again, the backup stays
    snap = files(str(folder))
    assert ca._index.migrate() is False
    assert CertificateAuthority(str(folder), PASS).refresh_exports() is False
    assert files(str(folder)) == snap


def test_old_records_without_relay_only_migrate_as_mailbox_identities(tmp_path):
    folder3 = tmp_path / "oldest"
    ca = CertificateAuthority(str(folder3), PASS)
    ca.init()
    rec = ca.issue("ann@example.org", "Ann", "phone").record
    data = {"format": 1, "crl_number": 1, "crl_next_update_days": 30,
            "certificates": [dict((k, v) for k, v in rec.items() if k != "relay_only")]}
    (folder3 / "index.json").write_text(json.dumps(data))
    os.unlink(str(folder3 / "index.sqlite3"))
    ca = CertificateAuthority(str(folder3), PASS)
    ca.crl()
    assert ca.info()["certificates"][0]["relay_only"] is False
    assert (folder3 / "index.json.migrated").exists()


def test_interrupted_migration_is_finished_by_the_next_run(tmp_path):
    folder = tmp_path / "ca"
    make_legacy_ca(folder)
    legacy = (folder / "index.json").read_bytes()
    # killed after the new file was renamed into place, before index.json was moved
    CertificateAuthority(str(folder), PASS).crl()
    os.rename(str(folder / "index.json.migrated"), str(folder / "index.json"))
    # and a temporary file of an earlier attempt is still there
    (folder / ".index.sqlite3.abcd").write_bytes(b"half")
    count = len(CertificateAuthority(str(folder)).info()["certificates"])
    ca = CertificateAuthority(str(folder), PASS)
    ca.issue("cy@example.org", "Cy", "phone")
    assert not (folder / "index.json").exists() and (folder / "index.json.migrated").read_bytes() == legacy
    assert len(ca.info()["certificates"]) == count + 1
    # a second backup never overwrites the first
    (folder / "index.json").write_bytes(legacy)
    ca.issue("cy@example.org", "Cy", "laptop")
    assert (folder / "index.json.migrated.2").read_bytes() == legacy
    assert_in_step(str(folder))


def test_bad_legacy_index_is_refused_and_nothing_changes(tmp_path):
    folder = tmp_path / "ca"
    make_legacy_ca(folder)
    for content, message in [(b"{not json", "corrupt"), (b'{"format": 99, "certificates": []}', "unknown format"),
                             (b'{"format": 1, "certificates": [{"serial": "01"}]}', "lacks")]:
        (folder / "index.json").write_bytes(content)
        before = files(str(folder))
        with pytest.raises(CAError, match=message):
            CertificateAuthority(str(folder), PASS).issue("cy@example.org", "Cy", "phone")
        with pytest.raises(CAError, match=message):
            CertificateAuthority(str(folder)).info()
        assert files(str(folder)) == before


def test_index_of_an_unknown_format_is_refused(ca):
    conn = sqlite3.connect(ca.path("index.sqlite3"))
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    conn.commit()
    conn.close()
    with pytest.raises(CAError, match="unknown format"):
        ca.issue("ann@example.org", "Ann", "phone")
    with pytest.raises(CAError, match="unknown format"):
        CertificateAuthority(ca.ca_dir).info()


# ---------------------------------------------------- incremental exports
def test_edits_of_the_map_equal_a_full_rebuild(ca):
    rng = random.Random(7)
    people = ["%s@example.org" % name for name in ("zed", "amy", "kim", "bo", "amy.b")]
    for step in range(60):
        email, device = rng.choice(people), rng.choice(["phone", "laptop", "a", "z"])
        try:
            if rng.random() < 0.3:
                ca.revoke((email, device))
            else:
                ca.issue(email, "Person", device, replace=rng.random() < 0.5)
        except CAError:
            pass  # a duplicate without replace, or a revoke of nothing ever issued
        state = ca._exports.state()
        assert state is not None, step
        assert_in_step(ca.ca_dir)


def test_an_expired_certificate_leaves_the_map_on_the_next_change(ca):
    now = _ca.utcnow()
    ca.issue("soon@example.org", "Soon", "phone", not_before=now - datetime.timedelta(days=1),
             not_after=now + datetime.timedelta(seconds=2))
    ca.issue("later@example.org", "Later", "phone", not_before=now + datetime.timedelta(seconds=2),
             not_after=now + datetime.timedelta(days=3))
    with open(ca.postfix_export_path) as handle:
        assert [line.split()[1] for line in handle] == ["soon@example.org"]
    deadline = time.monotonic() + 10
    while _ca.utcnow() <= now + datetime.timedelta(seconds=2) and time.monotonic() < deadline:
        time.sleep(0.2)
    ca.issue("kim@example.org", "Kim", "phone")
    with open(ca.postfix_export_path) as handle:
        assert [line.split()[1] for line in handle] == ["kim@example.org", "later@example.org"]
    assert_in_step(ca.ca_dir)


def test_exports_out_of_step_are_rebuilt_and_reported(ca):
    ca.issue("ann@example.org", "Ann", "phone")
    with open(ca.postfix_export_path, "w") as handle:
        handle.write("")
    os.unlink(os.path.join(ca.ca_dir, "export", ".state"))
    assert not ca.exports_current()
    ca.issue("bob@example.org", "Bob", "phone")
    assert_in_step(ca.ca_dir)


# ------------------------------------------------------------------ batch
def test_issue_many_issues_all_in_one_step(ca):
    before = ca.issue("old@example.org", "Old", "phone")
    requests = [{"email": "u%02d@example.org" % i, "name": "User %d" % i, "device": "phone"} for i in range(20)]
    requests.append({"email": "old@example.org", "name": "Old", "device": "phone", "replace": True,
                     "pkcs12_legacy": True})
    with ca._reading() as idx:
        generation = idx.generation
    issued = ca.issue_many(requests, allowed_domains=["example.org"])
    assert [i.record["email"] for i in issued] == [r["email"] for r in requests]
    assert len({i.pkcs12_password for i in issued}) == 21
    assert issued[-1].replaced[0]["serial"] == before.serial and issued[-1].replaced[0]["state"] == "revoked"
    with ca._reading() as idx:
        assert idx.generation == generation + 1  # one transaction
    info = assert_in_step(ca.ca_dir)
    assert len(info["certificates"]) == 22


@pytest.mark.parametrize("bad,message", [
    ({"email": "x@example.org", "name": "X", "device": "my phone"}, "entry 3 (x@example.org / my phone): device label"),
    ({"email": "u00@example.org", "name": "U", "device": "phone"}, "entry 3 (u00@example.org / phone): the same"),
    ({"email": "demo@partner.example", "name": "D", "device": "phone"},
     "entry 3 (demo@partner.example / phone): demo@partner.example is outside"),
    ({"email": "taken@example.org", "name": "T", "device": "phone"},
     "entry 3 (taken@example.org / phone): taken@example.org already has"),
    ({"email": "x@example.org", "name": "X", "device": "pc", "colour": "red"},
     "entry 3 (x@example.org / pc): unknown keys colour"),
    ("just a string", "entry 3: expected a mapping"),
])
def test_issue_many_refuses_a_bad_entry_and_issues_nothing(ca, bad, message):
    ca.issue("taken@example.org", "Taken", "phone")
    before = files(ca.ca_dir)
    requests = [{"email": "u00@example.org", "name": "U", "device": "phone"},
                {"email": "u01@example.org", "name": "U", "device": "phone"}, bad,
                {"email": "u03@example.org", "name": "U", "device": "phone"}]
    with pytest.raises(CAError) as err:
        ca.issue_many(requests, allowed_domains=["example.org"])
    assert message in str(err.value) and str(err.value).endswith("nothing was issued")
    assert files(ca.ca_dir) == before


# ------------------------------------------------------------- kill test
def strip(info):
    """The records without the fields that follow the clock."""
    return [dict((k, v) for k, v in rec.items() if k not in ("days_left", "status"))
            for rec in info["certificates"]]


def _kill_round_child(ca, number, replace):
    ca.issue("k%03d@example.org" % (number // 3), "Kill %d" % number, "dev%d" % (number % 3) if not replace
             else "phone", replace=replace)
    os._exit(0)  # pylint: disable=protected-access


def test_an_issue_killed_at_any_point_leaves_the_ca_before_or_after_it(tmp_path):
    """SIGKILL an issue (or an issue that replaces, so the CRL is re-signed) at random points.

    After every kill: the index opens and passes SQLite's integrity check,
    the record is there whole or not at all, the Postfix map is the map of
    before or of after (never a partial file), the CRL still verifies; the
    next change brings every derived file in step. Bounded: 200 rounds or 60 s.
    """
    folder = str(tmp_path / "ca")
    ca = CertificateAuthority(folder, PASS)
    ca.init()
    ca.issue("phone@example.org", "Phone", "phone")
    ca._private_key()  # derived once here; forked children inherit it
    ctx = multiprocessing.get_context("fork")
    # How long one issue takes here, to spread the kills over all of it.
    start = time.perf_counter()
    ca.issue("timing@example.org", "Timing", "phone", replace=False)
    span = (time.perf_counter() - start) * 1.3
    rng = random.Random(16)
    deadline = time.monotonic() + 60
    outcomes = {"before": 0, "after": 0}
    rounds = 0
    for number in range(200):
        if time.monotonic() > deadline:
            break
        rounds += 1
        replace = number % 4 == 3
        reader = CertificateAuthority(folder)
        before_info = reader.info()
        with open(reader.postfix_export_path) as handle:
            before_map = handle.read()
        with open(reader.path("crl.pem"), "rb") as handle:
            before_crl = handle.read()
        proc = ctx.Process(target=_kill_round_child, args=(ca, number, replace))
        proc.start()
        time.sleep(rng.uniform(0, span))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode in (0, -signal.SIGKILL)
        # Keep the kills spread over the whole issue on a machine whose load
        # changes: longer waits after a run of early kills, shorter after
        # issues that finished before the kill.
        if proc.exitcode == 0:
            span = max(span * 0.8, 0.002)

        conn = sqlite3.connect(os.path.join(folder, "index.sqlite3"))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        after_info = CertificateAuthority(folder).info()  # opens, read-only, rolls back a hot journal
        new = [c for c in after_info["certificates"]
               if c["serial"] not in {b["serial"] for b in before_info["certificates"]}]
        assert len(new) <= 1
        if new:
            outcomes["after"] += 1
            outcomes["streak"] = 0
            rec = new[0]
            assert rec["email"] == "k%03d@example.org" % (number // 3)
            assert all(rec[field] is not None for field in _ca_index.FIELDS
                       if field not in ("revoked_at", "revocation_reason"))
            assert len(rec["fingerprint_sha256"]) == 95 and rec["state"] == "valid"
        else:
            outcomes["before"] += 1
            early_streak = outcomes.get("streak", 0) + 1
            outcomes["streak"] = early_streak
            if early_streak >= 10:
                span, outcomes["streak"] = min(span * 1.5, 2.0), 0
            assert strip(after_info) == strip(before_info)
        with open(reader.postfix_export_path) as handle:
            now_map = handle.read()
        assert now_map in (before_map, expected_map(after_info)), "partial or foreign map after a kill"
        crl = _ca.x509.load_pem_x509_crl(open(reader.path("crl.pem"), "rb").read())
        assert crl.is_signature_valid(reader.certificate().public_key())
        with open(reader.dovecot_export_path, "rb") as handle:
            dovecot = handle.read()
        assert dovecot.endswith(before_crl) or dovecot.endswith(open(reader.path("crl.pem"), "rb").read())
        # the next change (here: the recovery every change starts with) brings all in step
        with ca._lock():
            ca._recover(_ca.utcnow())
        assert_in_step(folder)
        leftovers = [n for n in os.listdir(folder) + os.listdir(os.path.join(folder, "export"))
                     if n.startswith(".") and n not in (".lock", ".state")]
        assert leftovers == []
    assert rounds >= 50
    # the kills landed on both sides of the commit
    assert outcomes["before"] > 0 and outcomes["after"] > 0, outcomes
    CertificateAuthority(folder, PASS).check()


def test_exports_module_edits_one_line():
    data = b"AA:01 a@example.org\nBB:02 b@example.org\nAB:03 c@example.org\n"
    assert _ca_exports._line_start(data, "BB:02") == len(b"AA:01 a@example.org\n")
    assert _ca_exports._line_start(data, "01") is None  # only at a line start
    assert _ca_exports._line_start(data, "CC:09") is None


def test_issue_and_revoke_read_no_full_list_of_records(ca, monkeypatch):
    """The cost of one issue or revoke does not grow with the index: no code path of them
    lists every record (the CRL lists the revoked ones, by its nature)."""
    for number in range(5):
        ca.issue("u%d@example.org" % number, "U", "phone")

    def refuse(*_args, **_kwargs):
        raise AssertionError("a full read of the index during one issue or revoke")
    for name in ("all", "listed", "of_email", "next_map_change", "count"):
        monkeypatch.setattr(_ca_index.Index, name, refuse)
    monkeypatch.setattr(_ca_exports.Exports, "rebuild", refuse)
    fresh = CertificateAuthority(ca.ca_dir, PASS)
    fresh._key = ca._private_key()
    issued = fresh.issue("new@example.org", "New", "phone")
    fresh.issue("new@example.org", "New", "phone", replace=True)
    fresh.revoke(("u1@example.org", "phone"))
    assert issued.serial in fresh.crl_status()["revoked_serials"]
    monkeypatch.undo()
    assert_in_step(ca.ca_dir)
