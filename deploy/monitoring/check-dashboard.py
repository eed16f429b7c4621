#!/usr/bin/env python3
"""Check grafana-dashboard.json against the metrics Rampart serves.

    deploy/monitoring/check-dashboard.py [--prometheus http://127.0.0.1:9090]

Static checks: the file is JSON; every panel (rows included) has queries;
every query names at least one metric and only metrics in KNOWN (plus
Prometheus's own `up`).  With --prometheus, every query is also run (with
the dashboard variables set to match everything) and must be accepted;
empty results are listed but not an error (a counter appears only once it
has counted something).  Exit status 0 when everything passed.
"""
import json
import os
import re
import sys
import urllib.parse
import urllib.request

# Metric families in shared/mail/stage.c, shared/checks/chain.c and
# stages/out/out.c (grep metrics_counter / metrics_gauge_cb).
KNOWN = {
    "rampart_sessions_total", "rampart_sessions_active",
    "rampart_messages_total", "rampart_rejects_total", "rampart_smtp_events_total",
    "rampart_check_evaluations_total", "rampart_check_verdicts_total",
    "rampart_deliveries_total", "rampart_deferrals_total", "rampart_failures_total",
    "rampart_queue_messages", "rampart_queue_failed_messages", "rampart_queue_oldest_seconds",
    # rampart-out
    "rampart_sender_messages_total", "rampart_sender_recipients_total", "rampart_sender_bytes_total",
    "rampart_smarthost_auth_failures_total",
}
ALSO = {"up"}   # Prometheus's per-target scrape status

VARS = {"$__rate_interval": "1m", "$__range": "1h", "$stage": ".*", "$instance": ".*"}


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    prom = None
    if len(sys.argv) == 3 and sys.argv[1] == "--prometheus":
        prom = sys.argv[2].rstrip("/")
    elif len(sys.argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(os.path.join(here, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    bad = 0
    nq = 0
    for p in panels(dash["panels"]):
        if p["type"] == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            print(f"panel {p['title']!r}: no queries")
            bad += 1
        for t in targets:
            expr = t["expr"]
            nq += 1
            # identifiers that are not label names, functions or keywords
            names = set(re.findall(r"\b(rampart_[a-z_]+|up)\b(?!\s*\()", re.sub(r'"[^"]*"', '""', expr)))
            unknown = names - KNOWN - ALSO
            if unknown:
                print(f"panel {p['title']!r}: unknown metric(s) {sorted(unknown)}")
                bad += 1
            if not names & KNOWN and names != {"up"}:
                print(f"panel {p['title']!r}: query names no rampart metric: {expr}")
                bad += 1
            if prom:
                q = expr
                for k, v in VARS.items():
                    q = q.replace(k, v)
                url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        res = json.load(r)
                except urllib.error.HTTPError as e:
                    res = json.load(e)
                if res.get("status") != "success":
                    print(f"panel {p['title']!r}: query refused: {res.get('error')}\n    {q}")
                    bad += 1
                elif not res["data"]["result"]:
                    print(f"panel {p['title']!r} ({t['refId']}): no data yet")
    print(f"{nq} queries checked, {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
