"""ACME: the server certificate of Postfix and Dovecot from an ACME CA, renewed on the host.

The ACME CA is Debian's pebble, running on each container itself on
127.0.0.1:14000 (molecule/common/pebble_tasks.yml); it validates HTTP-01 by fetching port 80
of the host's name, where certbot answers (standalone). The converge ran while
pebble was stopped, so the mail ports start on the self-signed fallback (the
first run with an unreachable CA locks nobody out). A check run of the acme
role's ``issue`` entry point reports the request and changes nothing. The main
test (alone: it reloads the services) starts pebble and runs ``issue`` for real
and again; checks that 465 and 993 present pebble's chain for the host's name;
forces a renewal while probes handshake on both ports inside the container;
and finally puts the fallback back, so the scenario's other tests (which trust
the self-signed certificate) and the second verify see what they expect.
Figures (renewal time, longest gap per port) go to
$HM_CACHE_DIR/logs/acme-<scenario>.json.
"""

import json
import os
import re
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from hmtest.acme import (FALLBACK, HOOK, LIVE, PEBBLE_BUNDLE, STABLE, live_certificate, pebble_root,
                         served_certificate, wait_for_pebble)
from hmtest.instances import load_instances

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASE_FILE = "/etc/hm-test-phase"  # written by side_effect.yml
RENEW = ["env", "REQUESTS_CA_BUNDLE=" + PEBBLE_BUNDLE, "certbot", "renew", "--force-renewal",
         "--cert-name", "hardened-mailhost", "--no-random-sleep-on-renew"]
MAX_GAP = 1.0  # seconds a mail port may go without a successful handshake starting (acme_probe.py)

# Reloads Dovecot: runs alone (the lock in conftest.py).
EXCLUSIVE_TESTS = ("test_acme_certificate_issued_served_and_renewed_without_closing_the_ports",)


@pytest.fixture(autouse=True)
def _first_verify_only():
    if any(_phase(i) != "first" for i in load_instances()):
        pytest.skip("runs in the first verify only")


def _phase(instance):
    marker = instance.run("cat", PHASE_FILE, check=False)
    return marker.stdout.strip() if marker.returncode == 0 else "first"


def playbook(*args):
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(SCENARIO_DIR, "acme.yml")]
    proc = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def changed(out, instance):
    match = re.search(re.escape(instance.name) + r"\s*:\s*ok=\d+\s+changed=(\d+)", out)
    assert match, out
    return int(match.group(1))


def host_state(instance):
    """What a refused or repeated run must leave alone."""
    return instance.run("sh", "-c", "readlink %s %s; ls -1 /etc/letsencrypt/live /etc/letsencrypt/renewal 2>&1;"
                        " sha256sum %s" % (STABLE["cert"], STABLE["key"], HOOK), check=False).stdout


def client_ctx(ephemeral_dir, cadata=None):
    ctx = ssl.create_default_context(cadata=cadata) if cadata else ssl._create_unverified_context()
    base = os.path.join(ephemeral_dir, "pki", "certs", "alice-valid")
    ctx.load_cert_chain(base + ".crt", base + ".key")  # IMAP may require one (cert-required mode)
    return ctx


def test_bad_acme_settings_are_refused_before_anything_changes():
    instances = load_instances()
    before = {i.name: host_state(i) for i in instances}
    rc, out = playbook("-e", "hm_acme_entry=main", "-e", "acme_email=postmaster.example.test",
                       "-e", json.dumps({"acme_domains": ["mail.elsewhere.example", "bad_name.example.test"]}))
    assert rc != 0, out
    assert "acme_email must be an e-mail address" in out and "postmaster.example.test" in out, out
    assert "not served here: mail.elsewhere.example" in out, out
    assert "Not a domain name in acme_domains:" in out and "bad_name.example.test" in out, out
    for instance in instances:
        assert changed(out, instance) == 0, out
    assert {i.name: host_state(i) for i in instances} == before


def test_check_mode_reports_the_request_and_changes_nothing():
    """Whenever it runs (before the main test, or after it put the fallback
    back), there is no ACME certificate: a check run says it would ask for one
    and changes nothing. It needs no CA (certbot does not run in check mode)."""
    instances = load_instances()
    before = {i.name: host_state(i) for i in instances}
    rc, out = playbook("-e", "hm_acme_entry=issue", "--check")
    assert rc == 0, out
    for instance in instances:
        assert changed(out, instance) == 1, out
    assert "A real run asks https://127.0.0.1:14000/dir for" in out, out
    assert {i.name: host_state(i) for i in instances} == before


def test_acme_certificate_issued_served_and_renewed_without_closing_the_ports(ephemeral_dir):
    instances = load_instances()
    names = {i.name: i.run("hostname", "--fqdn").stdout.strip() for i in instances}
    figures = {}
    try:
        # The converge met no ACME CA: the stable paths lead to the fallback,
        # which the mail ports serve.
        for instance in instances:
            assert instance.run("readlink", STABLE["cert"]).stdout.strip() == FALLBACK["cert"]
            fallback = x509.load_pem_x509_certificate(instance.run("cat", FALLBACK["cert"]).stdout.encode())
            for port in (465, 993):
                assert served_certificate(instance, port, client_ctx(ephemeral_dir), None) == fallback, port

        for instance in instances:
            instance.run("systemctl", "start", "hm-pebble")
        for instance in instances:
            assert wait_for_pebble(instance)
        roots = {i.name: pebble_root(i) for i in instances}
        # pebble's root does not vouch for the self-signed fallback.
        for instance in instances:
            with pytest.raises(ssl.SSLCertVerificationError):
                served_certificate(instance, 993, client_ctx(ephemeral_dir, roots[instance.name]), names[instance.name])

        rc, out = playbook("-e", "hm_acme_entry=issue")
        assert rc == 0 and "did not issue a certificate" not in out, out
        for instance in instances:
            assert changed(out, instance) >= 1, out
            assert instance.run("readlink", STABLE["cert"]).stdout.strip() == LIVE + "/fullchain.pem"
            assert instance.run("readlink", STABLE["key"]).stdout.strip() == LIVE + "/privkey.pem"
            live = live_certificate(instance)
            sans = live.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            assert sans.get_values_for_type(x509.DNSName) == [names[instance.name]]
            assert live.issuer != live.subject
            # Both ports present it with a chain that verifies against pebble's
            # root for the host's name (the intermediate comes from the server).
            ctx = client_ctx(ephemeral_dir, roots[instance.name])
            for port in (465, 993):
                assert served_certificate(instance, port, ctx, names[instance.name]) == live, (instance.name, port)

        # Nothing left to do: a repeat changes nothing.
        rc, out = playbook("-e", "hm_acme_entry=issue")
        assert rc == 0, out
        for instance in instances:
            assert changed(out, instance) == 0, out

        # Renewal on the host: Debian's timer, with the CA bundle from the
        # role's drop-in; its service runs (nothing is due yet).
        for instance in instances:
            assert instance.run("systemctl", "is-enabled", "certbot.timer").stdout.strip() == "enabled"
            assert instance.run("systemctl", "is-active", "certbot.timer").stdout.strip() == "active"
            env = instance.run("systemctl", "show", "-p", "Environment", "certbot.service").stdout
            assert "REQUESTS_CA_BUNDLE=" + PEBBLE_BUNDLE in env, env
            instance.run("systemctl", "start", "certbot.service")

        # A forced renewal: certbot's deploy hook reloads Postfix and Dovecot,
        # which then present the new certificate; probes inside the container
        # measure the longest time without a successful handshake per port.
        for instance in instances:
            old = live_certificate(instance)
            subprocess.run(["podman", "cp", os.path.join(SCENARIO_DIR, "acme_probe.py"),
                            instance.name + ":/root/acme_probe.py"], check=True)
            for ext in ("crt", "key"):
                subprocess.run(["podman", "cp", os.path.join(ephemeral_dir, "pki", "certs", "alice-valid." + ext),
                                instance.name + ":/root/probe-client." + ext], check=True)
            proc = instance.run("python3", "/root/acme_probe.py", "/root/probe-client.crt",
                                "/root/probe-client.key", "--", *RENEW)
            report = json.loads(proc.stdout)
            new = live_certificate(instance)
            figures[instance.platform] = {"renewal_seconds": report["seconds"],
                                          **{"port_%s_%s" % (port, key): value
                                             for port, data in report["ports"].items()
                                             for key, value in data.items()
                                             if key in ("longest_gap", "slowest_handshake", "failure_count",
                                                        "handshakes")}}
            assert report["rc"] == 0, report
            assert new.serial_number != old.serial_number
            for port, data in report["ports"].items():
                assert data["serials"][0] == "%x" % old.serial_number, (port, data)
                assert data["serials"][-1] == "%x" % new.serial_number, (port, data)
                assert data["longest_gap"] <= MAX_GAP, (instance.name, port, data)
            ctx = client_ctx(ephemeral_dir, roots[instance.name])
            for port in (465, 993):
                assert served_certificate(instance, port, ctx, names[instance.name]) == new, (instance.name, port)
    finally:
        out_dir = os.path.join(os.environ.get("HM_CACHE_DIR", ephemeral_dir), "logs")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "acme-%s.json" % os.environ.get("MOLECULE_SCENARIO_NAME", "dovecot")),
                  "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
        # Back to the fallback for the other tests and the second verify.
        for instance in instances:
            instance.run("sh", "-c", "ln -sfn %s %s && ln -sfn %s %s && %s --all;"
                         " certbot delete --non-interactive --cert-name hardened-mailhost;"
                         " systemctl stop hm-pebble" % (FALLBACK["cert"], STABLE["cert"], FALLBACK["key"],
                                                       STABLE["key"], HOOK), check=False)
        time.sleep(1)
