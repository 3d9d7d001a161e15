#!/usr/bin/env python3
"""Benchmark: the cost of the sender guard's policy path on 587 (issue 14).

With the postfix role's sender guard in the path (the quotas counted by the
policy service at the end of every message, in the same request that logs the
identity line; the suspension maps before the sender checks), N messages from S concurrent authenticated sessions (default 200 from
20) go to 127.0.0.1, once with the guard ON and once OFF; the runs are
interleaved (OFF, ON, ON, OFF, ...) --rounds times, and the figures are:

* throughput (messages a second, first connection to last QUIT);
* latency of every RCPT TO and of every end of DATA (the final ".") as the
  client sees it: p50 and p99, and the added latency ON - OFF. (With
  ``smtpd_delay_reject`` the sender restrictions, the suspension maps among
  them, run at RCPT TO; the quota is counted at the end of DATA.)
* the machine's load: load average and the share of CPU time busy (all
  cores, from /proc/stat) during each run, since the machine may be shared.

Goal (issue 14): p99 added <= 5 ms, throughput ON >= 0.9 x OFF.

In one bounded run it:

1. starts one systemd-booted container ``hm-bench-policy`` from
   ``localhost/hardened-mailhost-base:<release>`` on a network of its own,
   22 and 587 published on 127.0.0.1 (as the Molecule scenarios do), with a
   host-side apt cache under ``$HM_CACHE_DIR/apt/hm-bench-policy/``;
2. prepares it with ``molecule/common/prepare.yml`` plus S users;
3. converges the ca (on the controller), postfix and dovecot roles (SASL and
   app passwords through Dovecot, relayed mail to ``bench.test`` discarded
   by Postfix's ``discard:`` transport so that delivery costs nothing) with
   the guard ON, then again with it OFF, and keeps both ``master.cf`` files
   (they are the only difference: ON adds the suspension maps and the
   policy service's ``--quota`` options); between runs ``master.cf`` is
   swapped and Postfix reloaded, the alarm timer started (ON) or stopped
   (OFF);
4. before the timed runs, proves the path: a canary identity with a quota of
   one message an hour gets 450 for its second message with the guard ON,
   and 250 with it OFF;
5. after the timed runs, asks the policy service alone (guard ON) from inside
   the container on its own socket (``private/hm-ccert-policy``), as smtpd
   asks it at the end of a message (each connection is one spawned policy
   process; every request is counted in the quota database), on one
   connection and on as many as the sessions (one untimed request on each
   connection first: the spawn of the process is not a request's cost).

After every switch of master.cf one untimed warm-up run starts the new smtpd
and policy processes, so that neither side of the comparison pays for
process start-up (run 4 showed the ON side paying for it).

Until run 3 the quotas were Debian's postfwd (its own daemon on
127.0.0.1:10040, measured alone the same way); see docs/benchmarks/policy.md.

Every subprocess has a timeout, every session a socket timeout, and the whole
run stops after --max-seconds. The container, the network and the scratch
folder (CA, app passwords) are removed at the end, also on failure or Ctrl-C,
unless --keep. Logs of the ansible-playbook runs go to
``$HM_CACHE_DIR/logs/policy_bench/`` (0600).

    . scripts/env.sh && python benchmarks/policy.py [--release debian13] [--rounds 2] [--json out.json]
"""

import argparse
import datetime
import glob
import json
import os
import platform
import secrets
import shutil
import signal
import smtplib
import ssl
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_hosts  # noqa: E402  (shared benchmark helpers)
from many_hosts import Deadline, Failure, run, write_private  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "hm-bench-policy"
NETWORK = "hm-bench-policy"
LABEL = "hardened-mailhost-bench=policy"
PORTS = (22, 587)
DOMAIN = "example.test"
SINK = "bench.test"
DEVICE = "bench"
CANARY = "canary"
GOAL_P99_MS = 5.0
GOAL_THROUGHPUT = 0.9
MAX_MESSAGES = 2000
MAX_SESSIONS = 50

PREPARE_TASKS = """\
---
- name: Create the benchmark's mail users
  ansible.builtin.user:
    name: "{{ item }}"
    shell: /usr/sbin/nologin
    create_home: true
  loop: "{{ hm_bench_users }}"
"""

CONVERGE = """\
---
- name: Client CA on the controller
  hosts: all
  gather_facts: true
  become: true
  roles:
    - role: hardened.mailhost.ca

- name: Mail with or without the sender guard
  hosts: all
  gather_facts: false
  become: true
  vars:
    postfix_sender_guard_enabled: "{{ hm_bench_guard | bool }}"
  roles:
    - role: hardened.mailhost.postfix
    - role: hardened.mailhost.dovecot
  post_tasks:
    - name: Give every user's benchmark device an app password
      hardened.mailhost.app_password:
        devices: "{{ hm_bench_users | map('community.general.dict_kv', 'user')
                     | map('combine', {'device': 'bench'}) | list }}"
      register: __hm_app
      no_log: true

    - name: Keep the new app passwords on the controller (0600)
      ansible.builtin.copy:
        content: "{{ __hm_app.passwords | default({}) | to_json }}"
        dest: "{{ hm_bench_work }}/app-passwords-{{ hm_bench_guard }}.json"
        mode: "0600"
      delegate_to: localhost
      become: false
      no_log: true

    - name: Keep this master.cf for the timed runs
      ansible.builtin.copy:
        src: /etc/postfix/master.cf
        dest: "/root/master.cf.{{ 'on' if hm_bench_guard | bool else 'off' }}"
        remote_src: true
        mode: "0644"
"""


def apt_cache(release):
    return os.path.join(os.environ["HM_CACHE_DIR"], "apt", NAME, release)


def seed_apt_cache(release):
    """Hard-link .deb files other caches of the same release hold (apt checks their hashes)."""
    archives = os.path.join(apt_cache(release), "archives")
    for deb in glob.glob(os.path.join(os.environ["HM_CACHE_DIR"], "apt", "*", release + "*", "archives", "*.deb")):
        target = os.path.join(archives, os.path.basename(deb))
        if not os.path.exists(target):
            try:
                os.link(deb, target)
            except OSError:
                pass


def podman_port(port):
    _rc, out, _err = run(["podman", "port", NAME, "%d/tcp" % port], 30)
    return int(out.strip().splitlines()[0].rsplit(":", 1)[1])


def machine():
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as handle:
        mem_kb = int(handle.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def cpu_times():
    """(busy, total) jiffies of all cores together."""
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def percentile(values, share):
    """Nearest-rank percentile (share in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(round(share * len(ordered) + 0.4999)))
    return ordered[min(rank, len(ordered)) - 1]


# ------------------------------------------------------------------ the host
def inventory(work, ssh_port, users):
    data = {"all": {"hosts": {NAME: {
        "ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": ssh_port,
        "ansible_user": "root", "ansible_ssh_private_key_file": os.path.join(work, "hm_admin_key"),
        "ansible_ssh_common_args": ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
                                    " -o ControlMaster=auto -o ControlPersist=120s"),
        "hardened_ca_dir": os.path.join(work, "ca"),
        "hardened_ca_passphrase": secrets.token_urlsafe(24),
        "ca_organization": "Policy Bench",
        "hardened_mailhost_mail_domains": [DOMAIN],
        "hm_bench_users": users,
        "hm_bench_work": work,
        "postfix_submission_enabled": True,
        "postfix_sasl_enabled": True,
        "postfix_milter_strict_sandbox": False,
        "postfix_mailbox_transport": "lmtp:unix:private/dovecot-lmtp",
        "postfix_transport_maps": [{"domain": SINK, "nexthop": "discard:"}],
        # Every session arrives from the podman gateway: anvil's per-client
        # limits must not be what is measured.
        "postfix_client_connection_count_limit": 200,
        "postfix_client_connection_rate_limit": 100000,
        "postfix_client_message_rate_limit": 100000,
        "postfix_client_recipient_rate_limit": 100000,
        "postfix_client_new_tls_session_rate_limit": 100000,
        "postfix_client_auth_rate_limit": 100000,
        # Quotas no benchmark identity reaches; the canary's is one message an hour.
        "postfix_quota_messages_per_hour": 100000,
        "postfix_quota_messages_per_day": 1000000,
        "postfix_quota_recipients_per_hour": 1000000,
        "postfix_quota_recipients_per_day": 10000000,
        "postfix_quota_overrides": {CANARY: {"messages_per_hour": 1}},
        "postfix_alarm_suspend_on_quota": False,
        "dovecot_domain": DOMAIN,
        "dovecot_postfix_sasl": True,
        "dovecot_postfix_lmtp": True,
        "dovecot_app_passwords": True,
    }}}}
    path = os.path.join(work, "inventory.yml")
    write_private(path, json.dumps(data, indent=1))  # JSON is YAML
    return path


def collection_tree(ref, work):
    """(tree, collections path, description): the checkout (ref 'worktree') or ``git archive`` of ref."""
    if ref == "worktree":
        _rc, head, _err = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], 30)
        _rc, dirty, _err = run(["git", "-C", ROOT, "status", "--porcelain", "--", "roles", "plugins"], 30)
        return ROOT, os.path.join(ROOT, ".collections"), "worktree on %s%s" % (
            head.strip(), " with uncommitted changes in roles/plugins" if dirty.strip() else "")
    _rc, commit, _err = run(["git", "-C", ROOT, "rev-parse", "--verify", ref + "^{commit}"], 30)
    commit = commit.strip()
    tree = os.path.join(work, "tree")
    os.mkdir(tree)
    archive = os.path.join(work, "tree.tar")
    run(["git", "-C", ROOT, "archive", "--format=tar", "-o", archive, commit], 120)
    run(["tar", "-xf", archive, "-C", tree], 120)
    os.unlink(archive)
    collections = os.path.join(work, "collections", "ansible_collections")
    farm = os.path.join(ROOT, ".collections", "ansible_collections")
    os.makedirs(os.path.join(collections, "hardened"))
    for namespace in os.listdir(farm):
        if namespace != "hardened":
            os.symlink(os.path.realpath(os.path.join(farm, namespace)), os.path.join(collections, namespace))
    os.symlink(tree, os.path.join(collections, "hardened", "mailhost"))
    return tree, os.path.dirname(collections), "commit %s (%s)" % (commit[:12], ref)


def playbook(label, state, playbook_path, deadline, extra=()):
    logs = os.path.join(os.environ["HM_CACHE_DIR"], "logs", "policy_bench")
    os.makedirs(logs, mode=0o700, exist_ok=True)
    log = os.path.join(logs, "%s.log" % label)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": os.path.join(state["tree"], "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": state["collections"],
        "ANSIBLE_ROLES_PATH": os.path.join(state["tree"], "roles"),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_PIPELINING": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "MOLECULE_EPHEMERAL_DIRECTORY": state["work"],
        "MOLECULE_SCENARIO_DIRECTORY": state["work"],
    })
    cmd = ["ansible-playbook", "-i", state["inventory"], playbook_path] + list(extra)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.monotonic()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        rc, _out, _err = run(cmd, deadline.left(1800), check=False, env=env, stdout=handle)
    if rc != 0:
        with open(log, encoding="utf-8") as handle:
            tail = handle.read()[-4000:]
        raise Failure("%s failed (rc %d), log %s:\n%s" % (label, rc, log, tail))
    return round(time.monotonic() - start, 1)


def in_container(script, deadline, cap=120):
    return run(["podman", "exec", NAME, "/bin/sh", "-c", script], deadline.left(cap))[1]


def switch(on, deadline, alarm=True):
    """Put the guard ON or OFF: master.cf (quota options, suspension maps) and the alarm
    timer (kept stopped when ``alarm`` is false: --without-alarm)."""
    units = "hm-sender-guard.timer"
    start = on and alarm
    in_container("set -e; cp /root/master.cf.%s /etc/postfix/master.cf; systemctl %s %s; postfix reload >/dev/null 2>&1;"
                 " sleep 2" % ("on" if on else "off", "start" if start else "stop", units), deadline)


# ------------------------------------------------------------------ the client
def tls_context():
    context = ssl.create_default_context()
    # The host's self-signed certificate: the benchmark measures the policy path, not PKI.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def message(sender, rcpts, number):
    return ("From: <%s>\r\nTo: %s\r\nSubject: policy benchmark %d\r\nMessage-ID: <%s@%s>\r\n\r\n"
            "Benchmark message %d.\r\n" % (sender, ", ".join("<%s>" % r for r in rcpts), number,
                                            secrets.token_hex(8), DOMAIN, number))


class Session(threading.Thread):
    """One authenticated session sending its share of the messages."""

    def __init__(self, port, user, password, count, rcpts, barrier, timeout):
        super().__init__(daemon=True)
        self.port, self.user, self.password = port, user, password
        self.count, self.rcpts, self.barrier, self.timeout = count, rcpts, barrier, timeout
        self.rcpt_ms, self.data_ms, self.errors, self.sent = [], [], [], 0

    def run(self):
        sender = "%s@%s" % (self.user, DOMAIN)
        try:
            self.barrier.wait(timeout=self.timeout)
            with smtplib.SMTP("127.0.0.1", self.port, timeout=self.timeout) as smtp:
                smtp.ehlo("bench.client.test")
                smtp.starttls(context=tls_context())
                smtp.ehlo("bench.client.test")
                smtp.login("%s+%s" % (self.user, DEVICE), self.password)
                for number in range(self.count):
                    code, text = smtp.mail(sender)
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, text)
                    rcpts = ["r%d-%d@%s" % (number, i, SINK) for i in range(self.rcpts)]
                    for rcpt in rcpts:
                        start = time.perf_counter()
                        code, text = smtp.rcpt(rcpt)
                        self.rcpt_ms.append((time.perf_counter() - start) * 1000)
                        if code != 250:
                            raise smtplib.SMTPResponseException(code, text)
                    code, text = smtp.docmd("DATA")
                    if code != 354:
                        raise smtplib.SMTPResponseException(code, text)
                    body = message(sender, rcpts, number).encode("ascii") + b".\r\n"
                    start = time.perf_counter()
                    smtp.send(body)
                    code, text = smtp.getreply()
                    self.data_ms.append((time.perf_counter() - start) * 1000)
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, text)
                    self.sent += 1
        except (OSError, smtplib.SMTPException, threading.BrokenBarrierError) as exc:
            self.errors.append("%s: %s" % (self.user, str(exc)[:300]))


CPU_PROBE = r"""
import os
def ticks(pid):
    try:
        with open("/proc/%s/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0
def name(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""
groups = {"policy_py": 0, "smtpd": 0}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        cmd = name(pid)
        key = ("policy_py" if "ccert_sender_policy" in cmd else "smtpd" if cmd.startswith("smtpd") else None)
        if key:
            groups[key] += ticks(pid)
usage = None
for path, scale in (("/sys/fs/cgroup/cpu.stat", None), ("/sys/fs/cgroup/cpuacct/cpuacct.usage", 1000),
                    ("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", 1000)):
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        continue
    usage = int(dict(line.split() for line in text.splitlines())["usage_usec"]) if scale is None else int(text) // scale
    break
if usage is None:
    # No cgroup file in sight: every live process of the container (ended ones are not counted).
    usage = sum(ticks(pid) for pid in os.listdir("/proc") if pid.isdigit()) * 1000000 // os.sysconf("SC_CLK_TCK")
print(usage, groups["policy_py"], groups["smtpd"], os.sysconf("SC_CLK_TCK"))
"""


def container_cpu(deadline):
    """(container CPU µs since start, policy ticks, smtpd ticks of live processes, ticks/s)."""
    out = run(["podman", "exec", "-i", NAME, "python3", "-c", CPU_PROBE], deadline.left(60))[1]
    return [int(x) for x in out.split()]


PROBE = r"""
import json, socket, sys, threading, time
count, conns = int(sys.argv[1]), int(sys.argv[2])
request = ("request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\n"
           "client_address=10.88.0.1\nclient_name=unknown\nsasl_method=PLAIN\nsasl_username=%s\n"
           "sender=%s@example.test\nrecipient=r@bench.test\nrecipient_count=2\nqueue_id=%s\nsize=400\n\n")
times, errors = [], []
def worker(n):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect("/var/spool/postfix/private/hm-ccert-policy")
    data = sock.makefile("rwb")
    # One request first, not timed: master(8) spawns the process on connect (Python start-up).
    user = "probe%02d" % n
    data.write((request % (user + "+bench", user, "WARM%d" % n)).encode()); data.flush()
    while data.readline() not in (b"\n", b""):
        pass
    for i in range(count // conns):
        user = "probe%02d" % n
        start = time.perf_counter()
        data.write((request % (user + "+bench", user, "PROBE%d%d" % (n, i))).encode()); data.flush()
        reply = b""
        while not reply.endswith(b"\n\n"):
            line = data.readline()
            if not line:
                errors.append("closed"); return
            reply += line
        times.append((time.perf_counter() - start) * 1000)
        if b"action=DUNNO" not in reply:
            errors.append(reply.decode()[:100])
    sock.close()
threads = [threading.Thread(target=worker, args=(n,)) for n in range(conns)]
t0 = time.perf_counter()
[t.start() for t in threads]; [t.join(60) for t in threads]
wall = time.perf_counter() - t0
times.sort()
print(json.dumps({"requests": len(times), "connections": conns, "wall_s": round(wall, 3),
                  "p50_ms": round(times[len(times) // 2], 2), "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 2),
                  "errors": errors[:3]}))
"""


def probe_policy(deadline, count, conns):
    """The policy service alone (quota counted), asked from inside the container as smtpd asks it
    at the end of a message."""
    out = run(["podman", "exec", "-i", NAME, "python3", "-c", PROBE, str(count), str(conns)], deadline.left(120))[1]
    return json.loads(out.strip().splitlines()[-1])


def one_run(label, port, users, passwords, args, deadline=None):
    per = [args.messages // args.sessions + (1 if i < args.messages % args.sessions else 0)
           for i in range(args.sessions)]
    barrier = threading.Barrier(args.sessions + 1)
    sessions = [Session(port, users[i], passwords[users[i]], per[i], args.rcpts, barrier, args.session_timeout)
                for i in range(args.sessions)]
    for session in sessions:
        session.start()
    load_before = os.getloadavg()[0]
    box_before = container_cpu(deadline) if deadline else None
    cpu_before = cpu_times()
    barrier.wait(timeout=args.session_timeout)
    start = time.perf_counter()
    for session in sessions:
        session.join(timeout=args.session_timeout * 4)
    wall = time.perf_counter() - start
    cpu_after = cpu_times()
    box_after = container_cpu(deadline) if deadline else None
    if any(session.is_alive() for session in sessions):
        raise Failure("%s: a session did not finish within %d s" % (label, args.session_timeout * 4))
    rcpt = [x for s in sessions for x in s.rcpt_ms]
    data = [x for s in sessions for x in s.data_ms]
    errors = [e for s in sessions for e in s.errors]
    sent = sum(s.sent for s in sessions)
    busy = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
    result = {"label": label, "sent": sent, "errors": errors[:5], "error_count": len(errors),
              "wall_s": round(wall, 3), "msgs_per_s": round(sent / wall, 2) if wall else 0.0,
              "rcpt_p50_ms": round(percentile(rcpt, 0.50), 2) if rcpt else None,
              "rcpt_p99_ms": round(percentile(rcpt, 0.99), 2) if rcpt else None,
              "data_p50_ms": round(percentile(data, 0.50), 2) if data else None,
              "data_p99_ms": round(percentile(data, 0.99), 2) if data else None,
              "rcpt_samples": len(rcpt), "data_samples": len(data),
              "load1_before": round(load_before, 2), "load1_after": round(os.getloadavg()[0], 2),
              "cpu_busy_pct": round(100 * busy, 1)}
    if box_before and sent:
        tck = box_after[3]
        # Container CPU per message (every process in it), and the parts of the live
        # policy-service and smtpd processes (a process that ended is not counted).
        result["box_cpu_ms_per_msg"] = round((box_after[0] - box_before[0]) / 1000.0 / sent, 2)
        for index, key in ((1, "policy_py"), (2, "smtpd")):
            result["%s_cpu_ms_per_msg" % key] = round(max(0, box_after[index] - box_before[index]) * 1000.0 / tck / sent, 2)
    result["_rcpt"], result["_data"] = rcpt, data
    print("%-4s %3d sent in %6.2f s = %6.2f msg/s; RCPT p50 %6.2f p99 %7.2f ms; end of DATA p50 %6.2f p99 %7.2f ms;"
          " CPU busy %5.1f %%, load %.2f; container CPU %s ms/msg (policy service %s)%s" % (
              label, sent, wall, result["msgs_per_s"], result["rcpt_p50_ms"] or 0, result["rcpt_p99_ms"] or 0,
              result["data_p50_ms"] or 0, result["data_p99_ms"] or 0, result["cpu_busy_pct"], load_before,
              result.get("box_cpu_ms_per_msg"), result.get("policy_py_cpu_ms_per_msg"),
              ("; %d errors, first: %s" % (len(errors), errors[0])) if errors else ""), flush=True)
    return result


def canary(port, password, expect_refusal):
    """Two messages from the canary (quota: one an hour): the codes of the two end-of-DATA replies."""
    sender = "%s@%s" % (CANARY, DOMAIN)
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo("bench.client.test")
        smtp.starttls(context=tls_context())
        smtp.ehlo("bench.client.test")
        smtp.login("%s+%s" % (CANARY, DEVICE), password)
        for number in range(2):
            smtp.mail(sender)
            smtp.rcpt("canary@%s" % SINK)
            smtp.docmd("DATA")
            smtp.send(message(sender, ["canary@%s" % SINK], number).encode("ascii") + b".\r\n")
            codes.append(smtp.getreply()[0])
            smtp.rset()
    ok = (codes[0] == 250 or expect_refusal) and (codes[1] == 450 if expect_refusal else codes == [250, 250])
    if not ok:
        raise Failure("canary with the guard %s: end-of-DATA replies %s (expected %s)"
                      % ("ON" if expect_refusal else "OFF", codes, "a 450 for the second" if expect_refusal
                         else "250 and 250"))
    return codes


# ------------------------------------------------------------------ the whole
def benchmark(args, deadline, state):
    image = "localhost/hardened-mailhost-base:%s" % args.release
    users = ["bench%02d" % i for i in range(1, args.sessions + 1)] + [CANARY]
    state["report"] = report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "release": args.release, "messages": args.messages, "sessions": args.sessions,
        "rcpts_per_message": args.rcpts, "rounds": args.rounds,
        "alarm_timer_in_on_runs": not args.without_alarm, "load_before": [round(x, 2) for x in os.getloadavg()]}
    run(["podman", "image", "exists", image], 60)
    _rc, out, _err = run(["podman", "ps", "-a", "--filter", "label=" + LABEL, "--format", "{{.Names}}"], 60)
    if out.split():
        raise Failure("a container of another policy benchmark exists (%s): wait for it, or remove a kept one with "
                      "`podman rm -f %s; podman network rm %s`" % (out.strip(), NAME, NETWORK))
    if run(["podman", "network", "exists", NETWORK], 60, check=False)[0] != 0:
        run(["podman", "network", "create", NETWORK], 60)
    state["network"] = True
    state["work"] = work = tempfile.mkdtemp(prefix="hm-bench-policy-")
    os.chmod(work, 0o700)
    state["tree"], state["collections"], report["collection"] = collection_tree(args.ref, work)
    write_private(os.path.join(work, "prepare_tasks.yml"), PREPARE_TASKS)
    write_private(os.path.join(work, "converge.yml"), CONVERGE)

    t0 = time.monotonic()
    cache = apt_cache(args.release)
    for sub in ("archives/partial", "lists/partial"):
        os.makedirs(os.path.join(cache, sub), exist_ok=True)
    seed_apt_cache(args.release)
    cmd = ["podman", "run", "-d", "--name", NAME, "--label", LABEL, "--hostname", "bench-policy." + DOMAIN,
           "--network", NETWORK]
    for port in PORTS:
        cmd += ["--publish", "127.0.0.1::%d" % port]
    cmd += ["--volume", "%s/archives:/var/cache/apt/archives:rw" % cache,
            "--volume", "%s/lists:/var/lib/apt/lists:rw" % cache, image, "/lib/systemd/systemd"]
    state["created"] = True
    run(cmd, deadline.left(180))
    state["inventory"] = inventory(work, podman_port(22), users)
    smtp_port = podman_port(587)
    playbook("prepare", state, os.path.join(state["tree"], "molecule", "common", "prepare.yml"), deadline)
    report["prepare_s"] = round(time.monotonic() - t0, 1)
    print("container started and prepared in %.0f s" % report["prepare_s"], flush=True)
    converge = os.path.join(work, "converge.yml")
    report["converge_on_s"] = playbook("converge-on", state, converge, deadline, ["-e", "hm_bench_guard=true"])
    report["converge_off_s"] = playbook("converge-off", state, converge, deadline, ["-e", "hm_bench_guard=false"])
    print("converged ON in %.0f s, OFF in %.0f s" % (report["converge_on_s"], report["converge_off_s"]), flush=True)
    with open(os.path.join(work, "app-passwords-true.json"), encoding="utf-8") as handle:
        passwords = json.load(handle)
    # "user+device" -> password, as the module returns them; keyed by user here.
    passwords = {login.partition("+")[0]: secret for login, secret in passwords.items()}
    missing = [u for u in users if u not in passwords]
    if missing:
        raise Failure("no app password came back for %s" % ", ".join(missing))
    report["versions"] = in_container(
        "dpkg-query -W -f '${Package} ${Version}\\n' postfix dovecot-core python3 libsqlite3-0", deadline).split("\n")

    def switch_to(on):
        switch(on, deadline, alarm=not args.without_alarm)

    switch_to(False)
    report["canary_off"] = canary(smtp_port, passwords[CANARY], expect_refusal=False)
    switch_to(True)
    report["canary_on"] = canary(smtp_port, passwords[CANARY], expect_refusal=True)
    print("canary: guard OFF %s, ON %s (the quota is in the ON path)" % (report["canary_off"], report["canary_on"]),
          flush=True)

    # A warm-up run of each, not counted (TLS session caches, Python imports of the policy service).
    switch_to(False)
    one_run("warm", smtp_port, users, passwords, args)
    runs = {"off": [], "on": []}
    order = []
    for index in range(args.rounds):
        order += ["off", "on"] if index % 2 == 0 else ["on", "off"]
    current = False
    for kind in order:
        deadline.left(60)
        if (kind == "on") != current:
            switch_to(kind == "on")
            current = kind == "on"
            # The reload ends smtpd and its spawned policy processes: start the new
            # ones (Python and its imports, the quota database) outside the timed run,
            # or the ON/OFF difference measures process start-up (seen in run 4).
            one_run("warm", smtp_port, users, passwords, args)
        runs[kind].append(one_run(kind.upper(), smtp_port, users, passwords, args, deadline))
    report["runs"] = {k: [{x: y for x, y in r.items() if not x.startswith("_")} for r in v] for k, v in runs.items()}
    # The policy service on its own (guard ON: quota counted), one connection and as many as the sessions.
    switch_to(True)
    report["policy_alone"] = [probe_policy(deadline, args.messages, 1),
                              probe_policy(deadline, args.messages, args.sessions)]
    for item in report["policy_alone"]:
        print("policy service alone: %d requests on %d connection(s) in %.2f s: p50 %.2f ms, p99 %.2f ms%s"
              % (item["requests"], item["connections"], item["wall_s"], item["p50_ms"], item["p99_ms"],
                 ("; errors: %s" % item["errors"]) if item["errors"] else ""), flush=True)
    summary = {}
    for kind in ("off", "on"):
        rcpt = [x for r in runs[kind] for x in r["_rcpt"]]
        data = [x for r in runs[kind] for x in r["_data"]]
        summary[kind] = {
            "msgs_per_s": round(sum(r["msgs_per_s"] for r in runs[kind]) / len(runs[kind]), 2),
            "rcpt_p50_ms": round(percentile(rcpt, 0.5), 2), "rcpt_p99_ms": round(percentile(rcpt, 0.99), 2),
            "data_p50_ms": round(percentile(data, 0.5), 2), "data_p99_ms": round(percentile(data, 0.99), 2),
            "errors": sum(r["error_count"] for r in runs[kind]),
            "cpu_busy_pct": round(sum(r["cpu_busy_pct"] for r in runs[kind]) / len(runs[kind]), 1)}
        for key in ("box_cpu_ms_per_msg", "policy_py_cpu_ms_per_msg", "smtpd_cpu_ms_per_msg"):
            values = [r[key] for r in runs[kind] if key in r]
            summary[kind][key] = round(sum(values) / len(values), 2) if values else None
    on, off = summary["on"], summary["off"]
    summary["added_ms"] = {k: round(on[k] - off[k], 2)
                           for k in ("rcpt_p50_ms", "rcpt_p99_ms", "data_p50_ms", "data_p99_ms")}
    summary["throughput_ratio"] = round(on["msgs_per_s"] / off["msgs_per_s"], 3) if off["msgs_per_s"] else None
    report["summary"] = summary
    return report


def cleanup(state, keep):
    many_hosts.cleanup([NAME] if state["created"] else [], state["network"], state["work"], keep, network=NETWORK)


def print_summary(report):
    m = report["machine"]
    print()
    print("%s  %d CPUs (%s), %.0f GB  %s, %s" % (report["date"], m["cpus"], m["cpu_model"], m["memory_gb"],
                                                report.get("collection", ""), report["release"]))
    print("%d messages x %d recipients from %d concurrent sessions per run, %d round(s) ON/OFF interleaved"
          % (report["messages"], report["rcpts_per_message"], report["sessions"], report["rounds"]))
    if not report.get("alarm_timer_in_on_runs", True):
        print("ON runs without the alarm timer (--without-alarm): quotas and suspension maps only")
    print("load average before: %s  after: %s" % (report["load_before"], report.get("load_after")))
    summary = report.get("summary")
    if summary:
        print("%-24s %10s %10s %10s" % ("", "OFF", "ON", "ON - OFF"))
        for key, name in (("msgs_per_s", "throughput msg/s"), ("rcpt_p50_ms", "RCPT p50 ms"),
                          ("rcpt_p99_ms", "RCPT p99 ms"), ("data_p50_ms", "end of DATA p50 ms"),
                          ("data_p99_ms", "end of DATA p99 ms"), ("cpu_busy_pct", "machine CPU busy %"),
                          ("box_cpu_ms_per_msg", "container CPU ms/msg"),
                          ("policy_py_cpu_ms_per_msg", "policy.py CPU ms/msg"), ("smtpd_cpu_ms_per_msg", "smtpd CPU ms/msg"),
                          ("errors", "errors")):
            diff = summary["added_ms"].get(key)
            print("%-24s %10s %10s %10s" % (name, summary["off"][key], summary["on"][key],
                                            "" if diff is None else "%+.2f" % diff))
        worst = max(summary["added_ms"]["rcpt_p99_ms"], summary["added_ms"]["data_p99_ms"])
        print("p99 added (worst of RCPT, end of DATA): %.2f ms (goal <= %.0f ms: %s)"
              % (worst, GOAL_P99_MS, "met" if worst <= GOAL_P99_MS else "NOT met"))
        print("throughput ON / OFF: %.3f (goal >= %.1f: %s)" % (
            summary["throughput_ratio"], GOAL_THROUGHPUT,
            "met" if summary["throughput_ratio"] >= GOAL_THROUGHPUT else "NOT met"))
    if report.get("error"):
        print("ERROR: %s" % report["error"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="debian13", choices=["debian12", "debian13"])
    parser.add_argument("--messages", type=int, default=200, help="messages per run (1..%d)" % MAX_MESSAGES)
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (1..%d)" % MAX_SESSIONS)
    parser.add_argument("--rcpts", type=int, default=2, choices=range(1, 11), help="recipients per message")
    parser.add_argument("--rounds", type=int, default=6, choices=range(1, 7),
                        help="ON/OFF pairs, interleaved (OFF ON, ON OFF, ...); 6 by default: with fewer the p99 is noise")
    parser.add_argument("--session-timeout", type=int, default=120, help="socket timeout of each session")
    parser.add_argument("--max-seconds", type=int, default=3600, help="bound of the whole run")
    parser.add_argument("--ref", default="HEAD", help="commit to run (git archive), or 'worktree' for the checkout")
    parser.add_argument("--json", metavar="PATH", help="also write the results there")
    parser.add_argument("--keep", action="store_true", help="keep the container, network and scratch folder")
    parser.add_argument("--without-alarm", action="store_true",
                        help="ON runs with the alarm timer stopped: the quotas and suspension maps alone")
    args = parser.parse_args()
    if not 1 <= args.messages <= MAX_MESSAGES or not 1 <= args.sessions <= MAX_SESSIONS:
        parser.error("--messages 1..%d and --sessions 1..%d" % (MAX_MESSAGES, MAX_SESSIONS))
    if args.messages < args.sessions:
        parser.error("--messages must be at least --sessions")
    if "HM_CACHE_DIR" not in os.environ or not os.path.isdir(os.path.join(ROOT, ".collections")):
        parser.error("run `. scripts/env.sh` first")
    for tool in ("podman", "ansible-playbook"):
        if not shutil.which(tool):
            parser.error("%s is not on PATH" % tool)

    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    deadline = Deadline(args.max_seconds)
    state = {"created": False, "network": False, "work": None, "report": None}
    try:
        benchmark(args, deadline, state)
    except Failure as exc:
        print("policy: %s" % exc, file=sys.stderr)
        if state["report"] is not None:
            state["report"].setdefault("error", str(exc)[:2000])
    except KeyboardInterrupt:
        print("policy: interrupted, cleaning up", file=sys.stderr)
        if state["report"] is not None:
            state["report"].setdefault("error", "interrupted")
    finally:
        cleanup(state, args.keep)
        report = state["report"]
        if report is not None:
            report["load_after"] = [round(x, 2) for x in os.getloadavg()]
            print_summary(report)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as handle:
                    json.dump(report, handle, indent=1)
    return 0 if report is not None and "summary" in report and not report.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
