"""The outgoing stage's queue policy: per-destination concurrency (a busy
destination neither exceeds its limit nor holds up mail for others) and
the delay-warning DSN."""

import email
import json
import os
import re
import subprocess
import threading
import time

from lib import REPO, Lab, check, free_port, message, send_mail, wait_port


def _slow_lab(delay=0.5, **out):
    lab = Lab("outq")
    port = free_port()
    lab.ports["slow"] = port
    state = lab.path("slow.json")
    log = lab.path("log", "slow.log")
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(REPO, "tests", "integration", "slow_sink.py"),
                          "--listen", "127.0.0.1:%d" % port, "--state", state, "--delay", str(delay)],
                         stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    lab.procs["internet"] = p       # not checked for its exit status
    wait_port(port, proc=p, log=log)
    lab.dns([
        "example.net. 3600 IN MX 10 mx.example.net.",
        "mx.example.net. 3600 IN A 127.0.0.1",
        "example.org. 3600 IN MX 10 mx.example.org.",
        "mx.example.org. 3600 IN A 127.0.0.1",
    ])
    lab.add_out(smtp_port=str(port), **out)
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.start("out", binary="rampart-out")
    return lab, state


def _state(path):
    with open(path) as f:
        return json.load(f)


def _wait_arrivals(lab, state, want, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        s = _state(state)
        if all(len(s["arrivals"].get(d, [])) >= n for d, n in want.items()):
            return s
        time.sleep(0.1)
    raise AssertionError("arrivals %r, expected %r; logs:\n%s" % (
        {d: len(v) for d, v in _state(state)["arrivals"].items()}, want, lab.all_logs()))


def test_destination_concurrency_limit_and_other_destinations_go_on():
    # 12 messages to one slow domain with at most 2 at once, then 3 to
    # another: that one is not held up behind the busy one.
    lab, state = _slow_lab(delay=0.5, destination_concurrency="2", max_deliveries="6",
                           next_idle_timeout="0")
    try:
        errs = []

        def send(rcpt, n):
            try:
                send_mail(lab.ports["out"], "alice@example.test", [rcpt], message("to %s %d" % (rcpt, n)))
            except Exception as e:      # reported below
                errs.append(repr(e))

        threads = [threading.Thread(target=send, args=("bob@example.net", i)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.3)
        org_sent = time.time()
        for i in range(3):
            send("carol@example.org", i)
        check(not errs, "sending failed: %r" % errs)
        s = _wait_arrivals(lab, state, {"example.net": 12, "example.org": 3})
        check(s["max"]["example.net"] == 2,
              "example.net: at most 2 at once, and 2 used; saw %d" % s["max"]["example.net"])
        last_net, last_org = max(s["arrivals"]["example.net"]), max(s["arrivals"]["example.org"])
        # 12 messages at 2 at a time take about 3 s; the other domain's
        # three (sent after them) must not wait for all of that.
        check(last_org < last_net, "example.org (done %.1fs after sending) waited for example.net (done %.1fs)"
              % (last_org - org_sent, last_net - org_sent))
        check(last_org - org_sent < 2.5, "example.org took %.1fs" % (last_org - org_sent))
        # parked messages were not counted as tries
        log = lab.log("out")
        check("delivery.deferred" not in log, "nothing was deferred: %s" % log[-2000:])
        # one JSON line per delivery attempt and recipient, with what an
        # administrator looks for
        sent = [json.loads(l) for l in log.splitlines() if '"delivery.sent"' in l]
        check(len(sent) == 15, "15 delivery lines: %d" % len(sent))
        for k in ("queue_id", "rcpt", "relay", "tls", "reply", "delay_s", "status", "attempt"):
            check(k in sent[0], "%s in %r" % (k, sent[0]))
        check(sent[0]["status"] == "sent" and sent[0]["reply"].startswith("250 2.0.0")
              and sent[0]["relay"].startswith("127.0.0.1"), "fields: %r" % sent[0])
    finally:
        lab.close()


def test_delay_warning_sent_once_and_survives_restart():
    lab = Lab("delay")
    lab.add_internet()
    lab.dns([
        # example.net's MX answers nothing (127.0.0.2: connection refused)
        "example.net. 3600 IN MX 10 mx.example.net.",
        "mx.example.net. 3600 IN A 127.0.0.2",
        "example.org. 3600 IN MX 10 mx.example.org.",
        "mx.example.org. 3600 IN A 127.0.0.1",
    ])
    lab.add_out(smtp_port=str(lab.ports["internet"]), delay_warning="2s", queue_lifetime="1h")
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.start("out", binary="rampart-out")
    try:
        refused = send_mail(lab.ports["out"], "dave@example.org", ["bob@example.net", "eve@example.net"],
                            message("slow going"))
        check(refused == {}, "accepted: %r" % refused)
        raw = lab.wait_outbound("example.org", 1, timeout=15)[0]
        check(b"X-Lab-Envelope-From: <>" in raw and b"X-Lab-Envelope-To: <dave@example.org>" in raw,
              "a null-sender report to the sender: %r" % raw[:300])
        m = email.message_from_bytes(raw[raw.index(b"From:"):])
        check(m.get_content_type() == "multipart/report" and m.get_param("report-type") == "delivery-status",
              "multipart/report: %s" % m.get_content_type())
        status = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"]
        check(status, "a delivery-status part")
        text = status[0].as_string()
        check(text.count("Action: delayed") == 2 and "bob@example.net" in text and "eve@example.net" in text,
              "both recipients reported delayed: %s" % text)
        check("Will-Retry-Until:" in text and "Status: 4." in text, "retry limit and a 4.x.x status: %s" % text)
        check(b"Subject: slow going" in raw, "the original header is returned")
        # still queued, marked, and no second warning on later attempts or
        # after a restart
        time.sleep(3)
        qid = lab.ctl("-n", "out", "queue", "list").stdout.split()[0]
        show = lab.ctl("-n", "out", "queue", "show", qid).stdout
        check(re.search(r"^delay_warned:\s+yes$", show, re.M), "the queue file says the warning went: %s" % show)
        check("bob@example.net" in show and "pending" in show, "still queued: %s" % show)
        lab.stop("out")
        lab.start("out", binary="rampart-out")
        time.sleep(3)
        check(len(lab.outbound("example.org")) == 1, "one warning only: %d" % len(lab.outbound("example.org")))
        check(lab.log("out").count("dsn.delay_queued") == 1, "one delay DSN queued")
    finally:
        lab.close()


def test_failed_bounce_goes_to_the_postmaster_or_is_dropped():
    """A bounce (null sender) that fails is never bounced back to <>: with
    double_bounce_recipient the postmaster gets the report, without it the
    failure is logged and the message let go."""
    for postmaster in ("postmaster@example.org", "", "postmaster@nullmx.example"):
        lab = Lab("bounce2")
        lab.add_internet()
        lab.dns([
            "example.org. 3600 IN MX 10 mx.example.org.",
            "mx.example.org. 3600 IN A 127.0.0.1",
            "nullmx.example. 3600 IN MX 0 .",
        ])
        lab.add_out(smtp_port=str(lab.ports["internet"]), double_bounce_recipient=postmaster)
        lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
        lab.start("out", binary="rampart-out")
        try:
            send_mail(lab.ports["out"], "", ["x@nullmx.example"], message("a bounce that bounces"))
            if postmaster.endswith("nullmx.example"):
                # the postmaster's address fails too: one report, not a loop
                end = time.time() + 10
                while time.time() < end and "dsn.not_sent" not in lab.log("out"):
                    time.sleep(0.1)
                time.sleep(1)
                check(lab.log("out").count('"dsn.queued"') == 1 and "dsn.not_sent" in lab.log("out"),
                      "one report to the postmaster, whose failure is only logged: %s" % lab.log("out")[-3000:])
            elif postmaster:
                raw = lab.wait_outbound("example.org", 1)[0]
                check(b"X-Lab-Envelope-From: <>" in raw and b"X-Lab-Envelope-To: <postmaster@example.org>" in raw,
                      "to the postmaster, from <>: %r" % raw[:300])
                m = email.message_from_bytes(raw[raw.index(b"From:"):])
                check(m.get_content_type() == "multipart/report", "a DSN: %s" % m.get_content_type())
                text = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"][0].as_string()
                check("x@nullmx.example" in text and "Action: failed" in text, "about the failed bounce: %s" % text)
            else:
                end = time.time() + 10
                while time.time() < end and "dsn.not_sent" not in lab.log("out"):
                    time.sleep(0.1)
                check("dsn.not_sent" in lab.log("out"), "logged: %s" % lab.log("out")[-2000:])
                time.sleep(1)
                check(lab.outbound("example.org") == [], "nothing sent")
            end = time.time() + 10
            while time.time() < end and not lab.ctl("-n", "out", "queue", "list").stdout.strip().endswith("0 messages"):
                time.sleep(0.1)
            check(lab.ctl("-n", "out", "queue", "list").stdout.strip().endswith("0 messages"), "nothing left queued")
        finally:
            lab.close()
