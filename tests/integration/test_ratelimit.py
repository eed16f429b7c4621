"""Rate limits and spam traps in the MX stage over real sessions, with the
state in LMDB (one host) and in a redis-server the test starts (a pair of
MX instances sharing it); clients named by XCLIENT from 192.0.2.x; and
`rampartctl ratelimit show|list|reset` against the running daemons' store."""

import re
import signal
import time

from lib import Lab, Raw, check, free_port, message, metrics, mx_pair_in_redis


def _session(lab, addr, name="mx", helo="client.example.org"):
    """A session for client addr: (raw, code and text of the XCLIENT greeting)."""
    return lab.xclient(addr, name, helo)


def _send(r, sender, rcpt, subject):
    """One transaction on an open session: the MAIL reply, or the DATA reply."""
    code, text, _ = r.cmd("MAIL FROM:<%s>" % sender)
    if code != 250:
        return code, text
    code, text, _ = r.cmd("RCPT TO:<%s>" % rcpt)
    if code != 250:
        r.cmd("RSET")
        return code, text
    check(r.cmd("DATA")[0] == 354, "DATA")
    r.send(message(subject) + ".\r\n")
    return r.reply()[:2]


def test_ratelimit_and_traps_lmdb():
    lab = Lab("ratelimit")
    lab.add_store()
    mport = free_port()
    # traps before users (traps are not users); ratelimit after them, so
    # that refused recipients are not counted
    lab.add_mx(checks="traps relay limits users ratelimit", metrics_listen="127.0.0.1:%d" % mport)
    lab.sections["check.ratelimit"] = {"rules": "client:2/1h rcpt:3/1h"}
    lab.sections["check.traps"] = {"addresses": "trap@example.test @spamtrap.example.test", "block_time": "1h"}
    lab.start("store")
    lab.start("mx")
    try:
        # two messages, then the client is limited: 451 4.7.1 with the wait
        r, code, _ = _session(lab, "192.0.2.7")
        check(code == 220, "greeting %d" % code)
        for i in range(2):
            code, text = _send(r, "sender@example.org", "alice@example.test", "rl%d" % i)
            check(code == 250, "message %d: %d %s" % (i, code, text))
        code, text, _ = r.cmd("MAIL FROM:<sender@example.org>")
        check(code == 451 and text.startswith("4.7.1 Rate limit exceeded for client 192.0.2.7 (2 per 1h); try again in "),
              "limited: %d %s" % (code, text))
        secs = int(re.search(r"try again in (\d+) seconds", text).group(1))
        check(1790 <= secs <= 1800, "one message every 30 minutes: %s" % text)
        r.cmd("QUIT")
        r.close()
        lab.wait_mail("alice", 2)

        # another client of the same network has its own bucket
        r, code, _ = _session(lab, "192.0.2.8")
        code, text = _send(r, "other@example.org", "bob@example.test", "other")
        check(code == 250, "another client: %d %s" % (code, text))
        r.cmd("QUIT")
        r.close()

        # the administrator sees why, and resets the bucket
        out = lab.ctl("ratelimit", "show", "client:192.0.2.7")
        check(out.returncode == 0, "show: %s %s" % (out.stdout, out.stderr))
        check("bucket   rl:client:192.0.2.7" in out.stdout and "rule     client:2/1h" in out.stdout
              and "tokens   0.00 of 2" in out.stdout and "next     limited" in out.stdout
              and "trap     not blocked" in out.stdout, "show output:\n%s" % out.stdout)
        out = lab.ctl("ratelimit", "show", "client:192.0.2.8")
        check("tokens   1.00 of 2" in out.stdout and "next     allowed (1 more message now)" in out.stdout,
              "show output:\n%s" % out.stdout)
        out = lab.ctl("ratelimit", "list")
        check(out.returncode == 0 and re.search(r"^rl:client:192\.0\.2\.7 +0\.00 of 2 +limited$", out.stdout, re.M)
              and "rl:client:192.0.2.8" in out.stdout and "rl:recipient:alice@example.test" in out.stdout
              and ", 1 limited" in out.stdout, "list:\n%s%s" % (out.stdout, out.stderr))
        out = lab.ctl("ratelimit", "list", "recipient")
        check("rl:client" not in out.stdout and "rl:recipient:alice@example.test" in out.stdout, "list recipient:\n%s"
              % out.stdout)
        out = lab.ctl("ratelimit", "show", "nonsense:1")
        check(out.returncode == 1 and "expected KIND:VALUE" in out.stderr, "bad key: %r" % (out,))
        out = lab.ctl("ratelimit", "reset", "client:192.0.2.7")
        check(out.returncode == 0 and "rl:client:192.0.2.7: reset" in out.stdout, "reset: %s %s" % (out.stdout, out.stderr))
        out = lab.ctl("ratelimit", "reset", "client:192.0.2.7")
        check(out.returncode == 0 and "no bucket" in out.stdout, "reset again: %s" % out.stdout)
        r, code, _ = _session(lab, "192.0.2.7")
        code, text = _send(r, "sender@example.org", "alice@example.test", "after reset")
        check(code == 250, "after reset: %d %s" % (code, text))
        # recipients: 3 per hour for alice (two and this one so far)
        code, text = _send(r, "sender@example.org", "Alice@Example.TEST", "alice again")
        check(code == 451 and "recipient alice@example.test (3 per 1h)" in text, "recipient limit: %d %s" % (code, text))
        r.cmd("QUIT")
        r.close()

        # a spam trap: the recipient is "unknown", the client blocked
        r, code, _ = _session(lab, "192.0.2.66")
        check(r.cmd("MAIL FROM:<spammer@example.org>")[0] == 250, "MAIL")
        check(r.cmd("RCPT TO:<bob@example.test>")[0] == 250, "RCPT before the trap")
        code, text, _ = r.cmd("RCPT TO:<trap@example.test>")
        check(code == 550 and text == "5.1.1 <trap@example.test>: Recipient address rejected: User unknown",
              "trap: %d %s" % (code, text))
        code, text, _ = r.cmd("RCPT TO:<bob@example.test>")
        check(code == 554 and "5.7.1" in text and "blocked for sending to a spam trap" in text,
              "blocked in the session: %d %s" % (code, text))
        code, _, _ = r.cmd("DATA")
        check(code == 554, "no DATA for a blocked client: %d" % code)
        r.close()
        r, code, text = _session(lab, "192.0.2.66")
        check(code == 554 and "client [192.0.2.66] blocked for sending to a spam trap" in text,
              "blocked at the greeting: %d %s" % (code, text))
        r.close()
        # the whole trap domain; and other clients are not blocked
        r, code, _ = _session(lab, "192.0.2.67")
        check(r.cmd("MAIL FROM:<x@example.org>")[0] == 250, "MAIL")
        check(r.cmd("RCPT TO:<anyone@spamtrap.example.test>")[0] == 550, "trap domain")
        r.close()
        check(_session(lab, "192.0.2.67")[1] == 554, "trap domain blocks")
        r, code, _ = _session(lab, "192.0.2.68")
        check(code == 220, "an innocent neighbour: %d" % code)
        r.close()
        out = lab.ctl("ratelimit", "show", "192.0.2.66")
        check("trap     blocked (554 5.7.1) for sending to spam trap <trap@example.test>" in out.stdout
              and "bucket   rl:client:192.0.2.66" in out.stdout, "show client:\n%s" % out.stdout)
        # the administrator lifts the block: the client is greeted again
        out = lab.ctl("ratelimit", "reset", "trap:192.0.2.66")
        check(out.returncode == 0 and "trap:192.0.2.66: block lifted" in out.stdout, "lift:\n%s%s" % (out.stdout, out.stderr))
        r, code, _ = _session(lab, "192.0.2.66")
        check(code == 220, "greeted after the lift: %d" % code)
        r.close()
        out = lab.ctl("ratelimit", "reset", "trap:192.0.2.66")
        check("not blocked" in out.stdout, "second lift: %s" % out.stdout)

        log = lab.log("mx")
        check('"event":"ratelimit.limited"' in log and '"event":"traps.hit"' in log
              and '"check":"ratelimit","phase":"mail","verdict":"tempfail","code":451' in log, "logged")
        m = metrics(mport)
        check(re.search(r'^rampart_ratelimit_total\{[^}]*kind="client",result="limited"\} 1$', m, re.M)
              and re.search(r'^rampart_ratelimit_total\{[^}]*kind="recipient",result="limited"\} 1$', m, re.M)
              and re.search(r'^rampart_traps_total\{[^}]*result="hit"\} 2$', m, re.M)
              and re.search(r'^rampart_traps_total\{[^}]*result="blocked"\} 4$', m, re.M), "metrics:\n%s" % m)
    finally:
        lab.close()


def test_ratelimit_shared_by_a_pair_in_redis():
    """Two MX instances share their buckets and trap blocks through one
    Redis; when it dies the check tempfails (its default), logs and counts."""
    lab, redis, mport = mx_pair_in_redis("ratelimit-redis", "traps relay limits users ratelimit",
                                         {"check.ratelimit": {"rules": "sender:3/1h"},
                                          "check.traps": {"addresses": "trap@example.test"}})
    try:
        # the sender's three messages an hour, spread over both servers
        for i, name in enumerate(("mx", "mx.b", "mx")):
            r, code, _ = _session(lab, "192.0.2.%d" % (10 + i), name)
            code, text = _send(r, "News+%d@Example.ORG" % i, "alice@example.test", "pair%d" % i)
            check(code == 250, "message %d via %s: %d %s" % (i, name, code, text))
            r.close()
        r, code, _ = _session(lab, "192.0.2.20", "mx.b")
        code, text, _ = r.cmd("MAIL FROM:<news@example.org>")
        check(code == 451 and "Rate limit exceeded for sender news@example.org (3 per 1h)" in text,
              "limited on the other server: %d %s" % (code, text))
        r.close()
        lab.wait_mail("alice", 3)
        out = lab.ctl("ratelimit", "show", "sender:NEWS+x@example.org")
        check(out.returncode == 0 and "bucket   rl:sender:news@example.org" in out.stdout
              and "tokens   0.00 of 3" in out.stdout and "next     limited" in out.stdout,
              "show in redis:\n%s%s" % (out.stdout, out.stderr))
        # a trap hit on one server blocks the client on the other
        r, code, _ = _session(lab, "192.0.2.66", "mx")
        check(r.cmd("MAIL FROM:<x@example.org>")[0] == 250, "MAIL")
        check(r.cmd("RCPT TO:<trap@example.test>")[0] == 550, "trap")
        r.close()
        check(_session(lab, "192.0.2.66", "mx.b")[1] == 554, "blocked on the other server")
        out = lab.ctl("ratelimit", "reset", "sender:news@example.org")
        check("reset" in out.stdout, "reset: %s %s" % (out.stdout, out.stderr))
        r, code, _ = _session(lab, "192.0.2.21", "mx.b")
        check(r.cmd("MAIL FROM:<news@example.org>")[0] == 250, "after reset")
        r.close()

        # Redis dies: tempfail (never a silent pass), logged, counted
        redis.kill()
        # (the test's own connection is a client too: refused at once)
        r = Raw(lab.ports["mx"])
        check(r.banner[0] == 421 and "4.3.0" in r.banner[1], "traps tempfail at the greeting: %r" % (r.banner,))
        r.close()
        lab.sections["check.traps"]["failure_mode"] = "continue"
        lab.write_config()
        lab.procs["mx"].send_signal(signal.SIGHUP)
        end = time.time() + 10
        while time.time() < end and "config.reloaded" not in lab.log("mx"):
            time.sleep(0.1)
        check("config.reloaded" in lab.log("mx"), "reloaded")
        r, code, text = _session(lab, "192.0.2.30", "mx")
        check(code == 220, "traps failure_mode continue: %d %s" % (code, text))
        code, text, _ = r.cmd("MAIL FROM:<someone@example.org>")
        check(code == 451 and text.startswith("4.3.0 Temporary failure checking rate limits"),
              "ratelimit tempfails: %d %s" % (code, text))
        r.close()
        out = lab.ctl("ratelimit", "show", "sender:news@example.org")
        check(out.returncode == 1 and "state store (redis)" in out.stderr, "ctl without redis: %r" % (out,))
        log = lab.log("mx")
        check('"event":"ratelimit.error"' in log and '"failure_mode":"tempfail"' in log
              and '"event":"traps.error"' in log, "errors logged")
        m = metrics(mport)
        check(re.search(r'^rampart_ratelimit_total\{[^}]*kind="sender",result="error"\} 1$', m, re.M)
              and re.search(r'^rampart_traps_total\{[^}]*result="error"\} [1-9]', m, re.M), "metrics:\n%s" % m)
    finally:
        redis.kill()
        lab.close()
