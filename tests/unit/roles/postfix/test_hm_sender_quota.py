"""Per-identity sending quotas counted by the policy service (hm_sender_quota, issue 14)."""

import importlib.util
import io
import json
import multiprocessing
import os
import stat
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "..", "..", "..", "..", "roles", "postfix", "files")


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quota_mod = load("hm_sender_quota", os.path.join(FILES, "hm_sender_quota.py"))
policy = load("ccert_sender_policy", os.path.join(FILES, "ccert_sender_policy.py"))
sys.path.insert(0, FILES)
from hm_sender_guard import events  # noqa: E402  pylint: disable=wrong-import-position

FP_A = ":".join(["AB"] * 32)
DEFAULTS = {"messages_per_hour": 5, "messages_per_day": 8, "recipients_per_hour": 10, "recipients_per_day": 12}
QUOTA = {"defaults": DEFAULTS, "users": {"carol": {"messages_per_hour": 2}}}


class Clock(object):
    def __init__(self, now=1000000.0):
        self.now = now

    def __call__(self):
        return self.now


def store_at(tmp_path, clock=None):
    return quota_mod.QuotaStore(str(tmp_path / "quota.sqlite"), clock=clock or Clock())


def write_quota(tmp_path, data=None):
    data = QUOTA if data is None else data
    path = tmp_path / "sender_quota.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# ------------------------------------------------------------ the quota file

def test_parse_quota_merges_user_overrides_with_the_defaults():
    quota = quota_mod.parse_quota(json.dumps(QUOTA))
    assert quota.limits_for("login:bob+phone") == DEFAULTS
    carol = dict(DEFAULTS, messages_per_hour=2)
    assert quota.limits_for("login:carol+phone") == carol
    assert quota.limits_for("login:carol@example.test") == carol
    assert quota.limits_for("login:carol") == carol
    # A certificate's user is the local part of its address, not of the fingerprint.
    assert quota.limits_for("cert:" + FP_A, "carol@example.test") == carol
    assert quota.limits_for("cert:" + FP_A, "bob@example.test") == DEFAULTS
    # Only the exact user: carola is not carol.
    assert quota.limits_for("login:carola+phone") == DEFAULTS


@pytest.mark.parametrize("text,message", [
    ("{", "not valid JSON"),
    ("[]", "JSON object"),
    (json.dumps({"defaults": DEFAULTS, "extra": 1}), "unknown top-level key(s) extra"),
    (json.dumps({"users": {}}), "defaults must be an object"),
    (json.dumps({"defaults": dict(DEFAULTS, messages_per_hour=0)}), "defaults.messages_per_hour must be a whole number"),
    (json.dumps({"defaults": dict(DEFAULTS, messages_per_hour=-3)}), "defaults.messages_per_hour"),
    (json.dumps({"defaults": dict(DEFAULTS, messages_per_day=2.5)}), "defaults.messages_per_day"),
    (json.dumps({"defaults": dict(DEFAULTS, messages_per_day="10")}), "defaults.messages_per_day"),
    (json.dumps({"defaults": dict(DEFAULTS, messages_per_day=True)}), "defaults.messages_per_day"),
    (json.dumps({"defaults": {"messages_per_hour": 1}}), "defaults: missing messages_per_day"),
    (json.dumps({"defaults": DEFAULTS, "users": {"carol": {"per_minute": 3}}}), "users.carol: unknown key(s) per_minute"),
    (json.dumps({"defaults": DEFAULTS, "users": {"carol": {"messages_per_hour": 0}}}), "users.carol.messages_per_hour"),
    (json.dumps({"defaults": DEFAULTS, "users": {"carol": 5}}), "users.carol must be an object"),
    (json.dumps({"defaults": DEFAULTS, "users": {"Carol+x": {}}}), "is not a user name"),
    (json.dumps({"defaults": DEFAULTS, "users": []}), "users must be an object"),
])
def test_malformed_quota_files_are_refused_with_the_reason(text, message):
    with pytest.raises(quota_mod.QuotaError) as info:
        quota_mod.parse_quota(text)
    assert message in str(info.value)


def test_check_command_accepts_a_good_file_and_refuses_a_bad_one(tmp_path, capsys):
    good = write_quota(tmp_path)
    assert quota_mod.main(["hm_sender_quota.py", "--check", str(good)]) == 0
    assert "1 user override(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"defaults": dict(DEFAULTS, recipients_per_day=-1)}))
    assert quota_mod.main(["hm_sender_quota.py", "--check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "recipients_per_day" in err
    assert quota_mod.main(["hm_sender_quota.py", "--check", str(tmp_path / "missing.json")]) == 1
    # The policy service's own option (the role's validate: command) gives the same answers.
    assert policy.main(["ccert_sender_policy.py", "--check-quota", str(good)]) == 0
    assert policy.main(["ccert_sender_policy.py", "--check-quota", str(bad)]) == 1


# ------------------------------------------------------------ the counters

def test_messages_per_hour_refuses_beyond_the_limit_and_a_new_hour_starts_afresh(tmp_path):
    clock = Clock()
    store = store_at(tmp_path, clock)
    limits = dict(DEFAULTS, messages_per_hour=3, messages_per_day=5, recipients_per_day=100, recipients_per_hour=100)
    assert [store.charge("login:bob+pc", 1, limits) for dummy in range(4)] == [None, None, None, "messages-per-hour"]
    clock.now += 3599
    assert store.charge("login:bob+pc", 1, limits) == "messages-per-hour"
    clock.now += 1  # the hour that began with the first message has ended
    assert store.charge("login:bob+pc", 1, limits) is None
    assert store.charge("login:bob+pc", 1, limits) is None
    # Five today: the day window refuses although this hour has room.
    assert store.charge("login:bob+pc", 1, limits) == "messages-per-day"
    clock.now += 86400
    assert store.charge("login:bob+pc", 1, limits) is None


def test_recipients_count_the_recipients_of_each_message(tmp_path):
    store = store_at(tmp_path)
    assert store.charge("login:bob+pc", 6, DEFAULTS) is None
    assert store.charge("login:bob+pc", 5, DEFAULTS) == "recipients-per-hour"  # 11 > 10
    assert store.charge("login:bob+pc", 4, DEFAULTS) is None                    # 10
    counters = store.counters()["login:bob+pc"]
    assert counters["hour"]["recipients"] == 10 and counters["hour"]["messages"] == 2
    assert store.charge("login:bob+pc", 1, DEFAULTS) == "recipients-per-hour"


def test_a_refused_message_is_not_counted(tmp_path):
    store = store_at(tmp_path)
    limits = dict(DEFAULTS, messages_per_hour=2)
    assert store.charge("login:bob+pc", 1, limits) is None
    assert store.charge("login:bob+pc", 1, limits) is None
    before = store.counters()
    for dummy in range(5):
        assert store.charge("login:bob+pc", 1, limits) == "messages-per-hour"
    assert store.counters() == before
    assert before["login:bob+pc"]["day"]["messages"] == 2


def test_identities_are_counted_apart(tmp_path):
    store = store_at(tmp_path)
    limits = dict(DEFAULTS, messages_per_hour=1)
    assert store.charge("login:carol+phone", 1, limits) is None
    assert store.charge("login:carol+phone", 1, limits) == "messages-per-hour"
    assert store.charge("login:carol+tablet", 1, limits) is None
    assert store.charge("cert:" + FP_A, 1, limits) is None


def test_counts_survive_reopening_the_file(tmp_path):
    clock = Clock()
    limits = dict(DEFAULTS, messages_per_hour=3)
    first = store_at(tmp_path, clock)
    assert [first.charge("login:bob+pc", 2, limits) for dummy in range(2)] == [None, None]
    first.close()
    second = store_at(tmp_path, clock)
    assert second.counters()["login:bob+pc"]["hour"] == {"messages": 2, "recipients": 4, "ends": int(clock.now + 3600)}
    assert second.charge("login:bob+pc", 1, limits) is None
    assert second.charge("login:bob+pc", 1, limits) == "messages-per-hour"


def test_ended_windows_are_pruned(tmp_path):
    clock = Clock()
    store = store_at(tmp_path, clock)
    store.charge("login:old+pc", 1, DEFAULTS)
    store.close()
    clock.now += 86400
    fresh = store_at(tmp_path, clock)  # a new process prunes with its first message
    fresh.charge("login:new+pc", 1, DEFAULTS)
    rows = fresh._connect().execute("SELECT DISTINCT identity FROM windows").fetchall()
    assert rows == [("login:new+pc",)]


def test_the_counter_files_are_private_and_in_wal_mode(tmp_path):
    store = store_at(tmp_path)
    store.charge("login:bob+pc", 1, DEFAULTS)
    assert store._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for name in os.listdir(str(tmp_path)):
        if name.startswith("quota.sqlite"):
            assert stat.S_IMODE(os.stat(str(tmp_path / name)).st_mode) == 0o600, name


def _worker(path, count, queue):
    store = quota_mod.QuotaStore(path)
    limits = dict(DEFAULTS, messages_per_hour=50, messages_per_day=1000, recipients_per_hour=1000,
                  recipients_per_day=1000)
    results = [store.charge("login:bob+pc", 1, limits) for dummy in range(count)]
    store.close()
    queue.put(sum(1 for r in results if r is None))


def test_several_processes_share_the_counters_and_never_exceed_the_quota(tmp_path):
    path = str(tmp_path / "quota.sqlite")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(path, 20, queue)) for dummy in range(4)]
    for worker in workers:
        worker.start()
    accepted = [queue.get(timeout=60) for dummy in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # 80 tries against a quota of 50: exactly 50 counted, whatever the interleaving.
    assert sum(accepted) == 50
    assert quota_mod.QuotaStore(path).counters()["login:bob+pc"]["hour"]["messages"] == 50


def test_show_prints_the_running_windows(tmp_path, capsys):
    store = store_at(tmp_path, Clock(now=__import__("time").time()))
    store.charge("login:bob+pc", 3, DEFAULTS)
    store.close()
    assert quota_mod.main(["hm_sender_quota.py", "--show", str(tmp_path / "quota.sqlite")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["login:bob+pc"]["day"]["recipients"] == 3
    assert quota_mod.main(["hm_sender_quota.py", "--show", str(tmp_path / "none.sqlite")]) == 1


# ------------------------------------------------------------ inside the policy service

def eod(**attrs):
    base = {"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "queue_id": "Q1",
            "client_address": "10.0.0.9", "recipient_count": "1"}
    base.update(attrs)
    return "".join("%s=%s\n" % item for item in base.items()) + "\n"


def quotas_at(tmp_path, data=None):
    return policy.Quotas(policy.WatchedFile(str(write_quota(tmp_path, data)), quota_mod.parse_quota), store_at(tmp_path))


def test_policy_refuses_over_quota_with_the_marker_the_alarm_reads_and_logs_no_identity(tmp_path):
    quotas = quotas_at(tmp_path)
    certs_path = tmp_path / "relay_clientcerts"
    certs_path.write_text("%s carol@example.test\n" % FP_A)
    cert = dict(ccert_fingerprint=FP_A, ccert_subject="carol@example.test", sender="carol@example.test")
    stdin = io.StringIO("".join(eod(queue_id="Q%d" % n, **cert) for n in range(3)))
    stdout, lines = io.StringIO(), []
    policy.serve(stdin, stdout, policy.MapFile(str(certs_path)), log_identity=lines.append, quotas=quotas)
    answers = stdout.getvalue().split("\n\n")[:3]
    assert answers[:2] == ["action=DUNNO", "action=DUNNO"]
    assert answers[2] == ("action=450 4.7.1 Sending quota exceeded, try again later "
                          "(hm-quota messages-per-hour cert:%s)" % FP_A)
    assert [line.split(":")[0] for line in lines] == ["Q0", "Q1"]
    # The alarm's parser reads the refusal as Postfix logs it.
    logged = "Q2: reject: END-OF-MESSAGE from x[10.0.0.9]: %s; from=<carol@example.test>" % answers[2][7:]
    stats = events.count([events.Entry(10.0, "postfix/submissions/smtpd", logged)], since=0)
    assert stats["cert:" + FP_A].quota_rules == {"messages-per-hour": 1}


def test_policy_counts_only_at_the_end_of_a_message_and_not_without_an_identity(tmp_path):
    quotas = quotas_at(tmp_path)
    rcpt = eod(protocol_state="RCPT", sasl_username="bob+pc", sender="bob@example.test")
    stdin = io.StringIO(rcpt * 3 + eod(sasl_username="bob+pc", recipient_count="4") + eod())
    stdout = io.StringIO()
    policy.serve(stdin, stdout, policy.NoMap(), quotas=quotas)
    assert stdout.getvalue() == "action=DUNNO\n\n" * 5
    assert quotas.store.counters() == {"login:bob+pc": {
        "hour": {"messages": 1, "recipients": 4, "ends": quotas.store.counters()["login:bob+pc"]["hour"]["ends"]},
        "day": {"messages": 1, "recipients": 4, "ends": quotas.store.counters()["login:bob+pc"]["day"]["ends"]}}}


def test_policy_defers_when_the_quota_file_is_malformed_or_missing(tmp_path):
    bad = write_quota(tmp_path, {"defaults": dict(DEFAULTS, messages_per_hour=0)})
    quotas = policy.Quotas(policy.WatchedFile(str(bad), quota_mod.parse_quota), store_at(tmp_path))
    logged, stdout = [], io.StringIO()
    policy.serve(io.StringIO(eod(sasl_username="bob+pc")), stdout, policy.NoMap(), logged.append, quotas=quotas)
    assert stdout.getvalue() == "action=DEFER 4.3.5 Sending quota unavailable\n\n"
    assert "sending quota" in logged[0] and "messages_per_hour" in logged[0]
    os.remove(str(bad))
    stdout = io.StringIO()
    policy.serve(io.StringIO(eod(sasl_username="bob+pc")), stdout, policy.NoMap(), logged.append, quotas=quotas)
    assert stdout.getvalue() == "action=DEFER 4.3.5 Sending quota unavailable\n\n"


def test_policy_defers_when_the_counters_cannot_be_written(tmp_path):
    quota_file = policy.WatchedFile(str(write_quota(tmp_path)), quota_mod.parse_quota)
    store = quota_mod.QuotaStore(str(tmp_path / "missing-dir" / "quota.sqlite"))
    stdout = io.StringIO()
    policy.serve(io.StringIO(eod(sasl_username="bob+pc")), stdout, policy.NoMap(), [].append,
                 quotas=policy.Quotas(quota_file, store))
    assert stdout.getvalue() == "action=DEFER 4.3.5 Sending quota unavailable\n\n"


@pytest.mark.parametrize("argv", [
    ["p", "--quota=/q.json", "-"],                        # the counters' file missing
    ["p", "--quota-db=/q.sqlite", "-"],
    ["p", "--quota=/q.json", "--quota-db=/q.sqlite"],    # no map
    ["p", "--quota", "/q.json", "--quota-db=/q.sqlite", "-"],
    ["p", "--limit=3", "--quota-db=/q.sqlite", "-"],
])
def test_main_refuses_incomplete_quota_options(argv, capsys):
    assert policy.main(argv) == 2
    assert "--quota=QUOTA_FILE" in capsys.readouterr().err
