"""Quarantine: a check's quarantine verdict keeps the message, durably and
with the check's reason, in the spool's quarantine/ instead of delivering
it (queue and proxy mode alike); rampartctl quarantine lists, shows,
releases (then it is delivered) and deletes."""

import re
import smtplib
import time
import urllib.request

from lib import Lab, check, free_port, message, send_mail


RULES = "/^Subject:.*lottery/i quarantine suspected lottery scam\n/^Subject:.*reject-me/ reject\n"


def _lab(mode):
    lab = Lab("quarantine-" + mode)
    lab.add_store()
    mport = free_port()
    lab.add_mx(checks="relay limits users headers", mode=mode, metrics_listen="127.0.0.1:%d" % mport)
    with open(lab.path("header-rules"), "w") as f:
        f.write(RULES)
    lab.sections["check.headers"] = {"rules_file": lab.path("header-rules")}
    lab.start("store")
    lab.start("mx")
    return lab, mport


def _quarantined(lab):
    out = lab.ctl("quarantine", "list")
    check(out.returncode == 0, "quarantine list: %s" % out.stderr)
    return re.findall(r"^(\S+)\s+quarantine\s", out.stdout, re.M), out.stdout


def _run(mode):
    lab, mport = _lab(mode)
    try:
        # an ordinary message is delivered; a quarantined one gets the same 250
        send_mail(lab.ports["mx"], "a@example.org", ["alice@example.test"], message("hello"))
        lab.wait_mail("alice", 1)
        with smtplib.SMTP("127.0.0.1", lab.ports["mx"], timeout=30) as c:
            c.ehlo("client.example.org")
            c.mail("b@example.org")
            c.rcpt("alice@example.test")
            c.rcpt("bob@example.test")
            code, text = c.data(message("You won the LOTTERY").encode())
        check(code == 250 and b"queued as" in text, "quarantined message accepted: %d %r" % (code, text))
        qid = text.decode().split()[-1]
        time.sleep(1.5)
        check(len(lab.maildir("alice")) == 1 and len(lab.maildir("bob")) == 0, "nothing delivered")
        ids, listing = _quarantined(lab)
        check(ids == [qid], "listed: %r\n%s" % (ids, listing))
        check("check headers: rule " in listing and "suspected lottery scam" in listing
              and "1 message in quarantine" in listing, "reason listed:\n%s" % listing)
        show = lab.ctl("quarantine", "show", qid)
        check(show.returncode == 0 and "b@example.org" in show.stdout and "bob@example.test" in show.stdout,
              "show: %s %s" % (show.stdout, show.stderr))
        log = lab.log("mx")
        check('"event":"message.quarantined"' in log and '"check":"headers","phase":"headers","verdict":"quarantine"'
              in log, "decision and quarantine logged")
        m = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        check(re.search(r'^rampart_queue_quarantined_messages\{[^}]*\} 1$', m, re.M)
              and re.search(r'^rampart_messages_total\{[^}]*result="quarantined"[^}]*\} 1$', m, re.M),
              "metrics:\n%s" % "\n".join(l for l in m.splitlines() if "quarant" in l))
        # a message that is not in quarantine cannot be released or deleted from there
        bad = lab.ctl("quarantine", "release", "0" * len(qid))
        check(bad.returncode != 0 and ("no such message" in bad.stderr or "not a queue id" in bad.stderr),
              "unknown id: %r" % bad.stderr)
        # released: delivered to both recipients, as if never quarantined
        rel = lab.ctl("quarantine", "release", qid)
        check(rel.returncode == 0, "release: %s %s" % (rel.stdout, rel.stderr))
        got = lab.wait_mail("bob", 1)[0]
        check(b"LOTTERY" in got, "released message delivered")
        lab.wait_mail("alice", 2)
        check(_quarantined(lab)[0] == [], "quarantine empty after release")
        # another one, deleted: never delivered
        send_mail(lab.ports["mx"], "c@example.org", ["bob@example.test"], message("lottery again"))
        ids, _ = _quarantined(lab)
        check(len(ids) == 1, "second quarantined: %r" % ids)
        d = lab.ctl("quarantine", "delete", ids[0])
        check(d.returncode == 0, "delete: %s %s" % (d.stdout, d.stderr))
        check(_quarantined(lab)[0] == [], "deleted")
        again = lab.ctl("quarantine", "show", ids[0])
        check(again.returncode != 0 and "no such message" in again.stderr, "gone: %r" % again.stderr)
        time.sleep(1.5)
        check(len(lab.maildir("bob")) == 1, "the deleted message was never delivered")
    finally:
        lab.close()


def test_quarantine_queue_mode():
    _run("queue")


def test_quarantine_proxy_mode():
    _run("proxy")


def test_quarantine_at_the_store_marks_the_message():
    """The store delivers; it has no spool: a quarantined message is
    delivered marked with an X-Rampart-Quarantine header, and logged."""
    lab = Lab("quarantine-store")
    with open(lab.path("header-rules"), "w") as f:
        f.write(RULES)
    lab.sections["check.headers"] = {"rules_file": lab.path("header-rules")}
    lab.add_store(checks="users headers")
    lab.start("store")
    try:
        with smtplib.LMTP("127.0.0.1", lab.ports["store"], timeout=30) as c:
            refused = c.sendmail("a@example.org", ["alice@example.test"], message("lottery win"))
        check(refused == {}, "delivered: %r" % refused)
        got = lab.wait_mail("alice", 1)[0]
        check(re.search(rb"^X-Rampart-Quarantine: check headers: rule .*suspected lottery scam", got, re.M),
              "marked: %r" % got[:600])
        check('"event":"message.quarantine_marked"' in lab.log("store"), "logged")
    finally:
        lab.close()
