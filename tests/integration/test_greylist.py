"""Greylisting in the MX stage over real sessions, with the state in LMDB
(one host) and in a redis-server the test starts (a pair of MX instances
sharing it); clients named by XCLIENT from 192.0.2.x and others; SPF
records from the lab's DNS local data; and `rampartctl greylist
list|allow|purge` against the running daemons' store."""

import re
import time

from lib import Lab, check, free_port, message, metrics, mx_pair_in_redis

DELAY = 2.0

RECORDS = [
    # a provider whose servers sit in two networks
    'pool.example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all"',
]


def _session(lab, addr, name="mx", helo="client.example.org"):
    """A session for client addr (XCLIENT); the raw connection."""
    r, code, text = lab.xclient(addr, name, helo)
    check(code == 220, "XCLIENT: %d %s" % (code, text))
    return r


def _try(lab, addr, sender, rcpt, subject, name="mx"):
    """One delivery attempt from addr: (code, text) of the refused step, or of DATA."""
    r = _session(lab, addr, name)
    try:
        code, text, _ = r.cmd("MAIL FROM:<%s>" % sender)
        if code != 250:
            return code, text
        code, text, _ = r.cmd("RCPT TO:<%s>" % rcpt)
        if code != 250:
            return code, text
        check(r.cmd("DATA")[0] == 354, "DATA")
        r.send(message(subject) + ".\r\n")
        code, text, _ = r.reply()
        r.cmd("QUIT")
        return code, text
    finally:
        r.close()


def _greylisted(res, what):
    code, text = res
    check(code == 451 and re.match(r"4\.7\.1 Greylisted, please try again in [12] seconds?$", text),
          "%s: greylisted expected, got %d %s" % (what, code, text))


def _ctl_ok(lab, *args):
    out = lab.ctl("greylist", *args)
    check(out.returncode == 0, "rampartctl greylist %s: %d\n%s%s" % (" ".join(args), out.returncode, out.stdout,
                                                                      out.stderr))
    return out.stdout


def test_greylist_lmdb_and_rampartctl():
    lab = Lab("greylist")
    lab.dns(RECORDS)
    lab.add_store()
    mport = free_port()
    lab.add_mx(checks="spf relay limits users greylist", metrics_listen="127.0.0.1:%d" % mport)
    lab.sections["check.greylist"] = {"delay": "2s", "auto_allow_after": "3"}
    lab.start("store")
    lab.start("mx")
    try:
        # first attempt and a retry too soon: 451 4.7.1
        _greylisted(_try(lab, "192.0.2.10", "sender@example.org", "alice@example.test", "gl1"), "first attempt")
        _greylisted(_try(lab, "192.0.2.10", "sender@example.org", "alice@example.test", "gl1"), "early retry")
        out = _ctl_ok(lab, "list")
        check(re.search(r"^gl:t:net:192\.0\.2\.0/24\|sender@example\.org\|alice@example\.test  waiting: first seen "
                        r"\S+Z, a retry passes in [12]s, forgotten in (2d|1d 23h)$", out, re.M)
              and "1 triplet (1 waiting, 0 passed)" in out, "list while waiting:\n%s" % out)
        # after the delay the retry is delivered, from another address of the network
        time.sleep(DELAY + 0.3)
        code, text = _try(lab, "192.0.2.99", "sender@example.org", "alice@example.test", "gl1")
        check(code == 250, "retry after the delay: %d %s" % (code, text))
        got = lab.wait_mail("alice", 1)[0]
        check(b"Subject: gl1" in got, "delivered: %r" % got[:300])
        out = _ctl_ok(lab, "list", "192.0.2.5")
        check(re.search(r"^gl:t:net:192\.0\.2\.0/24\|sender@example\.org\|alice@example\.test  passed: first seen "
                        r"\S+Z, retried after [23]s, expires in (35d|34d 23h)$", out, re.M)
              and re.search(r"^gl:a:net:192\.0\.2\.0/24  1 of 3 triplets passed for auto-allow, expires in (35d|34d 23h)$",
                            out, re.M), "list after the pass:\n%s" % out)
        out = _ctl_ok(lab, "list", "203.0.113.0/24")
        check("gl:" not in out and "0 triplets" in out, "list of another network:\n%s" % out)

        # a provider's pool: SPF passes, the retry comes from another network
        _greylisted(_try(lab, "192.0.2.20", "news@pool.example.org", "bob@example.test", "pool"), "pool first")
        time.sleep(DELAY + 0.3)
        code, text = _try(lab, "198.51.100.20", "news@pool.example.org", "bob@example.test", "pool")
        check(code == 250, "the pool's retry from another network: %d %s" % (code, text))
        lab.wait_mail("bob", 1)
        out = _ctl_ok(lab, "list", "pool.example.org")
        check(re.search(r"^gl:t:spf:pool\.example\.org\|news@pool\.example\.org\|bob@example\.test  passed: ", out, re.M),
              "list spf:\n%s" % out)
        out = _ctl_ok(lab, "list", "bob@example.test")
        check("1 triplet (0 waiting, 1 passed)" in out, "list by recipient:\n%s" % out)

        # allow a network: its first attempt is delivered at once
        out = _ctl_ok(lab, "allow", "203.0.113.0/24")
        check("gl:m:net:203.0.113.0/24: allowed, no expiry" in out, "allow: %s" % out)
        code, text = _try(lab, "203.0.113.5", "someone@example.net", "postmaster@example.test", "allowed")
        check(code == 250, "allowed network: %d %s" % (code, text))
        lab.wait_mail("postmaster", 1)
        out = lab.ctl("greylist", "allow", "203.0.0.0/16")
        check(out.returncode == 1 and "allow_clients" in out.stderr, "a /16: %r" % (out,))
        out = lab.ctl("greylist", "allow", "someone@example.net")
        check(out.returncode == 1 and "e-mail address" in out.stderr, "an address: %r" % (out,))
        out = lab.ctl("greylist", "list", "not a filter!")
        check(out.returncode == 2, "bad filter: %r" % (out,))
        out = _ctl_ok(lab, "list")
        check(re.search(r"^gl:m:net:203\.0\.113\.0/24  allowed by hand since \S+Z, no expiry$", out, re.M)
              and "2 triplets (0 waiting, 2 passed)" in out and "1 manual allow" in out, "list all:\n%s" % out)

        # purge a network: its triplet and counter are forgotten, it is greylisted again
        out = _ctl_ok(lab, "purge", "192.0.2.0/24")
        check(out.strip() == "2 entries deleted", "purge network: %s" % out)
        check("192.0.2.0/24" not in _ctl_ok(lab, "list"), "purged")
        _greylisted(_try(lab, "192.0.2.10", "sender@example.org", "alice@example.test", "gl2"), "after purge")
        # purge everything learnt: the manual allow stays, until named
        out = _ctl_ok(lab, "purge")
        check(out.strip() == "3 entries deleted, 1 manual allow kept (purge gl:m: removes them)", "purge: %s" % out)
        out = _ctl_ok(lab, "list")
        check("0 triplets" in out and "gl:m:net:203.0.113.0/24" in out, "after purge:\n%s" % out)
        out = _ctl_ok(lab, "purge", "gl:m:")
        check(out.strip() == "1 entry deleted", "purge manual: %s" % out)
        _greylisted(_try(lab, "203.0.113.5", "someone@example.net", "postmaster@example.test", "again"),
                    "allow removed")

        log = lab.log("mx")
        check('"event":"greylist.new","key":"gl:t:net:192.0.2.0/24|sender@example.org|alice@example.test"' in log
              and '"event":"greylist.passed"' in log
              and '"check":"greylist","phase":"rcpt","verdict":"tempfail","code":451' in log, "logged")
        m = metrics(mport)
        for result, n in (("new", 4), ("early", 1), ("passed", 2), ("allowed", 1)):
            check(re.search(r'^rampart_greylist_total\{[^}]*result="%s"\} %d$' % (result, n), m, re.M),
                  "metric %s %d:\n%s" % (result, n, m))
    finally:
        lab.close()


def test_greylist_shared_by_a_pair_in_redis():
    """Two MX instances share their triplets through one Redis: the retry
    may reach the other server.  When Redis dies the check tempfails (its
    default), logs and counts."""
    lab, redis, mport = mx_pair_in_redis("greylist-redis", "relay limits users greylist",
                                         {"check.greylist": {"delay": "2s"}})
    try:
        _greylisted(_try(lab, "192.0.2.10", "sender@example.org", "alice@example.test", "pair", "mx"), "first")
        _greylisted(_try(lab, "192.0.2.11", "Sender+x@Example.ORG", "alice@example.test", "pair", "mx.b"),
                    "early on the other server")
        time.sleep(DELAY + 0.3)
        code, text = _try(lab, "192.0.2.12", "sender@example.org", "alice@example.test", "pair", "mx.b")
        check(code == 250, "retry on the other server: %d %s" % (code, text))
        lab.wait_mail("alice", 1)
        out = _ctl_ok(lab, "list")
        check(re.search(r"^gl:t:net:192\.0\.2\.0/24\|sender@example\.org\|alice@example\.test  passed: ", out, re.M),
              "list in redis:\n%s" % out)
        out = _ctl_ok(lab, "allow", "198.51.100.7")
        check("gl:m:ip:198.51.100.7: allowed" in out, "allow: %s" % out)
        code, text = _try(lab, "198.51.100.7", "x@example.net", "bob@example.test", "allowed", "mx.b")
        check(code == 250, "allowed address: %d %s" % (code, text))
        _greylisted(_try(lab, "198.51.100.8", "x@example.net", "bob@example.test", "neighbour", "mx"), "neighbour")

        # Redis dies: tempfail (never a silent pass), logged, counted
        redis.kill()
        r = _session(lab, "192.0.2.10", "mx")
        check(r.cmd("MAIL FROM:<sender@example.org>")[0] == 250, "MAIL")
        code, text, _ = r.cmd("RCPT TO:<alice@example.test>")
        check(code == 451 and text == "4.3.0 Temporary failure checking greylisting; try again later",
              "store down: %d %s" % (code, text))
        r.close()
        out = lab.ctl("greylist", "list")
        check(out.returncode == 1 and "state store (redis)" in out.stderr, "ctl without redis: %r" % (out,))
        log = lab.log("mx")
        check('"event":"greylist.error"' in log and '"failure_mode":"tempfail"' in log, "error logged")
        m = metrics(mport)
        check(re.search(r'^rampart_greylist_total\{[^}]*result="error"\} 1$', m, re.M), "metrics:\n%s" % m)
    finally:
        redis.kill()
        lab.close()
