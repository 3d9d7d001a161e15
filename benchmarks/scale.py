#!/usr/bin/env python3
"""Benchmark: the CA rows of issue 16's scale table, before and after.

Rows (each printed with the figure of the code before the SQLite index, run
from ``git archive`` of that commit in a temporary folder, beside the figure of
this tree):

1. one issue and one revoke with a CA index of 10,000 records against 100
   (goal: <= 2x each). Every operation runs on a fresh ``CertificateAuthority``
   object, as a module run does (it reads the index it needs), with the CA key
   already decrypted (the 600,000-round key derivation is the same for every
   index size and would only hide the difference); median of --rounds.
2. re-signing a CRL that lists 5,000 revoked certificates (goal: <= 1 s).
3. ``issue_cert.yml`` for --devices devices in one run against one run per
   device (goal: >= 20x). The separate runs are bounded: --separate runs are
   timed and the total is extrapolated (said so in the output). The code
   before had no list form, so its figure is the separate runs.

The indexes are filled with synthetic records (random serials and
fingerprints, valid for 120 days; the CRL row's are revoked) written as an
``index.json`` of the old format, which the old code reads as it is and the
new code converts on its first (untimed) change; issuing 10,000 real
certificates would only measure signing.

4. with --users N: the converge rows (one host with N users against one with
   1 user, first and no-change converge of site.yml) and the revocation row on
   one host (revoke_cert.yml start to refusal on 465 and 993), by the sibling
   script ``benchmarks/many_users.py`` (systemd-booted containers; see its doc).
5. with --hosts N: the rows of N hosts (no-change converge of site.yml on N
   hosts against 1, with the controller's CPU seconds per host, and the
   revocation row on N hosts: every host refuses on 465 and 993), by
   ``benchmarks/many_hosts.py`` in the same invocation, after the rows above.

--revoke-before REF gives both revocation rows their before figure (the same
row with revoke_cert.yml of commit REF, on another device); --users-before REF
the before figure of the no-change row with N users. --skip-ca leaves out rows
1-3 when only the container rows are wanted. Every row of issue 16's table in
one run:

    . scripts/env.sh && python benchmarks/scale.py --users 100 --hosts 10 --revoke-before 31b08c7

    . scripts/env.sh && python benchmarks/scale.py [--before REF] [--rounds 7]
        [--devices 100] [--separate 10] [--skip-playbook] [--skip-ca]
        [--users 100 [--users-before REF]] [--hosts 10] [--revoke-before REF]
"""

import argparse
import datetime
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASS = "benchmark passphrase, long enough"


# --------------------------------------------------------------- CA worker
def synthetic_index(count, revoked, crl_number, now):
    """An index.json (format 1) with ``count`` records, the first ``revoked`` of them revoked."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (now + datetime.timedelta(days=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = (now - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = []
    for number in range(count):
        serial = "4" + secrets.token_hex(19).upper() + "1"
        email = "user%05d@example.org" % number
        records.append({
            "serial": serial, "email": email, "name": "User %d" % number, "device": "phone",
            "subject": "OU=phone,O=User %d,CN=%s" % (number, email), "key_type": "ec-p256",
            "issued_at": stamp, "not_before": start, "not_after": end,
            "fingerprint_sha256": ":".join("%02X" % b for b in secrets.token_bytes(32)),
            "state": "revoked" if number < revoked else "valid",
            "revoked_at": stamp if number < revoked else None,
            "revocation_reason": "key_compromise" if number < revoked else None,
            "relay_only": False,
        })
    head = {"format": 1, "crl_number": crl_number, "crl_next_update_days": 30}
    lines = [json.dumps(rec, sort_keys=True) for rec in records]
    return "%s, \"certificates\": [\n%s\n]}\n" % (json.dumps(head, sort_keys=True)[:-1], ",\n".join(lines))


def make_ca(folder, count, revoked):
    """A CA whose index holds ``count`` synthetic records; exports made by the code under test."""
    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority, utcnow
    ca = CertificateAuthority(folder, PASS)
    ca.init()
    for name in os.listdir(folder):  # the new code's index; the old one writes index.json
        if name.startswith("index.sqlite3"):
            os.unlink(os.path.join(folder, name))
    state = os.path.join(folder, "export", ".state")
    if os.path.exists(state):
        os.unlink(state)
    with open(os.path.join(folder, "index.json"), "w") as handle:
        handle.write(synthetic_index(count, revoked, 1, utcnow()))
    os.chmod(os.path.join(folder, "index.json"), 0o600)
    opened = CertificateAuthority(folder, PASS)
    opened.crl()  # untimed: the old code rebuilds its exports, the new one converts the index
    return opened


def fresh(ca):
    """A new object on the same folder with the key already decrypted (as one module run)."""
    from ansible_collections.hardened.mailhost.plugins.module_utils._ca import CertificateAuthority
    other = CertificateAuthority(ca.ca_dir, PASS)
    other._key = ca._private_key()  # pylint: disable=protected-access
    return other


def timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def ca_worker(tree, rounds, work):
    sys.path.insert(0, tree)
    import ansible_collections.hardened.mailhost.plugins.module_utils._ca as camod
    assert os.path.abspath(camod.__file__).startswith(os.path.abspath(tree)), camod.__file__
    out = {}
    cas = dict((size, make_ca(os.path.join(work, "ca-%d" % size), size, 0)) for size in (100, 10000))
    times = dict(("%s_%d" % (what, size), []) for what in ("issue", "revoke") for size in cas)
    # Interleaved (and the order flipped each round), so load from other work
    # on a shared machine hits both sizes alike.
    for number in range(rounds):
        sizes = (100, 10000) if number % 2 == 0 else (10000, 100)
        issued = {}
        for size in sizes:
            def issue(size=size):
                issued[size] = fresh(cas[size]).issue("bench%d@example.org" % number, "Bench", "phone")
            times["issue_%d" % size].append(timed(issue))
        for size in sizes:
            serial = issued[size].serial
            times["revoke_%d" % size].append(
                timed(lambda size=size, serial=serial: fresh(cas[size]).revoke(serial, reason="key_compromise")))
    for size, ca in cas.items():
        with open(os.path.join(ca.ca_dir, "export", "postfix_relay_clientcerts")) as handle:
            listed = len(handle.read().splitlines())
        assert listed == size, "the map lists %d, expected %d" % (listed, size)
    for key, values in times.items():
        out[key] = statistics.median(values)
    folder = os.path.join(work, "ca-crl")
    ca = make_ca(folder, 5000, 5000)
    out["crl_5000"] = statistics.median(timed(lambda: fresh(ca).crl()) for _ in range(3))
    out["crl_entries"] = len(ca.crl_status()["revoked_serials"])
    print(json.dumps(out))


# --------------------------------------------------------------- playbook
def run_playbook(work, extra):
    extra_vars = dict(hardened_ca_dir=os.path.join(work, "ca"), hardened_ca_passphrase=PASS,
                      cert_bundle_dir=os.path.join(work, "bundles"), cert_bundle_keep_seconds=0,
                      hardened_mailhost_mail_domains=["example.org"])
    extra_vars.update(extra)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    start = time.perf_counter()
    proc = subprocess.run(["ansible-playbook", os.path.join(ROOT, "playbooks", "issue_cert.yml"),
                           "--tags", "ca", "-e", json.dumps(extra_vars)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit("issue_cert.yml failed:\n" + proc.stdout[-3000:] + proc.stderr[-2000:])
    return time.perf_counter() - start


def playbook_rows(devices, separate):
    work = tempfile.mkdtemp(prefix="scale-pb-")
    try:
        run_playbook(work, {"cert_email": "warm@example.org", "cert_name": "Warm", "cert_device": "up"})
        entries = [{"email": "dev%03d@example.org" % i, "name": "Device %d" % i, "device": "phone"}
                   for i in range(devices)]
        batch = run_playbook(work, {"cert_devices": entries})
        singles = [run_playbook(work, {"cert_email": "one%03d@example.org" % i, "cert_name": "One %d" % i,
                                       "cert_device": "phone"}) for i in range(separate)]
        bundles = sorted(os.listdir(os.path.join(work, "bundles")))
        modes = {oct(os.stat(os.path.join(work, "bundles", n)).st_mode & 0o777) for n in bundles
                 if not n.startswith(".")}
        assert modes == {"0o600"}, modes
        assert len([n for n in bundles if n.endswith(".pass")]) == devices + separate + 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return batch, statistics.mean(singles) * devices, len(singles)


# ------------------------------------------------------------------- main
def before_ref():
    """The commit before the one that brought the SQLite index (or HEAD before it is committed)."""
    first = subprocess.run(["git", "log", "--format=%H", "--diff-filter=A", "--",
                            "tests/unit/plugins/module_utils/test_ca_index.py"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.split()
    return (first[-1] + "^") if first else "HEAD"


def extract(ref, folder):
    dest = os.path.join(folder, "ansible_collections", "hardened", "mailhost")
    os.makedirs(dest)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return folder


def ca_rows(tree, rounds):
    work = tempfile.mkdtemp(prefix="scale-ca-")
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", tree, "--work", work,
                               "--rounds", str(rounds)], capture_output=True, text=True, timeout=1800,
                              check=False, env=dict(os.environ, PYTHONPATH=""))
        if proc.returncode != 0:
            raise SystemExit("CA worker failed on %s:\n%s" % (tree, proc.stderr[-3000:]))
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--before", default=None, help="git ref of the 'before' code (default: found)")
    parser.add_argument("--rounds", type=int, default=7, help="timed operations per figure (1-50)")
    parser.add_argument("--devices", type=int, default=100, help="devices in the onboarding row (1-500)")
    parser.add_argument("--separate", type=int, default=10,
                        help="single-device runs actually timed (1-100); the rest is extrapolated")
    parser.add_argument("--skip-playbook", action="store_true")
    parser.add_argument("--users", type=int, default=0, metavar="N",
                        help="also run the converge and revocation rows (benchmarks/many_users.py: two "
                             "containers, one host with N users against one with 1; about 30-60 min)")
    parser.add_argument("--users-before", default=None, metavar="REF",
                        help="with --users: the before figure of the no-change row from the collection of REF")
    parser.add_argument("--hosts", type=int, default=0, metavar="N",
                        help="also run the rows of N hosts (benchmarks/many_hosts.py -n N: no-change converge "
                             "N/1 and revocation on N hosts; N containers, about 30-60 min)")
    parser.add_argument("--revoke-before", default=None, metavar="REF",
                        help="with --users or --hosts: the before figure of the revocation rows "
                             "(revoke_cert.yml of REF, git archive)")
    parser.add_argument("--skip-ca", action="store_true",
                        help="leave out the CA and issue_cert.yml rows (only the container rows)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return ca_worker(args.worker, args.rounds, args.work)
    if not 1 <= args.rounds <= 50 or not 1 <= args.devices <= 500 or not 1 <= args.separate <= 100:
        parser.error("--rounds 1-50, --devices 1-500, --separate 1-100")
    if not 0 <= args.hosts <= 12:
        parser.error("--hosts 1-12")
    if args.skip_ca and not (args.users or args.hosts):
        parser.error("--skip-ca leaves nothing to run without --users or --hosts")
    if args.revoke_before and not (args.users or args.hosts):
        parser.error("--revoke-before needs --users or --hosts")
    ok = True
    if not args.skip_ca:
        ok = ca_and_playbook_rows(args)
    ok = container_rows(args) and ok
    return 0 if ok else 1


def container_rows(args):
    """The rows that need systemd-booted containers: sibling scripts, one after the other."""
    ok = True
    runs = []
    if args.users:
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "many_users.py"), "-n", str(args.users), "--revoke"]
        if args.users_before:
            cmd += ["--before", args.users_before]
        if args.revoke_before:
            cmd += ["--revoke-before", args.revoke_before]
        runs.append(cmd)
    if args.hosts:
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "many_hosts.py"), "-n", str(args.hosts)]
        if args.revoke_before:
            cmd += ["--revoke-before", args.revoke_before]
        runs.append(cmd)
    for cmd in runs:
        print("\n" + " ".join(cmd), flush=True)
        try:
            rc = subprocess.run(cmd, cwd=ROOT, timeout=7200, check=False).returncode
        except subprocess.TimeoutExpired:
            print("%s did not finish within 7200 s" % os.path.basename(cmd[1]), flush=True)
            rc = 1
        if rc != 0:
            print("%s: rows missing or goals not met (rc %d)" % (os.path.basename(cmd[1]), rc), flush=True)
        ok = rc == 0 and ok
    return ok


def ca_and_playbook_rows(args):
    """Rows 1-3: the CA index, the CRL and issue_cert.yml, before and after."""
    ref = args.before or before_ref()
    scratch = tempfile.mkdtemp(prefix="scale-before-")
    try:
        old_tree = extract(ref, scratch)
        before = ca_rows(old_tree, args.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    after = ca_rows(os.path.join(ROOT, ".collections"), args.rounds)
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    print("cpus: %d  before: %s (git archive)  after: this tree  rounds: %d (median)"
          % (os.cpu_count() or 0, commit or ref, args.rounds))
    print("%-44s %12s %12s   goal" % ("row", "before", "after"))
    ok = True
    for what in ("issue", "revoke"):
        for data in (before, after):
            data["%s_ratio" % what] = data["%s_10000" % what] / data["%s_100" % what]
        print("%-44s %9.1f ms %9.1f ms" % ("one %s, index of 100" % what, before["%s_100" % what] * 1000,
                                            after["%s_100" % what] * 1000))
        print("%-44s %9.1f ms %9.1f ms" % ("one %s, index of 10,000" % what, before["%s_10000" % what] * 1000,
                                            after["%s_10000" % what] * 1000))
        met = after["%s_ratio" % what] <= 2.0
        ok = ok and met
        print("%-44s %11.2fx %11.2fx   <= 2x: %s" % ("  10,000 / 100", before["%s_ratio" % what],
                                                      after["%s_ratio" % what], "met" if met else "NOT met"))
    met = after["crl_5000"] <= 1.0
    ok = ok and met
    print("%-44s %10.3f s %10.3f s   <= 1 s: %s" % ("CRL with %d revoked entries signed" % after["crl_entries"],
                                                    before["crl_5000"], after["crl_5000"], "met" if met else "NOT met"))
    if not args.skip_playbook:
        batch, separate, timed_runs = playbook_rows(args.devices, args.separate)
        ratio = separate / batch
        met = ratio >= 20
        ok = ok and met
        print("%-44s %10.1f s %10.1f s" % ("issue_cert.yml, %d devices: one run per device" % args.devices,
                                           separate, separate))
        print("%-44s %12s %10.1f s" % ("issue_cert.yml, %d devices in one run" % args.devices, "(no list form)", batch))
        print("%-44s %12s %11.1fx   >= 20x: %s" % ("  separate / one run", "1.0x", ratio, "met" if met else "NOT met"))
        print("  (one run per device: %d runs timed, mean x %d; every bundle and .pass file checked 0600)"
              % (timed_runs, args.devices))
    return ok


if __name__ == "__main__":
    sys.exit(main())
