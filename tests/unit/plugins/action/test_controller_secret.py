"""controller_secret through ansible-playbook: many hosts at once, nothing secret in callbacks.

The hosts are local-connection names in a throw-away inventory; forks 8 make
the writes of all of them race each other for real.
"""

import json
import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
HOSTS = ["mx%02d.example.test" % n for n in range(8)]

PLAY = """
- hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: Hand over a per-host secret into one shared folder
      hardened.mailhost.controller_secret:
        path: "{{ dest }}/shared/{{ inventory_hostname }}/alice.pin"
        content: "{{ 'SECRET-' ~ inventory_hostname ~ '-' ~ salt }}"
        owner: "{{ inventory_hostname }}"
        tty_message: "{{ 'SECRET-' ~ inventory_hostname ~ '-' ~ salt }}"
    - name: Everyone tries the same name
      hardened.mailhost.controller_secret:
        path: "{{ dest }}/shared/contested.pin"
        content: "{{ 'SECRET-' ~ inventory_hostname ~ '-' ~ salt }}"
        owner: "{{ inventory_hostname }}"
      when: contest | bool
"""


def run(tmp_path, contest=False, check=False, verbose=False):
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "hosts").write_text("\n".join(HOSTS) + "\n")
    env = dict(os.environ,
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.jsonl",
               ANSIBLE_FORKS="8", ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0")
    cmd = ["ansible-playbook", "-i", str(tmp_path / "hosts"), str(tmp_path / "play.yml"),
           "-e", json.dumps(dict(dest=str(tmp_path / "out"), salt="Zq81", contest=contest,
                                 ansible_python_interpreter=os.environ.get("HM_PYTHON", "python3")))]
    if check:
        cmd.append("--check")
    if verbose:
        cmd.append("-vvv")
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)


def test_eight_hosts_one_shared_folder(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "SECRET-" not in proc.stdout + proc.stderr
    shared = tmp_path / "out" / "shared"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    for host in HOSTS:
        pin = shared / host / "alice.pin"
        assert pin.read_text() == "SECRET-%s-Zq81" % host
        assert stat.S_IMODE(pin.stat().st_mode) == 0o600
    # The run is idempotent and check mode reports no change either.
    for check in (False, True):
        again = run(tmp_path, check=check)
        assert again.returncode == 0
        events = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
        stats = [e for e in events if e.get("_event") == "v2_playbook_on_stats"][0]["stats"]
        assert all(s["changed"] == 0 for s in stats.values()), stats


def test_collision_refused_naming_both_hosts(tmp_path):
    # No no_log on these tasks: the result never holds the content, so the
    # refusal stays readable while the secret stays out of every record.
    proc = run(tmp_path, contest=True, verbose=True)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "SECRET-" not in out
    contested = tmp_path / "out" / "shared" / "contested.pin"
    winner = contested.read_text().split("-")[1]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("_event") == "v2_runner_on_failed"]
    assert len(failed) == len(HOSTS) - 1
    for event in failed:
        host = list(event["hosts"])[0] if "hosts" in event else event["host"]["name"]
        msg = json.dumps(event)
        assert winner in msg and "belongs to" in msg, msg
        assert host != winner
