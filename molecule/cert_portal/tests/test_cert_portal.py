"""The certificate portal through a real browser (headless Chromium + Selenium)
against the container's published 443, on each platform, in story order:
log in with password and mailed code, issue, download, use the bundle on
465 and 993, list, revoke (and time how fast 465 and 993 refuse it), and the
refusals: wrong password, wrong / reused / expired code, another user's
serial, a form without its CSRF token, a second download, a bundle past its
lifetime. Screenshots of every page at phone and desktop width land in the
scenario's ephemeral folder and /tmp/portal-shots/."""

import json
import os
import ssl
import time
import uuid

import pytest
from portal_browser import Browser, login_attempt, sink_files, wait_code

from hmtest import imap, smtp
from hmtest.mailbox import pkcs12_to_pem, wait_in_inbox

BUNDLES = "/var/lib/hm-cert-portal-helper/bundles"
STATE = {}  # per platform: what earlier steps of the story found


@pytest.fixture(scope="session", autouse=True)
def close_browsers():
    yield
    for state in STATE.values():
        for browser in state.get("browsers", []):
            browser.close()


@pytest.fixture()
def story(instance, ephemeral_dir, tmp_path_factory):
    """Per platform, kept across the tests of the story (pytest may run them
    platform by platform or test by test): URL, passwords, browsers made on demand."""
    state = STATE.setdefault(instance.platform, {})
    if state:
        return state
    import yaml
    # Molecule writes the scenario's group_vars next to its inventory file.
    path = os.path.join(os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), "group_vars", "hm_targets")
    with open(path, encoding="utf-8") as handle:
        group_vars = yaml.safe_load(handle)
    state.update(
        url="https://127.0.0.1:%d" % instance.port(443),
        passwords=group_vars["hm_portal_passwords"],
        bundle_lifetime=int(group_vars["cert_portal_bundle_lifetime"]),
        code_lifetime=int(group_vars["cert_portal_code_lifetime"]),
        reminder_days=int(group_vars.get("cert_portal_reminder_days", 14)),
        shots=os.path.join(ephemeral_dir, "screenshots", instance.platform),
        tmp=tmp_path_factory.mktemp("portal-" + instance.platform),
        seen=set(sink_files(instance)),
        browsers=[],
        timings={},
    )

    def new_browser(name):
        browser = Browser(state["url"], str(state["tmp"] / ("downloads-" + name)), state["shots"], instance.platform)
        state["browsers"].append(browser)
        return browser

    state["new_browser"] = new_browser
    return state


def log_in(instance, story, browser, user, shoot=False):
    """Password, then the mailed code; ends on the certificates page."""
    browser.open("/")
    if shoot:
        browser.shoot("1-login")
    browser.fill("#user", user)
    browser.fill("#password", story["passwords"][user])
    browser.submit("button[type=submit]", wait_for="#code")
    assert "We mailed a one-time code to" in browser.text()
    code, _mail = wait_code(instance, "%s@outside.example" % user, story["seen"])
    if shoot:
        browser.shoot("2-code")
    browser.fill("#code", code)
    browser.submit("#code-form button", wait_for="#issue")
    return code


def p12_contexts(bundle, password, tmp):
    cert, key, parsed = pkcs12_to_pem(bundle, password, tmp)
    return cert, key, parsed


def test_log_in_issue_download_and_use_on_465_and_993(instance, story):
    browser = story["new_browser"]("alice")
    log_in(instance, story, browser, "alice", shoot=True)
    assert "alice@example.test" in browser.text()
    browser.shoot("3-certificates")
    device = story["device"] = "phone-" + uuid.uuid4().hex[:4]  # a rerun of verify finds the old ones
    browser.fill("#device", device)
    started = time.monotonic()
    browser.submit("#issue button[type=submit]", wait_for="#p12-password")
    story["timings"]["issue_click_to_page_s"] = round(time.monotonic() - started, 2)
    password = browser.find("#p12-password").text.strip()
    serial = browser.find("#serial").text.strip()
    assert len(password) >= 16 and "shown only now" in browser.text()
    browser.shoot("4-issued")
    browser.find("#download button").click()
    bundle = browser.wait_download()
    story["timings"]["issue_click_to_file_s"] = round(time.monotonic() - started, 2)
    cert, key, parsed = p12_contexts(bundle, password, story["tmp"])
    assert parsed.serial_number == int(serial, 16)
    assert parsed.subject.rfc4514_string() == "OU=%s,O=Alice Example,CN=alice@example.test" % device
    story.update(serial=serial, cert=cert, key=key, issued_page=browser.driver.current_url)

    # The bundle works where it should: relaying on 465, reading mail on 993.
    token = uuid.uuid4().hex[:12]
    out = smtp.attempt(instance.port(465), "alice@example.test", "alice@example.test", token,
                       implicit_tls=True, cert=cert, key=key)
    assert out.stage == "sent", out
    wait_in_inbox(instance.port(993), imap.tls_context(cert=cert, key=key), token)

    # The second download of the same file (the page is still there) is refused.
    browser.submit("#download button", wait_for="#error")
    assert "can be downloaded only once" in browser.text()
    browser.shoot("5-second-download")

    browser.open("/certs")
    item = browser.find("li.cert[data-serial='%s']" % serial)
    assert device in item.text and "VALID" in item.text.upper()
    browser.shoot("6-certificates-listed")
    story["alice"] = browser


def test_another_users_serial_and_missing_csrf_token_are_refused(instance, story):
    alice = story["alice"]
    bob = story["new_browser"]("bob")
    log_in(instance, story, bob, "bob")
    bob.fill("#device", "laptop-" + uuid.uuid4().hex[:4])
    bob.submit("#issue button[type=submit]", wait_for="#serial")
    bobs = bob.find("#serial").text.strip()

    # alice's browser posts bob's serial in her own revoke form.
    alice.open("/certs")
    alice.driver.execute_script(
        "document.querySelector('form.revoke input[name=serial]').value = arguments[0];", bobs)
    alice.submit("form.revoke button", wait_for="#error")
    assert "Certificate %s is not one of yours." % bobs in alice.text()
    alice.shoot("7-not-yours")
    bob.open("/certs")
    assert "VALID" in bob.find("li.cert[data-serial='%s']" % bobs).text.upper()

    # A form without its CSRF token changes nothing.
    alice.open("/certs")
    alice.driver.execute_script("document.querySelector('form.revoke input[name=csrf_token]').remove();")
    alice.submit("form.revoke button", wait_for="#error")
    assert "security token is missing" in alice.text()
    alice.shoot("8-csrf-refused")
    alice.open("/certs")
    assert "VALID" in alice.find("li.cert[data-serial='%s']" % story["serial"]).text.upper()


def test_revoke_is_refused_on_465_and_993_within_5_seconds(instance, story):
    alice = story["alice"]
    cert, key, serial = story["cert"], story["key"], story["serial"]
    alice.open("/certs")
    form = "li.cert[data-serial='%s'] form.revoke button" % serial
    clicked = time.monotonic()
    alice.submit(form, wait_for=".note")
    page_s = time.monotonic() - clicked
    assert "Certificate %s (%s) is revoked" % (serial, story["device"]) in alice.text()
    refused = {}
    deadline = clicked + 15
    while len(refused) < 2 and time.monotonic() < deadline:
        if "465" not in refused:
            out = smtp.attempt(instance.port(465), "alice@example.test", "alice@example.test", "after-revoke",
                               implicit_tls=True, cert=cert, key=key)
            if out.stage != "sent":
                refused["465"] = (time.monotonic() - clicked, out)
        if "993" not in refused:
            result = imap.login_external(instance.port(993), imap.tls_context(cert=cert, key=key))
            if result.ok:
                result.close()
            else:
                refused["993"] = (time.monotonic() - clicked, result)
        time.sleep(0.1)
    print("\n[%s] revoke click -> page %.2f s; refused on 465 after %s; on 993 after %s" % (
        instance.platform, page_s,
        "%.2f s" % refused["465"][0] if "465" in refused else "never",
        "%.2f s" % refused["993"][0] if "993" in refused else "never"))
    story["timings"].update(revoke_page_s=round(page_s, 2),
                            revoke_to_465_refused_s=round(refused.get("465", (99,))[0], 2),
                            revoke_to_993_refused_s=round(refused.get("993", (99,))[0], 2))
    assert "465" in refused and refused["465"][0] <= 5, refused
    assert "993" in refused and refused["993"][0] <= 5, refused
    # Refused as unknown certificates, not for another reason.
    assert refused["465"][1].code >= 400 and refused["465"][1].stage in ("mail", "rcpt", "tls"), refused
    assert refused["993"][1].stage in ("tls", "auth"), refused
    alice.shoot("9-revoked")


def test_wrong_password_unknown_user_and_non_portal_user(instance, story):
    browser = story["new_browser"]("stranger")
    before = set(sink_files(instance))
    for user, password in (("alice", "not-alices-password"), ("mallory", "whatever"),
                           ("carol", story["passwords"]["carol"])):
        assert "Wrong user name or password." in login_attempt(browser, user, password, wait_for="#error")
    browser.shoot("10-wrong-password")
    time.sleep(1)
    assert set(sink_files(instance)) == before, "a refused login must mail no code"


def test_wrong_reused_and_expired_codes_and_bundle_lifetime(instance, story):
    alice = story["alice"]
    # bob's bundle (issued, never downloaded, by an earlier test) lives until
    # its lifetime ends; on a quiet machine that is still now. Wait for it, so
    # the count below is the tablet's bundle alone.
    deadline = time.monotonic() + story["bundle_lifetime"] + 10
    while instance.run("sh", "-c", "ls %s | wc -l" % BUNDLES).stdout.strip() != "0":
        assert time.monotonic() < deadline, "a bundle outlived its lifetime"
        time.sleep(0.5)
    # A bundle that is never downloaded: gone after its lifetime.
    alice.open("/certs")
    alice.fill("#device", "tablet-" + uuid.uuid4().hex[:4])
    alice.submit("#issue button[type=submit]", wait_for="#download")
    issued_at = time.monotonic()
    assert instance.run("sh", "-c", "ls %s | wc -l" % BUNDLES).stdout.strip() == "1"

    browser = story["new_browser"]("codes")
    browser.open("/")
    browser.fill("#user", "alice")
    browser.fill("#password", story["passwords"]["alice"])
    browser.submit("button[type=submit]", wait_for="#code")
    code, _mail = wait_code(instance, "alice@outside.example", story["seen"])
    wrong = "%08d" % ((int(code) + 1) % 10 ** 8)
    browser.fill("#code", wrong)
    browser.submit("#code-form button", wait_for="#error")
    assert "Wrong code" in browser.text() and "4 tries left" in browser.text()
    browser.shoot("11-wrong-code")
    browser.fill("#code", code)
    browser.submit("#code-form button", wait_for="#issue")
    browser.submit("header form.logout button", wait_for="#user")

    # The used code, typed into the next login: refused.
    browser.fill("#user", "alice")
    browser.fill("#password", story["passwords"]["alice"])
    browser.submit("button[type=submit]", wait_for="#code")
    fresh, _mail = wait_code(instance, "alice@outside.example", story["seen"])
    if fresh != code:
        browser.fill("#code", code)
        browser.submit("#code-form button", wait_for="#error")
        assert "Wrong code" in browser.text()

    # The fresh code, after its lifetime: refused, and the login starts over.
    time.sleep(story["code_lifetime"] + 1)
    browser.fill("#code", fresh)
    browser.submit("#code-form button", wait_for="#user")
    assert "The code has expired. Log in again." in browser.text()
    browser.shoot("12-code-expired")

    # By now the tablet's bundle is past its lifetime: deleted on the host, refused in the browser.
    remaining = story["bundle_lifetime"] + 6 - (time.monotonic() - issued_at)
    if remaining > 0:
        time.sleep(remaining)
    assert instance.run("sh", "-c", "ls %s | wc -l" % BUNDLES).stdout.strip() == "0"
    alice.submit("#download button", wait_for="#error")
    assert "expired" in alice.text() or "only once" in alice.text()
    alice.shoot("13-bundle-expired")


def test_expiry_reminder_is_mailed_once(instance, story):
    """The daily reminder service (as the ca user, sandboxed) mails alice about her
    valid certificates once: a second run sends nothing new."""
    days = int(story.get("reminder_days", 14))
    before = set(sink_files(instance))
    run = instance.run("systemctl", "start", "hm-cert-portal-remind.service", check=False)
    assert run.returncode == 0, run.stderr
    time.sleep(3)
    new = [instance.run("cat", "/var/tmp/hm-sink/" + name).stdout for name in set(sink_files(instance)) - before]
    reminders = [m for m in new if "X-Sink-Rcpt-To: <alice@outside.example>" in m and "expires in" in m]
    if days >= 120:
        assert reminders, new
        # The portal's address is the host's name (the scenario's name, which a copy changes).
        fqdn = instance.run("hostname", "--fqdn").stdout.strip()
        assert fqdn.endswith("-%s.example.test" % instance.platform), fqdn
        assert all("https://%s/" % fqdn in m for m in reminders), reminders
        again = set(sink_files(instance))
        instance.run("systemctl", "start", "hm-cert-portal-remind.service")
        time.sleep(3)
        later = [instance.run("cat", "/var/tmp/hm-sink/" + n).stdout for n in set(sink_files(instance)) - again]
        assert not [m for m in later if "expires in" in m], later
    else:
        assert not reminders


def test_daily_crl_refresh_reaches_dovecot(instance, story):
    """The ca role's daily timer re-signs the CRL (as the ca user); the portal's
    path unit installs the new CA + CRL file for Dovecot by itself, so the CRL
    never lapses while nobody runs Ansible (issue 13, item 4)."""
    live = "/etc/dovecot/client-ca-crl.pem"
    before = instance.run("cat", live).stdout
    started = time.monotonic()
    run = instance.run("systemctl", "start", "hardened-ca-crl.service", check=False)
    assert run.returncode == 0, run.stderr
    export = instance.run("cat", "/var/lib/hardened-ca/ca/export/dovecot_ca_crl.pem").stdout
    assert export != before and "BEGIN X509 CRL" in export
    while instance.run("cat", live).stdout != export:
        assert time.monotonic() - started < 10, "Dovecot's CA + CRL file was not refreshed"
        time.sleep(0.2)
    story["timings"]["crl_timer_to_dovecot_s"] = round(time.monotonic() - started, 2)


def test_faillock_locks_the_portal_login_until_reset(instance, story):
    """pam_faillock in the portal's own PAM service: after cert_portal_faillock_deny
    wrong passwords even the right one is refused (same message, no code mailed)
    until the operator resets the tally (docs/portal.md)."""
    browser = story["new_browser"]("dave")
    before = set(sink_files(instance))

    def attempt(password):
        return login_attempt(browser, "dave", password)

    for _ in range(5):
        assert "Wrong user name or password." in attempt("not-daves-password")
    assert "Wrong user name or password." in attempt(story["passwords"]["dave"]), "a locked user got in"
    time.sleep(1)
    assert set(sink_files(instance)) == before, "a locked login must mail no code"
    tally = instance.run("faillock", "--dir", "/var/lib/hm-cert-portal-helper/faillock", "--user", "dave").stdout
    valid = [line for line in tally.splitlines() if line.rstrip().endswith(" V")]
    assert len(valid) >= 5, tally
    instance.run("faillock", "--dir", "/var/lib/hm-cert-portal-helper/faillock", "--user", "dave", "--reset")
    assert "We mailed a one-time code to" in attempt(story["passwords"]["dave"])


def test_allow_list_refuses_other_networks(instance):
    """cert_portal_allow_networks lists the podman gateway (where the browser's
    connections arrive) and loopback: a client on the container network's own
    address is refused by nginx before the app sees it."""
    own = instance.run("sh", "-c", "hostname -I").stdout.split()[0]
    probe = (
        "import ssl, urllib.request, urllib.error, sys\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        "for url in sys.argv[1:]:\n"
        "    try:\n"
        "        print(urllib.request.urlopen(url, context=ctx, timeout=10).status)\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        print(exc.code)\n")
    out = instance.run("python3", "-c", probe, "https://%s/" % own, "https://127.0.0.1/").stdout.split()
    assert out == ["403", "200"], out


def test_report(instance, story, ephemeral_dir):
    """Timings and page weights for the note: printed (pytest -s) and kept in
    <ephemeral>/portal-report-<platform>.json and /tmp/portal-shots/."""
    weights = {}
    for browser in story["browsers"]:
        weights.update(browser.weights)
    report = json.dumps({"timings": story["timings"], "pages": weights}, indent=1, sort_keys=True)
    for folder in (ephemeral_dir, "/tmp/portal-shots"):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "portal-report-%s.json" % instance.platform), "w", encoding="utf-8") as handle:
            handle.write(report)
    print("\n[%s] timings: %s" % (instance.platform, story["timings"]))
    for name in sorted(weights):
        print("[%s] page %-22s %s" % (instance.platform, name, weights[name]))
    assert max(w["transfer"] for w in weights.values()) < 20000
    assert ssl  # (imported for the contexts hmtest builds)
