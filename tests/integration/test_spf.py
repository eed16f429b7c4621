"""The SPF check in the MX stage over real sessions.  SPF records come from
the lab's DNS local data; clients are named with XCLIENT from the trusted
test network (libspf2 alone would pass any client on 127/8, so a test from
127.0.0.1 would prove nothing)."""

import smtplib

from lib import Lab, Raw, check, message

RECORDS = [
    'spf.example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"',
    'soft.example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 ~all"',
    'helo.example.org. 300 IN TXT "v=spf1 a -all"',
    'helo.example.org. 300 IN A 192.0.2.30',
]


def _session(lab, addr, helo="client.example.org"):
    c = smtplib.SMTP("127.0.0.1", lab.ports["mx"], local_hostname="test.example", timeout=30)
    c.ehlo()
    code, text = c.docmd("XCLIENT", "ADDR=%s NAME=[UNAVAILABLE] HELO=%s" % (addr, helo))
    check(code == 220, "XCLIENT: %d %s" % (code, text))
    c.ehlo(helo)
    return c


def test_spf_in_the_mx_stage():
    lab = Lab("spf")
    lab.dns(RECORDS)
    lab.add_store()
    lab.add_mx(checks="spf relay limits users", xclient_hosts="127.0.0.1/32")
    lab.start("store")
    lab.start("mx")
    try:
        # pass: delivered with Received-SPF
        with _session(lab, "192.0.2.7") as c:
            c.sendmail("alice@spf.example.org", ["alice@example.test"], message("pass"))
        got = lab.wait_mail("alice", 1)[0]
        check(b"Received-SPF: pass (mx.example.test: domain of alice@spf.example.org designates 192.0.2.7 "
              b"as permitted sender) client-ip=192.0.2.7;" in got, "header: %r" % got[:800])
        # fail: refused at MAIL, 550 5.7.23, explanation in the reply
        with _session(lab, "203.0.113.9") as c:
            code, text = c.mail("bob@spf.example.org")
            text = text.decode(errors="replace")
            check(code == 550 and "5.7.23" in text and "SPF fail for spf.example.org from 203.0.113.9" in text,
                  "fail: %d %s" % (code, text))
            code, _ = c.mail("bob@soft.example.org")
            check(code == 250, "the session goes on: %d" % code)
        # softfail: delivered, tagged
        with _session(lab, "203.0.113.9") as c:
            c.sendmail("bob@soft.example.org", ["bob@example.test"], message("softfail"))
        got = lab.wait_mail("bob", 1)[0]
        check(b"Received-SPF: softfail " in got and b"X-Rampart-SPF: softfail (" in got, "tagged: %r" % got[:800])
        # an IPv6 client
        with _session(lab, "2001:db8::25") as c:
            c.sendmail("carol@spf.example.org", ["postmaster@example.test"], message("v6"))
        got = lab.wait_mail("postmaster", 1)[0]
        check(b'Received-SPF: pass ' in got and b'client-ip="2001:db8::25";' in got, "v6: %r" % got[:800])
        # the null sender: the HELO name is the identity
        with _session(lab, "192.0.2.31", helo="helo.example.org") as c:
            code, text = c.mail("<>")
            check(code == 550 and "(helo)" in text.decode(errors="replace"), "null sender: %d %s" % (code, text))
        # no XCLIENT: the loopback client is judged like any other
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO test.example")
        code, text, _ = r.cmd("MAIL FROM:<x@spf.example.org>")
        check(code == 550 and "from 127.0.0.1" in text, "loopback: %d %s" % (code, text))
        r.cmd("QUIT")
        r.close()
        log = lab.log("mx")
        check('"event":"spf.result","result":"pass"' in log, "result logged")
        check('"check":"spf","phase":"mail","verdict":"reject","code":550,"enh":"5.7.23"' in log,
              "decision logged")
    finally:
        lab.close()
