"""Module tests for hardened.mailhost.mail_dns_records and mail_dns_check, run as Ansible runs them."""

import os
import stat

import pytest

import module_runner
from nsd_server import NsdServer, needs_nsd, zone_sections

ED = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def args(tmp_path, **kw):
    base = dict(host="mx1", dest=str(tmp_path / "dns"), domains=["example.org"],
                served_domains=["example.org", "example.net"], mail_host="mail.example.org",
                mail_host_ipv4=["192.0.2.10"], dmarc_rua=["dmarc@example.org"],
                dkim=[{"domain": "example.org", "selector": "202612e", "value": ED,
                       "algorithm": "ed25519", "status": "active"}])
    base.update(kw)
    return base


def run(tmp_path, module="mail_dns_records", check=False, diff=False, **kw):
    return module_runner.run_module(module, tmp_path, check=check, diff=diff, timeout=60, **kw)[0]


def test_check_mode_real_run_repeat_and_diff(tmp_path):
    checked = run(tmp_path, check=True, diff=True, **args(tmp_path))
    assert checked["changed"] and not (tmp_path / "dns").exists()
    assert "202612e._domainkey.example.org. TXT" in checked["diff"]["after"]
    made = run(tmp_path, diff=True, **args(tmp_path))
    assert made["changed"]
    for key in ("zone", "records", "mta_sts_policy"):
        path = made["files"][key]
        assert os.path.basename(path).startswith("mx1.")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "dns").st_mode) == 0o700
    with open(made["files"]["mta_sts_policy"], newline="") as handle:
        assert handle.read() == "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
    again = run(tmp_path, diff=True, **args(tmp_path))
    assert again["changed"] is False
    assert again["diff"]["before"] == again["diff"]["after"]
    changed = run(tmp_path, diff=True, **args(tmp_path, spf="v=spf1 mx a -all"))
    assert changed["changed"] and '"v=spf1 mx a -all"' in changed["diff"]["after"]
    assert '"v=spf1 mx -all"' in changed["diff"]["before"]


@pytest.mark.parametrize("kw, message", [
    (dict(domains=["example.org", "foreign.test"]), "foreign.test is not a domain this host serves"),
    (dict(dkim=[{"domain": "example.org", "selector": "bad.sel", "value": ED}]), "dkim selector 'bad.sel'"),
    (dict(dmarc_rua=["reports at example.org"]), "is not an e-mail address"),
    (dict(host="../escape"), "cannot name a file"),
])
def test_bad_input_fails_and_writes_nothing(tmp_path, kw, message):
    result = run(tmp_path, **args(tmp_path, **kw))
    assert result["failed"] and message in result["msg"], result["msg"]
    assert not (tmp_path / "dns").exists()


def test_check_needs_the_records_file(tmp_path):
    result = run(tmp_path, module="mail_dns_check", records_file=str(tmp_path / "none.records"))
    assert result["failed"] and "cannot read the records file" in result["msg"]


@needs_nsd
def test_check_module_against_nsd_names_each_difference(tmp_path):
    made = run(tmp_path, **args(tmp_path, domains=["example.org", "example.net"]))
    with open(made["files"]["zone"]) as handle:
        zones = zone_sections(handle.read())
    server = NsdServer(tmp_path / "nsd", zones).start()
    try:
        ok = run(tmp_path, module="mail_dns_check", records_file=made["files"]["records"],
                 resolver="127.0.0.1", port=server.port)
        assert ok["differences"] == [] and ok["queries"] == len(made["records"])
        # Break it: another SPF policy at example.org plus a second SPF at example.net,
        # no DMARC at example.org, an extra MX, an old DKIM key, a foreign TXT (ignored).
        org = (zones["example.org"]
               .replace('"v=spf1 mx -all"', '"v=spf1 mx ~all"')
               .replace("\n_dmarc.example.org.", "\n_old-dmarc.example.org.")
               .replace("11qYAYKx", "22qYAYKx")
               + 'example.org. 300 IN MX 20 backup.example.org.\n'
               + 'example.org. 300 IN TXT "google-site-verification=abc"\n')
        net = zones["example.net"] + 'example.net. 300 IN TXT "v=spf1 include:spf.example.com -all"\n'
        server.restart({"example.org": org, "example.net": net})
        bad = run(tmp_path, module="mail_dns_check", records_file=made["files"]["records"],
                  resolver="127.0.0.1", port=server.port)
    finally:
        server.stop()
    found = sorted((d["name"], d["type"], d["problem"]) for d in bad["differences"])
    assert found == sorted([
        ("example.org.", "TXT", "different"),
        ("_dmarc.example.org.", "TXT", "missing"),
        ("example.org.", "MX", "extra"),
        ("202612e._domainkey.example.org.", "TXT", "different"),
        ("example.net.", "TXT", "extra"),
    ])
    spf = [d for d in bad["differences"] if d["name"] == "example.org." and d["type"] == "TXT"][0]
    assert (spf["kind"], spf["expected"], spf["found"]) == ("SPF", "v=spf1 mx -all", "v=spf1 mx ~all")
    assert len(bad["summary"]) == 5


def test_check_reports_an_unreachable_resolver(tmp_path):
    made = run(tmp_path, **args(tmp_path))
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never answers
        port = sock.getsockname()[1]
        result = run(tmp_path, module="mail_dns_check", records_file=made["files"]["records"],
                     resolver="127.0.0.1", port=port)
    assert result["failed"] and "did not answer" in result["msg"]
