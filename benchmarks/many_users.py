#!/usr/bin/env python3
"""Benchmark: playbooks/site.yml on one host with N users against one user.

Issue 16's rows "no-change converge of site.yml on one host with 100 users
(each: TOTP secret, sudo PIN, 2 device certificates, 1 app password) against
the same host with 1 user, <= 1.5x" and "first converge, <= 3x". In one
bounded run:

1. starts two systemd-booted Debian 13 containers from
   ``localhost/hardened-mailhost-base:debian13`` as ``many_hosts.py`` does
   (podman's default capabilities, ports on 127.0.0.1, a network of their own,
   ``hm-users``, and host-side apt caches under ``$HM_CACHE_DIR/apt/hm-users/``):
   ``hm-users-1`` gets 1 user, ``hm-users-N`` gets N;
2. prepares each with ``molecule/common/prepare.yml`` plus the accounts (login
   password, sudo right), a CA of its own on the controller (the ca role) and
   2 device certificates per user issued in one ``client_cert`` run (certs:),
   as an operator onboards people before the site converge pushes the
   fingerprint map;
3. first converge of ``playbooks/site.yml`` on each host (its own inventory:
   every user in ``sshd_2fa_users`` and ``sudo_pin_users`` with a PIN from the
   inventory, 5 scratch codes, app passwords on), then 1 app password per user
   (one ``app_password`` run with ``devices:``, timed apart: the role only
   makes the file), then ``--runs`` interleaved no-change converges of each
   host (changed must be 0);
4. prints the ratios N/1 with the load average beside every figure, and the
   ten slowest tasks of the N-user converges (profile_tasks) so that a loop
   over users shows.

The collection is the committed tree at --ref (default HEAD, from ``git
archive``) unless ``--ref worktree``. Containers, network and scratch folder
(throwaway CA, PINs, QR codes) are removed at the end, also on failure or
Ctrl-C, unless --keep. Logs: ``$HM_CACHE_DIR/logs/many_users/`` (0600).

    . scripts/env.sh && python benchmarks/many_users.py [-n 100] [--runs 2] [--json out.json]
"""

import argparse
import datetime
import json
import os
import re
import resource
import secrets
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_hosts as mh  # noqa: E402  (the container and playbook helpers)
import _revoke  # noqa: E402  (the revocation timing, shared with many_hosts.py)

sys.path.insert(0, os.path.join(mh.ROOT, "molecule", "common"))

ROOT = mh.ROOT
IMAGE = mh.IMAGE
PREFIX = "hm-users-"
NETWORK = "hm-users"
LABEL = "hardened-mailhost-bench=many_users"
GOAL_NOCHANGE = 1.5
GOAL_FIRST = 3.0
MAX_USERS = 500
# Each user's two devices (issue 16's row). The first user's phone is revoked by
# --revoke; with --revoke-before that user also gets a tablet, which the older
# code revokes; the laptop must stay accepted throughout.
DEVICES = ("laptop", "phone")

PREPARE_TASKS = """\
---
- name: Create the people's accounts with login passwords (one script, not a loop)
  ansible.builtin.shell:
    cmd: |
      set -e
      while read -r name; do
        [ -n "$name" ] || continue
        id "$name" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$name"
      done
    stdin: "{{ hm_users_passwords.keys() | join('\\n') }}"
  changed_when: true

- name: Set their login passwords
  ansible.builtin.command:
    cmd: chpasswd
    stdin: "{{ hm_users_passwords.items() | map('join', ':') | join('\\n') }}"
  changed_when: true
  no_log: true

- name: Let them sudo (with authentication)
  ansible.builtin.copy:
    dest: /etc/sudoers.d/hm-users
    content: "{% for u in hm_users_passwords %}{{ u }} ALL=(ALL:ALL) ALL\\n{% endfor %}"
    owner: root
    group: root
    mode: "0440"
    validate: /usr/sbin/visudo -cf %s

- name: Create the client CA on the controller with the ca role
  ansible.builtin.include_role:
    name: hardened.mailhost.ca

- name: Issue every user's two device certificates in one run
  hardened.mailhost.client_cert:
    ca_dir: "{{ hardened_ca_dir }}"
    passphrase: "{{ hardened_ca_passphrase }}"
    certs: "{{ hm_users_devices }}"
    pkcs12_dir: "{{ hm_users_bundles }}"
  register: hm_users_issued
  no_log: true
  delegate_to: localhost
  run_once: true
  become: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"

- name: Keep the bundle passwords for the revocation timing (one 0600 file)
  ansible.builtin.copy:
    content: "{{ hm_users_issued.certificates | items2dict(key_name='pkcs12_path', value_name='pkcs12_password')
                 | to_json }}"
    dest: "{{ hm_users_bundles }}/passwords.json"
    mode: "0600"
  no_log: true
  delegate_to: localhost
  run_once: true
  become: false
"""

APP_PASSWORDS = """\
---
- name: One app password per user
  hosts: mailhosts
  gather_facts: false
  tasks:
    - name: Give each user's phone an app password, all in one run
      hardened.mailhost.app_password:
        devices: "{{ hm_users_passwords | list | map('community.general.dict_kv', 'user')
                     | map('combine', {'device': 'phone'}) | list }}"
      no_log: true
"""

TASK_LINE = re.compile(r"^(.+?) -+ (\d+\.\d+)s$")


def load():
    return [round(x, 2) for x in os.getloadavg()]


def user_names(count):
    return ["alice"] if count == 1 else ["u%03d" % i for i in range(1, count + 1)]


def inventory(name, count, work, port, tablet=False):
    folder = os.path.join(work, name)
    os.makedirs(folder, mode=0o700)
    users = user_names(count)
    passwords = {u: "bench-%s-%s" % (u, secrets.token_urlsafe(9)) for u in users}
    devices = [{"email": "%s@example.test" % u, "name": "User %s" % u, "device": d}
               for u in users for d in DEVICES]
    if tablet:
        devices.append({"email": "%s@example.test" % users[0], "name": "User %s" % users[0], "device": "tablet"})
    data = mh.inventory_data(os.path.join(folder, "ca"), "Many Users Bench", {name: port}, work, "300s", {
        "sshd_2fa_users": users,
        "sshd_2fa_enroll_dest": os.path.join(folder, "shared", "totp"),
        "sudo_pin_generated_dest": os.path.join(folder, "shared", "sudo_pin"),
        "sudo_pin_users": [{"name": u, "pin": mh.draw_pin()} for u in users],
        "dovecot_app_passwords": True,
        "hm_users_passwords": passwords,
        "hm_users_devices": devices,
        "hm_users_bundles": os.path.join(folder, "bundles"),
    })
    path = os.path.join(folder, "inventory.yml")
    mh.write_private(path, json.dumps(data, indent=1))
    return path


def apt_cache(name):
    return os.path.join(os.environ["HM_CACHE_DIR"], "apt", "hm-users", name[len(PREFIX):])


def start(names, hostnames, deadline, created):
    for name in names:
        archives = os.path.join(apt_cache(name), "archives")
        for sub in ("archives/partial", "lists/partial"):
            os.makedirs(os.path.join(apt_cache(name), sub), exist_ok=True)
        # Seed from the other benchmarks' Debian 13 caches (hard links; apt checks hashes).
        for pattern in (os.path.join(os.environ["HM_CACHE_DIR"], "apt", "hm-bench", "*", "archives"),
                        os.path.join(os.environ["HM_CACHE_DIR"], "apt", "hm-users", "*", "archives")):
            for src in __import__("glob").glob(pattern):
                for deb in os.listdir(src):
                    target = os.path.join(archives, deb)
                    if deb.endswith(".deb") and not os.path.exists(target):
                        try:
                            os.link(os.path.join(src, deb), target)
                        except OSError:
                            pass
    created.extend(names)
    errors = []

    def one(name):
        cmd = ["podman", "run", "-d", "--name", name, "--label", LABEL, "--hostname", hostnames[name],
               "--network", NETWORK]
        for port in mh.PORTS:
            cmd += ["--publish", "127.0.0.1::%d" % port]
        cmd += ["--volume", "%s/archives:/var/cache/apt/archives:rw" % apt_cache(name),
                "--volume", "%s/lists:/var/lib/apt/lists:rw" % apt_cache(name),
                IMAGE, "/lib/systemd/systemd"]
        try:
            mh.run(cmd, deadline.left(180))
        except mh.Failure as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise mh.Failure("could not start the containers: %s" % "; ".join(errors))


def playbook(label, args, work, inv, path, deadline, profile=False, extra=()):
    logs = os.path.join(os.environ["HM_CACHE_DIR"], "logs", "many_users")
    os.makedirs(logs, mode=0o700, exist_ok=True)
    log = os.path.join(logs, "%s.log" % label)
    env = mh.playbook_env(work, 5, args.tree, args.collections)
    env["MOLECULE_SCENARIO_DIRECTORY"] = work
    if profile:
        env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
        env["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "15"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    load_start = load()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        rc, _o, _e = mh.run(["ansible-playbook", "-i", inv, path] + list(extra), deadline.left(args.timeout), check=False,
                            env=env, stdout=handle)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, encoding="utf-8") as handle:
        text = handle.read()
    recap = mh.parse_recap(text)
    result = {"label": label, "wall_s": round(wall, 1), "rc": rc, "log": log,
              "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
              "load_start": load_start, "load_end": load(),
              "changed": sum(r["changed"] for r in recap.values()),
              "failed": sum(r["failed"] + r["unreachable"] for r in recap.values())}
    if profile:
        tasks = []
        for line in text.splitlines():
            match = TASK_LINE.match(line.strip())
            if match:
                tasks.append((match.group(1).strip(), float(match.group(2))))
        result["slowest"] = tasks[:10]
    if rc != 0 or result["failed"] or not recap:
        raise mh.Failure("%s failed (rc %d); log %s\n%s" % (label, rc, log, text[-4000:]))
    print("%-28s %7.1f s  changed %3d  load %s -> %s" % (label, wall, result["changed"], load_start,
                                                      result["load_end"]), flush=True)
    return result


def revoke(count, args, work, inv, deadline, label="revoke"):
    """Seconds from the start of revoke_cert.yml until the revoked device is
    refused on 465 (no relay) AND 993 (TLS login refused); the same person's
    other device must still be accepted on both afterwards (benchmarks/_revoke.py).
    ``label`` "revoke" revokes the phone with the collection of args.tree;
    "revoke-before" revokes the tablet with the collection of --revoke-before."""
    name = "%s%d" % (PREFIX, count)
    user = user_names(count)[0]
    email = "%s@example.test" % user
    folder = os.path.join(work, name)
    with open(os.path.join(folder, "bundles", "passwords.json"), encoding="utf-8") as handle:
        passwords = json.load(handle)
    try:
        mine = [d for d in DEVICES + ("tablet",)
                if os.path.join(folder, "bundles", "%s_%s.p12" % (email, d)) in passwords]
        devs = _revoke.device_pems(os.path.join(folder, "bundles"), passwords.__getitem__, email, mine,
                                   os.path.join(folder, "pem"))
        host = _revoke.target(name)
    except (_revoke.RevokeError, OSError, KeyError) as exc:
        raise mh.Failure("%s: %s" % (name, exc)) from None
    device = "phone" if label == "revoke" else "tablet"
    # The phone is revoked first (--revoke), then the tablet (--revoke-before): the
    # phone is no longer among the devices that must stay accepted.
    devs = {d: v for d, v in devs.items() if d != "phone" or label == "revoke"}

    def run_playbook():
        return playbook("%s-%d" % (label, count), args, work, inv,
                        os.path.join(args.tree, "playbooks", "revoke_cert.yml"), deadline, profile=True,
                        extra=["-e", "cert_email=%s" % email, "-e", "cert_device=%s" % device,
                               "-e", "cert_reason=key_compromise"])

    try:
        out = _revoke.time_revocation([host], email, devs, device, run_playbook)
    except _revoke.RevokeError as exc:
        raise mh.Failure("%s: %s" % (name, exc)) from None
    result = out.pop("playbook")
    out.update(changed=result["changed"], slowest=result.get("slowest"))
    print("%s on %-14s refused on 465+993 after %.1f s (playbook %.1f s), other devices accepted, load %s"
          % (label, name, out["refused_s"], out["playbook_s"], out["load_end"]), flush=True)
    return out


def benchmark(args, deadline, state):
    counts = (1, args.users)
    names = {c: "%s%d" % (PREFIX, c) for c in counts}
    hostnames = {names[c]: "users%d.example.test" % c for c in counts}
    state["report"] = report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": mh.machine(), "users": args.users, "image": IMAGE, "load_before": load()}
    mh.run(["podman", "image", "exists", IMAGE], 60)
    _rc, out, _e = mh.run(["podman", "ps", "-a", "--filter", "label=" + LABEL, "--format", "{{.Names}}"], 60)
    if out.split():
        raise mh.Failure("containers of another many_users run exist (%s): wait for it or remove them"
                         % " ".join(out.split()))
    if mh.run(["podman", "network", "exists", NETWORK], 60, check=False)[0] != 0:
        mh.run(["podman", "network", "create", NETWORK], 60)
    state["network"] = True
    state["work"] = work = tempfile.mkdtemp(prefix="hm-users-")
    os.chmod(work, 0o700)
    args.tree, args.collections, report["collection"] = mh.collection_tree(args, work)
    mh.write_private(os.path.join(work, "prepare_tasks.yml"), PREPARE_TASKS)
    mh.write_private(os.path.join(work, "app_passwords.yml"), APP_PASSWORDS)

    start(list(names.values()), hostnames, deadline, state["created"])
    invs = {c: inventory(names[c], c, work, mh.podman_port(names[c], 22), tablet=bool(args.revoke_before))
            for c in counts}
    prepare = os.path.join(args.tree, "molecule", "common", "prepare.yml")
    # Both hosts prepared side by side (not measured).
    errors = []

    def prep(c):
        try:
            playbook("prepare-%d" % c, args, work, invs[c], prepare, deadline)
        except mh.Failure as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=prep, args=(c,)) for c in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise mh.Failure("; ".join(errors))

    site = os.path.join(args.tree, "playbooks", "site.yml")
    report["first"] = {}
    report["app_passwords"] = {}
    for c in counts:
        report["first"][c] = playbook("first-%d" % c, args, work, invs[c], site, deadline, profile=True)
        report["app_passwords"][c] = playbook("app-passwords-%d" % c, args, work, invs[c],
                                              os.path.join(work, "app_passwords.yml"), deadline)
    report["nochange"] = {c: [] for c in counts}
    for index in range(args.runs):
        order = counts if index % 2 == 0 else counts[::-1]
        for c in order:
            result = playbook("nochange-%d-%d" % (c, index + 1), args, work, invs[c], site, deadline,
                              profile=True)
            if result["changed"]:
                raise mh.Failure("no-change converge with %d users changed %d tasks; log %s"
                                 % (c, result["changed"], result["log"]))
            report["nochange"][c].append(result)
    if args.before:
        # The same hosts, one no-change converge each with the collection of
        # an older commit: the "before" figure of the no-change row.
        sub = argparse.Namespace(ref=args.before)
        os.mkdir(os.path.join(work, "before"))
        tree, collections, report["before_collection"] = mh.collection_tree(sub, os.path.join(work, "before"))
        saved = (args.tree, args.collections)
        args.tree, args.collections = tree, collections
        report["before"] = {}
        try:
            for c in counts:
                result = playbook("before-nochange-%d" % c, args, work, invs[c],
                                  os.path.join(tree, "playbooks", "site.yml"), deadline, profile=True)
                report["before"][c] = result
        finally:
            args.tree, args.collections = saved
    if args.revoke:
        report["revoke"] = {c: revoke(c, args, work, invs[c], deadline) for c in counts}
    if args.revoke_before:
        # The same row with the collection of an older commit: the tablet.
        saved = (args.tree, args.collections)
        args.tree, args.collections, report["revoke_before_collection"] = mh.older_tree(
            args.revoke_before, work, "revoke-before")
        try:
            report["revoke_before"] = {c: revoke(c, args, work, invs[c], deadline, label="revoke-before")
                                       for c in counts}
        finally:
            args.tree, args.collections = saved
    one, many = counts
    if report.get("before"):
        report["before_ratio"] = round(report["before"][many]["wall_s"] / report["before"][one]["wall_s"], 2)
    report["first_ratio"] = round(report["first"][many]["wall_s"] / report["first"][one]["wall_s"], 2)
    walls = {c: mh.median([r["wall_s"] for r in report["nochange"][c]]) for c in counts}
    report["nochange_wall"] = walls
    report["nochange_ratio"] = round(walls[many] / walls[one], 2)
    return report


def print_table(report):
    if not report.get("first"):
        return
    many = report["users"]
    print()
    print("%s  %s  load before %s, after %s" % (report["date"], report.get("collection", ""),
                                                 report["load_before"], report.get("load_after")))
    for c, r in sorted(report["first"].items()):
        print("first converge, %3d user(s): %7.1f s  ctrl CPU %5.1f s  load %s -> %s"
              % (c, r["wall_s"], r["cpu_s"], r["load_start"], r["load_end"]))
    for c, r in sorted(report.get("app_passwords", {}).items()):
        print("app passwords,  %3d user(s): %7.1f s  (one app_password run)" % (c, r["wall_s"]))
    for c, runs in sorted(report.get("nochange", {}).items()):
        for r in runs:
            print("no-change,      %3d user(s): %7.1f s  ctrl CPU %5.1f s  changed %d  load %s -> %s"
                  % (c, r["wall_s"], r["cpu_s"], r["changed"], r["load_start"], r["load_end"]))
    if "first_ratio" in report:
        print("first converge %d/1: %.2fx (goal <= %.1fx: %s)" % (
            many, report["first_ratio"], GOAL_FIRST, "met" if report["first_ratio"] <= GOAL_FIRST else "NOT met"))
    if "nochange_ratio" in report:
        print("no-change %d/1 (medians): %.2fx (goal <= %.1fx: %s)" % (
            many, report["nochange_ratio"], GOAL_NOCHANGE,
            "met" if report["nochange_ratio"] <= GOAL_NOCHANGE else "NOT met"))
    for c, r in sorted(report.get("before", {}).items()):
        print("before (%s) no-change, %3d user(s): %7.1f s  changed %d  load %s -> %s"
              % (report["before_collection"], c, r["wall_s"], r["changed"], r["load_start"], r["load_end"]))
    if "before_ratio" in report:
        print("before: no-change %d/1: %.2fx" % (many, report["before_ratio"]))
        slow = report["before"][many].get("slowest") or []
        print("slowest tasks, before, no-change with %d users:" % many)
        for name, secs in slow:
            print("  %6.1f s  %s" % (secs, name))
    for c, r in sorted(report.get("revoke", {}).items()):
        print("revoke, %3d user(s): refused on 465 and 993 %.1f s after revoke_cert.yml started "
              "(playbook %.1f s; goal <= 15 s: %s), load %s -> %s"
              % (c, r["refused_s"], r["playbook_s"], "met" if r["refused_s"] <= 15 else "NOT met",
                 r["load_start"], r["load_end"]))
    for c, r in sorted(report.get("revoke_before", {}).items()):
        print("before (%s) revoke, %3d user(s): refused on 465 and 993 %.1f s after revoke_cert.yml started "
              "(playbook %.1f s), load %s -> %s"
              % (report["revoke_before_collection"], c, r["refused_s"], r["playbook_s"], r["load_start"],
                 r["load_end"]))
    first = report["first"].get(many)
    if first and first.get("slowest"):
        print("slowest tasks, first converge with %d users:" % many)
        for name, secs in first["slowest"]:
            print("  %6.1f s  %s" % (secs, name))
    runs = report.get("nochange", {}).get(many)
    if runs and runs[-1].get("slowest"):
        print("slowest tasks, no-change with %d users:" % many)
        for name, secs in runs[-1]["slowest"]:
            print("  %6.1f s  %s" % (secs, name))
    if report.get("error"):
        print("ERROR: %s" % report["error"][:3000])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("-n", "--users", type=int, default=100, help="users on the big host (2..%d)" % MAX_USERS)
    parser.add_argument("--runs", type=int, default=2, choices=range(1, 4), help="no-change pairs (median)")
    parser.add_argument("--timeout", type=int, default=2400, help="seconds per ansible-playbook run")
    parser.add_argument("--max-seconds", type=int, default=5400, help="bound of the whole run")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--ref", default="HEAD", help="commit to run (git archive), or 'worktree'")
    parser.add_argument("--before", metavar="REF",
                        help="also one no-change converge per host with the collection of REF (before figure)")
    parser.add_argument("--revoke", action="store_true",
                        help="at the end, time revoke_cert.yml until the device is refused on 465 and 993")
    parser.add_argument("--revoke-before", metavar="REF",
                        help="with --revoke (implied): the same row once more with revoke_cert.yml of the "
                             "collection of REF (git archive), on another device of the same user")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.revoke_before:
        args.revoke = True
    if not 2 <= args.users <= MAX_USERS:
        parser.error("--users must be between 2 and %d" % MAX_USERS)
    if "HM_CACHE_DIR" not in os.environ:
        parser.error("run `. scripts/env.sh` first")

    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    deadline = mh.Deadline(args.max_seconds)
    state = {"created": [], "network": False, "work": None, "report": None}
    try:
        benchmark(args, deadline, state)
    except mh.Failure as exc:
        print("many_users: %s" % exc, file=sys.stderr)
        if state["report"] is not None:
            state["report"]["error"] = str(exc)[:3000]
    except KeyboardInterrupt:
        print("many_users: interrupted, cleaning up", file=sys.stderr)
        if state["report"] is not None:
            state["report"]["error"] = "interrupted"
    finally:
        mh.cleanup(state["created"], state["network"], state["work"], args.keep, network=NETWORK)
        report = state["report"]
        if report is not None:
            report["load_after"] = load()
            print_table(report)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as handle:
                    json.dump(report, handle, indent=1, default=str)
    return 0 if report is not None and "nochange_ratio" in report and not report.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
