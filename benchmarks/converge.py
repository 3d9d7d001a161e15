#!/usr/bin/env python3
"""Benchmark: a no-change converge of playbooks/site.yml against its floor.

On one already converged host (by default the site scenario's Debian 12
instance, kept with ``molecule converge -s site``), in one run:

1. a second converge of ``playbooks/site.yml`` (a warm-up converge runs first
   unless --no-warmup, so the timed one really is a no-change run; the number
   of changed tasks is printed and must be 0);
2. the floor: one play over the same SSH connection that gathers facts, runs
   one ``ansible.builtin.stat`` per file the converge manages on the host and
   one ``ansible.builtin.package_facts``, checking the packages the site
   installs. The managed files are the ``path``/``dest`` of the converge's
   file, copy, template, ... results, plus the files the site makes whose
   paths its results do not show (``MADE``: lookup tables built by postmap,
   the self-signed key, the PIN database, the TOTP secret of each
   ``sshd_2fa_users`` entry, whose module results are ``no_log``). Files the
   converge only reads (authorized_keys, Postfix's spool) are not counted.

Prints both wall-clock times, the ratio (goal: <= 2.5x the floor), the number
of tasks each ran on the host and the slowest converge tasks. Bounded: every
ansible-playbook run has a timeout.

    . scripts/env.sh && molecule converge -s site
    python benchmarks/converge.py [--limit hm-site-debian12] [--runs 1]
    molecule destroy -s site
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL = 2.5
# What the roles install (install.yml of sshd_2fa, sudo_pin, postfix, dovecot).
PACKAGES = ["openssh-server", "libpam-google-authenticator", "sudo", "libpam-modules",
            "postfix", "dovecot-core", "dovecot-imapd", "dovecot-lmtpd"]


def molecule_dir(scenario):
    """Molecule's scratch folder for ``scenario`` (what it exports as MOLECULE_EPHEMERAL_DIRECTORY)."""
    if os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY"):
        return os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
    from molecule.text import checksum  # the naming molecule.scenario uses

    return os.path.join(os.path.expanduser("~"), ".ansible", "tmp",
                        "molecule.%s.%s" % (checksum(os.path.basename(ROOT), 4), scenario))


def playbook_env(args, eph):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": os.path.join(eph, "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": args.collections,
        "ANSIBLE_ROLES_PATH": os.path.join(ROOT, "roles"),
        "MOLECULE_EPHEMERAL_DIRECTORY": eph,
        "MOLECULE_INVENTORY_FILE": os.path.join(eph, "inventory", "ansible_inventory.yml"),
        "MOLECULE_SCENARIO_DIRECTORY": os.path.join(ROOT, "molecule", args.scenario),
        "ANSIBLE_FORCE_COLOR": "0",
    })
    return env


def run_playbook(args, playbook, eph, json_out=True):
    env = playbook_env(args, eph)
    if json_out:
        env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"})
    cmd = ["ansible-playbook", "-i", os.path.join(eph, "inventory"), "--limit", args.limit, playbook]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit("%s failed (rc %d):\n%s\n%s" % (playbook, proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:]))
    return elapsed, (json.loads(proc.stdout) if json_out else None)


# Made by the site on the host, but named by no (visible) task result.
MADE = ["/etc/ssl/hardened-mailhost/server.key", "/etc/ssl/hardened-mailhost/server.crt",
        "/etc/postfix/hardened/transport.db", "/etc/postfix/hardened/relay_clientcerts.db",
        "/etc/security/sudo_pin.db",
        # kept absent while sshd_2fa_trusted_networks is empty
        "/etc/security/hardened-mailhost-sshd-trusted.conf"]


def _when(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


def host_results(report, host):
    """(task name, action, result, seconds) for every task that ran on ``host``."""
    for play in report["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get(host)
            if result is None:
                continue
            dur = task["task"].get("duration", {})
            seconds = 0.0
            if dur.get("start") and dur.get("end"):
                seconds = (_when(dur["end"]) - _when(dur["start"])).total_seconds()
            yield task["task"]["name"], result.get("action", ""), result, seconds


def managed_files(report, host):
    """Paths the converge manages or checks on the host (not on the controller):
    ``path``/``dest`` of every result and of its module arguments."""
    paths = set()
    for _name, _action, result, _secs in host_results(report, host):
        for item in result.get("results", [result]):
            if not isinstance(item, dict) or item.get("skipped") or item.get("_ansible_delegated_vars"):
                continue
            args = (item.get("invocation") or {}).get("module_args") or {}
            for source in (item, args):
                for key in ("path", "dest", "db"):
                    value = source.get(key)
                    if isinstance(value, str) and value.startswith("/"):
                        paths.add(value)
    return sorted(paths)


def totp_secrets(args, eph, report, host):
    """~/.google_authenticator of every sshd_2fa_users entry (homes from the converge's getent)."""
    proc = subprocess.run(["ansible-inventory", "-i", os.path.join(eph, "inventory"), "--host", host],
                          env=playbook_env(args, eph), capture_output=True, text=True,
                          timeout=args.timeout, check=True)
    users = json.loads(proc.stdout).get("sshd_2fa_users", [])
    passwd = {}
    for _name, action, result, _secs in host_results(report, host):
        if action.endswith("getent"):
            passwd.update(result.get("ansible_facts", {}).get("getent_passwd", {}))
    missing = [user for user in users if user not in passwd]
    if missing:
        sys.exit("no getent result for %s in the converge report" % ", ".join(missing))
    return [os.path.join(passwd[user][4], ".google_authenticator") for user in users]


def counts(report, host):
    ran = changed = 0
    for _name, _action, result, _secs in host_results(report, host):
        if result.get("skipped") and not result.get("results"):
            continue
        ran += 1
        changed += bool(result.get("changed"))
    return ran, changed


FLOOR = """\
- name: Floor for the site converge
  hosts: {host}
  gather_facts: true
  become: true
  vars:
    hm_files: {files}
    hm_packages: {packages}
  tasks:
    - name: Stat each file the site manages
      ansible.builtin.stat:
        path: "{{{{ item }}}}"
        get_checksum: true
      loop: "{{{{ hm_files }}}}"
    - name: Read the package database
      ansible.builtin.package_facts:
        manager: apt
    - name: Check the site's packages are there
      ansible.builtin.assert:
        that: hm_packages | difference(ansible_facts.packages.keys()) | length == 0
        quiet: true
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="site", help="Molecule scenario whose instance and inventory to use")
    parser.add_argument("--limit", default="hm-site-debian12", help="the one host to converge")
    parser.add_argument("--collections", default=os.path.join(ROOT, ".collections"),
                        help="ANSIBLE_COLLECTIONS_PATH (default: the checkout)")
    parser.add_argument("--runs", type=int, default=1, choices=range(1, 6), help="timed pairs; the best of each is kept")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed converge")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per ansible-playbook run")
    parser.add_argument("--top", type=int, default=12, help="slowest converge tasks to list")
    parser.add_argument("--save", metavar="DIR", help="also write the JSON reports and the file list there")
    args = parser.parse_args()

    eph = molecule_dir(args.scenario)
    if not os.path.isfile(os.path.join(eph, "inventory", "ansible_inventory.yml")):
        sys.exit("no Molecule inventory in %s: run `molecule converge -s %s` first" % (eph, args.scenario))
    site = os.path.join(ROOT, "playbooks", "site.yml")
    if not args.no_warmup:
        run_playbook(args, site, eph, json_out=False)

    best_converge = best_floor = None
    for _ in range(args.runs):
        t_converge, report = run_playbook(args, site, eph)
        files = sorted(set(managed_files(report, args.limit) + MADE + totp_secrets(args, eph, report, args.limit)))
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
            handle.write(FLOOR.format(host=args.limit, files=json.dumps(files), packages=json.dumps(PACKAGES)))
            floor_path = handle.name
        try:
            t_floor, floor_report = run_playbook(args, floor_path, eph)
        finally:
            os.unlink(floor_path)
        if best_converge is None or t_converge < best_converge[0]:
            best_converge = (t_converge, report)
        if best_floor is None or t_floor < best_floor[0]:
            best_floor = (t_floor, floor_report, files)

    t_converge, report = best_converge
    t_floor, floor_report, files = best_floor
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        for name, data in (("converge.json", report), ("floor.json", floor_report), ("files.json", files)):
            with open(os.path.join(args.save, name), "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1)
    ran, changed = counts(report, args.limit)
    floor_ran, _ = counts(floor_report, args.limit)
    ratio = t_converge / t_floor
    print("host: %s  cpus: %d  load average (1 min): %.1f" % (args.limit, os.cpu_count(), os.getloadavg()[0]))
    print("second converge of site.yml: %6.1f s  (%d tasks on the host, %d changed)" % (t_converge, ran, changed))
    print("floor (facts + %d stat + package_facts): %6.1f s  (%d tasks, %d module runs)"
          % (len(files), t_floor, floor_ran, len(files) + 3))
    print("ratio: %.2fx   goal <= %.1fx: %s" % (ratio, GOAL, "met" if ratio <= GOAL else "NOT met"))
    print("slowest converge tasks:")
    slow = sorted(host_results(report, args.limit), key=lambda r: -r[3])[:args.top]
    for name, action, _result, secs in slow:
        print("  %5.2f s  %-40s %s" % (secs, action[:40], name))
    return 0 if changed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
