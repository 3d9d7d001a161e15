# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only check of what sshd would really do for each user and network.

Run on the managed host by the sshd_2fa role (``python3 -c`` with a JSON
request on stdin); prints one JSON object: ``{"problems": [...],
"probes": N, "sshd": bool}``. It changes nothing on the host: candidate
files live in a private temporary folder that is removed before it exits.

Why: sshd keeps the first value it reads for a keyword, but a ``Match``
block anywhere (sshd_config, another drop-in) overrides the global value
for the connections it matches. Checking one made-up user proves nothing
about ``Match User alice``; so every listed user, the connecting user and a
made-up user are probed from an outside address and from every trusted
network with ``sshd -T -C user=...,host=...,addr=...,lport=...``.

With a candidate drop-in in the request, the probes read the host's own
main config with its ``Include`` lines expanded exactly as sshd would, the
role's live drop-in replaced by the candidate: the real order, the new
file, and the old one out of the way.

Trusted networks are checked too: no ``/0`` and none that contains the
host's default gateway (behind NAT or a published port every client seems
to come from the gateway, so such a "trusted" network trusts everybody).
"""

from __future__ import absolute_import, division, print_function

import fnmatch
import glob
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SSHDIR = "/etc/ssh"
OUTSIDE_ADDRESSES = ("192.0.2.1", "2001:db8::1")
MADE_UP_USER = "sshd-2fa-probe"
TCP_LEVELS = {"no": 0, "local": 1, "remote": 1, "yes": 2, "all": 2}
ROOT_OK = ("no", "prohibit-password", "without-password", "forced-commands-only")
KEYWORD_RE = re.compile(r"^\s*([A-Za-z]+)(?:\s*=\s*|\s+)(.*?)\s*$")


# --- trusted networks -------------------------------------------------------

def network_problems(networks, gateways):
    """Problems with trusted networks: a /0, or one that holds a default gateway."""
    problems = []
    gw_addresses = []
    for gateway in gateways or []:
        try:
            gw_addresses.append(ipaddress.ip_address(str(gateway).split("%", maxsplit=1)[0]))
        except ValueError:
            continue
    for text in networks or []:
        try:
            net = ipaddress.ip_network(str(text).strip(), strict=False)
        except ValueError:
            continue  # the role's own syntax check names it
        if net.prefixlen == 0:
            problems.append(
                "sshd_2fa_trusted_networks entry %s trusts every address on the internet." % text)
            continue
        for gw in gw_addresses:
            if gw.version == net.version and gw in net:
                problems.append(
                    "sshd_2fa_trusted_networks entry %s contains the default gateway %s: behind NAT or a"
                    " published port every client seems to come from the gateway, so it would trust"
                    " everybody." % (text, gw))
    return problems


def probe_address(network):
    """An address inside ``network`` (its first host) that a probe can come from."""
    net = ipaddress.ip_network(network, strict=False)
    if net.num_addresses == 1:
        return str(net.network_address)
    return str(next(net.hosts(), net.network_address))


# --- the configuration as sshd reads it -------------------------------------

def _include_paths(args, replace=None):
    """Files an ``Include`` line names, in sshd's order.

    ``replace`` = (live drop-in path, candidate path): the live file is read
    as the candidate, and the candidate takes the live file's place when a
    glob would match it even though it does not exist yet.
    """
    out = []
    for arg in args:
        pattern = arg if os.path.isabs(arg) else os.path.join(SSHDIR, arg)
        names = sorted(glob.glob(pattern))
        if replace is not None:
            live, candidate = replace
            if live not in names and fnmatch.fnmatch(live, pattern):
                names = sorted(names + [live])
            names = [candidate if name == live else name for name in names]
        out.extend(names)
    return out


def _logical_lines(text):
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = KEYWORD_RE.match(stripped)
        if match:
            yield number, match.group(1).lower(), match.group(2)


def expand_main_config(main_text, live, candidate):
    """The main config with its top-level Include lines turned into file lists."""
    out = []
    for line in main_text.splitlines():
        stripped = line.strip()
        match = KEYWORD_RE.match(stripped) if stripped and not stripped.startswith("#") else None
        if match and match.group(1).lower() == "include":
            files = _include_paths(match.group(2).split(), (live, candidate))
            if files:
                out.append("Include " + " ".join(files))
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def config_files(main_path, main_text, replace=None, depth=0, seen=None):
    """(path, text) of the main config and every file it includes, in reading order."""
    seen = set() if seen is None else seen
    result = [(main_path, main_text)]
    if depth > 8:
        return result
    for _number, key, value in _logical_lines(main_text):
        if key != "include":
            continue
        for path in _include_paths(value.split(), replace):
            if path in seen:
                continue
            seen.add(path)
            try:
                with open(path) as handle:
                    text = handle.read()
            except (IOError, OSError):
                continue
            result.extend(config_files(path, text, replace, depth + 1, seen))
    return result


def match_settings(files, keyword, shown_as=None):
    """Where a keyword is set inside a Match block: ["file:line (Match ...)"]."""
    places = []
    for path, text in files:
        block = None
        for number, key, value in _logical_lines(text):
            if key == "match":
                block = value.strip()
            elif key == keyword and block is not None:
                shown = shown_as.get(path, path) if shown_as else path
                places.append("%s:%d (Match %s)" % (shown, number, block))
    return places


# --- what a probe must see --------------------------------------------------

def _method_lists(value):
    return [item.split(",") for item in value.split()]


def _has(methods, name):
    return any(m == name or m.startswith(name + ":") for m in methods)


def expectations(request, user):
    """What makes the effective settings of ``user`` weaker than the role's."""
    mode = request.get("mode", "key_or_totp_password")
    key_only = user in (request.get("key_only_users") or [])
    return {"mode": mode, "key_only": key_only,
            "connecting": user == request.get("connecting_user")}


def probe_problems(settings, request, user):
    """Weakenings in one probe's ``sshd -T`` output: [(keyword, value, wanted)]."""
    want = expectations(request, user)
    found = []  # (keyword, value, wanted)

    def get(key, default=""):
        return settings.get(key, default)

    for key, bad in (("passwordauthentication", "yes"), ("permitemptypasswords", "yes"),
                     ("hostbasedauthentication", "yes"), ("gssapiauthentication", "yes")):
        if get(key) == bad:
            found.append((key, bad, "no"))
    if get("usepam", "yes") != "yes":
        found.append(("usepam", get("usepam"), "yes"))
    if get("permitrootlogin") and get("permitrootlogin") not in ROOT_OK:
        found.append(("permitrootlogin", get("permitrootlogin"), "prohibit-password or stricter"))

    methods = get("authenticationmethods", "any")
    lists = _method_lists(methods)
    if want["mode"] == "key_and_totp" and not want["key_only"]:
        weak = methods == "any" or not all(
            _has(lst, "publickey") and _has(lst, "keyboard-interactive") for lst in lists)
        wanted = "a key and a code (publickey,keyboard-interactive)"
    elif want["mode"] == "key_and_totp":
        weak = methods != "any" and not all(_has(lst, "publickey") for lst in lists)
        wanted = "publickey"
    else:
        weak = methods != "any" and not all(
            _has(lst, "publickey") or _has(lst, "keyboard-interactive") for lst in lists)
        wanted = "publickey or keyboard-interactive (code + password)"
    if weak:
        found.append(("authenticationmethods", methods, wanted))

    forwarding = request.get("forwarding") or {}
    if get("disableforwarding", "no") != "yes":
        tcp_ok = forwarding.get("tcp", "no")
        tcp = get("allowtcpforwarding", "yes")
        if not (tcp == "no" or tcp == tcp_ok or TCP_LEVELS.get(tcp_ok, 0) == 2):
            found.append(("allowtcpforwarding", tcp, tcp_ok))
        if get("allowstreamlocalforwarding", "yes") != "no":
            found.append(("allowstreamlocalforwarding", get("allowstreamlocalforwarding", "yes"), "no"))
        for key, var in (("x11forwarding", "x11"), ("allowagentforwarding", "agent")):
            if get(key, "yes") == "yes" and not forwarding.get(var):
                found.append((key, "yes", "no"))
    if get("permittunnel", "no") != "no":
        found.append(("permittunnel", get("permittunnel"), "no"))
    if want["connecting"]:
        key_alone = get("pubkeyauthentication", "yes") == "yes" and (
            methods == "any" or any(lst == ["publickey"] for lst in lists))
        if not key_alone:
            found.append(("authenticationmethods", methods,
                          "a key alone for the connecting user (Ansible cannot answer a code prompt)"))
    return found


def parse_dump(text):
    settings = {}
    for line in text.splitlines():
        key, _sep, value = line.partition(" ")
        if key and key not in settings:
            settings[key.lower()] = value.strip()
    return settings


# Match criteria sshd evaluates; only User and Group depend on the user.
KNOWN_CRITERIA = ("all", "user", "group", "host", "address", "localaddress", "localport", "rdomain")


def match_criteria(files):
    """The User/Group criteria of every Match line sshd reads, as a list (one
    entry per Match line) of [(criterion, pattern list)]; None when a Match
    line has anything this reader does not know (a criterion, a negation,
    quotes, brackets), so that every user is then probed."""
    out = []
    for _path, text in files:
        for _number, key, value in _logical_lines(text):
            if key != "match":
                continue
            if any(ch in value for ch in "\"'[]\\"):
                return None
            words = value.split()
            found = []
            index = 0
            while index < len(words):
                name = words[index].lower()
                if name == "all":
                    index += 1
                    continue
                if name not in KNOWN_CRITERIA or index + 1 >= len(words):
                    return None
                if name in ("user", "group"):
                    found.append((name, words[index + 1]))
                index += 2
            out.append(found)
    return out


def pattern_list_answer(string, patterns):
    """sshd's pattern-list rule: -1 when a negated pattern matches, 1 when a
    positive one does (and no negated one), else 0."""
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(string, pattern[1:] if negated else pattern):
            if negated:
                return -1
            positive = True
    return 1 if positive else 0


def pattern_list_matches(string, patterns):
    """Whether ``Match User <patterns>`` matches ``string``."""
    return pattern_list_answer(string, patterns) == 1


def groups_match(groups, patterns):
    """Whether ``Match Group <patterns>`` matches a user in ``groups``: a group
    that a negated pattern matches refuses, else any positive match matches."""
    answers = [pattern_list_answer(group, patterns) for group in groups]
    return -1 not in answers and 1 in answers


def user_groups(user):
    """Names of the user's groups (primary and supplementary); empty for an unknown user."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return set()
    names = set()
    for group in grp.getgrall():
        if group.gr_gid == entry.pw_gid or user in group.gr_mem:
            names.add(group.gr_name)
    return names


def user_classes(users, criteria, request):
    """Users that sshd treats alike, as lists in first-seen order. Two users
    are alike when every Match line's User and Group criteria give the same
    answer for both and the role expects the same of both (code user, key-only
    user, the connecting user); the made-up user is always probed on its own.
    Without a usable reading of the Match lines, every user is its own class."""
    if criteria is None:
        return [[user] for user in users]
    need_groups = any(name == "group" for line in criteria for name, _patterns in line)
    classes = {}
    order = []
    for user in users:
        groups = user_groups(user) if need_groups else set()
        answers = tuple(
            tuple(pattern_list_matches(user, patterns) if name == "user"
                  else groups_match(groups, patterns)
                  for name, patterns in line)
            for line in criteria)
        want = expectations(request, user)
        key = (user if user == MADE_UP_USER else "", want["key_only"], want["connecting"], answers)
        if key not in classes:
            classes[key] = []
            order.append(key)
        classes[key].append(user)
    return [classes[key] for key in order]


def run_probes(request):
    sshd = request.get("sshd") or "/usr/sbin/sshd"
    main_path = request.get("main_config") or os.path.join(SSHDIR, "sshd_config")
    live = request.get("dropin_path")
    candidate_text = request.get("dropin")
    with open(main_path) as handle:
        main_text = handle.read()

    users = []
    for user in ([MADE_UP_USER] + list(request.get("users") or []) + list(request.get("key_only_users") or [])
                 + ([request["connecting_user"]] if request.get("connecting_user") else [])):
        if user not in users:
            users.append(user)
    addresses = list(OUTSIDE_ADDRESSES)
    for net in request.get("trusted_networks") or []:
        try:
            address = probe_address(net)
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)

    tmp = tempfile.mkdtemp(prefix="sshd-2fa-check.")
    try:
        shown_as = {}
        if candidate_text is not None:
            candidate = os.path.join(tmp, "candidate.conf")
            with open(candidate, "w") as handle:
                handle.write(candidate_text)
            config = os.path.join(tmp, "sshd_config")
            with open(config, "w") as handle:
                handle.write(expand_main_config(main_text, live, candidate))
            files = config_files(main_path, main_text, (live, candidate))
            shown_as[candidate] = live + " (new)"
        else:
            config = main_path
            files = config_files(main_path, main_text)

        grouped = {}
        order = []
        not_first = []
        # One probe per class of users sshd treats alike (a hundred users
        # without Match blocks naming them cost what one does); what a
        # probe finds is reported for every user of its class.
        classes = user_classes(users, match_criteria(files), request)
        probe_count = 0
        for members in classes:
            user = members[0]
            for address in addresses:
                spec = "user=%s,host=%s,addr=%s,lport=%s" % (user, address, address, request.get("port", 22))
                proc = subprocess.run([sshd, "-T", "-f", config, "-C", spec],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      universal_newlines=True, check=False)
                if proc.returncode != 0:
                    return {"problems": ["sshd -T failed for %s: %s" % (spec, proc.stderr.strip())],
                            "probes": 0, "sshd": True}
                probe_count += 1
                settings = parse_dump(proc.stdout)
                if user == MADE_UP_USER and address == OUTSIDE_ADDRESSES[0]:
                    first = request.get("expect_first") or {}
                    not_first = sorted(k for k, v in first.items()
                                       if settings.get(k) != v and not match_settings(files, k))
                for key, value, wanted in probe_problems(settings, request, user):
                    marker = (key, value, wanted)
                    if marker not in grouped:
                        grouped[marker] = []
                        order.append(marker)
                    grouped[marker].extend((member, address) for member in members)
        problems = []
        if not_first:
            problems.append(
                "sshd does not read the hardened drop-in first (%s differ): another file sets them"
                " before it. Is 'Include /etc/ssh/sshd_config.d/*.conf' the first line of %s?"
                % (", ".join(not_first), main_path))
        for key, value, wanted in order:
            places = match_settings(files, key, shown_as) or ["no Match block found; check %s" % main_path]
            # In the order of the users, then of the addresses.
            rank = {user: index for index, user in enumerate(users)}
            probes = ["%s from %s" % pair for pair in sorted(
                grouped[(key, value, wanted)], key=lambda pair: (rank[pair[0]], addresses.index(pair[1])))]
            shown = ", ".join(probes[:6]) + (" and %d more" % (len(probes) - 6) if len(probes) > 6 else "")
            problems.append(
                "sshd would use '%s %s' (wanted %s) for %s, set in %s." % (
                    key, value, wanted, shown, "; ".join(places)))
        return {"problems": problems, "probes": probe_count, "users": len(users), "sshd": True}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(stdin=None):
    request = json.load(stdin or sys.stdin)
    problems = network_problems(request.get("trusted_networks"), request.get("gateways"))
    sshd = request.get("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        result = {"problems": problems, "probes": 0, "sshd": False}
    else:
        result = run_probes(request)
        result["problems"] = problems + result["problems"]
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
