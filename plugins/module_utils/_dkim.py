# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DKIM signing keys of one domain on the mail host, and their rotation.

Private API (leading underscore): plain Python, no Ansible import.

A domain's keys live in ``<key_dir>/<domain>/``:

- ``<selector>.private``: one private key per selector, 0600, owned by the
  signer's user. RSA keys are PEM (PKCS#1, what dkimpy-milter and OpenDKIM
  read); Ed25519 keys are the base64 of the 32-byte seed (RFC 8463, the form
  dkimpy-milter's ``KeyFileEd25519`` and dkimpy read).
- ``selectors.json``: the key sets and their state, no key material.

A *key set* is one base name (``202612``) with one RSA selector
(``202612r``) and one Ed25519 selector (``202612e``). Each set is
``active`` (the signer signs with it), ``pending`` (published in DNS first,
not signing yet) or ``retired`` (no longer signing, still published so mail
signed before the switch still verifies). A new set while one is active
starts ``pending``; a run after ``grace_days`` makes it active and retires the
previous set. Retired sets stay until removed with state ``absent``.

No function here returns or prints private key material.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import errno
import grp
import json
import os
import pwd
import re
import stat

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
except ImportError as exc:  # the module reports it with missing_required_lib
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None

from ansible_collections.hardened.mailhost.plugins.module_utils import _fileutil

STATE_FILE = "selectors.json"
ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048
SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DOMAIN_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DIR_MODE = 0o750
KEY_MODE = 0o600
STATE_MODE = 0o640


class DkimError(Exception):
    """Bad input or unusable key state; the message is user-facing and names no secret."""


def validate_domain(domain, served_domains):
    """Return ``domain`` in lower case; refuse a malformed name or one the host does not serve."""
    if not isinstance(domain, str) or not domain:
        raise DkimError("domain must be a domain name")
    name = domain.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(DOMAIN_LABEL_RE.match(lab) for lab in labels):
        raise DkimError("%r is not a domain name" % domain)
    served = [d.strip().rstrip(".").lower() for d in (served_domains or [])]
    if not served:
        raise DkimError("served_domains is empty; list the domains this host serves")
    if name not in served:
        raise DkimError("%s is not a domain this host serves (served: %s); no key is made for it"
                        % (name, ", ".join(served)))
    return name


def validate_selector(selector, what="selector"):
    """Refuse a selector that is not one DNS label of ``[a-z0-9-]``."""
    if not isinstance(selector, str) or not SELECTOR_RE.match(selector):
        raise DkimError("%s %r must be 1 to 63 characters of a-z, 0-9 and '-', "
                        "not starting or ending with '-'" % (what, selector))
    return selector


def selectors_of(base, suffixes):
    """The per-algorithm selectors of the key set ``base``."""
    names = dict((alg, base + suffixes[alg]) for alg in ALGORITHMS)
    for alg in ALGORITHMS:
        validate_selector(names[alg], "%s selector" % alg)
    if names["rsa"] == names["ed25519"]:
        raise DkimError("the RSA and Ed25519 suffixes must differ")
    return names


def default_base(now=None):
    """The dated base name of a new key set: the current UTC month, ``yyyymm``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m")


# ---------------------------------------------------------------- keys

def _new_private(algorithm):
    """Return the private key file content (bytes) of a new key."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    # No newline: byte for byte what dkimpy's dknewkey writes.
    return base64.b64encode(seed)


def public_value(algorithm, private_bytes):
    """The DKIM key record (``v=DKIM1; k=...; p=...``) of a private key file's content."""
    if not HAS_CRYPTOGRAPHY:
        raise DkimError("reading the existing DKIM keys needs the Python cryptography library "
                        "on the host (%s)" % CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        if algorithm == "rsa":
            key = serialization.load_pem_private_key(private_bytes, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("not an RSA key")
            der = key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            seed = base64.b64decode(private_bytes.strip(), validate=True)
            key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
            der = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    except (ValueError, TypeError):
        raise DkimError("the %s key file cannot be read as a %s private key" % (algorithm, algorithm))
    return "v=DKIM1; k=%s; p=%s" % (algorithm, base64.b64encode(der).decode("ascii"))


# ---------------------------------------------------------------- owner and files

def resolve_owner(owner, group):
    """Return (uid, gid) for the option values; None leaves that part as the process's."""
    uid = gid = None
    if owner is not None:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise DkimError("owner %s does not exist on this host (install the signer's "
                            "package first, e.g. dkimpy-milter)" % owner)
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise DkimError("group %s does not exist on this host" % group)
    return uid, gid


def _lstat(path):
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _read_regular(path):
    info = _lstat(path)
    if info is None:
        return None, None
    if not stat.S_ISREG(info.st_mode):
        raise DkimError("%s is not a regular file (a link?); not touched" % path)
    with open(path, "rb") as handle:
        return handle.read(), info


def _meta_differs(info, mode, uid, gid):
    return (stat.S_IMODE(info.st_mode) != mode
            or (uid is not None and info.st_uid != uid)
            or (gid is not None and info.st_gid != gid))


# ---------------------------------------------------------------- state

def _empty_state():
    return {"version": 1, "sets": []}


def read_state(folder):
    """Read ``selectors.json`` of a domain folder (an empty state when missing)."""
    data, _info = _read_regular(os.path.join(folder, STATE_FILE))
    if data is None:
        return _empty_state()
    try:
        state = json.loads(data.decode("utf-8"))
        sets = state["sets"]
        for entry in sets:
            if entry["status"] not in ("active", "pending", "retired"):
                raise ValueError(entry["status"])
            for alg in ALGORITHMS:
                validate_selector(entry["selectors"][alg])
    except (ValueError, KeyError, TypeError, DkimError):
        raise DkimError("%s is not a key state file this module wrote; move it away and run "
                        "again" % os.path.join(folder, STATE_FILE))
    return state


def _state_text(state):
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


def _parse_time(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def _format_time(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the one entry point

class KeyRequest(object):
    """The options of one run, validated."""

    def __init__(self, domain, served_domains, key_dir, selector=None, rotate=False,
                 state="present", grace_days=7, rsa_suffix="r", ed25519_suffix="e",
                 owner=None, group=None):
        self.domain = validate_domain(domain, served_domains)
        if not key_dir or not os.path.isabs(key_dir):
            raise DkimError("key_dir must be an absolute path")
        self.folder = os.path.join(key_dir, self.domain)
        self.key_dir = key_dir
        if state not in ("present", "absent"):
            raise DkimError("state must be present or absent")
        self.state = state
        if selector is not None:
            validate_selector(selector)
        if state == "absent" and selector is None:
            raise DkimError("state=absent needs the selector (base name) of the key set to remove")
        self.selector = selector
        self.rotate = bool(rotate)
        if not isinstance(grace_days, int) or isinstance(grace_days, bool) or not 0 <= grace_days <= 365:
            raise DkimError("grace_days must be a whole number from 0 to 365")
        self.grace_days = grace_days
        self.suffixes = {"rsa": rsa_suffix or "", "ed25519": ed25519_suffix or ""}
        for alg in ALGORITHMS:
            if not re.match(r"^[a-z0-9-]{0,20}$", self.suffixes[alg]):
                raise DkimError("%s_suffix %r may hold only a-z, 0-9 and '-'" % (alg, self.suffixes[alg]))
        if self.suffixes["rsa"] == self.suffixes["ed25519"]:
            raise DkimError("rsa_suffix and ed25519_suffix must differ")
        self.owner, self.group = owner, group


def ensure(request, check_mode=False, now=None):
    """Bring the domain's keys to the requested state; return a result dict without secrets.

    Every check (input, existing files, owner) is done before anything is
    written, so a refusal changes nothing.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    uid, gid = resolve_owner(request.owner, request.group)
    folder = request.folder
    info = _lstat(folder)
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise DkimError("%s exists and is not a folder" % folder)
    state = read_state(folder) if info is not None else _empty_state()
    before = _state_text(state)
    sets = state["sets"]
    by_base = dict((entry["base"], entry) for entry in sets)
    reasons = []
    new_keys = {}      # file name -> private bytes (never leaves this function)
    removed = []       # file names to delete

    if request.state == "absent":
        entry = by_base.get(request.selector)
        if entry is not None:
            if entry["status"] == "active":
                raise DkimError("key set %s is the active (signing) set of %s; rotate to a new set "
                                "and wait for the switch before removing it"
                                % (request.selector, request.domain))
            sets.remove(entry)
            removed = [entry["selectors"][alg] + ".private" for alg in ALGORITHMS]
            reasons.append("removed key set %s" % request.selector)
    else:
        # A pending set whose grace period is over becomes the signing set first.
        switched = False
        for entry in sets:
            if entry["status"] != "pending":
                continue
            due = _parse_time(entry["created"]) + datetime.timedelta(days=request.grace_days)
            if now >= due:
                for other in sets:
                    if other["status"] == "active":
                        other["status"] = "retired"
                        other["retired"] = _format_time(now)
                entry["status"] = "active"
                entry["activated"] = _format_time(now)
                reasons.append("switched signing to key set %s" % entry["base"])
                switched = True
        pending = [entry["base"] for entry in sets if entry["status"] == "pending"]
        target = None
        if request.selector is not None:
            if request.selector not in by_base:
                target = request.selector
        elif not sets:
            target = default_base(now)
        elif request.rotate and not pending and not switched:
            # At most one new dated set per calendar month, so a rotate flag left
            # on rotates monthly instead of at every run.
            month = now.strftime("%Y-%m")
            if not any(entry["created"].startswith(month) for entry in sets):
                target = default_base(now)
                if target in by_base:
                    target = None
        if target is not None:
            names = selectors_of(target, request.suffixes)
            taken = set(entry["selectors"][alg] for entry in sets for alg in ALGORITHMS)
            clash = sorted(set(names.values()) & taken)
            if clash:
                raise DkimError("selector %s is already used by another key set of %s"
                                % (", ".join(clash), request.domain))
            if pending:
                raise DkimError("key set %s is still waiting for its switch; a rotation to %s "
                                "can start once it is active" % (pending[0], target))
            has_active = any(entry["status"] == "active" for entry in sets)
            entry = {"base": target, "selectors": names, "created": _format_time(now),
                     "status": "pending" if has_active else "active"}
            if entry["status"] == "active":
                entry["activated"] = _format_time(now)
            sets.append(entry)
            for alg in ALGORITHMS:
                new_keys[names[alg] + ".private"] = None if check_mode else _new_private(alg)
            reasons.append("new key set %s (%s)" % (target, entry["status"]))

    # Existing key files: present, readable, right owner and mode.
    fixes = []
    publics = {}
    for entry in sets:
        for alg in ALGORITHMS:
            name = entry["selectors"][alg] + ".private"
            if name in new_keys:
                continue
            path = os.path.join(folder, name)
            data, finfo = _read_regular(path)
            if data is None:
                raise DkimError("%s is listed in %s but missing; restore it from a backup, or move "
                                "%s away to start with new keys" % (path, STATE_FILE, STATE_FILE))
            publics[entry["selectors"][alg]] = public_value(alg, data)
            if _meta_differs(finfo, KEY_MODE, uid, gid):
                fixes.append(name)
    if fixes:
        reasons.append("owner or mode of %s" % ", ".join(sorted(fixes)))
    folder_fix = info is not None and _meta_differs(info, DIR_MODE, uid, gid)
    if folder_fix:
        reasons.append("owner or mode of %s" % folder)
    state_path = os.path.join(folder, STATE_FILE)
    after = _state_text(state)
    state_data, state_info = _read_regular(state_path)
    state_fix = state_info is not None and _meta_differs(state_info, STATE_MODE, uid, gid)
    if state_data is not None and state_data.decode("utf-8", "replace") != after and not reasons:
        reasons.append("key state file")
    if state_fix:
        reasons.append("owner or mode of %s" % STATE_FILE)

    changed = bool(reasons)
    if changed and not check_mode:
        _apply(request, folder, info, uid, gid, new_keys, removed, fixes, state, state_data, after)
        for entry in sets:
            for alg in ALGORITHMS:
                name = entry["selectors"][alg] + ".private"
                if name in new_keys:
                    publics[entry["selectors"][alg]] = public_value(alg, new_keys[name])
    new_keys.clear()
    return _result(request, state, publics, changed, reasons, before, after, now)


def _apply(request, folder, info, uid, gid, new_keys, removed, fixes, state, state_data, after):
    if info is None:
        parent = os.path.dirname(folder)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        try:
            os.mkdir(folder, DIR_MODE)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    os.chmod(folder, DIR_MODE)
    if uid is not None or gid is not None:
        os.chown(folder, -1 if uid is None else uid, -1 if gid is None else gid)
    # Keys first, then the state that lists them: a crash in between leaves an
    # unlisted key file (harmless), never a listed key that is missing.
    for name, data in sorted(new_keys.items()):
        _fileutil.atomic_write(os.path.join(folder, name), data, mode=KEY_MODE, uid=uid, gid=gid)
    for name in fixes:
        path = os.path.join(folder, name)
        os.chmod(path, KEY_MODE)
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    _fileutil.atomic_write(os.path.join(folder, STATE_FILE), after, mode=STATE_MODE, uid=uid, gid=gid)
    for name in removed:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    _fileutil.fsync_dir(folder)


def _result(request, state, publics, changed, reasons, before, after, now):
    selectors = []
    dns_records = []
    active = None
    for entry in state["sets"]:
        item = {"base": entry["base"], "status": entry["status"], "created": entry["created"]}
        for key in ("activated", "retired"):
            if key in entry:
                item[key] = entry[key]
        if entry["status"] == "pending":
            due = _parse_time(entry["created"]) + datetime.timedelta(days=request.grace_days)
            item["switch_after"] = _format_time(due)
        item["keys"] = []
        for alg in ALGORITHMS:
            sel = entry["selectors"][alg]
            value = publics.get(sel)  # None only for a key made in check mode
            item["keys"].append({"algorithm": alg, "selector": sel, "txt": value,
                                 "file": os.path.join(request.folder, sel + ".private")})
            if value is not None:
                dns_records.append({"domain": request.domain, "selector": sel, "algorithm": alg,
                                    "status": entry["status"], "value": value})
        if entry["status"] == "active":
            active = dict((alg, entry["selectors"][alg]) for alg in ALGORITHMS)
            active["base"] = entry["base"]
            active["rsa_file"] = os.path.join(request.folder, entry["selectors"]["rsa"] + ".private")
            active["ed25519_file"] = os.path.join(request.folder,
                                                  entry["selectors"]["ed25519"] + ".private")
        selectors.append(item)
    return {
        "changed": changed,
        "domain": request.domain,
        "folder": request.folder,
        "active": active,
        "selectors": selectors,
        "dns_records": dns_records,
        "reasons": reasons,
        "diff": {"before": before, "after": after},
    }
