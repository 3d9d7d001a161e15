#!/usr/bin/env python3
"""Benchmark: playbooks/site.yml on N hosts at once with one shared controller folder.

Issue 17 (many hosts, one folder for every host's QR codes, PINs and the CA)
and issue 16's row "no-change converge on 10 hosts against 1 host, <= 3x".
In one bounded run:

1. starts N (default 10, at most 12) systemd-booted Debian 13 containers from
   ``localhost/hardened-mailhost-base:debian13`` as the Molecule scenarios do
   (podman's default capabilities, ports published on 127.0.0.1, a podman
   network of its own, one host-side apt cache per container under
   ``$HM_CACHE_DIR/apt/hm-bench/<NN>/`` so repeated runs download nothing),
   all named ``hm-bench-NN`` on the network ``hm-bench`` so they never meet a
   Molecule scenario's;
2. prepares them with Molecule's shared ``molecule/common/prepare.yml`` (boot
   wait, openssh-server, root's authorized key) plus a preparation of its own
   (alice and bob with login passwords and sudo rights, as the site scenario's);
3. writes an inventory like the site scenario's: group ``mailhosts``, ONE
   controller folder for every host (``totp/``, ``sudo_pin/``, ``ca/``),
   alice with a PIN drawn here, bob with a generated one, 5 scratch codes
   (so recovery sheets are written too);
4. first converge of ``playbooks/site.yml`` (forks=N) from the committed tree
   at --ref (default HEAD, unpacked with ``git archive`` into the scratch
   folder, so that edits in progress in the checkout do not end up in the
   figures; ``--ref worktree`` runs the checkout as it is):
   wall time, failed/unreachable hosts from the recap (must be 0), and every
   host's files in the shared folder (QR png/svg/recovery sheet per
   user@host, generated PIN per user@host, the ``.owners`` ledger naming that
   host, distinct secrets, modes 0700/0600; each QR decoded with zbarimg when
   it is installed names its own host);
5. no-change converges on all N hosts and on one (``--limit``), interleaved
   ``--runs`` times: wall time, changed tasks (must be 0), the ratio N/1 (goal
   <= 3x) and the controller's CPU seconds (user + system of ansible-playbook
   and its children, from ``getrusage(RUSAGE_CHILDREN)``) per host.

Prints a table and writes it as JSON with --json. Every subprocess has a
timeout and the whole run stops after --max-seconds. The containers, the
network and the scratch folder (it holds the throwaway PINs and QR codes) are
removed at the end, also on failure or Ctrl-C, unless --keep. Logs of the
ansible-playbook runs go to ``$HM_CACHE_DIR/logs/many_hosts/`` (0600; the
first converge prints the generated PINs of these throwaway hosts).

    . scripts/env.sh && python benchmarks/many_hosts.py [-n 10] [--runs 1] [--json out.json]
"""

import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _revoke  # noqa: E402  (the revocation timing, shared with many_users.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "localhost/hardened-mailhost-base:debian13"
PREFIX = "hm-bench-"
NETWORK = "hm-bench"
LABEL = "hardened-mailhost-bench=many_hosts"
PORTS = (22, 25, 465, 587, 993)
MAX_HOSTS = 12
GOAL_RATIO = 3.0
# Issue 16: revoke one device, revoke_cert.yml start to refusal on 465 and 993,
# on one host / on ten.
GOAL_REVOKE = {1: 15, 10: 30}
USERS = ("alice", "bob")
GENERATED = ("bob",)  # sudo_pin_users entries with generate: true

# The site scenario's own preparation (molecule/site/prepare_tasks.yml) minus
# its CA and bundles: the first converge makes the CA, as for an operator.
PREPARE_TASKS = """\
---
- name: Create the people's accounts
  ansible.builtin.user:
    name: "{{ item }}"
    shell: /bin/bash
    create_home: true
  loop: "{{ hm_bench_passwords.keys() | list }}"

- name: Set their login passwords
  ansible.builtin.command:
    cmd: chpasswd
    stdin: "{{ hm_bench_passwords.items() | map('join', ':') | join('\\n') }}"
  changed_when: true
  no_log: true

- name: Let alice and bob sudo (with authentication)
  ansible.builtin.copy:
    dest: /etc/sudoers.d/hm-bench
    content: "alice ALL=(ALL:ALL) ALL\\nbob ALL=(ALL:ALL) ALL\\n"
    owner: root
    group: root
    mode: "0440"
    validate: /usr/sbin/visudo -cf %s
"""

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"(?:\s+skipped=(\d+))?(?:\s+rescued=(\d+))?(?:\s+ignored=(\d+))?")


class Failure(Exception):
    """The benchmark cannot go on (said why)."""


class Deadline:
    """The whole run's time budget; every subprocess gets at most what is left."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, cap):
        left = self.end - time.monotonic()
        if left <= 5:
            raise Failure("the run's time budget (--max-seconds) is used up")
        return min(cap, left)


def kill_group(proc, sig):
    """Signal the process group that ``run`` started for ``proc`` (by its id)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run(cmd, timeout, check=True, env=None, stdout=None, input_text=None):
    """Run ``cmd`` in its own process group; on timeout kill that group (only it)."""
    proc = subprocess.Popen(cmd, stdout=stdout if stdout is not None else subprocess.PIPE,
                            stderr=subprocess.STDOUT if stdout is not None else subprocess.PIPE,
                            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(input=input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)
        proc.communicate()
        raise Failure("%s did not finish within %d s" % (" ".join(cmd[:3]), timeout)) from None
    except BaseException:
        # Ctrl-C or SIGTERM while waiting: take our child's process group down too.
        kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)
        raise
    if check and proc.returncode != 0:
        raise Failure("%s failed (rc %d): %s" % (" ".join(cmd), proc.returncode, ((err or "") + (out or ""))[-2000:]))
    return proc.returncode, out or "", err or ""


def host_name(index):
    return "%s%02d" % (PREFIX, index)


def apt_cache(name):
    return os.path.join(os.environ["HM_CACHE_DIR"], "apt", "hm-bench", name[len(PREFIX):])


def seed_apt_cache(name):
    """Hard-link .deb files the other Debian 13 caches already hold (apt checks
    their hashes against the package lists), so a new container downloads less."""
    archives = os.path.join(apt_cache(name), "archives")
    linked = 0
    patterns = [os.path.join(os.environ["HM_CACHE_DIR"], "apt", "hm-bench", "*", "archives", "*.deb"),
                os.path.join(os.environ["HM_CACHE_DIR"], "apt", "*", "debian13*", "archives", "*.deb")]
    for pattern in patterns:
        for deb in glob.glob(pattern):
            target = os.path.join(archives, os.path.basename(deb))
            if os.path.exists(target):
                continue
            try:
                os.link(deb, target)
                linked += 1
            except OSError:
                pass
    return linked


def podman_port(name, port, timeout=30):
    _rc, out, _err = run(["podman", "port", name, "%d/tcp" % port], timeout)
    return int(out.strip().splitlines()[0].rsplit(":", 1)[1])


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def draw_pin(length=8):
    while True:
        pin = "".join(secrets.choice("0123456789") for _ in range(length))
        if len(set(pin)) > 2 and pin not in "01234567890123456789" and pin not in "98765432109876543210":
            return pin


def inventory_data(ca_dir, organization, hosts, work, persist, group_vars):
    """The inventory both container benchmarks write: group ``mailhosts`` with
    the containers' SSH ports, the connection through 127.0.0.1 as root with the
    scratch key, the settings the site scenario gives every host (5 TOTP scratch
    codes, so recovery sheets are written too; the podman gateway exempt from
    sshd's penalties, since every client arrives from it; the mail domain) and
    ``group_vars`` on top."""
    common = {
        "ansible_connection": "ssh",
        "ansible_host": "127.0.0.1",
        "ansible_user": "root",
        "ansible_ssh_private_key_file": os.path.join(work, "hm_admin_key"),
        "ansible_ssh_common_args": (
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
            " -o ControlMaster=auto -o ControlPersist=%s" % persist),
        "sshd_2fa_totp_scratch_codes": 5,
        "sshd_2fa_penalty_exempt": ["{{ ansible_facts.default_ipv4.gateway }}/32"],
        "postfix_domain": "example.test",
        "postfix_milter_strict_sandbox": False,
        "dovecot_domain": "example.test",
    }
    return {"all": {
        "vars": {
            "hardened_ca_dir": ca_dir,
            "hardened_ca_passphrase": secrets.token_urlsafe(24),
            "ca_organization": organization,
        },
        "children": {"mailhosts": {
            "hosts": {name: {"ansible_port": port} for name, port in hosts.items()},
            "vars": dict(common, **group_vars),
        }},
    }}


def inventory(hosts, work, ports):
    shared = os.path.join(work, "shared")
    passwords = {user: "bench-%s-%s" % (user, secrets.token_urlsafe(12)) for user in USERS}
    # One CA folder for every host, in the shared controller folder.
    data = inventory_data(os.path.join(shared, "ca"), "Many Hosts Bench", {name: ports[name] for name in hosts},
                          work, "120s", {
                              "sshd_2fa_users": list(USERS),
                              # ONE controller folder for every host's QR codes and
                              # one for every host's generated PINs (issue 17).
                              "sshd_2fa_enroll_dest": os.path.join(shared, "totp"),
                              "sudo_pin_generated_dest": os.path.join(shared, "sudo_pin"),
                              "sudo_pin_users": [
                                  {"name": "alice", "pin": draw_pin()},
                                  {"name": "bob", "generate": True},
                              ],
                              "hm_bench_passwords": passwords,
                          })
    path = os.path.join(work, "inventory.yml")
    # JSON is YAML: Ansible's yaml inventory plugin reads it.
    write_private(path, json.dumps(data, indent=1))
    return path, shared


def collection_tree(args, work):
    """The collection to run: the checkout as it is (--ref worktree), or the
    committed tree at --ref unpacked into the scratch folder, so that edits in
    progress in the checkout do not end up in the figures. Returns (tree,
    collections path, description)."""
    if args.ref == "worktree":
        _rc, head, _err = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], 30)
        _rc, dirty, _err = run(["git", "-C", ROOT, "status", "--porcelain", "--", "playbooks", "roles", "plugins"], 30)
        return ROOT, os.path.join(ROOT, ".collections"), "worktree on %s%s" % (
            head.strip(), " with uncommitted changes in playbooks/roles/plugins" if dirty.strip() else "")
    _rc, commit, _err = run(["git", "-C", ROOT, "rev-parse", "--verify", args.ref + "^{commit}"], 30)
    commit = commit.strip()
    tree = os.path.join(work, "tree")
    os.mkdir(tree)
    archive = os.path.join(work, "tree.tar")
    run(["git", "-C", ROOT, "archive", "--format=tar", "-o", archive, commit], 120)
    run(["tar", "-xf", archive, "-C", tree], 120)
    os.unlink(archive)
    # The other collections (ansible.posix, community.*, containers.podman)
    # from the checkout's symlink farm; hardened.mailhost from the unpacked tree.
    collections = os.path.join(work, "collections")
    farm = os.path.join(ROOT, ".collections", "ansible_collections")
    for namespace in os.listdir(farm):
        if namespace != "hardened":
            os.makedirs(os.path.join(collections, "ansible_collections"), exist_ok=True)
            os.symlink(os.path.realpath(os.path.join(farm, namespace)),
                       os.path.join(collections, "ansible_collections", namespace))
    os.makedirs(os.path.join(collections, "ansible_collections", "hardened"))
    os.symlink(tree, os.path.join(collections, "ansible_collections", "hardened", "mailhost"))
    return tree, collections, "commit %s (%s)" % (commit[:12], args.ref)


def older_tree(ref, work, name):
    """The collection of commit ``ref`` unpacked under ``work/name`` (as --ref does), for a
    "before" figure: returns (tree, collections path, description)."""
    folder = os.path.join(work, name)
    os.mkdir(folder, 0o700)
    return collection_tree(argparse.Namespace(ref=ref), folder)


def playbook_env(work, forks, tree, collections):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": os.path.join(tree, "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": collections,
        "ANSIBLE_ROLES_PATH": os.path.join(tree, "roles"),
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_PIPELINING": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # molecule/common/prepare.yml finds the key and the scenario's own
        # preparation through Molecule's variables.
        "MOLECULE_EPHEMERAL_DIRECTORY": work,
        "MOLECULE_SCENARIO_DIRECTORY": work,
    })
    return env


def parse_recap(text):
    recap = {}
    seen = False
    for line in text.splitlines():
        if line.startswith("PLAY RECAP"):
            seen, recap = True, {}
            continue
        match = RECAP.match(line.strip()) if seen else None
        if match:
            recap[match.group(1)] = {
                "ok": int(match.group(2)), "changed": int(match.group(3)),
                "unreachable": int(match.group(4)), "failed": int(match.group(5))}
    return recap


def playbook(label, args, work, inv, playbook_path, deadline, cap, limit=None, extra=()):
    """Run one ansible-playbook; returns wall seconds, controller CPU seconds, recap, rc."""
    logs = os.path.join(os.environ["HM_CACHE_DIR"], "logs", "many_hosts")
    os.makedirs(logs, mode=0o700, exist_ok=True)
    log = os.path.join(logs, "%s.log" % label)
    cmd = ["ansible-playbook", "-i", inv, os.path.join(args.tree, playbook_path)]
    if limit:
        cmd += ["--limit", limit]
    cmd += list(extra)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    cgroups = getattr(args, "cgroups", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts_before, busy_before = (containers_cpu(cgroups) if cgroups else 0.0), machine_busy()
    start = time.monotonic()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        env = playbook_env(work, args.hosts, args.tree, args.collections)
        rc, _out, _err = run(cmd, deadline.left(cap), check=False, env=env, stdout=handle)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts_cpu = (containers_cpu(cgroups) - hosts_before) if cgroups else None
    busy = machine_busy() - busy_before
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(log, encoding="utf-8") as handle:
        text = handle.read()
    return {"label": label, "log": log, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "rc": rc,
            "hosts_cpu_s": None if hosts_cpu is None else round(hosts_cpu, 1), "busy_s": round(busy, 1),
            "recap": parse_recap(text), "tail": text[-6000:]}


def failed_hosts(result, hosts):
    recap = result["recap"]
    missing = [h for h in hosts if h not in recap]
    failed = sorted(h for h, r in recap.items() if r["failed"])
    unreachable = sorted(h for h, r in recap.items() if r["unreachable"])
    return missing, failed, unreachable


def decode_qr(path):
    if not shutil.which("zbarimg"):
        return None
    rc, out, _err = run(["zbarimg", "--quiet", "--raw", path], 30, check=False)
    return out.strip() if rc == 0 else ""


def check_shared(shared, hosts, hostnames):
    """Every host's own files in the shared folder, none missing, none overwritten."""
    problems = []
    found = {"qr_png": 0, "qr_svg": 0, "recovery": 0, "pin": 0, "qr_decoded": 0}
    digests = {}
    expected = {"totp": set(), "sudo_pin": set()}
    for host in hosts:
        for user in USERS:
            expected["totp"].update({"%s@%s.png" % (user, host), "%s@%s.svg" % (user, host),
                                     "%s@%s-recovery.txt" % (user, host)})
        for user in GENERATED:
            expected["sudo_pin"].add("%s@%s.pin" % (user, host))
    for folder, names in expected.items():
        path = os.path.join(shared, folder)
        if not os.path.isdir(path):
            problems.append("%s: missing" % path)
            continue
        mode = os.stat(path).st_mode & 0o777
        if mode != 0o700:
            problems.append("%s: mode %o, not 700" % (path, mode))
        present = set(n for n in os.listdir(path) if not n.startswith("."))
        for name in sorted(names - present):
            problems.append("%s/%s: missing" % (folder, name))
        for name in sorted(present - names):
            problems.append("%s/%s: not expected" % (folder, name))
        owners = {}
        ledger = os.path.join(path, ".owners")
        if os.path.exists(ledger):
            with open(ledger, encoding="utf-8") as handle:
                for line in handle:
                    if "\t" in line:
                        file_name, owner = line.rstrip("\n").split("\t", 1)
                        owners[file_name] = owner
        else:
            problems.append("%s/.owners: missing" % folder)
        for name in sorted(names & present):
            full = os.path.join(path, name)
            fmode = os.stat(full).st_mode & 0o777
            if fmode != 0o600:
                problems.append("%s/%s: mode %o, not 600" % (folder, name, fmode))
            host = name.split("@", 1)[1].rsplit(".", 1)[0].replace("-recovery", "")
            if owners and owners.get(name) != host:
                problems.append("%s/%s: ledger says %r" % (folder, name, owners.get(name)))
            with open(full, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            if name.endswith((".png", ".svg", "-recovery.txt")) and digest in digests:
                problems.append("%s/%s has the same content as %s" % (folder, name, digests[digest]))
            digests.setdefault(digest, name)
            key = ("qr_png" if name.endswith(".png") else "qr_svg" if name.endswith(".svg")
                   else "recovery" if name.endswith("-recovery.txt") else "pin")
            found[key] += 1
            if name.endswith(".png"):
                uri = decode_qr(full)
                if uri is None:
                    continue
                issuer = re.search(r"[?&]issuer=([^&]+)", uri or "")
                user = name.split("@", 1)[0]
                if not uri.startswith("otpauth://totp/") or not issuer:
                    problems.append("%s/%s: no otpauth URI in the QR code" % (folder, name))
                elif host[len("hm-"):] not in issuer.group(1) or user not in uri.split("?", 1)[0]:
                    problems.append("%s/%s: QR names issuer %s, expected %s"
                                    % (folder, name, issuer.group(1), hostnames[host]))
                else:
                    found["qr_decoded"] += 1
    return found, problems


def cleanup(created, network_created, work, keep, network=NETWORK):
    """Remove the containers, the network (named ``network``) and the scratch
    folder a benchmark made, or say where they are kept."""
    if keep:
        print("kept: containers %s, network %s, scratch folder %s" % (" ".join(created), network, work))
        return
    for name in created:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, check=False)
    if network_created:
        subprocess.run(["podman", "network", "rm", "-f", network], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)
    if work:
        shutil.rmtree(work, ignore_errors=True)


def start_containers(hosts, hostnames, deadline, created):
    for name in hosts:
        cache = apt_cache(name)
        for sub in ("archives/partial", "lists/partial"):
            os.makedirs(os.path.join(cache, sub), exist_ok=True)
        seed_apt_cache(name)
    errors = []

    def one(name):
        cache = apt_cache(name)
        cmd = ["podman", "run", "-d", "--name", name, "--label", LABEL, "--hostname", hostnames[name],
               "--network", NETWORK]
        for port in PORTS:
            cmd += ["--publish", "127.0.0.1::%d" % port]
        cmd += ["--volume", "%s/archives:/var/cache/apt/archives:rw" % cache,
                "--volume", "%s/lists:/var/lib/apt/lists:rw" % cache,
                IMAGE, "/lib/systemd/systemd"]
        try:
            run(cmd, deadline.left(180))
        except Failure as exc:
            errors.append(str(exc))

    # Recorded before starting, so that a failure half-way still removes them.
    created.extend(hosts)
    threads = [threading.Thread(target=one, args=(name,)) for name in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise Failure("could not start every container: %s" % "; ".join(errors))


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo", encoding="utf-8") as handle:
        mem_kb = int(handle.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def container_cgroups(hosts):
    """Each container's CPU accounting file (cgroup v1 cpuacct or v2 cpu.stat), or
    None where neither is readable (then the hosts' CPU is not reported)."""
    found = {}
    for name in hosts:
        _rc, out, _err = run(["podman", "inspect", "--format", "{{.State.CgroupPath}}", name], 30)
        path = out.strip()
        for candidate in ("/sys/fs/cgroup/cpuacct%s/cpuacct.usage" % path, "/sys/fs/cgroup%s/cpu.stat" % path):
            if path and os.access(candidate, os.R_OK):
                found[name] = candidate
                break
        else:
            return None
    return found


def containers_cpu(cgroups):
    """CPU seconds the containers (systemd, sshd, the modules Ansible runs there,
    the services) have used so far, summed."""
    total = 0.0
    for path in cgroups.values():
        with open(path, encoding="ascii") as handle:
            text = handle.read()
        if path.endswith("cpuacct.usage"):
            total += int(text) / 1e9
        else:
            total += int(re.search(r"^usage_usec (\d+)", text, re.M).group(1)) / 1e6
    return total


def machine_busy():
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat) so far."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def benchmark(args, deadline, state):
    hosts = [host_name(i) for i in range(1, args.hosts + 1)]
    hostnames = {name: "bench-%s.example.test" % name[len(PREFIX):] for name in hosts}
    state["report"] = report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "hosts": args.hosts, "forks": args.hosts,
              "image": IMAGE, "load_before": [round(x, 2) for x in os.getloadavg()],
              "no_revoke": args.no_revoke}

    run(["podman", "image", "exists", IMAGE], 60)
    # Containers with our label belong to another run of this script (running,
    # or kept with --keep): never touch them, say so.
    _rc, out, _err = run(["podman", "ps", "-a", "--filter", "label=" + LABEL, "--format", "{{.Names}}"], 60)
    if out.split():
        raise Failure("containers of another many_hosts run exist (%s): wait for it, or remove kept ones with "
                      "`podman rm -f %s` and `podman network rm %s`" % (" ".join(out.split()), " ".join(out.split()),
                                                                         NETWORK))
    rc, _out, _err = run(["podman", "network", "exists", NETWORK], 60, check=False)
    if rc != 0:
        run(["podman", "network", "create", NETWORK], 60)
    state["network"] = True

    state["work"] = work = tempfile.mkdtemp(prefix="hm-bench-")
    os.chmod(work, 0o700)
    args.tree, args.collections, report["collection"] = collection_tree(args, work)
    write_private(os.path.join(work, "prepare_tasks.yml"), PREPARE_TASKS)

    t0 = time.monotonic()
    start_containers(hosts, hostnames, deadline, state["created"])
    ports = {name: podman_port(name, 22) for name in hosts}
    args.cgroups = container_cgroups(hosts)
    inv, shared = inventory(hosts, work, ports)
    report["start_s"] = round(time.monotonic() - t0, 1)

    prep = playbook("prepare", args, work, inv, os.path.join("molecule", "common", "prepare.yml"),
                    deadline, args.timeout)
    missing, failed, unreachable = failed_hosts(prep, hosts)
    if prep["rc"] != 0 or missing or failed or unreachable:
        raise Failure("the preparation failed (rc %d; failed %s, unreachable %s, missing %s); log %s\n%s"
                      % (prep["rc"], failed, unreachable, missing, prep["log"], prep["tail"][-3000:]))
    report["prepare_s"] = prep["wall_s"]
    print("started and prepared %d hosts in %.0f s" % (len(hosts), report["start_s"] + prep["wall_s"]), flush=True)

    site = os.path.join("playbooks", "site.yml")
    first = playbook("first", args, work, inv, site, deadline, args.timeout)
    missing, failed, unreachable = failed_hosts(first, hosts)
    found, problems = check_shared(shared, hosts, hostnames)
    report["first"] = {"wall_s": first["wall_s"], "cpu_s": first["cpu_s"],
                       "cpu_s_per_host": round(first["cpu_s"] / len(hosts), 2), "rc": first["rc"],
                       "failed_hosts": failed, "unreachable_hosts": unreachable, "hosts_not_in_recap": missing,
                       "changed": sum(r["changed"] for r in first["recap"].values()),
                       "shared_files": found, "shared_problems": problems, "log": first["log"]}
    print("first converge: %.0f s, failed %s, unreachable %s, shared folder problems %d"
          % (first["wall_s"], failed or "none", unreachable or "none", len(problems)), flush=True)
    if first["rc"] != 0 or failed or unreachable or missing:
        report["error"] = "first converge failed; log %s" % first["log"]
        print(first["tail"][-5000:], file=sys.stderr)
        return report

    runs = {"all": [], "one": []}
    for index in range(args.runs):
        for kind, limit in (("all", None), ("one", hosts[0])):
            result = playbook("nochange-%s-%d" % (kind, index + 1), args, work, inv, site, deadline,
                              args.timeout, limit=limit)
            m, f, u = failed_hosts(result, [limit] if limit else hosts)
            changed = sum(r["changed"] for r in result["recap"].values())
            runs[kind].append({"wall_s": result["wall_s"], "cpu_s": result["cpu_s"], "changed": changed,
                               "hosts_cpu_s": result["hosts_cpu_s"], "busy_s": result["busy_s"],
                               "rc": result["rc"], "failed_hosts": f, "unreachable_hosts": u,
                               "log": result["log"]})
            print("no-change converge on %s: %.0f s, %.1f CPU s, hosts' CPU %s s, machine busy %.1f CPU s, changed %d"
                  % ("%d hosts" % len(hosts) if kind == "all" else "1 host", result["wall_s"],
                     result["cpu_s"], result["hosts_cpu_s"], result["busy_s"], changed), flush=True)
            if result["rc"] != 0 or m or f or u:
                report["error"] = "no-change converge failed; log %s" % result["log"]
                print(result["tail"][-5000:], file=sys.stderr)
                report["nochange"] = runs
                return report
    wall_all = median([r["wall_s"] for r in runs["all"]])
    wall_one = median([r["wall_s"] for r in runs["one"]])
    cpu_all = median([r["cpu_s"] for r in runs["all"]])
    cpu_one = median([r["cpu_s"] for r in runs["one"]])
    report["nochange"] = {
        "runs": runs,
        "all_wall_s": wall_all, "one_wall_s": wall_one,
        "ratio": round(wall_all / wall_one, 2), "goal_ratio": GOAL_RATIO,
        "all_changed": max(r["changed"] for r in runs["all"]),
        "one_changed": max(r["changed"] for r in runs["one"]),
        "all_cpu_s": cpu_all, "one_cpu_s": cpu_one,
        "all_cpu_s_per_host": round(cpu_all / len(hosts), 2), "one_cpu_s_per_host": round(cpu_one, 2),
    }
    if args.cgroups:
        # Where the ten-host wall time comes from on this machine: the controller's
        # and the hosts' CPU seconds share its cores, so (controller + hosts) /
        # cores is the shortest the N-host run can be; the single host runs
        # mostly one step at a time (its wall time is close to its CPU seconds).
        cores = os.cpu_count() or 1
        hosts_all = median([r["hosts_cpu_s"] for r in runs["all"]])
        hosts_one = median([r["hosts_cpu_s"] for r in runs["one"]])
        floor = (cpu_all + hosts_all) / cores
        report["nochange"].update({
            "all_hosts_cpu_s": hosts_all, "one_hosts_cpu_s": hosts_one,
            "all_hosts_cpu_s_per_host": round(hosts_all / len(hosts), 2),
            "all_busy_s": median([r["busy_s"] for r in runs["all"]]),
            "one_busy_s": median([r["busy_s"] for r in runs["one"]]),
            "cores": cores, "all_cpu_floor_s": round(floor, 1),
            "ratio_floor": round(floor / wall_one, 2),
        })
    if not args.no_revoke:
        report["revoke"] = revocation(args, work, inv, hosts, deadline, report["collection"])
    return report


def revocation(args, work, inv, hosts, deadline, current):
    """Issue 16's row "revoke one device ... <= 30 s on ten": one issue_cert.yml run
    gives alice a laptop, a phone and (with --revoke-before) a tablet certificate
    from the CA every host shares, and pushes the map to every host; then
    revoke_cert.yml (forks N) is timed from its start until EVERY host refuses the
    phone on 465 and 993 (benchmarks/_revoke.py), and with --revoke-before the same
    for the tablet with revoke_cert.yml of that commit. The laptop must stay accepted."""
    email = "alice@example.test"
    devices = ["laptop", "phone"] + (["tablet"] if args.revoke_before else [])
    bundles = os.path.join(work, "bundles")
    issue = playbook("issue-devices", args, work, inv, os.path.join("playbooks", "issue_cert.yml"), deadline,
                     args.timeout, extra=["-e", json.dumps({
                         "cert_devices": [{"email": email, "name": "Alice", "device": d} for d in devices],
                         "cert_bundle_dir": bundles, "cert_bundle_keep_seconds": 0})])
    missing, failed, unreachable = failed_hosts(issue, hosts)
    if issue["rc"] != 0 or missing or failed or unreachable:
        raise Failure("issue_cert.yml failed (rc %d; failed %s, unreachable %s); log %s\n%s"
                      % (issue["rc"], failed, unreachable, issue["log"], issue["tail"][-3000:]))
    try:
        devs = _revoke.device_pems(bundles, _revoke.pass_file_password, email, devices, os.path.join(work, "pem"))
        targets = [_revoke.target(name) for name in hosts]
    except (_revoke.RevokeError, OSError) as exc:
        raise Failure("revocation row: %s" % exc) from None
    print("issued %s's %s on the shared CA and pushed to %d hosts in %.0f s"
          % (email, ", ".join(devices), len(hosts), issue["wall_s"]), flush=True)
    rows = {}
    plan = [("after", "phone", None)] + ([("before", "tablet", args.revoke_before)] if args.revoke_before else [])
    for kind, device, ref in plan:
        saved = (args.tree, args.collections)
        description = None
        if ref:
            args.tree, args.collections, description = older_tree(ref, work, "revoke-before")
        label = "revoke-%s" % kind

        def run_playbook(device=device, label=label):
            result = playbook(label, args, work, inv, os.path.join("playbooks", "revoke_cert.yml"), deadline,
                              args.timeout, extra=["-e", "cert_email=%s" % email, "-e", "cert_device=%s" % device,
                                                   "-e", "cert_reason=key_compromise"])
            m, f, u = failed_hosts(result, hosts)
            if result["rc"] != 0 or m or f or u:
                raise Failure("%s failed (rc %d; failed %s, unreachable %s); log %s\n%s"
                              % (label, result["rc"], f, u, result["log"], result["tail"][-3000:]))
            return result

        try:
            # The revoked phone no longer has to stay accepted while the tablet is timed.
            mine = {d: v for d, v in devs.items() if d == device or d not in rows.get("revoked", [])}
            row = _revoke.time_revocation(targets, email, mine, device, run_playbook)
        except _revoke.RevokeError as exc:
            raise Failure("revocation row (%s): %s" % (kind, exc)) from None
        finally:
            args.tree, args.collections = saved
        result = row.pop("playbook")
        row.update(cpu_s=result["cpu_s"], log=result["log"], collection=description or current,
                   changed=sum(r["changed"] for r in result["recap"].values()))
        rows[kind] = row
        rows.setdefault("revoked", []).append(device)
        print("revoke (%s) on %d hosts: refused on 465 and 993 by every host after %.1f s (playbook %.1f s, "
              "ctrl CPU %.1f s), other devices accepted, load %s -> %s"
              % (row["collection"], len(hosts), row["refused_s"], row["playbook_s"], row["cpu_s"],
                 row["load_start"], row["load_end"]), flush=True)
    rows.pop("revoked", None)
    return rows


def print_table(report):
    n = report["hosts"]
    m = report["machine"]
    print()
    print("%s  %d CPUs (%s), %.0f GB  %s" % (report["date"], m["cpus"], m["cpu_model"], m["memory_gb"],
                                              report.get("collection", "")))
    print("load average before: %s  after: %s" % (report["load_before"], report.get("load_after")))
    rows = [("what", "wall s", "ctrl CPU s", "CPU s/host", "changed", "failed/unreach.")]
    first = report.get("first")
    if first:
        rows.append(("first converge, %d hosts" % n, "%.0f" % first["wall_s"], "%.0f" % first["cpu_s"],
                     "%.1f" % first["cpu_s_per_host"], str(first["changed"]),
                     "%d/%d" % (len(first["failed_hosts"]), len(first["unreachable_hosts"]))))
    nc = report.get("nochange")
    if nc and "ratio" in nc:
        rows.append(("no-change, %d hosts" % n, "%.0f" % nc["all_wall_s"], "%.0f" % nc["all_cpu_s"],
                     "%.1f" % nc["all_cpu_s_per_host"], str(nc["all_changed"]), "0/0"))
        rows.append(("no-change, 1 host", "%.0f" % nc["one_wall_s"], "%.0f" % nc["one_cpu_s"],
                     "%.1f" % nc["one_cpu_s_per_host"], str(nc["one_changed"]), "0/0"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
    if first:
        f = first["shared_files"]
        print("shared folder: %d png, %d svg, %d recovery sheets, %d PINs (%d QR decoded to their own host); "
              "problems: %s" % (f["qr_png"], f["qr_svg"], f["recovery"], f["pin"], f["qr_decoded"],
                                "; ".join(first["shared_problems"]) or "none"))
    if nc and "ratio" in nc:
        print("no-change %d hosts / 1 host: %.2fx  (goal <= %.1fx: %s)"
              % (n, nc["ratio"], GOAL_RATIO, "met" if nc["ratio"] <= GOAL_RATIO else "NOT met"))
    if nc and "ratio_floor" in nc:
        print("no-change CPU: controller %.1f s + hosts %.1f s for %d hosts (%.1f + %.1f s per host) against "
              "%.1f + %.1f s for 1 host; machine busy %.1f / %.1f CPU s"
              % (nc["all_cpu_s"], nc["all_hosts_cpu_s"], n, nc["all_cpu_s_per_host"], nc["all_hosts_cpu_s_per_host"],
                 nc["one_cpu_s"], nc["one_hosts_cpu_s"], nc["all_busy_s"], nc["one_busy_s"]))
        print("on %d cores the %d-host run cannot take less than %.0f s: a ratio of %.2fx at best against the "
              "single host's %.0f s" % (nc["cores"], n, nc["all_cpu_floor_s"], nc["ratio_floor"], nc["one_wall_s"]))
    for kind, row in sorted((report.get("revoke") or {}).items(), key=lambda kv: kv[0] != "before"):
        print("revoke one device (%s): every one of %d hosts refuses it on 465 and 993 %.1f s after "
              "revoke_cert.yml started (playbook %.1f s, ctrl CPU %.1f s, slowest host %s)%s; load %s -> %s"
              % (row["collection"], row["hosts"], row["refused_s"], row["playbook_s"], row["cpu_s"],
                 max(row["per_host_s"], key=row["per_host_s"].get),
                 "" if kind == "before" else "  (goal %s: %s)" % (
                     "<= %d s on %s host(s)" % (GOAL_REVOKE[row["hosts"]], row["hosts"])
                     if row["hosts"] in GOAL_REVOKE else "<= 30 s on ten hosts; measured on %d" % row["hosts"],
                     "met" if row["refused_s"] <= GOAL_REVOKE.get(row["hosts"], 30) else "NOT met"),
                 row["load_start"], row["load_end"]))
    if report.get("error"):
        print("ERROR: %s" % report["error"])


def verdict(report):
    first = report.get("first") or {}
    nc = report.get("nochange") or {}
    return bool(first and not report.get("error") and not first["shared_problems"] and "ratio" in nc
                and nc["all_changed"] == 0 and nc["one_changed"] == 0
                and (report.get("no_revoke") or "after" in (report.get("revoke") or {})))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--hosts", type=int, default=10, help="containers (1..%d, default 10)" % MAX_HOSTS)
    parser.add_argument("--runs", type=int, default=1, choices=range(1, 4),
                        help="interleaved no-change pairs (N hosts, 1 host); the median is reported")
    parser.add_argument("--timeout", type=int, default=2400, help="seconds per ansible-playbook run")
    parser.add_argument("--max-seconds", type=int, default=5400, help="bound of the whole run")
    parser.add_argument("--json", metavar="PATH", help="also write the results there")
    parser.add_argument("--ref", default="HEAD",
                        help="commit whose collection runs (default HEAD, unpacked with git archive); "
                             "'worktree' runs the checkout as it is")
    parser.add_argument("--no-revoke", action="store_true", help="skip the revocation row")
    parser.add_argument("--revoke-before", metavar="REF",
                        help="the revocation row once more with revoke_cert.yml of commit REF (git archive, "
                             "as --ref), on another device: the before figure")
    parser.add_argument("--keep", action="store_true", help="keep the containers, network and scratch folder")
    args = parser.parse_args()
    if args.no_revoke and args.revoke_before:
        parser.error("--revoke-before needs the revocation row (drop --no-revoke)")
    if not 1 <= args.hosts <= MAX_HOSTS:
        parser.error("--hosts must be between 1 and %d" % MAX_HOSTS)
    if "HM_CACHE_DIR" not in os.environ or not os.path.isdir(os.path.join(ROOT, ".collections")):
        parser.error("run `. scripts/env.sh` first")
    for tool in ("podman", "ansible-playbook"):
        if not shutil.which(tool):
            parser.error("%s is not on PATH" % tool)

    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    deadline = Deadline(args.max_seconds)
    state = {"created": [], "network": False, "work": None, "report": None}
    try:
        benchmark(args, deadline, state)
    except Failure as exc:
        print("many_hosts: %s" % exc, file=sys.stderr)
        if state["report"] is not None:
            state["report"].setdefault("error", str(exc)[:2000])
    except KeyboardInterrupt:
        print("many_hosts: interrupted, cleaning up", file=sys.stderr)
        if state["report"] is not None:
            state["report"].setdefault("error", "interrupted")
    finally:
        cleanup(state["created"], state["network"], state["work"], args.keep)
        report = state["report"]
        if report is not None:
            report["load_after"] = [round(x, 2) for x in os.getloadavg()]
            print_table(report)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as handle:
                    json.dump(report, handle, indent=1)
    return 0 if report is not None and verdict(report) else 1


if __name__ == "__main__":
    sys.exit(main())
