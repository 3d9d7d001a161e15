#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mail_dns_records
short_description: Write the DNS records a mail host needs (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT) for the operator
version_added: 0.4.0
description:
  - Runs on the controller (a task delegated to C(localhost)). Builds every record the mail host
    O(host) needs for its O(domains) and writes three files into O(dest), one set per host
    so that many hosts (forks) can write into one folder at once.
  - C(<host>.zone) is a zone-file snippet with absolute names, one section per zone, to
    paste into a zone or C($INCLUDE). C(<host>.records) holds the same records as plain
    C(name TYPE value) lines, for a DNS provider's web form, and is what
    C(playbooks/check_dns.yml) compares with DNS. C(<host>.mta-sts.txt) is the MTA-STS policy
    file (RFC 8461) to serve at C(https://mta-sts.<domain>/.well-known/mta-sts.txt).
  - Every TXT value is split into quoted strings of at most 255 characters (a 2048-bit DKIM
    key does not fit in one).
  - Records made - MX (C(<domain> MX <priority> <mail_host>)), SPF at the domain, DMARC at
    C(_dmarc.<domain>), one DKIM TXT per selector of O(dkim) at C(<selector>._domainkey.<domain>),
    C(_mta-sts.<domain>) (id from the policy text, so it changes exactly when the policy
    does), TLS-RPT at C(_smtp._tls.<domain>) when there is a report address, A/AAAA of
    O(mail_host) when it is in a served domain, C(mta-sts.<domain>) CNAME when
    O(mta_sts_web_host) is given, and the DMARC report authorisation
    (C(<domain>._report._dmarc.<report domain>)) when the report address is in another served domain.
  - Files are written through a temporary file and one rename, mode C(0600) in a C(0700)
    folder; a file recorded for another host is never overwritten (the folder's C(.owners) ledger).
  - Bad input (a domain not in O(served_domains), a bad selector or DKIM value, a report
    address that is not an address) fails naming every problem, and nothing is written.
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Builds and returns the records, writes nothing.
  diff_mode:
    support: full
    details: The diff shows the plain records file before and after (public data only).
  idempotent:
    support: full
options:
  host:
    description: Name of the mail host in the inventory; names the files and owns them in the folder's ledger.
    type: str
    required: true
  dest:
    description: Folder on the controller for the files (made C(0700) when missing).
    type: path
    required: true
  domains:
    description: The mail domains to write records for.
    type: list
    elements: str
    required: true
  served_domains:
    description: The domains this host serves; every entry of O(domains) must be one. Defaults to O(domains).
    type: list
    elements: str
  mail_host:
    description: Fully qualified name of the mail host (the MX target and the MTA-STS C(mx) line).
    type: str
    required: true
  mail_host_ipv4:
    description: IPv4 addresses of O(mail_host), written as A records when it is in a served domain.
    type: list
    elements: str
    default: []
  mail_host_ipv6:
    description: IPv6 addresses of O(mail_host), written as AAAA records when it is in a served domain.
    type: list
    elements: str
    default: []
  dkim:
    description:
      - DKIM public keys to publish, each a dict with C(domain) (the signing domain, one of
        O(served_domains)), C(selector) (C(a-z), C(0-9), C(-)) and C(value) (the key record
        C(v=DKIM1; k=rsa|ed25519; p=<base64>)). Other keys are ignored, so
        RV(hardened.mailhost.dkim_key#module:dns_records) of M(hardened.mailhost.dkim_key)
        can be given as it is.
    type: list
    elements: dict
    default: []
  spf:
    description: The SPF record of every domain.
    type: str
    default: v=spf1 mx -all
  dmarc_policy:
    description: DMARC policy (C(p=)).
    type: str
    choices: [none, quarantine, reject]
    default: quarantine
  dmarc_rua:
    description: Addresses that receive DMARC aggregate reports (C(rua=mailto:...)).
    type: list
    elements: str
    default: []
  tlsrpt_rua:
    description: Addresses that receive TLS-RPT reports (RFC 8460). Defaults to O(dmarc_rua); an empty list leaves TLS-RPT out.
    type: list
    elements: str
  mta_sts_mode:
    description: MTA-STS policy mode. Start with V(testing), move to V(enforce) when TLS reports are clean.
    type: str
    choices: [enforce, testing, none]
    default: testing
  mta_sts_id:
    description: MTA-STS policy id (1 to 32 letters and digits). Defaults to a hash of the policy text.
    type: str
  mta_sts_max_age:
    description: MTA-STS C(max_age) in seconds (1 day to 1 year).
    type: int
    default: 604800
  mta_sts_mx:
    description: MX patterns of the MTA-STS policy. Defaults to O(mail_host).
    type: list
    elements: str
  mta_sts_web_host:
    description: Host that serves C(https://mta-sts.<domain>/); when given, C(mta-sts.<domain>) becomes a CNAME to it.
    type: str
  mx_priority:
    description: Priority of the MX record.
    type: int
    default: 10
  ttl:
    description: TTL of every record, seconds.
    type: int
    default: 3600
seealso:
  - module: hardened.mailhost.dkim_key
  - module: hardened.mailhost.mail_dns_check
"""

EXAMPLES = r"""
- name: Write the DNS records of each mail host on the controller
  hardened.mailhost.mail_dns_records:
    host: "{{ inventory_hostname }}"
    dest: "{{ lookup('env', 'HOME') }}/.hardened-mailhost/dns"
    domains: "{{ hardened_mailhost_mail_domains }}"
    mail_host: mail.example.org
    mail_host_ipv4: ["{{ ansible_default_ipv4.address }}"]
    dkim: "{{ dkim_keys.results | map(attribute='dns_records') | flatten }}"
    dmarc_policy: quarantine
    dmarc_rua: [postmaster@example.org]
  delegate_to: localhost
"""

RETURN = r"""
files:
  description: The files written (or, in check mode, that would be written).
  returned: always
  type: dict
  sample: {zone: /home/op/.hardened-mailhost/dns/mx1.zone, records: /home/op/.hardened-mailhost/dns/mx1.records,
           mta_sts_policy: /home/op/.hardened-mailhost/dns/mx1.mta-sts.txt}
records:
  description: Every record, with the zone it belongs to; TXT values in presentation form (quoted strings of at most 255 characters).
  returned: always
  type: list
  elements: dict
  sample: [{zone: example.org, name: "_dmarc.example.org.", type: TXT, ttl: 3600,
            value: "\"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org\""}]
mta_sts_policy:
  description: The MTA-STS policy text.
  returned: always
  type: str
  sample: "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
notes:
  description: What the operator must do that is not a record here (an address outside the served zones, the MTA-STS web server).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hardened.mailhost.plugins.module_utils import _dns_records


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            domains=dict(type="list", elements="str", required=True),
            served_domains=dict(type="list", elements="str"),
            mail_host=dict(type="str", required=True),
            mail_host_ipv4=dict(type="list", elements="str", default=[]),
            mail_host_ipv6=dict(type="list", elements="str", default=[]),
            dkim=dict(type="list", elements="dict", default=[]),
            spf=dict(type="str", default="v=spf1 mx -all"),
            dmarc_policy=dict(type="str", default="quarantine", choices=["none", "quarantine", "reject"]),
            dmarc_rua=dict(type="list", elements="str", default=[]),
            tlsrpt_rua=dict(type="list", elements="str"),
            mta_sts_mode=dict(type="str", default="testing", choices=["enforce", "testing", "none"]),
            mta_sts_id=dict(type="str"),
            mta_sts_max_age=dict(type="int", default=604800),
            mta_sts_mx=dict(type="list", elements="str"),
            mta_sts_web_host=dict(type="str"),
            mx_priority=dict(type="int", default=10),
            ttl=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        settings = _dns_records.Settings(
            domains=p["domains"], served_domains=p["served_domains"], mail_host=p["mail_host"],
            mail_host_ipv4=p["mail_host_ipv4"], mail_host_ipv6=p["mail_host_ipv6"], dkim=p["dkim"],
            spf=p["spf"], dmarc_policy=p["dmarc_policy"], dmarc_rua=p["dmarc_rua"],
            tlsrpt_rua=p["tlsrpt_rua"], mta_sts_mode=p["mta_sts_mode"], mta_sts_id=p["mta_sts_id"],
            mta_sts_max_age=p["mta_sts_max_age"], mta_sts_mx=p["mta_sts_mx"],
            mta_sts_web_host=p["mta_sts_web_host"], mx_priority=p["mx_priority"], ttl=p["ttl"])
        paths = _dns_records.file_paths(p["dest"], p["host"])
        before = _read(paths["records"])
        changed, paths, records, notes, texts = _dns_records.write(
            settings, p["dest"], p["host"], check_mode=module.check_mode)
    except _dns_records.RecordsError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg="cannot write the DNS records files: %s" % exc)
    result = dict(changed=changed, files=paths, records=records, notes=notes,
                  mta_sts_policy=texts["mta_sts_policy"])
    if module._diff:
        result["diff"] = dict(before=before, after=texts["records"],
                              before_header=paths["records"], after_header=paths["records"])
    module.exit_json(**result)


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (IOError, OSError):
        return ""


if __name__ == "__main__":
    main()
