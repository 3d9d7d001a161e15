"""site.yml --check on a host with ACME on but no certificate yet (issue 15).

A fresh container would cost another full converge; instead the converged
hosts are made to look like a host before its first run, as far as the
certificate goes: /etc/letsencrypt and /etc/ssl/hardened-mailhost (the
self-signed fallback and the stable paths) are moved aside, and so is the
MTA-STS policy file that site.yml's DNS step writes on the controller. Then:

- ``site.yml --check`` passes: the acme role names the stable paths that only
  a real run makes (acme_pending_paths) and the postfix and cert_portal
  checks of their certificate accept them; the acme role's issue step says it
  would ask the CA and install the policy the DNS step writes; nothing on the
  host or the controller changes;
- the same run with ``-e acme_pending_paths=[]`` fails in the postfix role's
  certificate check, naming the stable path: the passing run passes because
  of the pending paths, not because nothing is checked.

Everything is put back afterwards. It runs last (file name) and alone: while
the certificates are away no new TLS connection to the host works.
"""

import os
import re
import subprocess
import time

import pytest

from hmtest.acme import STABLE
from hmtest.instances import load_instances

AWAY = "/root/hm-check-mode-away"
MOVED = ["/etc/letsencrypt", "/etc/ssl/hardened-mailhost"]
SITE = "hardened.mailhost.site"


def site_check(*extra):
    env = dict(os.environ, ANSIBLE_SKIP_TAGS="sshd_2fa,sudo_pin")
    # The inventory folder: Molecule writes the mailhosts group (molecule.yml) beside the instances.
    argv = ["ansible-playbook", "-i", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), "--check", SITE, *extra]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False, env=env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def host_state(instance):
    return instance.run("sh", "-c", "ls -la /etc/letsencrypt /etc/ssl/hardened-mailhost 2>&1;"
                        " ls -la %s 2>&1; sha256sum /var/lib/hardened-mailhost/mta-sts/mta-sts.txt"
                        " /etc/nginx/sites-available/* /etc/postfix/main.cf 2>&1" % AWAY, check=False).stdout


@pytest.fixture()
def fresh_certificates(ephemeral_dir):
    instances = load_instances()
    policies = [os.path.join(ephemeral_dir, "dns", i.name + ".mta-sts.txt") for i in instances]
    for instance in instances:
        instance.run("sh", "-c", "mkdir -p %s && for d in %s; do mv $d %s/; done"
                     % (AWAY, " ".join(MOVED), AWAY))
    for path in policies:
        os.rename(path, path + ".away")
    try:
        yield instances, policies
    finally:
        for path in policies:
            if os.path.exists(path + ".away"):
                os.rename(path + ".away", path)
        for instance in instances:
            instance.run("sh", "-c", "for d in %s; do rm -rf $d; mv %s/$(basename $d) $(dirname $d)/; done;"
                         " rmdir %s" % (" ".join(MOVED), AWAY, AWAY), check=False)


def test_site_check_mode_passes_before_the_first_certificate(fresh_certificates):
    instances, policies = fresh_certificates
    before = {i.name: host_state(i) for i in instances}

    rc, out, seconds = site_check()
    flat = " ".join(out.split())
    print("site.yml --check on %d hosts: %.0f s" % (len(instances), seconds))
    assert rc == 0, out[-6000:]
    for instance in instances:
        assert re.search(re.escape(instance.name) + r"\s*:\s*ok=\d+\s+changed=[1-9]\d*\s+unreachable=0\s+failed=0",
                         out), out[-3000:]
    assert flat.count("A real run asks https://127.0.0.1:14000/dir for") == len(instances), flat[-3000:]
    assert flat.count("(written by the DNS step) as /var/lib/hardened-mailhost/mta-sts/mta-sts.txt") \
        == len(instances), flat[-3000:]
    # Nothing changed: still no certificate, no policy file on the controller.
    assert {i.name: host_state(i) for i in instances} == before
    for path in policies:
        assert not os.path.exists(path)

    # Without the pending paths the postfix role's certificate check refuses.
    rc, out, _seconds = site_check("-e", '{"acme_pending_paths": []}')
    flat = " ".join(out.split())
    assert rc != 0, flat[-3000:]
    assert "Not found on the host: %s, %s" % (STABLE["cert"], STABLE["key"]) in flat, flat[-3000:]
    assert {i.name: host_state(i) for i in instances} == before


def test_certificates_are_back_after_the_check_run():
    """The fixture put everything back: the mail port presents a certificate again."""
    for instance in load_instances():
        assert instance.run("test", "-e", STABLE["cert"], check=False).returncode == 0
        assert instance.run("sh", "-c", "echo | openssl s_client -connect 127.0.0.1:465 2>/dev/null"
                            " | grep -c 'BEGIN CERTIFICATE'", check=False).stdout.strip() == "1"
