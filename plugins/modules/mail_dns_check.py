#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: mail_dns_check
short_description: Compare what a DNS resolver answers with the records a mail host needs
version_added: 0.4.0
description:
  - Runs on the controller (a task delegated to C(localhost)). Reads the records a mail host needs
    (the C(<host>.records) file of M(hardened.mailhost.mail_dns_records), or O(records)) and
    asks the resolver O(resolver) on port O(port) for each name and type, directly (no
    system resolver configuration is read, so it works offline against a local server).
  - Reports each difference - V(missing) (no answer), V(different) (an answer of the same
    kind with another value, such as another SPF policy or an old DKIM key) and V(extra)
    (an answer of the same kind the host does not need, such as a second SPF record or a
    second MX). TXT records of other kinds at the same name (site verifications) are ignored.
  - Only reads; never changes anything. The task does not fail on differences; the caller
    decides (see C(playbooks/check_dns.yml)).
author:
  - hardened.mailhost developers (!UNKNOWN)
extends_documentation_fragment:
  - hardened.mailhost.attributes
attributes:
  check_mode:
    support: full
    details: Asks the resolver in check mode too (it only reads).
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  records_file:
    description: A C(<host>.records) file (C(name TYPE value) lines). Exactly one of O(records_file) and O(records).
    type: path
  records:
    description: The records, as RV(hardened.mailhost.mail_dns_records#module:records) returns them (C(name), C(type), C(value)).
    type: list
    elements: dict
  resolver:
    description: Address of the resolver or authoritative server to ask.
    type: str
    default: 127.0.0.1
  port:
    description: Its port.
    type: int
    default: 53
  timeout:
    description: Seconds to wait for each answer (UDP, then TCP when truncated).
    type: float
    default: 3.0
requirements:
  - dnspython (in the controller's Python)
seealso:
  - module: hardened.mailhost.mail_dns_records
"""

EXAMPLES = r"""
- name: Compare DNS with the generated records
  hardened.mailhost.mail_dns_check:
    records_file: "{{ lookup('env', 'HOME') }}/.hardened-mailhost/dns/{{ inventory_hostname }}.records"
    resolver: 127.0.0.1
    port: 5353
  delegate_to: localhost
  register: dns_check

- name: Fail on any difference
  ansible.builtin.assert:
    that: dns_check.differences | length == 0
    fail_msg: "{{ dns_check.differences }}"
"""

RETURN = r"""
differences:
  description: One entry per difference.
  returned: always
  type: list
  elements: dict
  sample: [{name: "example.org.", type: TXT, problem: different, kind: SPF,
            expected: "v=spf1 mx -all", found: "v=spf1 mx ~all"}]
queries:
  description: Number of questions answered by the resolver.
  returned: always
  type: int
  sample: 9
summary:
  description: One readable line per difference.
  returned: always
  type: list
  elements: str
  sample: ["example.org. TXT (SPF) different: expected [v=spf1 mx -all], found [v=spf1 mx ~all]"]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.hardened.mailhost.plugins.module_utils import _dns_records

try:
    import dns.query  # noqa: F401 pylint: disable=unused-import
except ImportError:
    HAS_DNSPYTHON = False
else:
    HAS_DNSPYTHON = True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            records_file=dict(type="path"),
            records=dict(type="list", elements="dict"),
            resolver=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", default=53),
            timeout=dict(type="float", default=3.0),
        ),
        mutually_exclusive=[["records_file", "records"]],
        required_one_of=[["records_file", "records"]],
        supports_check_mode=True,
    )
    if not HAS_DNSPYTHON:
        module.fail_json(msg=missing_required_lib("dnspython"))
    p = module.params
    try:
        if p["records_file"] is not None:
            try:
                with open(p["records_file"], encoding="utf-8") as handle:
                    expected = _dns_records.parse_plain_lines(handle.read())
            except (IOError, OSError) as exc:
                module.fail_json(msg="cannot read the records file %s: %s (write it first with "
                                     "hardened.mailhost.mail_dns_records)" % (p["records_file"], exc.strerror))
        else:
            expected = [(r["name"], r["type"], r["value"]) for r in p["records"]]
        if not expected:
            module.fail_json(msg="no records to check")
        differences, answered = _dns_records.compare(expected, p["resolver"], port=p["port"],
                                                     timeout=p["timeout"])
    except (_dns_records.RecordsError, KeyError, ValueError) as exc:
        module.fail_json(msg="DNS check failed: %s" % exc)
    summary = []
    for d in differences:
        line = "%s %s (%s) %s:" % (d["name"], d["type"], d["kind"], d["problem"])
        line += " expected [%s]" % d["expected"] if d["expected"] is not None else " not needed"
        line += ", found [%s]" % d["found"] if d["found"] is not None else ", found nothing"
        summary.append(line)
    module.exit_json(changed=False, differences=differences, queries=answered, summary=summary)


if __name__ == "__main__":
    main()
