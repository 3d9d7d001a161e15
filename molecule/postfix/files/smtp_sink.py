#!/usr/bin/python3
"""Tiny SMTP sink for the postfix scenario: stores every message it accepts.

Listens on 127.0.0.1:2525 inside the test container; Postfix relays the test
domain ``sink.test`` here through a transport map entry, so a verifier proves
delivery by reading the files. Each message becomes ``<DIR>/<time>-<n>.eml``
with ``X-Sink-Mail-From`` / ``X-Sink-Rcpt-To`` lines in front. Standard
library only (Python 3.13 has no smtpd module). Test tool, not for production.

Recipients whose local part starts with ``bounce`` are refused with 550 (Postfix
bounces the message), those starting with ``defer`` with 451 (the message stays
in Postfix's queue): the sender guard's tests need both.
"""

import os
import socketserver
import sys
import time

OUT_DIR = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/hm-sink"
MAX_BYTES = 10 * 1024 * 1024
COUNTER = [0]


class Session(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, text):
        self.wfile.write((text + "\r\n").encode("ascii"))

    def handle(self):
        self.reply("220 sink.test ESMTP test sink")
        sender, rcpts = None, []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
            verb = cmd[:4].upper()
            if verb == "EHLO":
                self.reply("250-sink.test")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 sink.test")
            elif cmd.upper().startswith("MAIL FROM:"):
                sender, rcpts = cmd[10:].strip(), []
                self.reply("250 2.1.0 Ok")
            elif cmd.upper().startswith("RCPT TO:"):
                rcpt = cmd[8:].strip()
                local = rcpt.strip("<>").lower()
                if local.startswith("bounce"):
                    self.reply("550 5.1.1 No such user here (test sink)")
                elif local.startswith("defer"):
                    self.reply("451 4.3.0 Try again later (test sink)")
                else:
                    rcpts.append(rcpt)
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if sender is None or not rcpts:
                    self.reply("503 5.5.1 Error: need MAIL and RCPT")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                body, size = [], 0
                while True:
                    data = self.rfile.readline(65536)
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    size += len(data)
                    if size <= MAX_BYTES:
                        body.append(data[1:] if data.startswith(b"..") else data)
                self.store(sender, rcpts, b"".join(body))
                sender, rcpts = None, []
                self.reply("250 2.0.0 Ok: stored")
            elif verb == "RSET":
                sender, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")

    @staticmethod
    def store(sender, rcpts, body):
        COUNTER[0] += 1
        name = "%d-%04d.eml" % (time.time_ns(), COUNTER[0])
        head = "X-Sink-Mail-From: %s\r\nX-Sink-Rcpt-To: %s\r\n" % (sender, ", ".join(rcpts))
        tmp = os.path.join(OUT_DIR, "." + name)
        with open(tmp, "wb") as handle:
            handle.write(head.encode("utf-8") + body)
        os.rename(tmp, os.path.join(OUT_DIR, name))


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    os.makedirs(OUT_DIR, mode=0o755, exist_ok=True)
    with Server(("127.0.0.1", 2525), Session) as server:
        server.serve_forever()
