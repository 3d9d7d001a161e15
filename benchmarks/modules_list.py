#!/usr/bin/env python3
"""Benchmark: N users in one module run (list form) against N runs (a loop).

For ``totp_secret``, ``userdb_pin`` and ``app_password``, times one
``ansible-playbook`` task against a container, both ways:

- loop: the single-user form in a ``loop:`` over the N users (how the roles
  called the modules before issue 16);
- list: one run with ``users:`` / ``devices:``.

Each is timed twice: a first run that creates everything, and a repeated run
that changes nothing (the converged host). State is cleared before each first
run, so both forms do the same work. Every playbook's time includes Ansible's
start-up; an empty play (``gather_facts: false``, one ``ping``) is timed too
and subtracted, so the "task" column is the time the task itself took.

The container is a throwaway one from the project's base image
(``localhost/hardened-mailhost-base:debian12``, no systemd needed), named
``hm-bench-modules-list-<pid>``, removed at the end. Bounded: N <= 500, every
command has a timeout.

    . scripts/env.sh && python benchmarks/modules_list.py [-n 100] [--image debian13] \
        [--modules totp_secret userdb_pin app_password]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASKS = {
    "totp_secret": {
        "loop": {"hardened.mailhost.totp_secret": {"user": "{{ item }}"}, "loop": "{{ bench_users }}"},
        "list": {"hardened.mailhost.totp_secret": {"users": "{{ bench_users }}"}},
        "reset": "rm -f /home/bu*/.google_authenticator",
    },
    "userdb_pin": {
        "loop": {"hardened.mailhost.userdb_pin": {"db": "/etc/security/bench_pin", "user": "{{ item }}",
                                                  "generate": True},
                 "loop": "{{ bench_users }}"},
        "list": {"hardened.mailhost.userdb_pin": {
            "db": "/etc/security/bench_pin",
            "users": "{{ bench_pin_users }}"}},
        "reset": "rm -f /etc/security/bench_pin.db",
    },
    "app_password": {
        "loop": {"hardened.mailhost.app_password": {"user": "{{ item }}", "device": "phone",
                                                    "passwd_file": "/etc/bench-app-passwords",
                                                    "group": "root"},
                 "loop": "{{ bench_users }}"},
        "list": {"hardened.mailhost.app_password": {
            "devices": "{{ bench_devices }}",
            "passwd_file": "/etc/bench-app-passwords", "group": "root"}},
        "reset": "rm -f /etc/bench-app-passwords",
    },
}


def run(argv, timeout=600, **kwargs):
    return subprocess.run(argv, check=True, timeout=timeout, capture_output=True, text=True, **kwargs)


def playbook(folder, name, task):
    # JSON is YAML: no YAML library needed. The secrets stay in the results:
    # no_log, as the roles do.
    body = dict(task, name=name, no_log=True)
    play = [{"name": name, "hosts": "all", "gather_facts": False, "tasks": [body]}]
    path = os.path.join(folder, "%s.yml" % name.replace(" ", "_"))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(play, handle)
    return path


def timed(path, inventory, env):
    start = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-i", inventory, path], env=env, capture_output=True,
                          text=True, timeout=1800, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (path, proc.stdout[-3000:]))
    recap = proc.stdout[proc.stdout.rindex("PLAY RECAP"):]
    return elapsed, "changed=1" in recap or "changed=0" not in recap


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="number of users (at most 500)")
    parser.add_argument("--image", default="debian12", choices=["debian12", "debian13"])
    parser.add_argument("--modules", nargs="+", choices=sorted(TASKS), default=list(TASKS),
                        help="modules to time (default: all three)")
    args = parser.parse_args()
    if not 1 <= args.n <= 500:
        parser.error("-n must be 1 to 500")
    # A SIGTERM (timeout, kill PID) still removes the container in the finally below.
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit("terminated"))
    name = "hm-bench-modules-list-%d" % os.getpid()
    users = ["bu%03d" % n for n in range(args.n)]
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3")
    run(["podman", "run", "-d", "--name", name, "localhost/hardened-mailhost-base:%s" % args.image,
         "sleep", "3600"], timeout=120)
    try:
        script = "for u in %s; do useradd -m -s /usr/sbin/nologin $u; done; mkdir -p /etc/security" % " ".join(users)
        run(["podman", "exec", name, "sh", "-c", script], timeout=300)
        with tempfile.TemporaryDirectory(prefix="hm-bench-") as folder:
            inventory = os.path.join(folder, "inventory.json")
            with open(inventory, "w", encoding="utf-8") as handle:
                json.dump({"all": {"hosts": {name: {"ansible_connection": "containers.podman.podman"}},
                                   "vars": {"bench_users": users,
                                            "bench_pin_users": [{"name": u, "generate": True} for u in users],
                                            "bench_devices": [{"user": u, "device": "phone"} for u in users]}}},
                          handle)
            empty = playbook(folder, "empty play", {"ansible.builtin.ping": {}})
            timed(empty, inventory, env)  # warm caches
            floor = min(timed(empty, inventory, env)[0] for _ in range(2))
            print("N=%d users, %s container; an empty play takes %.1f s (subtracted below)"
                  % (args.n, args.image, floor))
            print("%-13s %-5s %-6s %9s %9s" % ("module", "form", "run", "total s", "task s"))
            figures = {}
            for module in args.modules:
                spec = TASKS[module]
                for form in ("loop", "list"):
                    run(["podman", "exec", name, "sh", "-c", spec["reset"]], timeout=60)
                    path = playbook(folder, "%s %s" % (module, form), spec[form])
                    for phase in ("first", "again"):
                        elapsed, changed = timed(path, inventory, env)
                        if changed != (phase == "first"):
                            raise SystemExit("%s %s %s: changed=%s unexpected" % (module, form, phase, changed))
                        figures[(module, form, phase)] = elapsed - floor
                        print("%-13s %-5s %-6s %9.1f %9.1f" % (module, form, phase, elapsed, elapsed - floor))
                        sys.stdout.flush()
            print("\nspeed-up of the list form (loop task time / list task time):")
            for module in args.modules:
                for phase in ("first", "again"):
                    loop, listed = figures[(module, "loop", phase)], figures[(module, "list", phase)]
                    print("  %-13s %-6s %6.1fx" % (module, phase, loop / max(listed, 0.01)))
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=120, check=False)


if __name__ == "__main__":
    main()
