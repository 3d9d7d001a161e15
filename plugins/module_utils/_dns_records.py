# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The DNS records a mail host needs, written for the operator, and compared with DNS.

Private API (leading underscore): plain Python, no Ansible import. Building and
rendering the records needs only the standard library; ``compare()`` (the check
against a resolver) needs dnspython on the controller.

One record is a dict ``{zone, name, type, ttl, value}``: ``zone`` the served
domain whose zone holds it, ``name`` the absolute owner name with a trailing
dot, ``value`` the presentation form (a TXT value as one or more quoted
strings of at most 255 characters each).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress
import os
import re

from ansible_collections.hardened.mailhost.plugins.module_utils import _controller_files

TXT_CHUNK = 255
LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LOCAL_PART_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
STS_ID_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")
DKIM_VALUE_RE = re.compile(r"^v=DKIM1;\s*k=(rsa|ed25519);\s*p=[A-Za-z0-9+/]+={0,2}$")
DMARC_POLICIES = ("none", "quarantine", "reject")
STS_MODES = ("enforce", "testing", "none")
# The record types each generated owner name may hold, for the comparison:
# an answer of the same kind that the host does not need is "extra".
TXT_TAGS = (("v=spf1", "SPF"), ("v=dmarc1", "DMARC"), ("v=dkim1", "DKIM"),
            ("v=stsv1", "MTA-STS"), ("v=tlsrptv1", "TLS-RPT"))


class RecordsError(Exception):
    """Bad input; the message is user-facing."""


# ---------------------------------------------------------------- validation

def domain_name(value, what="domain"):
    """Return ``value`` as a lower-case domain name without the trailing dot, or refuse it."""
    if not isinstance(value, str) or not value.strip():
        raise RecordsError("%s must be a domain name" % what)
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(LABEL_RE.match(lab) for lab in labels):
        raise RecordsError("%s %r is not a domain name" % (what, value))
    return name


def mail_address(value, what):
    """Return ``value`` (``local@domain``, optional ``mailto:``) as an address, or refuse it."""
    text = value.strip() if isinstance(value, str) else ""
    if text.lower().startswith("mailto:"):
        text = text[len("mailto:"):]
    local, sep, domain = text.rpartition("@")
    if not sep or not LOCAL_PART_RE.match(local) or len(local) > 64:
        raise RecordsError("%s %r is not an e-mail address" % (what, value))
    try:
        domain = domain_name(domain)
    except RecordsError:
        raise RecordsError("%s %r is not an e-mail address" % (what, value))
    return "%s@%s" % (local, domain)


def _in_zone(name, zones):
    """The served domain whose zone holds ``name`` (the longest match), or None."""
    best = None
    for zone in zones:
        if name == zone or name.endswith("." + zone):
            if best is None or len(zone) > len(best):
                best = zone
    return best


# ---------------------------------------------------------------- TXT presentation

def txt_strings(text, size=TXT_CHUNK):
    """Split ``text`` into character-strings of at most ``size`` bytes (RFC 1035 limit 255)."""
    data = text.encode("utf-8")
    if not data:
        return [b""]
    return [data[i:i + size] for i in range(0, len(data), size)]


def _quote(chunk):
    out = []
    for byte in bytearray(chunk):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append("\\%03d" % byte)
    return '"%s"' % "".join(out)


def txt_value(text):
    """Presentation form of a TXT value: quoted strings of at most 255 characters, space-separated."""
    return " ".join(_quote(chunk) for chunk in txt_strings(text))


# ---------------------------------------------------------------- building

class Settings(object):
    """The options of one host's records, validated; every problem is named at once."""

    def __init__(self, domains, mail_host, served_domains=None, mail_host_ipv4=None,
                 mail_host_ipv6=None, dkim=None, spf="v=spf1 mx -all", dmarc_policy="quarantine",
                 dmarc_rua=None, mta_sts_mode="testing", mta_sts_id=None, mta_sts_max_age=604800,
                 mta_sts_mx=None, mta_sts_web_host=None, tlsrpt_rua=None, mx_priority=10, ttl=3600):
        problems = []

        def check(func, *args):
            try:
                return func(*args)
            except RecordsError as exc:
                problems.append(str(exc))
                return None

        served = [check(domain_name, d, "served domain") for d in (served_domains or domains or [])]
        self.served = [d for d in served if d]
        self.domains = []
        for value in domains or []:
            name = check(domain_name, value)
            if name is None:
                continue
            if name not in self.served:
                problems.append("%s is not a domain this host serves (served: %s)"
                                % (name, ", ".join(self.served)))
            elif name not in self.domains:
                self.domains.append(name)
        if not domains:
            problems.append("domains is empty; list the mail domains to write records for")
        self.mail_host = check(domain_name, mail_host, "mail_host")
        self.ipv4 = []
        for value in mail_host_ipv4 or []:
            try:
                self.ipv4.append(str(ipaddress.IPv4Address(value)))
            except ValueError:
                problems.append("mail_host_ipv4 %r is not an IPv4 address" % value)
        self.ipv6 = []
        for value in mail_host_ipv6 or []:
            try:
                self.ipv6.append(str(ipaddress.IPv6Address(value)))
            except ValueError:
                problems.append("mail_host_ipv6 %r is not an IPv6 address" % value)
        self.dkim = []
        for item in dkim or []:
            if not isinstance(item, dict):
                problems.append("each dkim item needs domain, selector and value")
                continue
            dom = check(domain_name, item.get("domain"), "dkim domain")
            selector = item.get("selector")
            value = item.get("value")
            if dom is not None and dom not in self.served:
                problems.append("dkim domain %s is not a domain this host serves" % dom)
            if not isinstance(selector, str) or not SELECTOR_RE.match(selector):
                problems.append("dkim selector %r must be 1 to 63 characters of a-z, 0-9 and '-', "
                                "not starting or ending with '-'" % (selector,))
            if not isinstance(value, str) or not DKIM_VALUE_RE.match(value.strip()):
                problems.append("dkim value for selector %r is not a DKIM key record "
                                "(v=DKIM1; k=rsa|ed25519; p=<base64>)" % (selector,))
            else:
                value = value.strip()
            self.dkim.append({"domain": dom, "selector": selector, "value": value})
        if not isinstance(spf, str) or not spf.startswith("v=spf1") or (len(spf) > 6 and spf[6] != " "):
            problems.append("spf %r must start with 'v=spf1 '" % (spf,))
        self.spf = spf
        if dmarc_policy not in DMARC_POLICIES:
            problems.append("dmarc_policy must be one of %s" % ", ".join(DMARC_POLICIES))
        self.dmarc_policy = dmarc_policy
        self.dmarc_rua = [a for a in (check(mail_address, v, "dmarc_rua address")
                                      for v in _as_list(dmarc_rua)) if a]
        self.tlsrpt_rua = ([a for a in (check(mail_address, v, "tlsrpt_rua address")
                                        for v in _as_list(tlsrpt_rua)) if a]
                           if tlsrpt_rua is not None else list(self.dmarc_rua))
        if mta_sts_mode not in STS_MODES:
            problems.append("mta_sts_mode must be one of %s" % ", ".join(STS_MODES))
        self.mta_sts_mode = mta_sts_mode
        if mta_sts_id is not None and not STS_ID_RE.match(str(mta_sts_id)):
            problems.append("mta_sts_id must be 1 to 32 letters and digits")
        self.mta_sts_id = None if mta_sts_id is None else str(mta_sts_id)
        if not isinstance(mta_sts_max_age, int) or not 86400 <= mta_sts_max_age <= 31557600:
            problems.append("mta_sts_max_age must be between 86400 (1 day) and 31557600 (1 year)")
        self.mta_sts_max_age = mta_sts_max_age
        self.mta_sts_mx = []
        for value in (mta_sts_mx if mta_sts_mx else [mail_host]):
            pattern = value.strip().rstrip(".").lower() if isinstance(value, str) else value
            body = pattern[2:] if isinstance(pattern, str) and pattern.startswith("*.") else pattern
            if check(domain_name, body, "mta_sts_mx entry") is not None:
                self.mta_sts_mx.append(pattern)
        self.mta_sts_web_host = (check(domain_name, mta_sts_web_host, "mta_sts_web_host")
                                 if mta_sts_web_host else None)
        if not isinstance(mx_priority, int) or not 0 <= mx_priority <= 65535:
            problems.append("mx_priority must be 0 to 65535")
        self.mx_priority = mx_priority
        if not isinstance(ttl, int) or not 60 <= ttl <= 604800:
            problems.append("ttl must be between 60 and 604800 seconds")
        self.ttl = ttl
        if problems:
            raise RecordsError("; ".join(problems) + "; nothing was written")


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def mta_sts_policy(settings):
    """The text of ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (RFC 8461, CRLF lines)."""
    lines = ["version: STSv1", "mode: %s" % settings.mta_sts_mode]
    lines += ["mx: %s" % mx for mx in settings.mta_sts_mx]
    lines.append("max_age: %d" % settings.mta_sts_max_age)
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(settings):
    """The policy id: given, or derived from the policy text so it changes exactly when the policy does."""
    if settings.mta_sts_id:
        return settings.mta_sts_id
    return hashlib.sha256(mta_sts_policy(settings).encode("ascii")).hexdigest()[:20]


def build(settings):
    """Return (records, notes): every record the host needs, and advice that is not a record."""
    records = []
    notes = []
    ttl = settings.ttl

    def add(zone, name, rtype, value):
        records.append({"zone": zone, "name": name.rstrip(".") + ".", "type": rtype,
                        "ttl": ttl, "value": value})

    host_zone = _in_zone(settings.mail_host, settings.served)
    if settings.ipv4 or settings.ipv6:
        if host_zone:
            for addr in settings.ipv4:
                add(host_zone, settings.mail_host, "A", addr)
            for addr in settings.ipv6:
                add(host_zone, settings.mail_host, "AAAA", addr)
        else:
            notes.append("%s is in no served domain: publish its A/AAAA (and PTR) records in its "
                         "own zone" % settings.mail_host)
    policy_id = mta_sts_id(settings)
    for domain in settings.domains:
        add(domain, domain, "MX", "%d %s." % (settings.mx_priority, settings.mail_host))
        add(domain, domain, "TXT", txt_value(settings.spf))
        dmarc = "v=DMARC1; p=%s" % settings.dmarc_policy
        if settings.dmarc_rua:
            dmarc += "; rua=%s" % ",".join("mailto:" + a for a in settings.dmarc_rua)
        add(domain, "_dmarc." + domain, "TXT", txt_value(dmarc))
        for item in settings.dkim:
            if item["domain"] == domain:
                add(domain, "%s._domainkey.%s" % (item["selector"], domain), "TXT",
                    txt_value(item["value"]))
        add(domain, "_mta-sts." + domain, "TXT", txt_value("v=STSv1; id=%s" % policy_id))
        if settings.mta_sts_web_host:
            add(domain, "mta-sts." + domain, "CNAME", settings.mta_sts_web_host + ".")
        else:
            notes.append("mta-sts.%s must serve the MTA-STS policy file over HTTPS with a valid "
                         "certificate (see docs/dns.md)" % domain)
        if settings.tlsrpt_rua:
            add(domain, "_smtp._tls." + domain, "TXT",
                txt_value("v=TLSRPTv1; rua=%s" % ",".join("mailto:" + a for a in settings.tlsrpt_rua)))
        # RFC 7489 7.1: a report address in another domain must authorise this one.
        for address in settings.dmarc_rua:
            rua_domain = address.rpartition("@")[2]
            if rua_domain == domain or rua_domain.endswith("." + domain):
                continue
            zone = _in_zone(rua_domain, settings.served)
            name = "%s._report._dmarc.%s" % (domain, rua_domain)
            if zone:
                add(zone, name, "TXT", txt_value("v=DMARC1"))
            else:
                notes.append("%s must publish TXT \"v=DMARC1\" at %s to accept %s's reports"
                             % (rua_domain, name, domain))
    # One record once (two domains may share an authorisation record).
    unique = []
    seen = set()
    for rec in records:
        key = (rec["name"], rec["type"], rec["value"])
        if key not in seen:
            seen.add(key)
            unique.append(rec)
    return unique, notes


# ---------------------------------------------------------------- rendering

def zone_snippet(records, host):
    """A zone-file snippet: one section per zone, absolute names, ready to paste or $INCLUDE."""
    lines = ["; DNS records for the mail host %s, written by hardened.mailhost.mail_dns_records." % host,
             "; Names are absolute (trailing dot). TXT values are split into strings of at most",
             "; 255 characters; resolvers join them back into one value."]
    for zone in sorted(set(r["zone"] for r in records)):
        lines.append("")
        lines.append("; ---- zone %s." % zone)
        for rec in records:
            if rec["zone"] == zone:
                lines.append("%s\t%d\tIN\t%s\t%s" % (rec["name"], rec["ttl"], rec["type"], rec["value"]))
    return "\n".join(lines) + "\n"


def plain_lines(records):
    """The same records as ``name TYPE value`` lines (what a DNS provider's web form asks for)."""
    return "".join("%s %s %s\n" % (r["name"], r["type"], r["value"]) for r in records)


def parse_plain_lines(text):
    """Read ``plain_lines()`` output back into ``[(name, type, value)]`` (comments and blanks skipped)."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";") or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) != 3:
            raise RecordsError("line %d of the records file is not 'name TYPE value'" % number)
        out.append((parts[0].lower(), parts[1].upper(), parts[2]))
    return out


def file_paths(dest, host):
    """Where the records of ``host`` are written in folder ``dest``."""
    if not host or "/" in host or host.startswith("."):
        raise RecordsError("host %r cannot name a file" % (host,))
    base = os.path.join(dest, host)
    return {"zone": base + ".zone", "records": base + ".records", "mta_sts_policy": base + ".mta-sts.txt"}


def write(settings, dest, host, owner=None, check_mode=False):
    """Write the host's three files; return (changed, paths, records, notes, texts)."""
    records, notes = build(settings)
    paths = file_paths(dest, host)
    texts = {"zone": zone_snippet(records, host), "records": plain_lines(records),
             "mta_sts_policy": mta_sts_policy(settings)}
    changed = False
    order = ("mta_sts_policy", "zone", "records")
    try:
        # A dry pass first: a file held by another host refuses the run before any is written.
        for key in order:
            changed |= _controller_files.write_owned_file(paths[key], texts[key], owner or host,
                                                          mode=0o600, check_mode=True)
        if changed and not check_mode:
            for key in order:
                _controller_files.write_owned_file(paths[key], texts[key], owner or host, mode=0o600)
    except _controller_files.ControllerFileError as exc:
        raise RecordsError(str(exc))
    return changed, paths, records, notes, texts


# ---------------------------------------------------------------- comparison with DNS

def _txt_join(rdata):
    return b"".join(rdata.strings).decode("utf-8", "replace")


def _kind_of(text):
    low = text.lower().replace(" ", "")
    for tag, kind in TXT_TAGS:
        if low.startswith(tag.replace(" ", "")):
            return kind
    return None


def compare(expected, resolver_ip, port=53, timeout=3.0):
    """Ask ``resolver_ip``:``port`` for every expected (name, type); return the differences.

    ``expected`` is ``[(name, type, presentation value)]``. Each difference is
    ``{name, type, problem, expected, found}`` with problem ``missing`` (nothing
    answered), ``different`` (an answer of the same kind with another value) or
    ``extra`` (an answer of the same kind the host does not need, such as a
    second SPF record). TXT records of another kind (site verifications) and
    answers at names the host does not need are ignored.
    """
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.rcode

    wanted = {}
    order = []
    for name, rtype, value in expected:
        key = (name.lower().rstrip(".") + ".", rtype.upper())
        if key not in wanted:
            wanted[key] = []
            order.append(key)
        try:
            rdtype = dns.rdatatype.from_text(key[1])
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value)
        except dns.exception.DNSException as exc:
            raise RecordsError("the expected record %s %s %s cannot be read: %s"
                               % (name, rtype, value, exc))
        wanted[key].append(rdata)

    differences = []
    answered = 0
    for name, rtype in order:
        rdtype = dns.rdatatype.from_text(rtype)
        query = dns.message.make_query(dns.name.from_text(name), rdtype)
        try:
            response = dns.query.udp(query, resolver_ip, port=port, timeout=timeout)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, resolver_ip, port=port, timeout=timeout)
        except (dns.exception.Timeout, OSError) as exc:
            raise RecordsError("the resolver %s port %d did not answer for %s %s: %s"
                               % (resolver_ip, port, name, rtype, exc or "timeout"))
        answered += 1
        found = []
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise RecordsError("the resolver %s port %d answered %s for %s %s"
                               % (resolver_ip, port, dns.rcode.to_text(response.rcode()), name, rtype))
        for rrset in response.answer:
            if rrset.rdtype == rdtype and rrset.name == dns.name.from_text(name):
                found.extend(rrset)
        differences.extend(_differences(name, rtype, wanted[(name, rtype)], found))
    return differences, answered


def _differences(name, rtype, want, found):
    out = []
    if rtype == "TXT":
        want_text = [_txt_join(r) for r in want]
        found_text = [_txt_join(r) for r in found]
        for text in want_text:
            if text in found_text:
                continue
            same_kind = [f for f in found_text if _kind_of(f) == _kind_of(text) and f not in want_text]
            if same_kind:
                out.append({"name": name, "type": rtype, "problem": "different",
                            "kind": _kind_of(text), "expected": text, "found": same_kind[0]})
            else:
                out.append({"name": name, "type": rtype, "problem": "missing",
                            "kind": _kind_of(text), "expected": text, "found": None})
        reported = set(d["found"] for d in out)
        kinds = set(_kind_of(t) for t in want_text)
        for text in found_text:
            if text in want_text or text in reported or _kind_of(text) not in kinds:
                continue
            out.append({"name": name, "type": rtype, "problem": "extra", "kind": _kind_of(text),
                        "expected": None, "found": text})
        return out
    want_text = sorted(r.to_text().lower() for r in want)
    found_text = sorted(r.to_text().lower() for r in found)
    for text in want_text:
        if text not in found_text:
            out.append({"name": name, "type": rtype, "problem": "missing" if not found_text else "different",
                        "kind": rtype, "expected": text,
                        "found": ", ".join(found_text) if found_text else None})
    if any(d["problem"] == "different" for d in out):
        return out
    for text in found_text:
        if text not in want_text:
            out.append({"name": name, "type": rtype, "problem": "extra", "kind": rtype,
                        "expected": None, "found": text})
    return out
