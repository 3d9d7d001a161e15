"""ACME with the portal, and the MTA-STS policy over HTTPS (issue 15).

The converge ran site.yml once with acme_enabled against Debian's pebble on
each host (prepare_tasks.yml): HTTP-01 through the portal's nginx (webroot)
for the host's name and mta-sts.example.test. It was the first run, so the
MTA-STS policy that site.yml's DNS step writes on the controller
(hardened_mailhost_dns_dir) did not exist when the acme role checked its
settings; the run still passed and nginx serves the policy. Here, through the
container's published ports, as a sending MTA would see it:

- https://mta-sts.example.test/.well-known/mta-sts.txt answers 200 text/plain
  with exactly the policy the DNS step wrote, over pebble's certificate for
  that name (verified against the running pebble's root); its mode and mx
  lines are the settings' and its hash is the id in the _mta-sts TXT record;
- plain HTTP only redirects to HTTPS; any other path on that name is 404;
- Postfix 465, Dovecot 993 and the portal (443, the host's name) present the
  same ACME certificate.

The check-mode run of site.yml on a host without any certificate yet is in
test_site_check_mode.py (it runs last: it moves the certificates away).
"""

import hashlib
import http.client
import os
import re
import socket

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from hmtest.acme import live_certificate, pebble_root, served_certificate, verifying_context

DOMAIN = "example.test"
POLICY_HOST = "mta-sts." + DOMAIN
POLICY_PATH = "/.well-known/mta-sts.txt"


@pytest.fixture(scope="module")
def acme(instance, ephemeral_dir):
    """Per platform: pebble's root, the host's name, the live certificate and the DNS files."""
    dns = os.path.join(ephemeral_dir, "dns", instance.name)
    with open(dns + ".mta-sts.txt", "rb") as handle:
        policy = handle.read()
    with open(dns + ".records", encoding="utf-8") as handle:
        records = handle.read()
    return {
        "root": pebble_root(instance),
        "fqdn": instance.run("hostname", "--fqdn").stdout.strip(),
        "live": live_certificate(instance),
        "policy": policy,
        "records": records,
    }


def https_get(instance, root, host, path):
    """GET ``path`` from the published 443 with SNI and Host ``host``, trusting only
    pebble's ``root``; returns (status, headers, body, leaf certificate)."""
    ctx = verifying_context(root)
    with socket.create_connection(("127.0.0.1", instance.port(443)), timeout=30) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body, leaf


def policy_fields(text):
    fields = {}
    for line in text.split("\r\n"):
        if line:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def test_certificate_is_pebbles_for_the_host_and_mta_sts_name(instance, acme):
    live = acme["live"]
    sans = live.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted([acme["fqdn"], POLICY_HOST])
    assert live.issuer != live.subject
    assert "Pebble" in live.issuer.rfc4514_string(), live.issuer.rfc4514_string()


def test_policy_served_over_https_with_the_acme_certificate(instance, acme):
    status, headers, body, leaf = https_get(instance, acme["root"], POLICY_HOST, POLICY_PATH)
    assert status == 200, (status, body[:200])
    assert headers.get("content-type", "").split(";")[0].strip() == "text/plain", headers
    assert leaf == acme["live"]
    # Exactly the file site.yml's DNS step wrote on the controller.
    assert body == acme["policy"]
    fields = policy_fields(body.decode("ascii"))
    assert fields["version"] == ["STSv1"]
    assert fields["mode"] == ["testing"]  # hardened_mailhost_mta_sts_mode's default
    assert fields["mx"] == [acme["fqdn"]]  # the mail host: the host's FQDN
    # ... which is what the MX records the DNS step wrote name.
    mx = [line.split()[-1].rstrip(".") for line in acme["records"].splitlines()
          if line.lower().startswith("%s. mx " % DOMAIN)]
    assert sorted(fields["mx"]) == sorted(mx), acme["records"]
    assert int(fields["max_age"][0]) > 0


def test_policy_id_in_the_txt_record_matches_the_served_policy(instance, acme):
    """mail_dns_records derives the id from the policy text; the TXT record the
    operator publishes must name the policy that is served (a stale file on
    the host would not match)."""
    txt = [line for line in acme["records"].splitlines() if line.lower().startswith("_mta-sts.%s. txt " % DOMAIN)]
    assert len(txt) == 1, acme["records"]
    match = re.search(r"v=STSv1; id=([A-Za-z0-9]{1,32})\"?$", txt[0])
    assert match, txt
    _status, _headers, body, _leaf = https_get(instance, acme["root"], POLICY_HOST, POLICY_PATH)
    assert match.group(1) == hashlib.sha256(body).hexdigest()[:20]


def test_policy_name_verifies_only_with_pebbles_root(instance, acme):
    """The chain verifies against the running pebble's root and nothing else:
    with the system's roots the handshake is refused."""
    import ssl

    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", instance.port(443)), timeout=30) as sock:
            with ssl.create_default_context().wrap_socket(sock, server_hostname=POLICY_HOST):
                pass


def test_plain_http_only_redirects_to_https(instance, acme):
    conn = http.client.HTTPConnection("127.0.0.1", instance.port(80), timeout=30)
    try:
        conn.request("GET", POLICY_PATH, headers={"Host": POLICY_HOST})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 301, (response.status, body[:200])
    assert response.getheader("Location") == "https://%s%s" % (POLICY_HOST, POLICY_PATH)
    assert b"STSv1" not in body


@pytest.mark.parametrize("path", ["/", "/.well-known/mta-sts.txt.bak", "/.well-known/other.txt", "/mta-sts.txt"])
def test_other_paths_on_the_policy_name_are_404(instance, acme, path):
    status, _headers, body, _leaf = https_get(instance, acme["root"], POLICY_HOST, path)
    assert status == 404, (path, status)
    assert b"STSv1" not in body


def test_mail_ports_and_portal_present_the_acme_certificate(instance, acme):
    ctx = verifying_context(acme["root"])
    for port in (465, 993, 443):
        assert served_certificate(instance, port, ctx, acme["fqdn"]) == acme["live"], port
