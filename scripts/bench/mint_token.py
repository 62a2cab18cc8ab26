#!/usr/bin/env python3
"""Mints tracker tokens for load tests, per docs/tracker.md (format v1).

usage: mint_token.py KEY_B64 open|click [URL]
"""
import base64
import hashlib
import hmac
import struct
import sys
import time

key = base64.b64decode(sys.argv[1])
kind = sys.argv[2]
tenant, campaign, job = b"acme", b"bench", b"job-1"
body = bytes([1, {"open": 1, "click": 2}[kind]]) + struct.pack(">H", 1)
for s in (tenant, campaign, job):
    body += bytes([len(s)]) + s
body += bytes([0]) + struct.pack(">I", int(time.time()) - 3600)
if kind == "click":
    url = sys.argv[3].encode()
    body += struct.pack(">H", len(url)) + url
tenant_key = hmac.new(key, b"mailpipe/token/v1/tenant/" + tenant, hashlib.sha256).digest()
tag = hmac.new(tenant_key, body, hashlib.sha256).digest()[:16]
print(base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode())
