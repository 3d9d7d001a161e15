"""The helper's bundle store, socket server, export sync and reminders."""

import json
import os
import socket
import threading

import pytest
from conftest import Clock, Mailer, login, settings

from hm_cert_helper import remind, server, sync
from hm_cert_helper.bundles import BundleGone, BundleStore

MAP_LINE = ":".join(["AB"] * 32) + " alice@example.test\n"
CA_CRL = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n-----BEGIN X509 CRL-----\ny\n-----END X509 CRL-----\n"


# ----------------------------------------------------------------- bundles

def test_bundle_is_deleted_after_its_lifetime_even_without_a_download(tmp_path):
    clock = Clock()
    store = BundleStore(str(tmp_path), lifetime=600, clock=clock)
    bundle = store.put("alice", "0A1B", b"p12")
    assert oct(os.stat(next(tmp_path.iterdir())).st_mode & 0o777) == "0o600"
    clock.now += 599
    assert store.sweep() == 0
    clock.now += 2
    # A new store (the helper restarted) still knows the age from the name.
    restarted = BundleStore(str(tmp_path), lifetime=600, clock=clock)
    assert restarted.sweep() == 1 and list(tmp_path.iterdir()) == []
    with pytest.raises(BundleGone):
        restarted.take("alice", bundle)


def test_expired_bundle_is_refused_before_the_sweep(tmp_path):
    clock = Clock()
    store = BundleStore(str(tmp_path), lifetime=60, clock=clock)
    bundle = store.put("alice", "0A1B", b"p12")
    clock.now += 61
    with pytest.raises(BundleGone, match="expired"):
        store.take("alice", bundle)
    assert list(tmp_path.iterdir()) == []


def test_bundle_downloads_once_and_only_for_its_owner(tmp_path):
    store = BundleStore(str(tmp_path), lifetime=600)
    bundle = store.put("alice.smith", "0A1B", b"p12")
    with pytest.raises(BundleGone):
        store.take("alice", bundle)
    with pytest.raises(BundleGone):
        store.take("alice.smith", "../../etc/shadow")
    assert store.take("alice.smith", bundle) == (b"p12", "0A1B")
    with pytest.raises(BundleGone, match="only once"):
        store.take("alice.smith", bundle)


def test_sweep_removes_leftovers_of_an_interrupted_download(tmp_path):
    (tmp_path / ".abc.1.0A.alice.p12").write_bytes(b"claimed, never removed")
    assert BundleStore(str(tmp_path)).sweep() == 1


# ------------------------------------------------------------------ server

def test_socket_answers_one_json_line_and_checks_the_peer(tmp_path, env):
    path = str(tmp_path / "helper.sock")
    srv = server.Server(env.helper, {os.getuid()}, path=path)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        def ask(payload):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
                try:
                    sock.sendall(payload)
                    return sock.makefile("rb").readline()
                except (BrokenPipeError, ConnectionResetError):  # the helper hung up without reading
                    return b""
        answer = json.loads(ask(b'{"op": "list", "session": "nope", "addr": "192.0.2.1"}\n'))
        assert answer["ok"] is False and answer["login"] is True
        assert json.loads(ask(b"not json\n"))["error"] == "bad request"
        assert json.loads(ask(b"x" * (server.MAX_REQUEST + 1)))["error"] == "request too large"
        srv.allowed_uids = {os.getuid() + 12345}
        assert ask(b'{"op": "list", "addr": "192.0.2.1"}\n') == b""  # a stranger gets nothing
    finally:
        srv.shutdown()
        srv.server_close()


def test_server_needs_the_systemd_socket(env, monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    with pytest.raises(RuntimeError, match="systemd"):
        server.Server(env.helper, {0})


# -------------------------------------------------------------------- sync

@pytest.fixture()
def sync_dirs(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "postfix_relay_clientcerts").write_text(MAP_LINE)
    (export / "dovecot_ca_crl.pem").write_bytes(CA_CRL)
    (tmp_path / "postfix").mkdir()
    (tmp_path / "dovecot").mkdir()
    args = ["--export-dir", str(export), "--postfix-map", str(tmp_path / "postfix" / "relay_clientcerts"),
            "--dovecot-ca-file", str(tmp_path / "dovecot" / "client-ca-crl.pem")]
    return tmp_path, export, args


def test_sync_installs_builds_and_reloads_only_on_change(sync_dirs):
    root, export, args = sync_dirs
    calls = []
    assert sync.main(args, run=lambda argv, check: calls.append(argv), sleep=lambda s: None) == 0
    assert calls == [["postmap", "hash:%s" % (root / "postfix" / "relay_clientcerts")],
                     ["systemctl", "reload", "postfix.service", "dovecot.service"]]
    assert (root / "postfix" / "relay_clientcerts").read_text() == MAP_LINE
    assert oct(os.stat(root / "dovecot" / "client-ca-crl.pem").st_mode & 0o777) == "0o644"
    calls.clear()
    assert sync.main(args, run=lambda argv, check: calls.append(argv), sleep=lambda s: None) == 0
    assert calls == []
    (export / "postfix_relay_clientcerts").write_text("")  # the last certificate was revoked
    assert sync.main(args, run=lambda argv, check: calls.append(argv), sleep=lambda s: None) == 0
    assert calls[-1] == ["systemctl", "reload", "postfix.service"]
    assert (root / "postfix" / "relay_clientcerts").read_text() == ""


def test_sync_refuses_a_damaged_export_and_keeps_the_live_file(sync_dirs, capsys):
    root, export, args = sync_dirs
    sync.main(args, run=lambda argv, check: None, sleep=lambda s: None)
    (export / "postfix_relay_clientcerts").write_text("garbage line\n")
    calls = []
    assert sync.main(args, run=lambda argv, check: calls.append(argv), sleep=lambda s: None) == 1
    assert "not installed" in capsys.readouterr().err
    assert (root / "postfix" / "relay_clientcerts").read_text() == MAP_LINE and calls == []


# ------------------------------------------------------------------ remind

def test_reminder_once_per_certificate_near_its_end(tmp_path):
    cfg = settings(reminder_state=str(tmp_path / "reminded.json"))
    certs = [
        {"serial": "01", "email": "alice@example.test", "device": "phone", "status": "valid",
         "days_left": 10, "not_after": "2027-01-01T00:00:00Z"},
        {"serial": "02", "email": "alice@example.test", "device": "laptop", "status": "valid",
         "days_left": 90, "not_after": "2027-03-01T00:00:00Z"},
        {"serial": "03", "email": "alice@example.test", "device": "old", "status": "revoked",
         "days_left": 3, "not_after": "2026-12-05T00:00:00Z"},
        {"serial": "04", "email": "zed@example.test", "device": "phone", "status": "valid",
         "days_left": 3, "not_after": "2026-12-05T00:00:00Z"},
    ]

    class FakeCA:
        def info(self):
            return {"certificates": certs}

    mailer = Mailer()
    assert remind.run(cfg, FakeCA(), mailer, log=lambda line: None) == 1
    assert mailer.reminders == [("alice@outside.example", "phone", "01")]
    assert remind.run(cfg, FakeCA(), mailer, log=lambda line: None) == 0


def test_reminder_from_a_real_ca(env, tmp_path):
    session = login(env)
    env.helper.handle({"op": "issue", "session": session, "device": "phone", "addr": "192.0.2.1"})
    env.cfg["reminder_days"] = 200  # every 120-day certificate is "near its end"
    env.cfg["reminder_state"] = str(tmp_path / "r.json")
    assert remind.run(env.cfg, env.ca, env.mailer, log=lambda line: None) == 1
