"""Run a module of this collection for real, the way Ansible starts it.

The module file runs as a script (``python -m``) with an ``ANSIBLE_MODULE_ARGS``
JSON file, so argument parsing, ``no_log``, check mode and the exit path are
exercised exactly as on a target host.
"""

import json
import os
import secrets
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".collections")
PACKAGE = "ansible_collections.hardened.mailhost.plugins.modules."


def run_module(module, tmp_path, check=False, diff=False, timeout=120, path_first=None, **args):
    """Run ``plugins/modules/<module>.py``; return (result dict, CompletedProcess).

    ``path_first``: a folder put before the collections on PYTHONPATH (e.g. one whose
    package shadows a library, to run the module as on a host without it).

    Fails the test when the module prints no JSON, or when its exit code and
    its ``failed`` flag disagree.
    """
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    args_file = tmp_path / ("args-%s.json" % secrets.token_hex(4))
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (path_first, COLLECTIONS) if p))
    try:
        proc = subprocess.run([sys.executable, "-m", PACKAGE + module, str(args_file)], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        args_file.unlink()
    out = proc.stdout
    try:
        result = json.loads(out[out.index("{"):])
    except ValueError:
        raise AssertionError("module printed no JSON: %s %s" % (proc.stdout, proc.stderr)) from None
    assert (proc.returncode != 0) == bool(result.get("failed")), proc.stderr
    return result, proc
