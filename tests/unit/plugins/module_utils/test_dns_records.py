"""The records a mail host needs: built, split, rendered, and parsed back by independent tools."""

import base64
import multiprocessing
import os

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from checkdmarc import mta_sts, smtp_tls_reporting
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ansible_collections.hardened.mailhost.plugins.module_utils import _dns_records as dr


def rsa_value(bits=2048):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def settings(**kw):
    args = dict(domains=["example.org", "example.net"], served_domains=["example.org", "example.net"],
                mail_host="mail.example.org",
                mail_host_ipv4=["192.0.2.10"], mail_host_ipv6=["2001:db8::10"],
                dkim=[{"domain": "example.org", "selector": "202612r", "value": rsa_value()},
                      {"domain": "example.org", "selector": "202612e",
                       "value": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}],
                dmarc_rua=["dmarc-reports@example.org"])
    args.update(kw)
    return dr.Settings(**args)


def test_txt_split_at_255_and_quoting():
    text = "a" * 255 + "b" * 300 + '"\\'
    value = dr.txt_value(text)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
    assert [len(s) for s in rdata.strings] == [255, 255, 47]
    assert b"".join(rdata.strings).decode() == text
    assert dr.txt_value("short") == '"short"'


def test_every_record_the_host_needs():
    records, notes = dr.build(settings())
    index = {}
    for rec in records:
        index.setdefault((rec["name"], rec["type"]), []).append(rec["value"])
    assert index[("example.org.", "MX")] == ["10 mail.example.org."]
    assert index[("example.net.", "MX")] == ["10 mail.example.org."]
    assert index[("mail.example.org.", "A")] == ["192.0.2.10"]
    assert index[("mail.example.org.", "AAAA")] == ["2001:db8::10"]
    assert index[("example.org.", "TXT")] == ['"v=spf1 mx -all"']
    assert index[("_dmarc.example.net.", "TXT")] == [
        '"v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.org"']
    assert index[("_smtp._tls.example.org.", "TXT")] == [
        '"v=TLSRPTv1; rua=mailto:dmarc-reports@example.org"']
    # example.net's reports go to example.org, which must say it accepts them.
    assert index[("example.net._report._dmarc.example.org.", "TXT")] == ['"v=DMARC1"']
    assert ("202612r._domainkey.example.org.", "TXT") in index
    assert ("202612r._domainkey.example.net.", "TXT") not in index
    sts = index[("_mta-sts.example.org.", "TXT")][0]
    assert sts.startswith('"v=STSv1; id=') and sts == index[("_mta-sts.example.net.", "TXT")][0]
    assert any("mta-sts.example.org" in n for n in notes)


def test_mta_sts_id_follows_the_policy():
    one = dr.mta_sts_id(settings())
    assert one == dr.mta_sts_id(settings())
    assert one != dr.mta_sts_id(settings(mta_sts_mode="enforce"))
    assert dr.mta_sts_id(settings(mta_sts_id="20261202")) == "20261202"


def test_mta_sts_policy_and_tlsrpt_parse_with_checkdmarc():
    s = settings(mta_sts_mode="enforce", mta_sts_mx=["mail.example.org", "*.backup.example.org"])
    parsed = mta_sts.parse_mta_sts_policy(dr.mta_sts_policy(s))
    assert parsed["policy"]["mode"] == "enforce"
    assert parsed["policy"]["mx"] == ["mail.example.org", "*.backup.example.org"]
    assert parsed["policy"]["max_age"] == 604800
    records, _notes = dr.build(s)
    sts = [r for r in records if r["name"] == "_mta-sts.example.org."][0]
    text = b"".join(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, sts["value"]).strings)
    assert mta_sts.parse_mta_sts_record(text.decode())["tags"]["id"] == dr.mta_sts_id(s)
    rpt = [r for r in records if r["name"] == "_smtp._tls.example.org."][0]
    text = b"".join(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, rpt["value"]).strings)
    parsed = smtp_tls_reporting.parse_smtp_tls_reporting_record(text.decode())
    assert parsed["tags"]["rua"]["value"] == ["mailto:dmarc-reports@example.org"]
    # The checker is strict enough to notice a broken policy.
    with pytest.raises(mta_sts.MTASTSPolicySyntaxError):
        mta_sts.parse_mta_sts_policy("version: STSv1\r\nmode: sometimes\r\n")


def test_zone_snippet_parses_with_dnspython_and_strings_fit():
    config = settings()
    records, _notes = dr.build(config)
    snippet = dr.zone_snippet(records, "mx1")
    total = 0
    for zone in ("example.org", "example.net"):
        parsed = dns.zone.from_text(snippet, origin=zone, relativize=False, check_origin=False)
        mine = [r for r in records if r["zone"] == zone]
        count = sum(len(rds) for _name, node in parsed.nodes.items() for rds in node.rdatasets)
        assert count == len(mine), zone
        total += count
        for _name, node in parsed.nodes.items():
            for rds in node.rdatasets:
                if rds.rdtype == dns.rdatatype.TXT:
                    for rdata in rds:
                        assert all(len(s) <= 255 for s in rdata.strings)
    assert total == len(records)
    dkim = dns.zone.from_text(snippet, origin="example.org", relativize=False, check_origin=False)
    rdata = list(dkim.find_rdataset("202612r._domainkey.example.org.", "TXT"))[0]
    assert len(rdata.strings) == 2  # a 2048-bit key needs two strings
    assert b"".join(rdata.strings).decode() == config.dkim[0]["value"]


def test_plain_lines_round_trip():
    records, _notes = dr.build(settings())
    lines = dr.plain_lines(records)
    parsed = dr.parse_plain_lines(lines)
    assert [(r["name"], r["type"], r["value"]) for r in records] == parsed
    with pytest.raises(dr.RecordsError, match="line 1"):
        dr.parse_plain_lines("example.org. TXT\n")


@pytest.mark.parametrize("kw, message", [
    (dict(domains=["foreign.test"]), "foreign.test is not a domain this host serves"),
    (dict(dkim=[{"domain": "example.org", "selector": "bad_sel", "value": "v=DKIM1; k=rsa; p=AAAA"}]),
     "dkim selector 'bad_sel'"),
    (dict(dkim=[{"domain": "foreign.test", "selector": "s1", "value": "v=DKIM1; k=rsa; p=AAAA"}]),
     "dkim domain foreign.test is not a domain this host serves"),
    (dict(dkim=[{"domain": "example.org", "selector": "s1", "value": "v=DKIM1; k=rsa; p=A A"}]),
     "is not a DKIM key record"),
    (dict(dmarc_rua=["postmaster"]), "dmarc_rua address 'postmaster' is not an e-mail address"),
    (dict(dmarc_rua=["a@b@example.org"]), "is not an e-mail address"),
    (dict(tlsrpt_rua=["mailto:x@"]), "tlsrpt_rua address"),
    (dict(dmarc_policy="maybe"), "dmarc_policy"),
    (dict(spf="v=spf2 -all"), "spf"),
    (dict(mail_host_ipv4=["300.1.1.1"]), "IPv4"),
    (dict(mta_sts_id="has space"), "mta_sts_id"),
    (dict(mail_host="not a host"), "mail_host"),
    (dict(domains=[]), "domains is empty"),
])
def test_bad_input_is_named(kw, message):
    with pytest.raises(dr.RecordsError, match="nothing was written") as info:
        settings(**kw)
    assert message in str(info.value)


def test_several_problems_are_named_at_once():
    with pytest.raises(dr.RecordsError) as info:
        settings(domains=["foreign.test"], dmarc_rua=["nobody"])
    assert "foreign.test" in str(info.value) and "nobody" in str(info.value)


def _write_host(args):
    dest, host = args
    s = dr.Settings(domains=["example.org"], mail_host="mail.example.org",
                    mail_host_ipv4=["192.0.2.%d" % (int(host[2:]) + 1)])
    return dr.write(s, dest, host)[0]


def test_many_forks_one_folder_one_file_per_host(tmp_path):
    dest = str(tmp_path / "dns")
    hosts = ["mx%d" % i for i in range(12)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        changed = pool.map(_write_host, [(dest, h) for h in hosts], chunksize=1)
    assert all(changed)
    for i, host in enumerate(hosts):
        text = open(os.path.join(dest, host + ".records")).read()
        assert "mail.example.org. A 192.0.2.%d\n" % (i + 1) in text
        assert oct(os.stat(os.path.join(dest, host + ".zone")).st_mode & 0o777) == "0o600"
    assert oct(os.stat(dest).st_mode & 0o777) == "0o700"
    leftovers = [n for n in os.listdir(dest) if n.startswith(".") and n != ".owners"]
    assert leftovers == []
    # Another host's file is never overwritten.
    s = dr.Settings(domains=["example.org"], mail_host="mail.example.org")
    with pytest.raises(dr.RecordsError, match="belongs to mx1"):
        dr.write(s, dest, "mx1", owner="mx2")
    # Nothing is written when only the last of the three files is held by another host.
    with open(os.path.join(dest, ".owners"), "a") as handle:
        handle.write("mx13.records\tsomeone-else\n")
    with pytest.raises(dr.RecordsError, match="belongs to someone-else"):
        dr.write(s, dest, "mx13")
    assert not [n for n in os.listdir(dest) if n.startswith("mx13.")]
