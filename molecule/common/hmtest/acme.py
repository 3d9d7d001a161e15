"""ACME in the tests: Debian's pebble on each container (molecule/common/pebble_tasks.yml)
and the certificates the acme role points the services at."""

import socket
import ssl

from cryptography import x509

LIVE = "/etc/letsencrypt/live/hardened-mailhost"
STABLE = {"cert": "/etc/ssl/hardened-mailhost/acme/fullchain.pem", "key": "/etc/ssl/hardened-mailhost/acme/privkey.pem"}
FALLBACK = {"cert": "/etc/ssl/hardened-mailhost/server.crt", "key": "/etc/ssl/hardened-mailhost/server.key"}
PEBBLE_BUNDLE = "/etc/hm-pebble/tls.crt"
HOOK = "/etc/letsencrypt/renewal-hooks/deploy/50-hardened-mailhost"


def wait_for_pebble(instance, tries=50):
    """True once pebble's management API (127.0.0.1:15000) accepts connections."""
    return instance.run("sh", "-c", "for i in $(seq %d); do python3 -c 'import socket;"
                        " socket.create_connection((\"127.0.0.1\", 15000), 1)' 2>/dev/null && exit 0;"
                        " sleep 0.2; done; exit 1" % tries, check=False).returncode == 0


def pebble_root(instance):
    """PEM of the root CA of the running pebble (a new one each time pebble starts)."""
    script = ("import ssl, urllib.request; ctx = ssl.create_default_context(cafile=%r);"
              " print(urllib.request.urlopen('https://127.0.0.1:15000/roots/0', context=ctx, timeout=10)"
              ".read().decode())" % PEBBLE_BUNDLE)
    return instance.run("python3", "-c", script).stdout


def live_certificate(instance):
    """The current certificate of the collection's certbot lineage."""
    return x509.load_pem_x509_certificate(instance.run("cat", LIVE + "/cert.pem").stdout.encode())


def served_certificate(instance, port, ctx, hostname):
    """Leaf certificate that ``port`` presents (through its published port) to ``ctx``."""
    with socket.create_connection(("127.0.0.1", instance.port(port)), timeout=30) as sock:
        with ctx.wrap_socket(sock, server_hostname=hostname) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def verifying_context(root_pem):
    """A client context that trusts only ``root_pem`` and checks the host name."""
    return ssl.create_default_context(cadata=root_pem)
