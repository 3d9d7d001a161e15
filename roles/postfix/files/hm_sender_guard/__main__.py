# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line: ``python3 -m hm_sender_guard --config FILE {scan,suspend,resume,status}``.

Prints one JSON object; exit status 0, or 2 with a message on stderr for
bad input (nothing changed), 1 for a failure of the host's tools.
"""

from __future__ import absolute_import, division, print_function

import argparse
import json
import subprocess
import sys

from hm_sender_guard.guard import Guard, ensure_dirs, load_config
from hm_sender_guard.maps import GuardError


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="hm-sender-guard", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/postfix/hardened/sender_guard.json")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    sub.add_parser("scan", help="look at the last minutes of the log and the queue; suspend and report")
    suspend = sub.add_parser("suspend", help="suspend every identity of a user and hold (or delete) its queued mail")
    suspend.add_argument("--user", required=True)
    suspend.add_argument("--purge", action="store_true", help="delete the user's queued mail instead of holding it")
    suspend.add_argument("--check", action="store_true", help="say what would change, change nothing")
    resume = sub.add_parser("resume", help="lift every suspension of a user and release its held mail")
    resume.add_argument("--user", required=True)
    resume.add_argument("--check", action="store_true")
    sub.add_parser("status", help="the suspension maps and the guard's state")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
        ensure_dirs(config)
        guard = Guard(config)
        if args.command == "scan":
            result = guard.scan()
            # The timer's line in the journal: what was done, not every counter.
            result = {"changed": result["changed"], "suspended": result["suspended"],
                      "identities": len(result["identities"]), "queue": result["queue"]}
        elif args.command == "suspend":
            result = guard.suspend_user(args.user, purge=args.purge, check=args.check)
        elif args.command == "resume":
            result = guard.resume_user(args.user, check=args.check)
        else:
            result = guard.status()
    except GuardError as exc:
        sys.stderr.write("hm-sender-guard: %s; nothing was changed\n" % exc)
        return 2
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        sys.stderr.write("hm-sender-guard: %s\n" % exc)
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
