"""Revocation timing shared by benchmarks/many_users.py (one host) and
benchmarks/many_hosts.py (every host of the group): issue 16's row "revoke one
device: from revoke_cert.yml start to refusal on 465 and 993".

The clock starts when ``revoke_cert.yml`` starts. After it returns, every host
is probed in a thread of its own (a TLS client-certificate relay attempt on 465
and a SASL EXTERNAL login on 993, with the scenarios' clients from
``molecule/common/hmtest``) until it refuses the revoked device on both ports;
the figure is the time at which the LAST host refused. Probing is bounded in
time (``bound_s`` after the playbook) and in count (``max_probes`` per host).
Afterwards the same person's other devices must still be accepted on every
host, so a push that broke the map or the CRL for everybody cannot pass as a
fast revocation.
"""

import os
import secrets
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "molecule", "common"))
SERVER_CERT = "/etc/ssl/hardened-mailhost/server.crt"


class RevokeError(Exception):
    """The revocation row cannot be measured or its result is wrong (said why)."""


def _podman(args, timeout=60):
    proc = subprocess.run(["podman"] + args, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RevokeError("podman %s failed: %s" % (" ".join(args), (proc.stderr or proc.stdout)[-500:]))
    return proc.stdout


def target(container):
    """What the probes need of one host: its published 465 and 993 and its server certificate."""
    ports = {}
    for port in (465, 993):
        ports[port] = int(_podman(["port", container, "%d/tcp" % port]).strip().splitlines()[0].rsplit(":", 1)[1])
    return {"name": container, "ports": ports, "server_pem": _podman(["exec", container, "cat", SERVER_CERT])}


def device_pems(bundle_dir, password_of, email, devices, pem_dir):
    """Open ``<email>_<device>.p12`` of each device with its password (``password_of(bundle
    path)``) as a mail app would; returns {device: (cert path, key path)} (keys 0600)."""
    from hmtest import mailbox  # the scenarios' client (cryptography)

    os.makedirs(pem_dir, mode=0o700, exist_ok=True)
    out = {}
    for device in devices:
        bundle = os.path.join(bundle_dir, "%s_%s.p12" % (email, device))
        cert, key, _parsed = mailbox.pkcs12_to_pem(bundle, password_of(bundle), pem_dir)
        out[device] = (cert, key)
    return out


def pass_file_password(bundle):
    """The password issue_cert.yml wrote beside a bundle (<bundle>.pass, 0600)."""
    with open(bundle[:-len(".p12")] + ".pass", encoding="utf-8") as handle:
        return handle.read().strip()


def accepted(host, email, cert, key):
    """(relayed on 465, logged in on 993) for one device's certificate on one host."""
    from hmtest import imap, smtp  # the scenarios' clients

    sent = smtp.attempt(host["ports"][465], email, email, secrets.token_hex(8), implicit_tls=True,
                        cert=cert, key=key).stage == "sent"
    login = imap.login_external(host["ports"][993], imap.tls_context(host["server_pem"], cert, key))
    if login.ok:
        login.close()
    return sent, login.ok


def _parallel(hosts, action):
    """``action(host)`` for every host in a thread of its own; {name: result or exception}."""
    results = {}

    def one(host):
        try:
            results[host["name"]] = action(host)
        except Exception as exc:  # reported per host by the caller
            results[host["name"]] = exc

    threads = [threading.Thread(target=one, args=(h,), daemon=True) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def load():
    return [round(x, 2) for x in os.getloadavg()]


def time_revocation(hosts, email, devs, device, run_playbook, bound_s=60, max_probes=120, step_s=0.5):
    """Time ``run_playbook()`` (which runs revoke_cert.yml for ``email``'s ``device``) from its
    start until every host in ``hosts`` (from :func:`target`) refuses that device on 465 AND 993.

    ``devs`` maps every device of ``email`` to its (cert, key); the revoked one must be
    accepted everywhere before, and every other one everywhere after. Returns a dict
    with playbook_s, refused_s (the last host), per-host refusal times and probe counts,
    and the playbook's own result under "playbook"."""
    others = [d for d in devs if d != device]
    if not others:
        raise RevokeError("give at least one other device, which must stay accepted")
    before = _parallel(hosts, lambda h: accepted(h, email, *devs[device]))
    bad = {n: r for n, r in before.items() if r != (True, True)}
    if bad:
        raise RevokeError("%s %s is not accepted on 465 and 993 before the revocation: %s"
                          % (email, device, bad))
    load_start = load()
    t0 = time.monotonic()
    result = run_playbook()
    playbook_s = time.monotonic() - t0

    def until_refused(host):
        probes = 0
        while probes < max_probes and time.monotonic() - t0 < playbook_s + bound_s:
            probes += 1
            if accepted(host, email, *devs[device]) == (False, False):
                return round(time.monotonic() - t0, 1), probes
            time.sleep(step_s)
        return None, probes

    refused = _parallel(hosts, until_refused)
    errors = {n: r for n, r in refused.items() if isinstance(r, Exception)}
    if errors:
        raise RevokeError("probing failed: %s" % errors)
    still = sorted(n for n, (secs, _p) in refused.items() if secs is None)
    if still:
        raise RevokeError("%s %s is still accepted on %s %.0f s after revoke_cert.yml (or after %d probes)"
                          % (email, device, ", ".join(still), bound_s, max_probes))
    kept = {}
    for other in others:
        kept[other] = _parallel(hosts, lambda h, other=other: accepted(h, email, *devs[other]))
    lost = {o: {n: r for n, r in res.items() if r != (True, True)} for o, res in kept.items()}
    lost = {o: r for o, r in lost.items() if r}
    out = {"playbook_s": round(playbook_s, 1), "refused_s": max(s for s, _p in refused.values()),
           "per_host_s": {n: s for n, (s, _p) in sorted(refused.items())},
           "probes": {n: p for n, (_s, p) in sorted(refused.items())},
           "hosts": len(hosts), "device": device, "load_start": load_start, "load_end": load(),
           "other_devices_accepted": not lost, "playbook": result}
    if lost:
        raise RevokeError("after revoking %s, other devices of %s are no longer accepted: %s"
                          % (device, email, lost))
    return out
