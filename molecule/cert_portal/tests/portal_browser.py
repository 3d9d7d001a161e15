"""A real browser for the portal scenario: Debian's headless Chromium driven
through Selenium, with screenshots at phone and desktop width, page weights,
and the one-time codes read from the test mail sink in the container."""

import os
import re
import shutil
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

PHONE = (375, 812)
DESKTOP = (1280, 900)
SHOTS_COPY = "/tmp/portal-shots"
SINK = "/var/tmp/hm-sink"


class NetworkChanged(AssertionError):
    """Chromium dropped the request: podman added or removed a network
    interface on this machine (another scenario's containers starting or
    stopping) while it was in flight, and Chromium showed ERR_NETWORK_CHANGED."""


class Browser:
    """One browser profile (its own cookies and download folder)."""

    def __init__(self, base_url, download_dir, shots_dir, platform):
        self.base_url, self.download_dir, self.shots_dir, self.platform = base_url, download_dir, shots_dir, platform
        os.makedirs(download_dir, exist_ok=True)
        os.makedirs(shots_dir, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=%d,%d" % DESKTOP, "--no-first-run", "--disable-extensions"):
            options.add_argument(arg)
        # The host's server certificate is self-signed in the test.
        options.accept_insecure_certs = True
        options.add_experimental_option("prefs", {
            "download.default_directory": download_dir,
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        })
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        self.driver.set_page_load_timeout(60)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": download_dir})
        self.weights = {}

    def close(self):
        self.driver.quit()

    # ------------------------------------------------------------ pages
    def open(self, path="/"):
        """Load a page of the portal; a page that is not the portal's (an nginx
        error while gunicorn is still starting, seen under heavy load) is loaded
        again, three times at most, and then the test fails saying what came."""
        for _attempt in range(3):
            self.driver.get(self.base_url + path)
            if self.finds("main"):
                return
            time.sleep(2)
        raise AssertionError("%s is not a portal page: %s" % (path, self.text()[:300]))

    def find(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self):
        return self.find("body").text

    def title(self):
        return self.driver.title

    def fill(self, css, value):
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    @staticmethod
    def _gone(element):
        """True once ``element``'s page was replaced (Chromium 156 reports that as
        "Node with given id does not belong to the document", not as a stale element)."""
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise

    def submit(self, css, wait_for=None, timeout=60):
        """Click ``css`` and wait until the next page is there (``wait_for`` selector or a new page)."""
        wait = WebDriverWait(self.driver, timeout)
        for attempt in range(3):
            old = self.find("html")
            try:
                wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css))).click()
                break
            except WebDriverException:
                # A page still settling can swap its nodes under the click (seen under load);
                # retry only when the click did not already take us to the next page.
                if self._gone(old) or attempt == 2:
                    if self._gone(old):
                        break
                    raise
                time.sleep(0.5)
        try:
            wait.until(lambda _driver: self._gone(old))
            if wait_for:
                wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, wait_for)))
        except TimeoutException:
            page = self.text()
            if "ERR_NETWORK_CHANGED" in page:
                raise NetworkChanged("after %s: ERR_NETWORK_CHANGED" % css) from None
            # Say which page came instead (and keep a picture of it).
            try:
                self.shoot("unexpected-page")
            except WebDriverException:
                pass
            raise AssertionError("after %s: no %s within %d s; page %r at %s: %s" % (
                css, wait_for or "new page", timeout, self.driver.title, self.driver.current_url, page[:400]))

    def weigh(self, name):
        """Bytes the page cost: the HTML document plus its resources (as sent, and decoded)."""
        entries = self.driver.execute_script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".map(e => [e.name, e.transferSize || 0, e.decodedBodySize || 0]);")
        self.weights[name] = {"requests": len(entries), "transfer": sum(e[1] for e in entries),
                              "decoded": sum(e[2] for e in entries)}
        return self.weights[name]

    def shoot(self, name):
        """Screenshots at phone and desktop width (scenario folder, and a copy in /tmp/portal-shots)."""
        self.weigh(name)
        os.makedirs(SHOTS_COPY, exist_ok=True)
        for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
            self.driver.set_window_size(*size)
            width = self.driver.execute_script("return document.documentElement.scrollWidth")
            inner = self.driver.execute_script("return window.innerWidth")
            assert width <= inner, "%s is wider (%d px) than the %s window (%d px)" % (name, width, label, inner)
            path = os.path.join(self.shots_dir, "%s-%s.png" % (name, label))
            self.driver.save_screenshot(path)
            shutil.copy(path, os.path.join(SHOTS_COPY, "%s-%s-%s.png" % (self.platform, name, label)))
        self.driver.set_window_size(*DESKTOP)

    def wait_download(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [n for n in os.listdir(self.download_dir) if n.endswith(".p12")]
            partial = [n for n in os.listdir(self.download_dir) if n.endswith(".crdownload")]
            if done and not partial:
                return os.path.join(self.download_dir, done[0])
            time.sleep(0.2)
        raise AssertionError("no .p12 arrived in %s: %s" % (self.download_dir, os.listdir(self.download_dir)))


def sink_files(instance):
    out = instance.run("sh", "-c", "ls -1 %s 2>/dev/null || true" % SINK).stdout.split()
    return sorted(name for name in out if name.endswith(".eml"))


def wait_code(instance, rcpt, seen, timeout=60):
    """The code in the first new message to ``rcpt`` (not among ``seen`` sink files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in sink_files(instance):
            if name in seen:
                continue
            text = instance.run("cat", "%s/%s" % (SINK, name)).stdout
            seen.add(name)
            if "X-Sink-Rcpt-To: <%s>" % rcpt in text:
                match = re.search(r"^\s+(\d{8,})\s*$", text, re.M)
                assert match, text
                return match.group(1), text
        time.sleep(0.3)
    raise AssertionError("no code mail for %s within %d s" % (rcpt, timeout))


def login_attempt(browser, user, password, wait_for="#error, #code", tries=3):
    """Submit the login form once and return the page text. A request that
    Chromium dropped because the machine's interfaces changed (NetworkChanged)
    is made again from a fresh login page: a password attempt that never
    reached the portal is not an attempt, and one that did only adds one more
    failure, which the callers' assertions allow."""
    for attempt in range(tries):
        browser.open("/")
        browser.fill("#user", user)
        browser.fill("#password", password)
        try:
            browser.submit("button[type=submit]", wait_for=wait_for)
            return browser.text()
        except NetworkChanged:
            if attempt == tries - 1:
                raise
