"""check_dns.yml run by ansible-playbook against a real authoritative server (Debian's nsd).

Two mail hosts' records are written with mail_dns_records (keys from dkim_key),
nsd on 127.0.0.1 at a free high port serves the generated zone snippets, and:
- checkdmarc (with a resolver that asks only that nsd) parses the SPF and DMARC
  records as they are served;
- check_dns.yml finds no difference; after the zone is changed it lists each
  difference and fails, or only warns with check_dns_warn_only=true.
"""

import json
import os
import subprocess

import pytest
from checkdmarc import dmarc as cd_dmarc
from checkdmarc import spf as cd_spf

import module_runner
from nsd_server import NsdServer, needs_nsd, zone_sections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SERVED = ["example.org", "example.net"]
INVENTORY = {"mailhosts": {"hosts": {"mx1": {}, "mx2": {}}}}


def playbook(tmp_path, **extra):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(INVENTORY))
    env = dict(os.environ,
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    extra = dict(dict(hardened_mailhost_dns_dir=str(tmp_path / "dns")), **extra)
    argv = ["ansible-playbook", os.path.join(ROOT, "playbooks", "check_dns.yml"),
            "-i", str(inventory), "-e", json.dumps(extra)]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, stdin=subprocess.DEVNULL)


def write_host_records(tmp_path, host, domain, ipv4):
    keys, _proc = module_runner.run_module("dkim_key", tmp_path, domain=domain, served_domains=SERVED,
                                           key_dir=str(tmp_path / ("keys-" + host)))
    assert keys["changed"], keys
    made, _proc = module_runner.run_module(
        "mail_dns_records", tmp_path, host=host, dest=str(tmp_path / "dns"), domains=[domain],
        served_domains=SERVED, mail_host="mail.%s" % domain, mail_host_ipv4=[ipv4],
        dkim=keys["dns_records"], dmarc_policy="reject", dmarc_rua=["dmarc@%s" % domain])
    assert made["changed"], made
    with open(made["files"]["zone"]) as handle:
        return zone_sections(handle.read())


@pytest.fixture
def served(tmp_path):
    zones = {}
    zones.update(write_host_records(tmp_path, "mx1", "example.org", "192.0.2.10"))
    zones.update(write_host_records(tmp_path, "mx2", "example.net", "192.0.2.20"))
    assert sorted(zones) == sorted(SERVED)
    server = NsdServer(tmp_path / "nsd", zones).start()
    try:
        yield server, zones
    finally:
        server.stop()


@needs_nsd
def test_spf_and_dmarc_as_served_parse_with_checkdmarc(served):
    server, _zones = served
    resolver = server.resolver()
    answer = resolver.resolve("example.org.", "TXT")
    spf_text = [b"".join(r.strings).decode() for r in answer][0]
    parsed = cd_spf.parse_spf_record(spf_text, "example.org", resolver=resolver)
    # The mx mechanism was resolved through nsd: the MX host and its address.
    assert parsed["dns_lookups"] == 1
    assert parsed["parsed"]["all"] == "fail"
    mx = parsed["parsed"]["mechanisms"]
    assert [(m["mechanism"], m["action"]) for m in mx] == [("mx", "pass")]
    assert mx[0]["hosts"] == [{"preference": 10, "hostname": "mail.example.org"}]
    assert parsed["warnings"] == []
    answer = resolver.resolve("_dmarc.example.net.", "TXT")
    dmarc_text = [b"".join(r.strings).decode() for r in answer][0]
    parsed = cd_dmarc.parse_dmarc_record(dmarc_text, "example.net", resolver=resolver)
    assert parsed["tags"]["p"]["value"] == "reject"
    assert parsed["tags"]["rua"]["value"][0]["address"] == "dmarc@example.net"
    # The checker does refuse a broken record (so the passes above mean something).
    with pytest.raises(cd_dmarc.DMARCError):
        cd_dmarc.parse_dmarc_record("v=DMARC1; p=maybe", "example.net", resolver=resolver)
    with pytest.raises(cd_spf.SPFError):
        cd_spf.parse_spf_record("v=spf1 mx -al", "example.org", resolver=resolver)


@needs_nsd
def test_check_dns_playbook_passes_then_reports_each_difference(tmp_path, served):
    server, zones = served
    ok = playbook(tmp_path, check_dns_resolver="127.0.0.1", check_dns_port=server.port)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "mx1: DNS answers every record the host needs" in ok.stdout
    assert "mx2: DNS answers every record the host needs" in ok.stdout

    changed = dict(zones)
    changed["example.org"] = (zones["example.org"].replace('"v=spf1 mx -all"', '"v=spf1 mx ~all"')
                              + 'example.org. 300 IN TXT "v=spf1 a -all"\n')
    changed["example.net"] = "\n".join(line for line in zones["example.net"].splitlines()
                                       if not line.startswith("_mta-sts.")) + "\n"
    server.restart(changed)
    bad = playbook(tmp_path, check_dns_resolver="127.0.0.1", check_dns_port=server.port)
    out = " ".join((bad.stdout + bad.stderr).split())  # the YAML callback wraps long lines
    assert bad.returncode != 0, out
    assert "mx1: 2 differences" in out
    assert "mx2: 1 difference" in out and "mx2: 1 differences" not in out
    assert "example.org. TXT (SPF) different: expected [v=spf1 mx -all], found [v=spf1 mx ~all]" in out
    assert "example.org. TXT (SPF) extra: not needed, found [v=spf1 a -all]" in out
    assert "_mta-sts.example.net. TXT (MTA-STS) missing: expected [v=STSv1; id=" in out
    assert "DNS differs from the generated records for mx1, mx2 (3 differences" in out

    warned = playbook(tmp_path, check_dns_resolver="127.0.0.1", check_dns_port=server.port,
                      check_dns_warn_only=True, check_dns_hosts="mx2")
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert "WARNING: DNS differs from the generated records for mx2" in warned.stdout
    assert "mx1" not in warned.stdout.replace("mx1.", "")


def test_check_dns_playbook_without_records_file_fails_clearly(tmp_path):
    result = playbook(tmp_path, check_dns_port=1)
    assert result.returncode != 0
    assert "cannot read the records file" in result.stdout
