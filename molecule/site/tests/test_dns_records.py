"""The DNS records site.yml writes for the operator (issue 15), per host.

The scenario sets hardened_mailhost_dns_dir to one folder shared by the three
hosts, so each host's run of mail_dns_records writes its own files beside the
others'. The site scenario does not enable DKIM, so no DKIM record may appear;
the records a mail domain needs without it must (MX, SPF, DMARC, MTA-STS,
TLS-RPT), the zone snippet must parse, and the MTA-STS policy must name this
host as the MX.
"""

import os
import stat

import dns.rdataclass
import dns.rdatatype
import dns.zone


def files(ephemeral_dir, instance):
    folder = os.path.join(ephemeral_dir, "shared", "dns")
    return {ext: os.path.join(folder, "%s.%s" % (instance.name, ext)) for ext in ("zone", "records", "mta-sts.txt")}


def fqdn(instance):
    return instance.run("python3", "-c", "import socket; print(socket.getfqdn())").stdout.strip()


def test_each_host_has_its_own_private_files(ephemeral_dir, instance):
    for path in files(ephemeral_dir, instance).values():
        assert os.path.isfile(path), path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_records_name_what_the_domain_needs_and_no_dkim(ephemeral_dir, instance):
    with open(files(ephemeral_dir, instance)["records"], encoding="utf-8") as handle:
        lines = [line.split(None, 2) for line in handle if line.strip() and not line.startswith(";")]
    found = {(name.lower(), rtype) for name, rtype, _ in lines}
    values = {(name.lower(), rtype): value for name, rtype, value in lines}
    for wanted in [("example.test.", "MX"), ("example.test.", "TXT"), ("_dmarc.example.test.", "TXT"),
                   ("_mta-sts.example.test.", "TXT"), ("_smtp._tls.example.test.", "TXT")]:
        assert wanted in found, "%s missing from %s" % (wanted, sorted(found))
    assert fqdn(instance) in values[("example.test.", "MX")]
    assert "v=spf1 mx -all" in values[("example.test.", "TXT")]
    assert "p=quarantine" in values[("_dmarc.example.test.", "TXT")]
    assert not [name for name, _ in found if "._domainkey." in name], "DKIM records without dkim_enabled"


def test_zone_snippet_parses_and_txt_strings_fit(ephemeral_dir, instance):
    with open(files(ephemeral_dir, instance)["zone"], encoding="utf-8") as handle:
        snippet = handle.read()
    zone = dns.zone.from_text(snippet, origin="example.test.", relativize=False, check_origin=False)
    txt = 0
    for _name, node in zone.nodes.items():
        for rds in node.rdatasets:
            if rds.rdtype == dns.rdatatype.TXT and rds.rdclass == dns.rdataclass.IN:
                for rdata in rds:
                    txt += 1
                    assert all(len(part) <= 255 for part in rdata.strings)
    assert txt >= 4


def test_mta_sts_policy_names_this_host(ephemeral_dir, instance):
    with open(files(ephemeral_dir, instance)["mta-sts.txt"], "rb") as handle:
        policy = handle.read().decode("ascii")
    lines = policy.split("\r\n")
    assert "version: STSv1" in lines
    assert "mode: testing" in lines
    assert "mx: %s" % fqdn(instance) in lines


def test_no_host_wrote_another_hosts_file(ephemeral_dir, instance):
    """Three hosts wrote into one folder: each file names its own host only."""
    folder = os.path.join(ephemeral_dir, "shared", "dns")
    mine = os.path.basename(files(ephemeral_dir, instance)["zone"])
    others = [n for n in os.listdir(folder) if n.endswith(".zone") and n != mine]
    assert others, "the other hosts' zone snippets are missing"
    for name in others:
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            assert fqdn(instance) not in handle.read(), name
