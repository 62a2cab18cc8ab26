#!/usr/bin/env python3
"""A webhook receiver for the tests: a real HTTP server that logs every
request (headers and body, as a JSON line) and answers as its mode says.

  ok     200 to everything
  flaky  500 to the first two requests, then hangs on the third (longer than
         any test's timeout), answers every fifth slowly (1.5 s), 200 otherwise
  down   503 to everything
  hang   never answers in time (sleeps 60 s)

Usage: webhook_receiver.py DIR MODE. It binds a free loopback port and
writes it to DIR/port; requests go to DIR/requests.jsonl.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR, MODE = sys.argv[1], sys.argv[2]
LOG = DIR + "/requests.jsonl"
lock = threading.Lock()
count = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        global count
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8", "replace")
        with lock:
            count += 1
            n = count
        if MODE == "ok":
            status, delay = 200, 0
        elif MODE == "down":
            status, delay = 503, 0
        elif MODE == "hang":
            status, delay = 200, 60
        elif n <= 2:
            status, delay = 500, 0
        elif n == 3:
            status, delay = 200, 60
        elif n % 5 == 0:
            status, delay = 200, 1.5
        else:
            status, delay = 200, 0
        record = {
            "n": n,
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "signature": self.headers.get("webhook-signature"),
            "user_agent": self.headers.get("User-Agent"),
            "path": self.path,
            "body": body,
            "status": status,
            "hung": delay > 10,
        }
        with lock, open(LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(DIR + "/port.tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(DIR + "/port.tmp", DIR + "/port")
server.serve_forever()
