"""MX -> store: both forwarding modes, failover, recipient checks, relay
control, limits, XFORWARD/XCLIENT, metrics, rampartctl."""

import smtplib
import subprocess
import time
import urllib.request

import os

from lib import BUILD, Lab, Raw, check, free_port, message, send_mail


def _pipeline(mode, **mx):
    lab = Lab("pipeline-" + mode)
    lab.add_store()
    lab.start("store")
    lab.add_mx(mode=mode, **mx)
    lab.start("mx")
    return lab


def test_queue_mode_delivers_to_maildir():
    lab = _pipeline("queue")
    try:
        body = message("queue mode", "Line one.\r\n.leading dot\r\n\r\nLast line.\r\n")
        refused = send_mail(lab.ports["mx"], "sender@example.org", ["alice@example.test"], body)
        check(refused == {}, "refused: %r" % refused)
        m = lab.wait_mail("alice", 1)[0]
        check(m.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: alice@example.test\n"),
              "Return-Path/Delivered-To missing: %r" % m[:200])
        check(b"by mx.example.test (Rampart) with ESMTP id " in m, "MX Received header missing: %r" % m[:600])
        check(b"by store.example.test (Rampart) with LMTP" in m, "store Received header missing")
        check(b"from client.example.org (unknown [127.0.0.1])" in m, "client identity (XFORWARD) not passed on")
        check(b"X-Rampart-Id: " in m and m.count(b"X-Rampart-Id:") == 1, "one correlation id header expected")
        # The body arrives byte for byte (LF line ends in Maildir, dot unstuffed).
        check(m.endswith(b"Subject: queue mode\nMessage-ID: <queue.mode@example.org>\n\nLine one.\n.leading dot\n\nLast line.\n"),
              "body changed: %r" % m[-200:])
    finally:
        lab.close()


def test_proxy_mode_relays_next_hop_reply():
    lab = _pipeline("proxy")
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        check(r.cmd("MAIL FROM:<s@example.org>")[0] == 250, "MAIL")
        check(r.cmd("RCPT TO:<alice@example.test>")[0] == 250, "RCPT alice")
        code, text, _ = r.cmd("DATA")
        check(code == 354, "DATA: %d" % code)
        r.send(message("proxy mode") + ".\r\n")
        code, text, _ = r.reply()
        check(code == 250 and "delivered" in text, "final reply should be the store's: %d %s" % (code, text))
        r.cmd("QUIT")
        m = lab.wait_mail("alice", 1)[0]
        check(b"Subject: proxy mode" in m, "message not delivered")
        check(lab.ctl("queue", "list").stdout.strip().endswith("0 messages"), "proxy mode must not queue")
    finally:
        lab.close()


def test_proxy_mode_next_hop_down_tempfails():
    lab = Lab("proxy-down")
    lab.add_store()          # configured but never started
    lab.add_mx(mode="proxy")
    lab.start("mx")
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.cmd("MAIL FROM:<s@example.org>")
        code, text, _ = r.cmd("RCPT TO:<alice@example.test>")
        check(400 <= code < 500, "next hop down must give 4xx, got %d %s" % (code, text))
        r.cmd("QUIT")
    finally:
        lab.close()


def test_failover_to_second_next_hop():
    lab = Lab("failover")
    lab.add_store()
    lab.start("store")
    dead = free_port()
    lab.add_mx(next_hops="127.0.0.1:%d 127.0.0.1:%d" % (dead, lab.ports["store"]))
    lab.start("mx")
    try:
        for i in range(3):
            send_mail(lab.ports["mx"], "s@example.org", ["bob@example.test"], message("failover %d" % i))
        lab.wait_mail("bob", 3)
    finally:
        lab.close()


def test_queue_holds_mail_while_next_hop_down():
    lab = Lab("retry")
    lab.add_store()
    lab.add_mx()
    lab.write_config()
    # The MX needs the store's user list only for the users check; run it without.
    lab.sections["mx"]["checks"] = "relay limits"
    lab.start("mx")
    try:
        send_mail(lab.ports["mx"], "s@example.org", ["alice@example.test"], message("held"))
        time.sleep(1.5)
        out = lab.ctl("queue", "list").stdout
        check("1 message" in out, "message should wait in the queue: %s" % out)
        lab.start("store")
        lab.wait_mail("alice", 1, timeout=20)
        for _ in range(50):
            if lab.ctl("queue", "list").stdout.strip().endswith("0 messages"):
                break
            time.sleep(0.1)
        check(lab.ctl("queue", "list").stdout.strip().endswith("0 messages"), "queue not emptied")
    finally:
        lab.close()


def test_unknown_user_and_relay_denied():
    lab = _pipeline("queue")
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.cmd("MAIL FROM:<s@example.org>")
        code, text, _ = r.cmd("RCPT TO:<nobody@example.test>")
        check(code == 550 and text.startswith("5.1.1"), "unknown user: %d %s" % (code, text))
        code, text, _ = r.cmd("RCPT TO:<victim@elsewhere.example>")
        check(code == 554 and text.startswith("5.7.1") and "Relay access denied" in text,
              "open relay! %d %s" % (code, text))
        code, text, _ = r.cmd("RCPT TO:<alice@EXAMPLE.test>")
        check(code == 250, "domain case must not matter: %d %s" % (code, text))
        code, text, _ = r.cmd("DATA")
        check(code == 354, "DATA after one good RCPT: %d" % code)
        r.send(message("mixed") + ".\r\n")
        check(r.reply()[0] == 250, "message")
        r.cmd("QUIT")
        lab.wait_mail("alice", 1)
        check(lab.maildir("nobody") == [], "unknown user got mail")
    finally:
        lab.close()


def test_store_lmtp_replies_per_recipient_and_quota():
    lab = Lab("store")
    with open(lab.path("users"), "w") as f:
        f.write("alice@example.test 2k\nbob@example.test\ncarol@example.test 1k\n")
    lab.add_store(checks="")
    lab.start("store")
    try:
        r = Raw(lab.ports["store"])
        check(r.banner[0] == 220, "banner")
        check(r.cmd("EHLO x")[0] == 500, "EHLO is not LMTP")
        code, _, lines = r.cmd("LHLO mx.example.test")
        check(code == 250 and any("PIPELINING" in ln for ln in lines), "LHLO")
        r.cmd("MAIL FROM:<s@example.org>")
        for u in ("alice", "bob", "nobody", "carol"):
            check(r.cmd("RCPT TO:<%s@example.test>" % u)[0] == 250, "RCPT %s" % u)
        r.cmd("DATA")
        r.send(message("lmtp", "x" * 1500 + "\r\n") + ".\r\n")
        replies = [r.reply() for _ in range(4)]
        codes = [c for c, _, _ in replies]
        check(codes[0] == 250 and codes[1] == 250, "alice and bob delivered: %r" % replies)
        check(codes[2] == 550 and replies[2][1].startswith("5.1.1"), "nobody unknown: %r" % (replies[2],))
        check(codes[3] == 552 and replies[3][1].startswith("5.2.2"), "carol's quota is smaller than the message: %r" % (replies[3],))
        # alice's 2k quota is now used up: the next one is a temporary failure.
        r.cmd("MAIL FROM:<s@example.org>")
        r.cmd("RCPT TO:<alice@example.test>")
        r.cmd("DATA")
        r.send(message("lmtp2", "y" * 1000 + "\r\n") + ".\r\n")
        code, text, _ = r.reply()
        check(code == 452 and text.startswith("4.2.2"), "mailbox full: %d %s" % (code, text))
        r.cmd("QUIT")
        check(len(lab.maildir("alice")) == 1 and len(lab.maildir("bob")) == 1, "deliveries")
    finally:
        lab.close()


def test_size_and_recipient_limits():
    lab = _pipeline("queue", max_message_size="10k", max_recipients="2")
    try:
        r = Raw(lab.ports["mx"])
        code, _, lines = r.cmd("EHLO client.example.org")
        check(any(ln[4:] == "SIZE 10240" for ln in lines), "SIZE advertised: %r" % lines)
        code, text, _ = r.cmd("MAIL FROM:<s@example.org> SIZE=20000")
        check(code == 552 and text.startswith("5.3.4"), "declared size: %d %s" % (code, text))
        r.cmd("MAIL FROM:<s@example.org>")
        check(r.cmd("RCPT TO:<alice@example.test>")[0] == 250, "rcpt 1")
        check(r.cmd("RCPT TO:<bob@example.test>")[0] == 250, "rcpt 2")
        code, text, _ = r.cmd("RCPT TO:<postmaster@example.test>")
        check(code == 452 and text.startswith("4.5.3"), "too many recipients: %d %s" % (code, text))
        r.cmd("DATA")
        r.send(message("big", ("z" * 70 + "\r\n") * 200) + ".\r\n")
        code, text, _ = r.reply()
        check(code == 552 and text.startswith("5.3.4"), "message too big: %d %s" % (code, text))
        # The session goes on.
        check(r.cmd("NOOP")[0] == 250, "session must continue")
        r.cmd("QUIT")
        time.sleep(0.5)
        check(lab.maildir("alice") == [], "nothing delivered")
    finally:
        lab.close()


def test_xclient_and_xforward_trust():
    lab = _pipeline("queue")
    try:
        r = Raw(lab.ports["mx"])
        code, _, lines = r.cmd("EHLO proxy.example.org")
        check(any(ln[4:].startswith("XCLIENT") for ln in lines), "XCLIENT offered to a trusted proxy")
        check(not any("XFORWARD" in ln for ln in lines), "XFORWARD must not be offered to an untrusted client")
        check(r.cmd("XFORWARD ADDR=192.0.2.9")[0] == 550, "XFORWARD from untrusted must be refused")
        code, text, _ = r.cmd("XCLIENT ADDR=198.51.100.7 NAME=sender.example.net")
        check(code == 220, "XCLIENT restarts the session with a banner: %d %s" % (code, text))
        code, _, lines = r.cmd("EHLO sender.example.net")
        check(not any("XCLIENT" in ln for ln in lines), "the presented client is no longer trusted")
        r.cmd("MAIL FROM:<s@example.org>")
        r.cmd("RCPT TO:<alice@example.test>")
        r.cmd("DATA")
        r.send(message("xclient") + ".\r\n")
        check(r.reply()[0] == 250, "message")
        r.cmd("QUIT")
        m = lab.wait_mail("alice", 1)[0]
        check(b"from sender.example.net (sender.example.net [198.51.100.7])" in m, "Received must name the XCLIENT client: %r" % m[:500])
    finally:
        lab.close()
    lab = Lab("xclient-untrusted")
    lab.add_store()
    lab.start("store")
    lab.add_mx(xclient_hosts="")
    lab.start("mx")
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO x.example.org")
        check(r.cmd("XCLIENT ADDR=198.51.100.7")[0] == 550, "XCLIENT from an untrusted network must be refused")
        r.cmd("QUIT")
    finally:
        lab.close()


def test_metrics_endpoint():
    lab = Lab("metrics")
    lab.add_store()
    lab.start("store")
    mport = free_port()
    lab.add_mx(metrics_listen="127.0.0.1:%d" % mport)
    lab.start("mx")
    try:
        send_mail(lab.ports["mx"], "s@example.org", ["alice@example.test"], message("metrics"))
        lab.wait_mail("alice", 1)
        try:
            send_mail(lab.ports["mx"], "s@example.org", ["x@elsewhere.example"], message("relay"))
        except smtplib.SMTPRecipientsRefused:
            pass
        r = Raw(lab.ports["mx"])
        r.cmd("BOGUS")
        r.cmd("QUIT")
        time.sleep(0.3)
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        check('rampart_smtp_events_total{stage="mx",instance="mx",event="unknown_command"} 1' in text,
              "engine events counted: %s" % text[-1500:])
        check('rampart_rejects_total{stage="mx",instance="mx",check="relay",code="554"} 1' in text,
              "rejects by check and code")
        check('rampart_queue_oldest_seconds' in text and 'rampart_sessions_active' in text, "queue age and sessions gauges")
        check('rampart_messages_total{' in text and 'result="queued"' in text, "queued count: %s" % text[:2000])
        check('check="relay",verdict="reject"' in text, "relay reject counted")
        check("rampart_queue_messages" in text, "queue gauge")
        check('rampart_deliveries_total' in text, "deliveries counter")
    finally:
        lab.close()


def test_bad_config_stops_startup():
    lab = Lab("badconf")
    lab.add_store()
    lab.add_mx()
    lab.sections["mx"]["no_such_key"] = "1"
    lab.write_config()
    try:
        p = subprocess.run([BUILD + "/rampart-mx", "-c", lab.path("rampart.conf"), "-n", "mx"],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode != 0, "must exit non-zero")
        check("rampart.conf:" in p.stderr and "no_such_key" in p.stderr, "error must name file:line and key: %s" % p.stderr)
        lab.sections["mx"].pop("no_such_key")
        lab.sections["mx"]["max_message_size"] = "lots"
        lab.write_config()
        p = subprocess.run([BUILD + "/rampart-mx", "-c", lab.path("rampart.conf"), "-n", "mx"],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode != 0 and "max_message_size" in p.stderr and "expected" in p.stderr,
              "bad value: %s" % p.stderr)
        out = lab.ctl("config", "check")
        check(out.returncode != 0 and "max_message_size" in out.stderr, "config check must fail too: %s" % out.stderr)
        lab.sections["mx"]["max_message_size"] = "20m"
        lab.write_config()
        out = lab.ctl("config", "check")
        check(out.returncode == 0 and "max_message_size = 20m" in out.stdout, "config check prints values: %s %s" % (out.stdout, out.stderr))
        # the documentation covers every section a site may write
        doc = lab.ctl("config", "check", "--doc").stdout
        for sec in ("[global]", "[mx]", "[state]", "[check.spf]", "[check.greylist]", "[check.ratelimit]",
                    "[check.dkim]", "[check.dnsbl]"):
            check(sec in doc, "config check --doc lacks %s" % sec)
        # a bad [state] value stops start-up like any other
        lab.sections["state"] = {"backend": "cassandra"}
        lab.write_config()
        p = subprocess.run([BUILD + "/rampart-mx", "-t", "-c", lab.path("rampart.conf"), "-n", "mx"],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode != 0 and "rampart.conf:" in p.stderr and "backend" in p.stderr,
              "bad [state] backend: %s" % p.stderr)
        del lab.sections["state"]
        lab.write_config()
        # Values that parse but would not start: the same verdict from
        # rampart-mx -t and rampartctl config check, naming the problem.
        for key, val, word in (("checks", "relay nosuch", "nosuch"), ("next_hops", "127.0.0.1:99999", "next_hops"),
                               ("xforward_hosts", "banana", "banana")):
            saved = lab.sections["mx"].get(key)
            lab.sections["mx"][key] = val
            lab.write_config()
            t = subprocess.run([BUILD + "/rampart-mx", "-t", "-c", lab.path("rampart.conf"), "-n", "mx"],
                               capture_output=True, text=True, timeout=30)
            out = lab.ctl("config", "check")
            check(t.returncode != 0 and word in t.stderr, "rampart-mx -t, %s: %s" % (key, t.stderr))
            check(out.returncode != 0 and word in out.stderr, "config check, %s: %s" % (key, out.stderr))
            if saved is None:
                del lab.sections["mx"][key]
            else:
                lab.sections["mx"][key] = saved
        lab.write_config()
        t = subprocess.run([BUILD + "/rampart-mx", "-t", "-c", lab.path("rampart.conf"), "-n", "mx"],
                           capture_output=True, text=True, timeout=30)
        check(t.returncode == 0, "a good file passes -t: %s" % t.stderr)
        env = dict(os.environ, RAMPART_MX_MAX_MESSAGE_SIZE="30m")
        out = subprocess.run([BUILD + "/rampartctl", "-c", lab.path("rampart.conf"), "config", "check"],
                             capture_output=True, text=True, timeout=30, env=env)
        check("max_message_size = 30m" in out.stdout and "RAMPART_MX_MAX_MESSAGE_SIZE" in out.stdout,
              "environment override shown: %s" % out.stdout)
    finally:
        lab.close()


def test_next_hop_opportunistic_starttls():
    import subprocess as sp
    lab = Lab("nexttls")
    sp.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=store.example.test",
            "-keyout", lab.path("key.pem"), "-out", lab.path("cert.pem")], check=True, capture_output=True)
    lab.add_store(tls_cert=lab.path("cert.pem"), tls_key=lab.path("key.pem"))
    lab.start("store")
    lab.add_mx()
    lab.start("mx")
    try:
        send_mail(lab.ports["mx"], "s@example.org", ["alice@example.test"], message("next tls"))
        m = lab.wait_mail("alice", 1)[0]
        check(b"by store.example.test (Rampart) with LMTPS" in m and b"TLSv1." in m,
              "MX -> store must use STARTTLS when offered: %r" % m[:700])
    finally:
        lab.close()


def test_failure_after_250_is_reported_or_kept():
    """A next hop's 5xx after our 250 never loses the message: the sender
    gets a DSN (here a local user, so it lands in a Maildir); with dsn = no
    the message is kept in failed/, counted, and listed by rampartctl."""
    import email
    for dsn in ("yes", "no"):
        lab = Lab("failed-" + dsn)
        with open(lab.path("users"), "w") as f:
            f.write("alice@example.test 1k\nbob@example.test\ncarol@example.test\n")
        lab.add_store()
        lab.start("store")
        lab.add_mx(checks="relay limits", dsn=dsn)      # no recipient check at the MX
        lab.start("mx")
        try:
            send_mail(lab.ports["mx"], "carol@example.test", ["alice@example.test", "bob@example.test"],
                      message("too big for alice", "x" * 3000 + "\r\n"))
            lab.wait_mail("bob", 1)
            check(lab.maildir("alice") == [], "alice refused (quota)")
            if dsn == "yes":
                report = lab.wait_mail("carol", 1)[0]
                m = email.message_from_bytes(report)
                check(m.get_content_type() == "multipart/report", "a DSN: %r" % report[:400])
                text = report.decode(errors="replace")
                check("Return-Path: <>" in text and "alice@example.test" in text and "5.2.2" in text,
                      "null sender, the failed recipient and its status: %s" % text[:1500])
                check("Final-Recipient: rfc822; bob@example.test" not in text, "bob was delivered, not reported")
                continue
            for _ in range(100):
                out = lab.ctl("queue", "list").stdout
                if "failed" in out:
                    break
                time.sleep(0.1)
            check(" failed " in out and "<carol@example.test>" in out, "kept in failed/: %s" % out)
            qid = out.split()[0]
            show = lab.ctl("queue", "show", qid).stdout
            check("552" in show and "5.2.2" in show, "the store's refusal is recorded: %s" % show)
            # The administrator raises the quota and sends it again.
            with open(lab.path("users"), "w") as f:
                f.write("alice@example.test 1m\nbob@example.test\ncarol@example.test\n")
            time.sleep(1.5)
            r = lab.ctl("queue", "requeue", qid)
            check(r.returncode == 0, "requeue: %s" % r.stderr)
            lab.wait_mail("alice", 1)
            time.sleep(0.5)
            check(len(lab.maildir("bob")) == 1, "bob is not delivered twice")
            check(lab.ctl("queue", "list").stdout.strip().endswith("0 messages"), "nothing left")
        finally:
            lab.close()


def test_store_republishes_users_and_postmaster():
    lab = Lab("users")
    lab.add_store(valid_users_file=lab.path("valid-users"), postmaster="bob@example.test")
    lab.sections["check.users"]["users_file"] = lab.path("valid-users")
    lab.start("store")
    lab.add_mx()
    lab.start("mx")
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.cmd("MAIL FROM:<s@example.org>")
        check(r.cmd("RCPT TO:<carol@example.test>")[0] == 550, "carol unknown at first")
        r.cmd("QUIT")
        with open(lab.path("users"), "a") as f:
            f.write("carol@example.test\n")
        time.sleep(2.5)      # the store re-reads about once a second, the MX on use
        with open(lab.path("valid-users")) as f:
            check("carol@example.test" in f.read(), "store republished the list")
        send_mail(lab.ports["mx"], "s@example.org", ["carol@example.test"], message("for carol"))
        lab.wait_mail("carol", 1)
        # postmaster, bare and at the local domain, reaches the configured user.
        with open(lab.path("users"), "w") as f:
            f.write("alice@example.test\nbob@example.test\ncarol@example.test\n")
        time.sleep(2.5)
        send_mail(lab.ports["mx"], "s@example.org", ["postmaster@example.test"], message("to postmaster"))
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.cmd("MAIL FROM:<s@example.org>")
        check(r.cmd("RCPT TO:<postmaster>")[0] == 250, "bare postmaster accepted")
        r.cmd("DATA")
        r.send(message("bare postmaster") + ".\r\n")
        check(r.reply()[0] == 250, "queued")
        r.cmd("QUIT")
        msgs = lab.wait_mail("bob", 2)
        check(all(b"Delivered-To: bob@example.test" in m for m in msgs), "postmaster mail delivered to bob")
    finally:
        lab.close()


def test_proxy_lmtp_mixed_temporary_failures_stay_temporary():
    lab = Lab("proxy-mixed")
    with open(lab.path("users"), "w") as f:
        f.write("alice@example.test 1k\nbob@example.test 2k\n")
    lab.add_store(checks="")
    lab.start("store")
    lab.add_mx(mode="proxy", checks="relay limits")
    lab.start("mx")
    try:
        # Fill bob's mailbox so the next message is 452 4.2.2 (temporary)
        # while alice's is 552 5.2.2 (larger than her whole quota).
        send_mail(lab.ports["mx"], "s@example.org", ["bob@example.test"], message("fill", "f" * 1100 + "\r\n"))
        lab.wait_mail("bob", 1)
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.cmd("MAIL FROM:<s@example.org>")
        r.cmd("RCPT TO:<alice@example.test>")
        r.cmd("RCPT TO:<bob@example.test>")
        r.cmd("DATA")
        r.send(message("mixed", "m" * 1200 + "\r\n") + ".\r\n")
        code, text, _ = r.reply()
        check(400 <= code < 500, "no recipient accepted and one temporary failure: the answer is 4xx, got %d %s"
              % (code, text))
        check(r.cmd("NOOP")[0] == 250, "session continues")
        r.cmd("QUIT")
    finally:
        lab.close()
