#!/usr/bin/env python3
"""Writes N send jobs (wire contract v1) of about 10 KB of personalised HTML
with 5 links each, spread over several recipient domains, as JSON Lines.

usage: gen_jobs.py N CAMPAIGN > jobs.jsonl
"""
import json
import sys

n, campaign = int(sys.argv[1]), sys.argv[2]
domains = ["gmail.example", "outlook.example", "yahoo.example", "corp.example", "mail.example"]
para = ("<p>Dear {{ name }}, our spring collection is here. Every jacket, tent and "
        "pack has been tested on real trails, and this week members save on all of them. "
        "Your member number is {{ member }}.</p>\n")
links = "".join(
    f'<p><a href="https://shop.example/item/{i}?c={campaign}&u={{{{ member }}}}">Item {i}</a></p>\n' for i in range(5)
)
html = "<html><body><h1>Hello {{ name }}</h1>\n" + para * 40 + links + "</body></html>"
for i in range(n):
    d = domains[i % len(domains)]
    print(json.dumps({
        "job_id": f"{campaign}-{i:07d}",
        "tenant_id": "acme",
        "campaign_id": campaign,
        "category": "marketing",
        "from": {"email": "news@acme.example", "name": "Acme Outdoor"},
        "to": {"email": f"user{i}@{d}", "name": f"User {i}"},
        "subject": "Spring sale, {{ name }}",
        "html": html,
        "vars": {"name": f"User {i}", "member": f"M{i:07d}"},
    }, separators=(",", ":")))
