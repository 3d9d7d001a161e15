"""The abuse alarm and sender suspension (roles/postfix/files/hm_sender_guard)."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.abspath(os.path.join(HERE, "..", "..", "..", "..", "roles", "postfix", "files"))
sys.dont_write_bytecode = True
if FILES not in sys.path:
    sys.path.insert(0, FILES)

from hm_sender_guard import __main__ as cli  # noqa: E402
from hm_sender_guard import events, guard, mailq, maps, report  # noqa: E402

FP_A = ":".join(["AB"] * 32)
FP_B = ":".join(["0C"] * 32)
NOW = 1_800_000_000.0
TAG = events.IDENTITY_TAG


def entry(age, tag, message):
    return events.Entry(NOW - age, tag, message)


def ident(age, qid, identity, address=""):
    return entry(age, TAG, "%s: identity=%s%s client=10.0.0.1" % (qid, identity, " address=" + address if address else ""))


def delivery(age, qid, rcpt, status):
    return entry(age, "postfix/smtp", "%s: to=<%s>, relay=sink[127.0.0.1]:2525, delay=0.1, dsn=5.0.0, status=%s (x)"
                 % (qid, rcpt, status))


def quota(age, identity, rule="messages-per-hour"):
    return entry(age, "postfix/submissions/smtpd",
                 "AB12: reject: END-OF-MESSAGE from x[10.0.0.1]: 450 4.7.1 Sending quota exceeded, try again later "
                 "(hm-quota %s %s); from=<a@example.test> to=<b@sink.test> proto=ESMTP helo=<x>" % (rule, identity))


THRESHOLDS = {"window_seconds": 600, "max_bounced": 3, "max_deferred": 2, "suspend_on_quota": True}


# ---------------------------------------------------------------- events

def test_count_attributes_deliveries_to_the_identity_of_their_queue_id():
    cert = "cert:" + FP_A
    entries = [ident(100, "Q1", cert, "alice@example.test"), ident(90, "Q2", "login:bob+phone"),
               delivery(80, "Q1", "x@spam.example", "bounced"), delivery(70, "Q1", "y@spam.example", "bounced"),
               delivery(60, "Q1", "z@other.example", "deferred"), delivery(50, "Q2", "f@sink.test", "sent"),
               delivery(40, "Q9", "u@sink.test", "bounced")]  # unknown queue ID: nobody's
    stats = events.count(entries, NOW - 600)
    assert set(stats) == {cert, "login:bob+phone"}
    assert (stats[cert].messages, stats[cert].bounced, stats[cert].deferred) == (1, 2, 1)
    assert stats[cert].address == "alice@example.test"
    assert stats[cert].domains.most_common(1) == [("spam.example", 2)]
    assert (stats["login:bob+phone"].bounced, stats["login:bob+phone"].messages) == (0, 1)


def test_count_uses_older_identity_lines_and_ignores_what_is_outside_the_window():
    entries = [delivery(700, "Q1", "a@x.example", "bounced"), delivery(10, "Q1", "b@x.example", "deferred")]
    stats = events.count(entries, NOW - 600, queue_ids={"Q1": ("login:bob+pc", "")})
    assert (stats["login:bob+pc"].bounced, stats["login:bob+pc"].deferred) == (0, 1)


def test_count_ignores_events_before_a_resume():
    entries = [ident(100, "Q1", "login:bob+pc"), delivery(90, "Q1", "a@x.example", "bounced"),
               delivery(10, "Q1", "b@x.example", "bounced")]
    stats = events.count(entries, NOW - 600, ignore_before={"login:bob+pc": NOW - 50})
    assert (stats["login:bob+pc"].messages, stats["login:bob+pc"].bounced) == (0, 1)


def test_quota_refusals_are_counted_per_identity_and_rule():
    stats = events.count([quota(30, "cert:" + FP_A), quota(20, "cert:" + FP_A, "recipients-per-day"),
                          entry(10, "postfix/smtpd", "(hm-quota messages-per-hour login:x) without a reject")],
                         NOW - 600)
    assert list(stats) == ["cert:" + FP_A]
    assert stats["cert:" + FP_A].quota == 2
    assert dict(stats["cert:" + FP_A].quota_rules) == {"messages-per-hour": 1, "recipients-per-day": 1}


@pytest.mark.parametrize("bounced, deferred, quota_hits, expected", [
    (2, 1, 0, []),
    (3, 0, 0, ["3 bounced"]),
    (0, 2, 0, ["2 deferred"]),
    (0, 0, 1, ["quota exceeded 1 times"]),
    (5, 5, 2, ["5 bounced", "5 deferred", "quota exceeded 2 times"]),
])
def test_crossed_names_each_threshold(bounced, deferred, quota_hits, expected):
    stats = events.Stats("login:x")
    stats.bounced, stats.deferred, stats.quota = bounced, deferred, quota_hits
    reasons = events.crossed(stats, THRESHOLDS)
    assert len(reasons) == len(expected)
    for reason, start in zip(reasons, expected):
        assert reason.startswith(start)


def test_quota_alone_does_not_suspend_when_turned_off():
    stats = events.Stats("login:x")
    stats.quota = 4
    assert events.crossed(stats, dict(THRESHOLDS, suspend_on_quota=False)) == []


# --------------------------------------------------------------- fixtures

class Host:
    """Fakes for the host's tools; the maps and state are real files."""

    def __init__(self, tmp_path):
        self.journal_entries = []
        self.queue = []
        self.held, self.released, self.deleted, self.mails = [], [], [], []
        self.users = {"alice", "bob"}
        self.tmp = tmp_path
        (tmp_path / "maps").mkdir()
        (tmp_path / "state").mkdir()
        (tmp_path / "clientcerts").write_text("%s alice@example.test\n%s carol@example.org\n" % (FP_A, FP_B))
        self.config_path = tmp_path / "guard.json"
        self.config_path.write_text(json.dumps({
            "domains": ["example.test", "example.org"], "clientcerts": str(tmp_path / "clientcerts"),
            "map_dir": str(tmp_path / "maps"), "state_dir": str(tmp_path / "state"), "db_type": "hash",
            "window_seconds": 600, "lookback_seconds": 86400, "max_bounced": 3, "max_deferred": 2,
            "suspend_on_quota": True, "admin": "admin@sink.test",
            "metrics_file": str(tmp_path / "guard.prom")}))

    def journal(self, since, identifier=None, facility=None):
        return [e for e in self.journal_entries if e.time >= since and (identifier is None or e.tag == identifier)]

    def postsuper(self, option, ids):
        target = {"-h": self.held, "-H": self.released, "-d": self.deleted}[option]
        target.extend(sorted(ids))
        return len(set(ids))

    def guard(self):
        config = guard.load_config(str(self.config_path))
        made = guard.Guard(config, journal=self.journal, queue=lambda: list(self.queue), postsuper=self.postsuper,
                           send=self.mails.append, now=lambda: NOW, host="mx.example.test",
                           user_exists=lambda name: name in self.users)
        made.maps.postmap = "/bin/true"
        return made

    def map(self, name):
        path = self.tmp / "maps" / name
        return maps.parse_map(path.read_text()) if path.exists() else {}


def queued(qid, sender, queue_name="deferred"):
    return {"queue_id": qid, "queue_name": queue_name, "sender": sender, "recipients": ["x@sink.test"]}


@pytest.fixture()
def host(tmp_path):
    return Host(tmp_path)


# ------------------------------------------------------------------ scan

def test_scan_suspends_a_bouncing_certificate_holds_its_mail_and_reports(host):
    cert = "cert:" + FP_A
    host.journal_entries = [ident(3000, "OLD1", cert, "alice@example.test"), ident(100, "Q1", cert, "alice@example.test"),
                            ident(90, "Q2", "login:bob+phone")]
    host.journal_entries += [delivery(80 - i, "Q1", "r%d@spam.example" % i, "bounced") for i in range(3)]
    host.queue = [queued("OLD1", "alice@example.test"), queued("Q1", "alice@example.test"),
                  queued("Q2", "bob@example.test"), queued("Q3", "alice@example.test", "hold")]
    result = host.guard().scan()
    assert [s["identity"] for s in result["suspended"]] == [cert]
    assert host.map("suspended_ccert") == {FP_A: maps.ACTION}
    assert host.map("suspended_sasl") == {}
    # Its own queued mail only (an older message too); bob's stays, nothing deleted.
    assert host.held == ["OLD1", "Q1"] and host.deleted == []
    assert len(host.mails) == 1
    mail = host.mails[0]
    assert "To: <admin@sink.test>" in mail and "alice@example.test" in mail and FP_A in mail
    assert "3 bounced deliveries" in mail and "spam.example: 3" in mail
    assert "resume_sender -e mail_user=alice" in mail
    prom = (host.tmp / "guard.prom").read_text()
    assert 'hm_sender_guard_bounced{identity="%s",address="alice@example.test"} 3' % cert in prom
    assert 'hm_sender_guard_queue_messages{queue="hold"} 1' in prom


def test_scan_does_not_report_twice_and_leaves_quiet_identities_alone(host):
    host.journal_entries = [quota(30, "login:bob+phone"), ident(20, "Q5", "login:alice+pc")]
    first = host.guard().scan()
    second = host.guard().scan()
    assert [s["identity"] for s in first["suspended"]] == ["login:bob+phone"]
    assert second["suspended"] == [] and not second["changed"]
    assert host.map("suspended_sasl") == {"bob+phone": maps.ACTION}
    assert len(host.mails) == 1 and "quota exceeded" in host.mails[0]


def test_resume_lifts_alarm_suspensions_releases_mail_and_forgets_the_old_events(host):
    host.journal_entries = [ident(40, "Q7", "login:bob+phone"), quota(30, "login:bob+phone")]
    host.queue = [queued("Q7", "bob+list@example.org")]
    host.guard().scan()
    assert host.held == ["Q7"]
    # Q7 held by the alarm; Q6 (bob's) and Q8 (alice's) held by someone else, for another reason.
    host.queue = [queued("Q6", "bob@example.test", "hold"), queued("Q7", "bob+list@example.org", "hold"),
                  queued("Q8", "alice@example.test", "hold")]
    assert host.guard().resume_user("bob", check=True)["released"] == 1
    result = host.guard().resume_user("bob")
    assert result["changed"] and result["removed"] == ["bob+phone"] and result["released"] == 1
    assert host.released == ["Q7"]
    assert host.guard().status()["state"]["held"] == {}
    assert host.map("suspended_sasl") == {}
    # The quota refusal before the resume no longer counts.
    later = host.guard()
    later.now = lambda: NOW + 1
    assert later.scan()["suspended"] == []
    # A second resume changes nothing.
    host.queue = []
    assert host.guard().resume_user("bob")["changed"] is False


# --------------------------------------------------- suspend / resume a user

def test_suspend_user_holds_every_identity_and_is_idempotent(host):
    host.queue = [queued("A1", "alice@example.test"), queued("A2", "alice+x@example.org"),
                  queued("A3", "alice@example.test", "hold"), queued("B1", "bob@example.test")]
    first = host.guard().suspend_user("alice")
    assert first == {"user": "alice", "addresses": ["alice@example.test", "alice@example.org"], "certificates": 1,
                     "already_suspended": False, "held": 2, "deleted": 0, "changed": True}
    assert host.map("suspended_senders") == {"alice@": maps.ACTION}
    assert host.held == ["A1", "A2"]
    host.queue = [dict(m, queue_name="hold") if m["queue_id"] in ("A1", "A2") else m for m in host.queue]
    second = host.guard().suspend_user("alice")
    assert second["changed"] is False and second["already_suspended"] and second["held"] == 0


def test_resume_user_releases_what_suspend_user_held_and_nothing_else(host):
    host.queue = [queued("A1", "alice@example.test"), queued("A0", "alice@example.test", "hold"),
                  queued("B1", "bob@example.test")]
    host.guard().suspend_user("alice")
    assert host.held == ["A1"]
    assert host.guard().status()["state"]["held"] == {"A1": "user:alice@"}
    host.queue = [queued("A1", "alice@example.test", "hold"), queued("A0", "alice@example.test", "hold"),
                  queued("B1", "bob@example.test")]
    result = host.guard().resume_user("alice")
    assert result["released"] == 1 and host.released == ["A1"]
    assert host.guard().status()["state"]["held"] == {}


def test_resume_forgets_held_records_of_mail_that_left_the_queue(host):
    host.queue = [queued("A1", "alice@example.test"), queued("B1", "bob@example.test")]
    host.guard().suspend_user("alice")
    host.guard().suspend_user("bob")
    host.queue = []  # both deleted by hand meanwhile
    assert host.guard().resume_user("alice")["released"] == 0
    assert host.guard().status()["state"]["held"] == {}
    assert host.released == []


def test_suspend_user_with_purge_deletes_the_queued_mail(host):
    host.queue = [queued("A1", "alice@example.test"), queued("A3", "alice@example.test", "hold"),
                  queued("B1", "bob@example.test")]
    result = host.guard().suspend_user("alice@example.test", purge=True)
    assert host.deleted == ["A1", "A3"] and result["deleted"] == 2
    assert host.map("suspended_senders") == {"alice@example.test": maps.ACTION}


def test_check_mode_changes_nothing(host):
    host.queue = [queued("A1", "alice@example.test")]
    result = host.guard().suspend_user("alice", check=True)
    assert result["changed"] and result["held"] == 1
    assert host.held == [] and not (host.tmp / "maps" / "suspended_senders").exists()


@pytest.mark.parametrize("name, text", [
    ("mallory", "unknown mail user"),
    ("alice@elsewhere.example", "mail_user must be"),
    ("alice+phone", "mail_user must be"),
    ("", "mail_user must be"),
    ("../etc", "mail_user must be"),
])
def test_bad_user_is_refused_and_nothing_changes(host, name, text):
    with pytest.raises(maps.GuardError, match=text):
        host.guard().suspend_user(name)
    with pytest.raises(maps.GuardError, match=text):
        host.guard().resume_user(name)
    assert os.listdir(str(host.tmp / "maps")) == []


def test_a_user_known_only_by_certificate_is_known(host):
    assert host.guard().suspend_user("carol")["certificates"] == 1


@pytest.mark.parametrize("change, text", [
    ({"max_bounced": 0}, "max_bounced must be a whole number"),
    ({"max_deferred": "50"}, "max_deferred must be a whole number"),
    ({"window_seconds": True}, "window_seconds"),
    ({"suspend_on_quota": "yes"}, "suspend_on_quota"),
    ({"domains": []}, "domains"),
    ({"admin": ""}, "admin must be set"),
])
def test_malformed_settings_are_named(host, change, text):
    config = json.loads(host.config_path.read_text())
    config.update(change)
    host.config_path.write_text(json.dumps(config))
    with pytest.raises(maps.GuardError, match=text):
        guard.load_config(str(host.config_path))


def test_cli_refuses_an_unknown_user_with_status_2(host, capsys, monkeypatch):
    monkeypatch.setattr(guard, "_system_user_exists", lambda name: False)
    monkeypatch.setattr(mailq, "read_queue", lambda: [])
    assert cli.main(["--config", str(host.config_path), "suspend", "--user", "mallory"]) == 2
    assert "unknown mail user 'mallory'" in capsys.readouterr().err
    assert os.listdir(str(host.tmp / "maps")) == []


# ---------------------------------------------------------- small parts

def test_postqueue_json_is_read_line_by_line():
    text = ('{"queue_name": "hold", "queue_id": "4F2A", "sender": "a@example.test", '
            '"recipients": [{"address": "x@sink.test"}]}\n\n'
            '{"queue_name": "deferred", "queue_id": "5B", "sender": "", "recipients": []}\n')
    assert mailq.parse_postqueue_json(text) == [
        {"queue_id": "4F2A", "queue_name": "hold", "sender": "a@example.test", "recipients": ["x@sink.test"]},
        {"queue_id": "5B", "queue_name": "deferred", "sender": "", "recipients": []}]
    with pytest.raises(ValueError, match="line 1"):
        mailq.parse_postqueue_json("not json\n")


def test_postsuper_gets_only_queue_ids(tmp_path):
    script = tmp_path / "postsuper"
    out = tmp_path / "out"
    script.write_text("#!/bin/sh\necho \"$@\" > %s\ncat >> %s\n" % (out, out))
    script.chmod(0o755)
    assert mailq.postsuper("-h", ["B2", "A1", "A1", "bad id;", ""], command=str(script)) == 2
    assert out.read_text() == "-h -\nA1\nB2\n"
    assert mailq.postsuper("-h", [], command=str(script)) == 0


def test_map_files_are_written_atomically_and_postmap_failure_is_reported(tmp_path):
    store = maps.Maps(str(tmp_path), str(tmp_path), postmap="/bin/false")
    with pytest.raises(maps.GuardError, match="postmap"):
        store.write("suspended_sasl", {"bob+phone": maps.ACTION})
    assert maps.parse_map((tmp_path / "suspended_sasl").read_text()) == {"bob+phone": maps.ACTION}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_metrics_escape_labels():
    stats = events.Stats('login:we"ird\\')
    text = report.metrics_text({stats.identity: stats}, [], 0, NOW)
    assert 'identity="login:we\\"ird\\\\"' in text
