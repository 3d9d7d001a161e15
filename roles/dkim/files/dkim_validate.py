# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check a candidate dkimpy-milter file before it replaces the live one.

    dkim_validate.py keytable FILE      rows "name domain:selector:/key/file"
    dkim_validate.py signingtable FILE  rows "*@domain name"
    dkim_validate.py conf FILE          the whole configuration, with the tables it names

Files are read with dkimpy-milter's own reader (so a row it would read
differently is caught), and every key is used to sign a test message with
dkimpy, as the milter would. Exit 0 when the file is good; otherwise one line
per problem on stderr and exit 1. Installed by the hardened.mailhost.dkim role.
"""

import os
import re
import sys

import dkim
from dkimpy_milter import config as milter_config
from dkimpy_milter import util as milter_util

LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
SELECTOR_RE = re.compile(r"^%s$" % LABEL)
DOMAIN_RE = re.compile(r"^%s(\.%s)+$" % (LABEL, LABEL))
TEST_MESSAGE = (b"From: <postmaster@example.invalid>\r\nTo: <test@example.invalid>\r\n"
                b"Subject: dkim-validate\r\n\r\ntest\r\n")


def read_table(path):
    """The table as dkimpy-milter reads it: {key: [values...]}."""
    table = milter_config._dataset_to_list(os.path.abspath(path))
    if not isinstance(table, dict) or not table:
        raise ValueError("%s: no 'key value' rows" % path)
    return table


def check_key(domain, selector, key_file):
    problems = []
    if not DOMAIN_RE.match(domain):
        problems.append("bad domain %r" % domain)
    if not SELECTOR_RE.match(selector):
        problems.append("bad selector %r (one DNS label of a-z, 0-9 and '-')" % selector)
    if not key_file.startswith("/"):
        problems.append("key file %r is not an absolute path" % key_file)
        return problems
    try:
        with open(key_file, "rb") as handle:
            key = handle.read()
    except OSError as exc:
        return problems + ["cannot read %s: %s" % (key_file, exc.strerror)]
    algorithm = b"rsa-sha256" if key.lstrip().startswith(b"-----BEGIN") else b"ed25519-sha256"
    try:
        dkim.sign(TEST_MESSAGE, b"test", b"example.invalid", key, signature_algorithm=algorithm)
    except Exception as exc:  # any failure to sign is a bad key for the milter too
        problems.append("%s does not sign (%s): %s" % (key_file, algorithm.decode(), exc))
    return problems


def check_keytable(table):
    problems = []
    for name, values in sorted(table.items()):
        if len(values) != 3:
            problems.append("row %s: want domain:selector:/key/file, got %s" % (name, ":".join(values)))
            continue
        problems += ["row %s: %s" % (name, p) for p in check_key(*values)]
    return problems


def check_signingtable(table):
    problems = []
    for pattern, values in sorted(table.items()):
        if not pattern.startswith("*@") or not DOMAIN_RE.match(pattern[2:]):
            problems.append("row %s: want *@<domain>" % pattern)
        if len(values) != 1 or not values[0]:
            problems.append("row %s: want one key name" % pattern)
    return problems


def check_conf(path):
    conf = milter_config._processConfigFile(filename=os.path.abspath(path), configdata={}, useSyslog=0)
    problems = []
    if conf.get("Mode") != "s":
        problems.append("Mode must be s (sign only), got %r" % conf.get("Mode"))
    if not str(conf.get("Socket", "")).startswith("local:/"):
        problems.append("Socket must be a local:/ socket, got %r" % conf.get("Socket"))
    tables = {}
    for name in ("SigningTable", "KeyTable", "KeyTableEd25519"):
        if not isinstance(conf.get(name), dict) or not conf.get(name):
            problems.append("%s is missing or empty" % name)
        else:
            tables[name] = conf[name]
    if len(tables) == 3:
        problems += check_signingtable(tables["SigningTable"])
        problems += ["KeyTable: %s" % p for p in check_keytable(tables["KeyTable"])]
        problems += ["KeyTableEd25519: %s" % p for p in check_keytable(tables["KeyTableEd25519"])]
        for pattern, values in tables["SigningTable"].items():
            for name in ("KeyTable", "KeyTableEd25519"):
                if values and values[-1] not in tables[name]:
                    problems.append("SigningTable row %s names %s, which %s lacks" % (pattern, values[-1], name))
    if not problems:
        # What the milter does at start, as root, before it drops privileges.
        milter_util.get_keys(conf)
    return problems


def main(argv):
    if len(argv) != 3 or argv[1] not in ("keytable", "signingtable", "conf"):
        sys.stderr.write(__doc__)
        return 2
    kind, path = argv[1], argv[2]
    try:
        if kind == "conf":
            problems = check_conf(path)
        elif kind == "keytable":
            problems = check_keytable(read_table(path))
        else:
            problems = check_signingtable(read_table(path))
    except Exception as exc:  # the milter would not start on a file it cannot read
        problems = ["%s: %s" % (type(exc).__name__, exc)]
    for problem in problems:
        sys.stderr.write("dkim-validate %s %s: %s\n" % (kind, path, problem))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
