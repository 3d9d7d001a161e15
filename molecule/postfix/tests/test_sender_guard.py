"""Leaked-credential containment on 465/587 (issue 14), through the real Postfix.

The identity line with the queue ID, the per-identity quota (counted by the
policy service in SQLite, 450 4.7.1; refused messages not counted; the
counters kept over a restart of Postfix; postfwd, which counted them before,
retired on a host the previous version converged), the abuse alarm (hm-sender-guard.timer, every 10 s in this scenario)
suspending a certificate over its quota and an app password (one device:
``dave+phone``, while ``dave+tablet`` still sends) over its bounces, the
administrator's report at the sink, held mail, and the suspend/resume
playbooks (resume releases only what the guard held; --check changes
nothing). The sink refuses ``bounce*`` recipients (550) and defers
``defer*`` (451). Each platform runs the tests in this order.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hmtest import smtp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SINK_DIR = "/var/tmp/hm-sink"
GUARD = "/usr/local/sbin/hm-sender-guard"
QUOTA_MODULE = "/usr/local/lib/hardened-mailhost/hm_sender_quota.py"
QUOTA_DIR = "/var/lib/hardened-mailhost/quota"
QUOTA_DB = QUOTA_DIR + "/quota.sqlite"


def token():
    return uuid.uuid4().hex[:16]


def cert_files(ephemeral_dir, name):
    base = os.path.join(ephemeral_dir, "clients", name)
    return base + ".crt", base + ".key"


def fingerprint(ephemeral_dir, name):
    with open(cert_files(ephemeral_dir, name)[0], "rb") as handle:
        der = x509.load_pem_x509_certificate(handle.read()).public_bytes(Encoding.DER)
    return ":".join("%02X" % b for b in hashlib.sha256(der).digest())


def app_password(ephemeral_dir, instance, user, device="phone"):
    with open(os.path.join(ephemeral_dir, "app-%s-%s-%s" % (instance.name, user, device)), encoding="utf-8") as handle:
        return handle.read().strip()


def send_cert(instance, ephemeral_dir, device, rcpt, tok):
    cert, key = cert_files(ephemeral_dir, device)
    return smtp.attempt(instance.port(465), "carol@example.test", rcpt, tok, implicit_tls=True, cert=cert, key=key)


def send_login(instance, ephemeral_dir, user, rcpt, tok, device="phone"):
    login = ("%s+%s" % (user, device), app_password(ephemeral_dir, instance, user, device))
    return smtp.attempt(instance.port(587), "%s@example.test" % user, rcpt, tok, starttls=True, login=login)


def sink_file(instance, tok):
    proc = instance.run("grep", "-rlF", tok, SINK_DIR, check=False)
    return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def sink_text(instance, tok):
    name = sink_file(instance, tok)
    return instance.run("cat", name).stdout if name else ""


def status(instance):
    return json.loads(instance.run(GUARD, "status").stdout)


def queue(instance):
    out = instance.run("postqueue", "-j").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def run_playbook(instance, tmp_path, name, *extra, expect_ok=True):
    mailhosts = tmp_path / "mailhosts.yml"
    mailhosts.write_text("mailhosts:\n  hosts:\n    %s: {}\n" % instance.name)
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(ROOT, ".collections")
    env["ANSIBLE_ROLES_PATH"] = os.path.join(ROOT, "roles")
    env.setdefault("ANSIBLE_CONFIG", os.path.join(ROOT, "ansible.cfg"))
    # One line per message: the assertions read the playbook's own words.
    env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "json"
    proc = subprocess.run(
        [shutil.which("ansible-playbook") or "ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "-i", str(mailhosts), "--limit", instance.name, os.path.join(ROOT, "playbooks", name), *extra],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert (proc.returncode == 0) == expect_ok, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def quota_counters(instance):
    """The running quota windows, read on the host (as the counters' owner)."""
    return json.loads(instance.run("python3", QUOTA_MODULE, "--show", QUOTA_DB).stdout)


def changed_count(output):
    return int(re.search(r"changed=(\d+)", output.rpartition("PLAY RECAP")[2]).group(1))


# ------------------------------------------------------------------ tests

def test_identity_line_carries_the_queue_id_of_each_relayed_message(instance, ephemeral_dir):
    tok_cert, tok_login = token(), token()
    assert send_cert(instance, ephemeral_dir, "carol-tablet", "friend@sink.test", tok_cert).stage == "sent"
    assert send_login(instance, ephemeral_dir, "bob", "friend@sink.test", tok_login).stage == "sent"
    assert smtp.wait_for(lambda: sink_file(instance, tok_cert) and sink_file(instance, tok_login), timeout=30)
    journal = instance.run("journalctl", "-q", "--no-pager", "-o", "cat", "-t", "postfix/hm-identity").stdout
    for tok, identity in ((tok_cert, "cert:%s address=carol@example.test" % fingerprint(ephemeral_dir, "carol-tablet")),
                          (tok_login, "login:bob+phone")):
        # Postfix's own Received: header names the queue ID the message had here.
        queue_id = re.search(r"\(Postfix\) with E?SMTPS?A? id ([0-9A-F]+)", sink_text(instance, tok)).group(1)
        assert "%s: identity=%s client=" % (queue_id, identity) in journal, journal[-2000:]


def test_quota_defers_a_certificate_and_bounces_pile_up_for_an_app_password(instance, ephemeral_dir):
    # carol's quota is 4 messages an hour per device; carol-tablet sent one already.
    outcomes = [send_cert(instance, ephemeral_dir, "carol-phone", rcpt, token())
                for rcpt in ("defer-1@sink.test", "defer-2@sink.test", "ok-1@sink.test", "ok-2@sink.test",
                             "ok-3@sink.test", "ok-4@sink.test")]
    assert [o.stage for o in outcomes[:4]] == ["sent"] * 4, outcomes
    for out in outcomes[4:]:
        assert out.stage == "data" and out.code == 450 and "quota" in out.text, out
    # dave's app password on 587: three accepted messages the sink refuses.
    for n in range(3):
        out = send_login(instance, ephemeral_dir, "dave", "bounce-%d@sink.test" % n, token())
        assert out.stage == "sent", out


def test_quota_counters_are_the_policy_users_alone_and_survive_a_postfix_restart(instance, ephemeral_dir):
    cert_id = "cert:" + fingerprint(ephemeral_dir, "carol-phone")
    # The policy service runs as its own user, who alone reads and writes the counters.
    assert "user=hm-policy " in instance.run("postconf", "-M", "hm-ccert-policy/unix").stdout
    modes = instance.run("stat", "-c", "%n %U %G %a", "/var/lib/hardened-mailhost", QUOTA_DIR, QUOTA_DB,
                         "/etc/postfix/hardened/sender_quota.json").stdout.splitlines()
    assert modes == ["/var/lib/hardened-mailhost root root 755", QUOTA_DIR + " hm-policy hm-policy 700",
                     QUOTA_DB + " hm-policy hm-policy 600",
                     "/etc/postfix/hardened/sender_quota.json root hm-policy 640"], modes
    assert instance.run("runuser", "-u", "postfix", "--", "cat", QUOTA_DB, check=False).returncode != 0
    before = quota_counters(instance)
    # carol-phone tried six messages: four counted, the two refused were not.
    assert before[cert_id]["hour"]["messages"] == 4 and before[cert_id]["day"]["messages"] == 4, before
    # One recipient each: Postfix's recipient_count reaches the counters.
    assert before[cert_id]["hour"]["recipients"] == 4 and before[cert_id]["day"]["recipients"] == 4, before
    bob = before["login:bob+phone"]["day"]["messages"]
    assert bob >= 1, before
    instance.run("systemctl", "restart", "postfix")
    instance.run("sh", "-c", "for i in $(seq 60); do ss -ltn | grep -q ':587 ' && exit 0; sleep 0.5; done; exit 1")
    after = quota_counters(instance)
    assert after[cert_id] == before[cert_id], (before, after)
    # The next message of bob's phone counts on from where it was.
    tok = token()
    assert send_login(instance, ephemeral_dir, "bob", "friend@sink.test", tok).stage == "sent"
    assert quota_counters(instance)["login:bob+phone"]["day"]["messages"] == bob + 1


def test_postfwd_is_not_used_and_a_previous_versions_postfwd_is_retired(instance):
    # Postfix asks no postfwd (127.0.0.1:10040) any more.
    config = instance.run("postconf", "-M").stdout + instance.run("postconf", "-P").stdout
    assert "10040" not in config and "hm-ccert-policy" in config
    assert instance.run("sh", "-c", "ss -ltn | grep -q ':10040 '", check=False).returncode != 0
    assert instance.run("test", "-e", "/etc/postfix/hardened/postfwd.cf", check=False).returncode != 0
    installed = instance.run("dpkg-query", "-W", "-f", "${Status}", "postfwd", check=False).stdout
    if instance.platform == "debian12":
        # prepare_tasks.yml left it as the previous version did: stopped and
        # disabled by the converge, the package itself kept.
        assert installed == "install ok installed", installed
        assert instance.run("systemctl", "is-active", "postfwd", check=False).stdout.strip() == "inactive"
        assert instance.run("systemctl", "is-enabled", "postfwd", check=False).stdout.strip() != "enabled"
    else:
        # A fresh host never gets it.
        assert installed != "install ok installed", installed


def test_bad_quota_settings_are_refused_before_any_change(instance):
    watched = ["/etc/postfix/hardened/sender_quota.json", "/etc/postfix/master.cf"]
    before = instance.run("sha256sum", *watched).stdout
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"))
    bad = {"hardened_mailhost_mail_domains": ["example.test", "example.org"], "postfix_sender_guard_enabled": True,
           "postfix_quota_messages_per_hour": 0, "postfix_quota_recipients_per_day": -5,
           "postfix_quota_overrides": {"carol": {"messages_per_hour": -1}}}
    proc = subprocess.run(
        [shutil.which("ansible-playbook") or "ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "bad_mail_domains.yml"), "--limit", instance.name,
         "-e", json.dumps(bad)], env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "postfix_quota_messages_per_hour must be a whole number of at least 1." in out, out[-3000:]
    assert "postfix_quota_recipients_per_day must be a whole number of at least 1." in out, out[-3000:]
    assert "postfix_quota_overrides must map user names" in out and "Nothing was changed." in out, out[-3000:]
    assert "changed=0" in out, out[-3000:]
    assert instance.run("sha256sum", *watched).stdout == before
    # The check the role's template runs before a quota file replaces the live one.
    instance.run("sh", "-c", "printf '%s' '{\"defaults\": {\"messages_per_hour\": 0}}' > /tmp/bad-quota.json")
    check = instance.run("python3", "/usr/local/lib/hardened-mailhost/ccert_sender_policy.py", "--check-quota",
                         "/tmp/bad-quota.json", check=False)
    assert check.returncode == 1 and "quota file rejected" in check.stderr, check
    good = instance.run("python3", "/usr/local/lib/hardened-mailhost/ccert_sender_policy.py", "--check-quota",
                        "/etc/postfix/hardened/sender_quota.json", check=False)
    assert good.returncode == 0 and "1 user override(s)" not in good.stdout and "2 user override(s)" in good.stdout, good


def test_alarm_suspends_both_identities_holds_and_reports(instance, ephemeral_dir):
    cert_id = "cert:" + fingerprint(ephemeral_dir, "carol-phone")
    wanted = {cert_id, "login:dave+phone"}
    assert smtp.wait_for(lambda: wanted <= set(status(instance)["state"]["suspended"]), timeout=90, step=2), \
        status(instance)
    suspended = status(instance)["state"]["suspended"]
    assert "quota exceeded" in suspended[cert_id]["reasons"][0]
    assert "bounced" in suspended["login:dave+phone"]["reasons"][0]
    # The alarm suspended one device: the login map names it, not the user.
    assert list(status(instance)["maps"]["suspended_sasl"]) == ["dave+phone"]
    # New mail from both identities is refused (at RCPT: smtpd_delay_reject).
    out = send_cert(instance, ephemeral_dir, "carol-phone", "ok-5@sink.test", token())
    assert out.stage in ("mail", "rcpt") and out.code == 554 and "suspended" in out.text, out
    out = send_login(instance, ephemeral_dir, "dave", "ok@sink.test", token())
    assert out.stage in ("mail", "rcpt") and out.code == 554, out
    # carol-phone's deferred mail is on hold, nothing was deleted.
    held = [m for m in queue(instance) if m["sender"] == "carol@example.test"]
    assert sorted(m["queue_name"] for m in held) == ["hold", "hold"], held
    # Another device of the same user (a certificate, an app password) and another user still send.
    tok_tablet, tok_bob, tok_dave = token(), token(), token()
    assert send_cert(instance, ephemeral_dir, "carol-tablet", "friend@sink.test", tok_tablet).stage == "sent"
    assert send_login(instance, ephemeral_dir, "bob", "friend@sink.test", tok_bob).stage == "sent"
    out = send_login(instance, ephemeral_dir, "dave", "friend@sink.test", tok_dave, device="tablet")
    assert out.stage == "sent", out
    assert smtp.wait_for(lambda: sink_file(instance, tok_tablet) and sink_file(instance, tok_bob)
                         and sink_file(instance, tok_dave), timeout=30)
    # The administrator's reports, one per identity.
    reports = instance.run("grep", "-rlF", "sender suspended:", SINK_DIR, check=False).stdout.split()
    texts = [instance.run("cat", name).stdout for name in reports]
    assert len(texts) == 2, texts
    cert_report = next(t for t in texts if cert_id in t)
    assert "guard-admin@sink.test" in cert_report and "carol@example.test" in cert_report
    assert "put on hold: 2 message(s)" in cert_report and "resume_sender -e mail_user=carol" in cert_report
    assert "sink.test: 3" in next(t for t in texts if "login:dave+phone" in t)
    metrics = instance.run("cat", "/var/lib/hm-sender-guard/metrics.prom").stdout
    assert 'hm_sender_guard_bounced{identity="login:dave+phone",address=""} 3' in metrics


def test_unknown_user_is_refused_and_nothing_changes(instance, tmp_path):
    before = status(instance)
    output = run_playbook(instance, tmp_path, "suspend_sender.yml", "-e", "mail_user=mallory", expect_ok=False)
    assert "unknown mail user 'mallory'" in output
    assert status(instance) == before


def test_resume_playbook_lifts_the_alarm_and_releases_only_what_the_guard_held(instance, ephemeral_dir, tmp_path):
    # One more of carol's messages, deferred by the sink and put on hold by hand (another reason).
    tok = token()
    assert send_cert(instance, ephemeral_dir, "carol-tablet", "defer-by-hand@sink.test", tok).stage == "sent"
    assert smtp.wait_for(lambda: [m for m in queue(instance) if m["recipients"][0]["address"] == "defer-by-hand@sink.test"
                                  and m["queue_name"] == "deferred"], timeout=60, step=2), queue(instance)
    by_hand = next(m["queue_id"] for m in queue(instance) if m["recipients"][0]["address"] == "defer-by-hand@sink.test")
    instance.run("postsuper", "-h", by_hand)
    output = run_playbook(instance, tmp_path, "resume_sender.yml", "-e", "mail_user=carol")
    assert "1 suspension(s) lifted; 2 held message(s) released" in output
    assert [m["queue_id"] for m in queue(instance) if m["sender"] == "carol@example.test"
            and m["queue_name"] == "hold"] == [by_hand]
    tok = token()
    # The quota still counts this hour: carol-phone is refused with 4xx (the
    # alarm may then suspend it again: a quota refusal after the resume is new).
    out = send_cert(instance, ephemeral_dir, "carol-phone", "friend@sink.test", tok)
    assert out.stage == "data" and out.code == 450, out
    out = send_login(instance, ephemeral_dir, "dave", "friend@sink.test", token())
    assert out.stage in ("mail", "rcpt") and out.code == 554, out


def test_suspend_playbook_in_check_mode_changes_nothing(instance, tmp_path):
    # The alarm (every 10 s here) may rightly suspend carol's phone again for
    # the quota refusal the resume test provoked; it must not act between the
    # two snapshots, or its change would be taken for the playbook's.
    instance.run("systemctl", "stop", "hm-sender-guard.timer")
    try:
        instance.run("sh", "-c", "for i in $(seq 120); do systemctl is-active -q hm-sender-guard.service || exit 0;"
                     " sleep 0.5; done; exit 1")
        before_status, before_queue = status(instance), queue(instance)
        maps_before = instance.run("sh", "-c", "ls -l --time-style=+%s.%N /etc/postfix/hardened/suspended_*").stdout
        output = run_playbook(instance, tmp_path, "suspend_sender.yml", "-e", "mail_user=carol", "--check")
        assert "carol: suspended" in output and changed_count(output) == 1
        assert status(instance) == before_status
        # Same messages, the same ones on hold (deferred mail may move to active and back meanwhile).
        assert sorted((m["queue_id"], m["queue_name"] == "hold") for m in queue(instance)) == \
            sorted((m["queue_id"], m["queue_name"] == "hold") for m in before_queue)
        assert instance.run("sh", "-c", "ls -l --time-style=+%s.%N /etc/postfix/hardened/suspended_*").stdout == maps_before
    finally:
        instance.run("systemctl", "start", "hm-sender-guard.timer")


def test_suspend_playbook_purges_and_a_second_run_changes_nothing(instance, ephemeral_dir, tmp_path):
    output = run_playbook(instance, tmp_path, "suspend_sender.yml", "-e", "mail_user=carol", "-e", "purge=true")
    # The two the resume released and the one held by hand.
    assert "carol: suspended (2 certificate(s), every app password); 0 queued message(s) held, 3 deleted" in output
    assert [m for m in queue(instance) if m["sender"] == "carol@example.test"] == []
    out = send_cert(instance, ephemeral_dir, "carol-tablet", "friend@sink.test", token())
    assert out.stage in ("mail", "rcpt") and out.code == 554, out
    again = run_playbook(instance, tmp_path, "suspend_sender.yml", "-e", "mail_user=carol", "-e", "purge=true")
    assert "carol: already suspended" in again and changed_count(again) == 0
    # The same resume on the host (the playbook's was proven above).
    assert json.loads(instance.run(GUARD, "resume", "--user", "carol").stdout)["removed"]
    tok = token()
    assert send_cert(instance, ephemeral_dir, "carol-tablet", "friend@sink.test", tok).stage == "sent"
    assert smtp.wait_for(lambda: sink_file(instance, tok), timeout=30)
