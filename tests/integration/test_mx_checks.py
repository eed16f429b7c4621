"""The MX stage's checks over real sessions: local block and allow lists
(XCLIENT from the trusted test network stands for clients elsewhere on
the Internet)."""

from lib import Lab, Raw, check


def _lab(conf):
    lab = Lab("mxchecks")
    lab.add_store()
    lab.add_mx(checks="lists relay limits users", xclient_hosts="127.0.0.1/32")
    lab.sections["check.lists"] = conf
    lab.start("store")
    lab.start("mx")
    return lab


def _as_client(lab, addr, helo="client.example.org"):
    r = Raw(lab.ports["mx"])
    check(r.banner[0] == 220, "banner: %r" % (r.banner,))
    code, _, _ = r.cmd("EHLO test.example")
    check(code == 250, "EHLO")
    code, text, _ = r.cmd("XCLIENT ADDR=%s NAME=[UNAVAILABLE] HELO=%s" % (addr, helo))
    return r, code, text


def test_block_and_allow_lists_in_sessions():
    lab = _lab({"block_clients": "192.0.2.0/24", "allow_clients": "198.51.100.0/24",
                "block_senders": ".bulk.example", "block_recipients": "trap@example.test"})
    try:
        # a blocked network: refused after XCLIENT (the new session's greeting)
        r, code, text = _as_client(lab, "192.0.2.7")
        check(code == 554 and "5.7.1" in text and "block list" in text, "blocked client: %d %s" % (code, text))
        code, _, _ = r.cmd("MAIL FROM:<a@example.org>")
        check(code == 503, "no mail after a refused greeting: %d" % code)
        code, _, _ = r.cmd("QUIT")
        check(code == 221 and r.closed(), "QUIT ends it: %d" % code)
        r.close()
        # an ordinary client: the sender and recipient lists apply
        r, code, _ = _as_client(lab, "203.0.113.9")
        check(code == 220, "greeting %d" % code)
        r.cmd("EHLO client.example.org")
        code, text, _ = r.cmd("MAIL FROM:<x@mail.bulk.example>")
        check(code == 550 and "5.7.1" in text, "blocked sender: %d %s" % (code, text))
        code, _, _ = r.cmd("MAIL FROM:<x@example.org>")
        check(code == 250, "the session goes on: %d" % code)
        code, text, _ = r.cmd("RCPT TO:<trap@example.test>")
        check(code == 550 and "block list" in text, "blocked recipient: %d %s" % (code, text))
        code, _, _ = r.cmd("RCPT TO:<alice@example.test>")
        check(code == 250, "another recipient is fine: %d" % code)
        r.cmd("QUIT")
        r.close()
        log = lab.log("mx")
        check('"check":"lists"' in log and '"verdict":"reject"' in log, "decisions logged")
        check('"verdict":"accept"' not in log, "no allow-list match yet")
        r, code, _ = _as_client(lab, "198.51.100.20")
        check(code == 220, "allowed client greeted: %d" % code)
        r.cmd("QUIT")
        r.close()
        check('"check":"lists","phase":"connect","verdict":"accept"' in lab.log("mx"), "allow list decision logged")
    finally:
        lab.close()


def test_dnsbl_refuses_listed_clients_and_tags():
    """Lists answered from the lab's DNS local data; clients named by
    XCLIENT.  A listed client is refused at its greeting; with action tag
    its mail is delivered with the score in a header; a client on an allow
    list (negative weight) outweighs a block list."""
    from lib import message, send_mail
    import smtplib
    lab = Lab("dnsbl")
    lab.dns([
        "9.113.0.203.bl.example. 300 IN A 127.0.0.2",
        "7.113.0.203.bl.example. 300 IN A 127.0.0.2",
        "7.113.0.203.wl.example. 300 IN A 127.0.10.1",
    ])
    lab.add_store()
    lab.add_mx(checks="lists dnsbl relay limits users", xclient_hosts="127.0.0.1/32")
    lab.sections["check.dnsbl"] = {"sites": "bl.example=127.0.0.[2..11]*2 wl.example*-5", "threshold": "2"}
    lab.start("store")
    lab.start("mx")
    try:
        r, code, text = _as_client(lab, "203.0.113.9")
        check(code == 554 and "blocked using bl.example(+2)" in text, "listed: %d %s" % (code, text))
        r.close()
        r, code, text = _as_client(lab, "203.0.113.7")
        check(code == 220, "allow list outweighs: %d %s" % (code, text))
        r.close()
        r, code, text = _as_client(lab, "203.0.113.1")
        check(code == 220, "unlisted: %d %s" % (code, text))
        r.close()
        log = lab.log("mx")
        check('"check":"dnsbl","phase":"connect","verdict":"reject"' in log, "decision logged")
        # tag instead of refusing: delivered, with the header
        lab.stop("mx")
        lab.sections["check.dnsbl"]["action"] = "tag"
        lab.start("mx")
        with smtplib.SMTP("127.0.0.1", lab.ports["mx"], local_hostname="test.example", timeout=30) as c:
            c.ehlo()
            code, _ = c.docmd("XCLIENT", "ADDR=203.0.113.9 NAME=[UNAVAILABLE] HELO=client.example.org")
            check(code == 220, "tagged client greeted: %d" % code)
            c.ehlo("client.example.org")
            c.sendmail("someone@example.org", ["alice@example.test"], message("tagged"))
        got = lab.wait_mail("alice", 1)[0]
        check(b"X-Rampart-DNSBL: score=2; threshold=2; listed=bl.example(+2)" in got, "header: %r" % got[:600])
    finally:
        lab.close()


def test_bad_recipient_throttle():
    """A dictionary attack: after two unknown recipients each RCPT waits,
    after four the client is sent away with 421."""
    import time
    lab = Lab("badrcpt")
    lab.add_store()
    lab.add_mx(checks="badrcpt relay limits users", xclient_hosts="127.0.0.1/32")
    lab.sections["check.badrcpt"] = {"delay_after": "2", "delay": "400ms", "disconnect_after": "4"}
    lab.start("store")
    lab.start("mx")
    try:
        r, code, _ = _as_client(lab, "203.0.113.50")
        check(code == 220, "greeting %d" % code)
        r.cmd("EHLO attacker.example.org")
        check(r.cmd("MAIL FROM:<x@example.org>")[0] == 250, "MAIL")
        t = []
        for rcpt in ("nobody1", "nobody2", "alice", "nobody3", "nobody4"):
            t0 = time.time()
            code, text, _ = r.cmd("RCPT TO:<%s@example.test>" % rcpt)
            t.append((rcpt, code, time.time() - t0))
        check([c for _, c, _ in t] == [550, 550, 250, 550, 550], "replies: %r" % t)
        check(t[0][2] < 0.3 and t[1][2] < 0.3, "no delay before two refusals: %r" % t)
        check(all(d >= 0.35 for _, _, d in t[2:]), "delayed after two refusals: %r" % t)
        code, text, _ = r.cmd("RCPT TO:<bob@example.test>")
        check(code == 421 and "4.7.0" in text, "sent away: %d %s" % (code, text))
        check(r.closed(), "connection closed")
        check('"check":"badrcpt","phase":"rcpt","verdict":"tempfail","code":421' in lab.log("mx"), "logged")
    finally:
        lab.close()
