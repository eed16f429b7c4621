"""The submission stage (rampart-submit) over real TLS sessions: 587 with
STARTTLS required and 465 with implicit TLS, AUTH PLAIN and LOGIN only
over TLS, accounts kept with rampartctl user, the brute-force defence in
the state store, and routing of accepted mail (local recipients to the
store over LMTP, the rest to the next hop)."""

import base64
import os
import re
import smtplib
import ssl
import subprocess
import time
import urllib.request

from lib import BUILD, Lab, check, free_port, message, wait_port


def _ctl(lab, *args, stdin=None):
    return subprocess.run([os.path.join(BUILD, "rampartctl"), "-c", lab.path("rampart.conf"), "-n", "submit"]
                          + list(args), input=stdin, capture_output=True, text=True, timeout=60)


def _tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _lab(name, **extra):
    lab = Lab(name)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=submit.example.test", "-keyout", lab.path("key.pem"), "-out", lab.path("cert.pem")],
                   check=True, capture_output=True)
    lab.add_store()
    lab.add_internet()
    port, tls_port = free_port(), free_port()
    lab.ports["submit"] = port
    lab.ports["submit-tls"] = tls_port
    sec = {
        "listen": "127.0.0.1:%d" % port,
        "listen_tls": "127.0.0.1:%d" % tls_port,
        "hostname": "submit.example.test",
        "local_domains": "example.test",
        "mode": "queue",
        "next_hops": "127.0.0.1:%d" % lab.ports["internet"],
        "local_next_hops": "127.0.0.1:%d" % lab.ports["store"],
        "tls_cert": lab.path("cert.pem"),
        "tls_key": lab.path("key.pem"),
        "accounts_file": lab.path("accounts"),
        "auth_delay_after": "2",
        "auth_max_failures": "4",
        "auth_failure_delay": "300ms",
        "retry_min": "1s",
        "retry_max": "2s",
    }
    sec.update(extra)
    lab.sections["submit"] = sec
    lab.write_config()
    return lab


def _add_users(lab):
    out = _ctl(lab, "user", "add", "alice@example.test", "--password-stdin", stdin="alice-secret\n")
    check(out.returncode == 0 and "alice@example.test: added" in out.stdout, "add alice: %s %s" % (out.stdout, out.stderr))
    out = _ctl(lab, "user", "add", "bob@example.test")
    check(out.returncode == 0, "add bob: %s" % out.stderr)
    m = re.search(r"^password: (\S+)$", out.stdout, re.M)
    check(m and len(m.group(1)) >= 16, "a generated password is printed: %r" % out.stdout)
    check(os.stat(lab.path("accounts")).st_mode & 0o777 == 0o600, "accounts file is 0600")
    text = open(lab.path("accounts")).read()
    check("alice-secret" not in text and "$y$" in text, "only hashes are stored: %r" % text)
    return m.group(1)


def _msg(subject, frm):
    return message(subject).replace("From: sender@example.org", "From: <%s>" % frm)


def _ehlo_features(c):
    c.ehlo("client.example.org")
    return c.esmtp_features


def test_submission_tls_auth_and_routing():
    lab = _lab("submit")
    try:
        bob_pw = _add_users(lab)
        lab.start("store")
        lab.start("submit")
        wait_port(lab.ports["submit-tls"])
        port = lab.ports["submit"]

        # before TLS: no AUTH offered, AUTH refused (538), MAIL refused (530)
        c = smtplib.SMTP("127.0.0.1", port, timeout=30)
        f = _ehlo_features(c)
        check("starttls" in f and "auth" not in f, "plaintext EHLO: %r" % f)
        code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret").decode())
        check(code == 538 and b"5.7.11" in text, "plaintext AUTH: %d %r" % (code, text))
        code, text = c.docmd("MAIL", "FROM:<alice@example.test>")
        check(code == 530 and b"STARTTLS" in text, "MAIL before TLS: %d %r" % (code, text))
        code, _ = c.docmd("NOOP")
        check(code == 250, "the session goes on")
        c.starttls(context=_tls_ctx())
        f = _ehlo_features(c)
        check(f.get("auth", "").split() == ["PLAIN", "LOGIN"], "AUTH offered over TLS: %r" % f)
        code, text = c.docmd("MAIL", "FROM:<alice@example.test>")
        check(code == 530 and b"Authentication required" in text, "MAIL before AUTH: %d %r" % (code, text))
        # malformed responses: 501, and the session goes on
        code, text = c.docmd("AUTH", "PLAIN not-base64!")
        check(code == 501 and b"5.5.2" in text, "bad base64: %d %r" % (code, text))
        code, _ = c.docmd("AUTH", "LOGIN")
        check(code == 334, "LOGIN asks for the user")
        code, text = c.docmd("*")
        check(code == 501 and b"cancelled" in text, "cancel: %d %r" % (code, text))
        code, text = c.docmd("AUTH", "CRAM-MD5")
        check(code == 504, "unknown mechanism: %d" % code)
        # a wrong password: 535
        try:
            c.login("alice@example.test", "wrong")
            check(False, "wrong password accepted")
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535 and b"5.7.8" in e.smtp_error, "wrong password: %r" % (e.smtp_error,))
        # the right one, PLAIN with an initial response
        code, text = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret").decode())
        check(code == 235 and b"2.7.0" in text, "PLAIN: %d %r" % (code, text))
        code, _ = c.docmd("AUTH", "PLAIN")
        check(code == 503, "a second AUTH: %d" % code)
        c.sendmail("alice@example.test", ["bob@example.test", "someone@example.net"], _msg("first", "alice@example.test"))
        c.quit()
        got = lab.wait_mail("bob", 1)[0]
        check(b"(Authenticated sender: alice@example.test)" in got and b"with ESMTPSA id" in got,
              "Received names the login: %r" % got[:600])
        out = lab.wait_outbound("example.net", 1)[0]
        check(b"Subject: first" in out, "the external recipient went to the next hop")

        # 465: implicit TLS, AUTH LOGIN
        s = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
        s.ehlo("client.example.org")
        check(s.esmtp_features.get("auth", "").split() == ["PLAIN", "LOGIN"], "465 offers AUTH at once")
        # an over-long line inside an AUTH exchange ends the exchange: the
        # next command is a command again, not a base64 answer
        code, _ = s.docmd("AUTH", "LOGIN")
        check(code == 334, "AUTH LOGIN: %d" % code)
        s.send(b"A" * 5000 + b"\r\n")
        code, _ = s.getreply()
        check(code == 500, "over-long AUTH line: %d" % code)
        code, _ = s.docmd("NOOP")
        check(code == 250, "NOOP after the refused AUTH line: %d" % code)
        s.user, s.password = "bob@example.test", bob_pw
        code, text = s.auth("LOGIN", s.auth_login)
        check(code == 235, "LOGIN on 465: %d %r" % (code, text))
        s.sendmail("bob@example.test", ["alice@example.test"], _msg("second", "bob@example.test"))
        s.quit()
        check(b"Subject: second" in lab.wait_mail("alice", 1)[0], "465 message delivered")

        # swaks, as the README says
        for extra in (["--port", str(port), "-tls"], ["--port", str(lab.ports["submit-tls"]), "--tlsc"]):
            r = subprocess.run(["swaks", "--server", "127.0.0.1"] + extra + [
                "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", "alice-secret",
                "--from", "alice@example.test", "--to", "bob@example.test", "--h-Subject", "swaks",
                "--h-From", "<alice@example.test>"],
                capture_output=True, text=True, timeout=60)
            check(r.returncode == 0 and "235 2.7.0" in r.stdout, "swaks %s: %s" % (extra, r.stdout[-1500:]))
        lab.wait_mail("bob", 3)
        log = lab.log("submit")
        check('"event":"smtp.auth","result":"ok","mech":"PLAIN","user":"alice@example.test"' in log, "auth logged")
        check("alice-secret" not in log and bob_pw not in log, "no password in the log")
    finally:
        lab.close()


def test_brute_force_throttle_and_reset():
    lab = _lab("submit-bf")
    try:
        _add_users(lab)
        lab.start("store")
        lab.start("submit")
        wait_port(lab.ports["submit-tls"])

        def attempt(pw, user="alice@example.test"):
            s = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
            s.ehlo("client.example.org")
            t0 = time.time()
            code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(("\0%s\0%s" % (user, pw)).encode()).decode())
            took = time.time() - t0
            s.close()
            return code, text, took

        results = [attempt("guess%d" % i) for i in range(4)]
        check([r[0] for r in results] == [535] * 4, "four failures: %r" % results)
        check(results[0][2] < 0.25 and results[3][2] >= 0.28, "failures after the second are slowed: %r" %
              [round(r[2], 2) for r in results])
        code, text, _ = attempt("alice-secret")
        check(code == 454 and b"4.7.0" in text and b"Too many failed" in text, "locked out: %d %r" % (code, text))
        # another account from the same client is locked out too (per client)
        code, _, _ = attempt("whatever", user="bob@example.test")
        check(code == 454, "per client: %d" % code)
        out = _ctl(lab, "authfail", "list")
        check(out.returncode == 0 and re.search(r"client\s+127\.0\.0\.1\s+failures=4", out.stdout)
              and re.search(r"account\s+alice@example\.test\s+failures=4", out.stdout), "list:\n%s%s" % (out.stdout, out.stderr))
        for who in ("127.0.0.1", "alice@example.test"):
            out = _ctl(lab, "authfail", "reset", who)
            check(out.returncode == 0 and "failures cleared" in out.stdout, "reset %s: %s" % (who, out.stdout))
        code, _, _ = attempt("alice-secret")
        check(code == 235, "after the reset: %d" % code)
        log = lab.log("submit")
        check('"event":"auth.lockout"' in log, "lockout logged")
    finally:
        lab.close()


def test_accounts_kept_with_rampartctl():
    lab = _lab("submit-users", auth_max_failures="20")
    try:
        _add_users(lab)
        out = _ctl(lab, "user", "add", "billing", "--app", "--senders", "invoices@example.test,@billing.example.test",
                   "--password-stdin", stdin="app-secret\n")
        check(out.returncode == 0, "add app: %s" % out.stderr)
        out = _ctl(lab, "user", "add", "alice@example.test", "--password-stdin", stdin="x\n")
        check(out.returncode == 1 and "exists" in out.stderr, "no second add: %r" % out.stderr)
        out = _ctl(lab, "user", "list")
        check(re.search(r"^billing\s+app\s+senders=invoices@example.test,@billing.example.test$", out.stdout, re.M)
              and "3 accounts" in out.stdout, "list:\n%s" % out.stdout)
        lab.start("store")
        lab.start("submit")

        def login(user, pw):
            s = smtplib.SMTP("127.0.0.1", lab.ports["submit"], timeout=30)
            s.ehlo("c.example.org")
            s.starttls(context=_tls_ctx())
            s.ehlo("c.example.org")
            s.user, s.password = user, pw
            try:
                return s.auth("PLAIN", s.auth_plain)[0]
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code
            finally:
                s.close()

        def login_until(want, user, pw, timeout=4.0):
            """The stage re-reads the accounts file about once a second:
            try until it answers want (or timeout); its last answer."""
            end = time.monotonic() + timeout
            while True:
                code = login(user, pw)
                if code == want or time.monotonic() > end:
                    return code
                time.sleep(0.3)

        check(login("billing", "app-secret") == 235, "app account logs in")
        check(login("billing", "app-secret") == 235, "and again")
        check(lab.log("submit").count('"reason":"password matches (cached)"') == 1, "the second login was cached")
        out = _ctl(lab, "user", "passwd", "billing", "--password-stdin", stdin="new-secret\n")
        check(out.returncode == 0, "passwd: %s" % out.stderr)
        check(login_until(235, "billing", "new-secret") == 235 and login("billing", "app-secret") == 535,
              "new password")
        check(_ctl(lab, "user", "lock", "billing").returncode == 0, "lock")
        check(login_until(535, "billing", "new-secret") == 535, "locked account refused")
        out = _ctl(lab, "user", "passwd", "billing", "--password-stdin", stdin="new-secret\n")
        check(out.returncode == 0 and re.search(r"^billing\s+locked", _ctl(lab, "user", "list").stdout, re.M),
              "a new password does not unlock: %s" % _ctl(lab, "user", "list").stdout)
        check(_ctl(lab, "user", "unlock", "billing").returncode == 0, "unlock")
        check(_ctl(lab, "user", "del", "bob@example.test").returncode == 0, "del")
        check(login_until(235, "billing", "new-secret") == 235, "unlocked")
        out = _ctl(lab, "user", "list")
        check("bob@example.test" not in out.stdout and "2 accounts" in out.stdout, "deleted:\n%s" % out.stdout)
        # a broken accounts file: the stage keeps the old accounts and says so
        with open(lab.path("accounts"), "a") as f:
            f.write("broken line\n")
        end = time.monotonic() + 4      # re-read about once a second
        while time.monotonic() < end and '"event":"auth.accounts_reload_failed"' not in lab.log("submit"):
            time.sleep(0.2)
        time.sleep(1.2)                 # and a second look at the same broken file
        check(login("alice@example.test", "alice-secret") == 235, "old accounts kept")
        check(lab.log("submit").count('"event":"auth.accounts_reload_failed"') == 1, "reported once")
        check('"event":"auth.accounts_reload_failed"' in lab.log("submit") and "accounts:3: expected NAME:HASH"
              in lab.log("submit"), "reload failure logged with file:line")
    finally:
        lab.close()


def test_bad_configuration_stops_startup():
    lab = _lab("submit-conf", tls_cert="", tls_key="")
    try:
        _add_users(lab)
        r = subprocess.run([os.path.join(BUILD, "rampart-submit"), "-c", lab.path("rampart.conf"), "-n", "submit", "-t"],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode != 0 and "tls_cert: expected a certificate" in r.stderr, "no cert: %r" % r.stderr)
        lab.sections["submit"]["tls_cert"] = lab.path("cert.pem")
        lab.sections["submit"]["tls_key"] = lab.path("key.pem")
        lab.sections["submit"]["accounts_file"] = lab.path("nonexistent")
        lab.write_config()
        r = subprocess.run([os.path.join(BUILD, "rampart-submit"), "-c", lab.path("rampart.conf"), "-n", "submit", "-t"],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode != 0 and "accounts_file:" in r.stderr and "cannot read" in r.stderr, "no accounts: %r" % r.stderr)
        with open(lab.path("bad-accounts"), "w") as f:
            f.write("# accounts\nalice@example.test:plaintext\n")
        lab.sections["submit"]["accounts_file"] = lab.path("bad-accounts")
        lab.write_config()
        r = subprocess.run([os.path.join(BUILD, "rampart-submit"), "-c", lab.path("rampart.conf"), "-n", "submit", "-t"],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode != 0 and "bad-accounts:2:" in r.stderr and "crypt(3) hash" in r.stderr, "bad line: %r" % r.stderr)
    finally:
        lab.close()


def test_sender_ownership():
    lab = _lab("submit-senders", received_hide_client="yes")
    mport = free_port()
    lab.sections["submit"]["metrics_listen"] = "127.0.0.1:%d" % mport
    try:
        _add_users(lab)
        out = _ctl(lab, "user", "add", "billing", "--app", "--senders", "invoices@example.test,@billing.example.test",
                   "--password-stdin", stdin="app-secret\n")
        check(out.returncode == 0, "add app: %s" % out.stderr)
        lab.start("store")
        lab.start("submit")

        def session(user, pw):
            s = smtplib.SMTP("127.0.0.1", lab.ports["submit"], timeout=30)
            s.ehlo("c.example.org")
            s.starttls(context=_tls_ctx())
            s.ehlo("c.example.org")
            s.user, s.password = user, pw
            code, _ = s.auth("PLAIN", s.auth_plain)
            check(code == 235, "login %s" % user)
            return s

        s = session("alice@example.test", "alice-secret")
        code, text = s.docmd("MAIL", "FROM:<bob@example.test>")
        check(code == 553 and b"5.7.1" in text and b"not owned by user alice@example.test" in text,
              "envelope spoofing: %d %r" % (code, text))
        code, _ = s.docmd("RSET")
        # her own address (and +subaddress) in the envelope, someone else's in From:
        spoofed = message("spoof").replace("From: sender@example.org", "From: \"Bob\" <bob@example.test>")
        try:
            s.sendmail("alice+news@example.test", ["bob@example.test"], spoofed)
            check(False, "From spoofing accepted")
        except smtplib.SMTPDataError as e:
            check(e.smtp_code == 553 and b"bob@example.test" in e.smtp_error and b"not owned" in e.smtp_error,
                  "From spoofing: %r" % (e.smtp_error,))
        ok = message("own").replace("From: sender@example.org", "From: Alice Example <alice@example.test>")
        s.sendmail("alice@example.test", ["bob@example.test"], ok)
        s.quit()
        got = lab.wait_mail("bob", 1)
        check(len(got) == 1 and b"Subject: own" in got[0], "only her own message delivered")
        # received_hide_client: the Received header names the account, not the client's host
        head = re.sub(rb"\r?\n[ \t]+", b" ", got[0].split(b"\n\n")[0])
        received = [l for l in head.split(b"\n") if l.startswith(b"Received:") and b"by submit.example.test" in l]
        check(len(received) == 1 and b"(Authenticated sender: alice@example.test)" in received[0]
              and b"127.0.0.1" not in received[0] and b"c.example.org" not in received[0],
              "Received without the client: %r" % received)
        # the application account: its listed sender and its domain, nothing else
        s = session("billing", "app-secret")
        for sender, want in (("invoices@example.test", 250), ("noreply@billing.example.test", 250),
                             ("billing@example.test", 553), ("x@sub.billing.example.test", 553)):
            code, _ = s.docmd("MAIL", "FROM:<%s>" % sender)
            check(code == want, "%s: %d" % (sender, code))
            s.docmd("RSET")
        code, _ = s.docmd("MAIL", "FROM:<>")
        check(code == 250, "the null sender is anyone's")
        s.docmd("RSET")
        s.sendmail("invoices@example.test", ["alice@example.test", "bob@example.test"],
                   _msg("invoice", "invoices@example.test"))
        s.quit()
        m = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        check(re.search(r'^rampart_account_messages_total\{[^}]*account="billing",app="yes"[^}]*\} 1$', m, re.M)
              and re.search(r'^rampart_account_recipients_total\{[^}]*account="billing",app="yes"[^}]*\} 2$', m, re.M)
              and 'account="alice@example.test"' not in m,
              "app accounting on /metrics:\n%s" % "\n".join(l for l in m.splitlines() if "account_" in l))
        lab.stop("submit")                  # the ledger is saved at exit (and every 10 s)
        out = _ctl(lab, "stats", "users")
        rows = {l.split()[1]: l.split() for l in out.stdout.splitlines()[1:] if l.strip()}
        check(out.returncode == 0 and rows.get("alice@example.test", [])[2:4] == ["1", "1"]
              and rows["alice@example.test"][-1] == "2" and rows.get("billing", [])[2:4] == ["1", "2"]
              and rows["billing"][-1] == "2", "stats users:\n%s%s" % (out.stdout, out.stderr))
        log = lab.log("submit")
        check('"check":"sender_login","phase":"mail","verdict":"reject"' in log, "refusal logged")
    finally:
        lab.close()


def test_quota_exceeded_puts_the_account_on_hold():
    lab = _lab("submit-quota", account_metrics="all")
    lab.sections["check.quota"] = {"messages_per_hour": "2", "recipients_per_day": "100"}
    lab.write_config()
    mport = free_port()
    lab.sections["submit"]["metrics_listen"] = "127.0.0.1:%d" % mport
    try:
        _add_users(lab)
        lab.start("store")
        lab.start("submit")
        s = smtplib.SMTP("127.0.0.1", lab.ports["submit"], timeout=30)
        s.ehlo("c.example.org")
        s.starttls(context=_tls_ctx())
        s.ehlo("c.example.org")
        s.login("alice@example.test", "alice-secret")
        for i in range(2):
            s.sendmail("alice@example.test", ["bob@example.test"], _msg("q%d" % i, "alice@example.test"))
        code, text = s.docmd("MAIL", "FROM:<alice@example.test>")
        check(code == 451 and b"4.7.1" in text and b"on hold" in text and b"2 messages per hour" in text,
              "third message: %d %r" % (code, text))
        code, text = s.docmd("MAIL", "FROM:<alice@example.test>")
        check(code == 451 and b"is on hold" in text, "held: %d %r" % (code, text))
        s.quit()
        out = _ctl(lab, "user", "show", "alice@example.test")
        check(out.returncode == 0 and "ON HOLD: 2 messages per hour" in out.stdout, "show:\n%s%s" % (out.stdout, out.stderr))
        # the hold is the account's, whatever the connection
        b = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
        b.ehlo("c.example.org")
        check(b.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret").decode())[0] == 235, "auth")
        check(b.docmd("MAIL", "FROM:<alice@example.test>")[0] == 451, "still held on a new connection")
        b.close()
        m = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        check(re.search(r'^rampart_account_messages_total\{[^}]*account="alice@example.test",app="no"[^}]*\} 2$', m, re.M),
              "every account on /metrics:\n%s" % "\n".join(l for l in m.splitlines() if "account_" in l))
        check(re.search(r"^rampart_quota_holds_total\{[^}]*\} 1$", m, re.M), "hold counted:\n%s" %
              "\n".join(l for l in m.splitlines() if "quota" in l))
        out = _ctl(lab, "user", "release", "alice@example.test")
        check(out.returncode == 0 and "released" in out.stdout, "release: %s %s" % (out.stdout, out.stderr))
        s = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
        s.ehlo("c.example.org")
        s.login("alice@example.test", "alice-secret")
        s.sendmail("alice@example.test", ["bob@example.test"], _msg("after", "alice@example.test"))
        s.quit()
        check(len(lab.wait_mail("bob", 3)) == 3, "two before the hold, one after the release")
        out = _ctl(lab, "user", "release", "alice@example.test")
        check("was not on hold" in out.stdout, "second release: %s" % out.stdout)
        check('"event":"quota.hold","login":"alice@example.test"' in lab.log("submit"), "hold logged")
    finally:
        lab.close()


def test_tls_scan_shows_no_old_protocols_or_weak_ciphers():
    """testssl.sh (Debian's testssl.sh) against 587 (STARTTLS) and 465."""
    import json
    lab = _lab("submit-tlsscan")
    try:
        _add_users(lab)
        lab.start("store")
        lab.start("submit")
        wait_port(lab.ports["submit-tls"])
        for name, extra in (("submit", ["--starttls", "smtp"]), ("submit-tls", [])):
            out = lab.path("testssl-%s.json" % name)
            r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "-p", "-s", "-f",
                                "--jsonfile", out] + extra + ["127.0.0.1:%d" % lab.ports[name]],
                               capture_output=True, text=True, timeout=600)
            check(os.path.exists(out), "testssl ran on %s: %s %s" % (name, r.stdout[-2000:], r.stderr[-500:]))
            found = {e["id"]: e["finding"] for e in json.load(open(out))}
            for pid in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
                        "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"):
                check(found.get(pid) == "not offered", "%s on %s: %r" % (pid, name, found.get(pid)))
            check(found.get("TLS1_2") == "offered" and found.get("TLS1_3", "").startswith("offered")
                  and found.get("PFS") == "offered", "%s: %r" % (name, found))
    finally:
        lab.close()


DOVECOT_CONF = """base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols =
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
}}
"""


def _dovecot(lab):
    """A private Dovecot (Debian's dovecot-core) answering auth only; (Popen, socket path)."""
    d = lab.path("dovecot")
    os.makedirs(os.path.join(d, "state"))
    os.chmod(lab.dir, 0o711)        # Dovecot's auth runs as its own user: it must reach the users file
    os.chmod(d, 0o755)
    pw = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", "carol-secret"], capture_output=True, text=True,
                        check=True).stdout.strip()
    with open(os.path.join(d, "users"), "w") as f:
        f.write("carol@example.test:%s\n" % pw)
    with open(os.path.join(d, "dovecot.conf"), "w") as f:
        f.write(DOVECOT_CONF.format(d=d))
    p = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", os.path.join(d, "dovecot.conf")],
                         stdout=open(os.path.join(d, "out.log"), "ab"), stderr=subprocess.STDOUT)
    sock = os.path.join(d, "run", "auth-client")
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    check(os.path.exists(sock), "dovecot did not start: %s" % open(os.path.join(d, "out.log")).read()[-2000:])
    return p, sock


def test_passwords_checked_by_dovecot():
    lab = _lab("submit-dovecot", accounts_file="")
    dv, sock = _dovecot(lab)
    try:
        lab.sections["submit"]["dovecot_auth_socket"] = sock
        lab.sections["submit"]["dovecot_auth_timeout"] = "2s"
        lab.start("store")
        lab.start("submit")

        def auth(user, pw):
            s = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
            s.ehlo("c.example.org")
            code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(("\0%s\0%s" % (user, pw)).encode()).decode())
            return s, code, text

        s, code, _ = auth("carol@example.test", "carol-secret")
        check(code == 235, "Dovecot's password: %d" % code)
        # no accounts file: the login owns its own address, nothing else
        code, text = s.docmd("MAIL", "FROM:<alice@example.test>")
        check(code == 553 and b"not owned by user carol@example.test" in text, "not hers: %d %r" % (code, text))
        s.docmd("RSET")
        s.sendmail("carol@example.test", ["bob@example.test"], _msg("via dovecot", "carol@example.test"))
        s.quit()
        check(b"(Authenticated sender: carol@example.test)" in lab.wait_mail("bob", 1)[0], "delivered")
        s, code, text = auth("carol@example.test", "wrong")
        check(code == 535, "wrong password: %d %r" % (code, text))
        s.close()
        # Dovecot cannot read its passwords: its temporary failure is ours (454)
        os.chmod(os.path.join(lab.path("dovecot"), "users"), 0o600)
        s, code, text = auth("carol@example.test", "carol-secret")
        check(code == 454, "dovecot's own trouble: %d %r" % (code, text))
        s.close()
        os.chmod(os.path.join(lab.path("dovecot"), "users"), 0o644)
        # Dovecot gone: a temporary failure (454), never 535, and it comes back
        dv.terminate()
        dv.wait(10)
        s, code, text = auth("carol@example.test", "carol-secret")
        check(code == 454 and b"4.7.0" in text, "dovecot down: %d %r" % (code, text))
        s.close()
        log = lab.log("submit")
        check('"event":"dovecot.connection_lost"' in log and '"reason":"refused by dovecot"' in log, "logged")
        dv, sock = _dovecot_again(lab)
        s, code, _ = auth("carol@example.test", "carol-secret")
        check(code == 235, "dovecot back: %d" % code)
        s.close()
    finally:
        if dv.poll() is None:
            dv.terminate()
            dv.wait(10)
        lab.close()


def _dovecot_again(lab):
    d = lab.path("dovecot")
    p = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", os.path.join(d, "dovecot.conf")],
                         stdout=open(os.path.join(d, "out.log"), "ab"), stderr=subprocess.STDOUT)
    sock = os.path.join(d, "run", "auth-client")
    for _ in range(100):
        if os.path.exists(sock):
            try:
                import socket as so
                c = so.socket(so.AF_UNIX)
                c.connect(sock)
                c.close()
                break
            except OSError:
                pass
        time.sleep(0.1)
    return p, sock


def test_certificate_reloaded_on_sighup():
    import signal
    lab = _lab("submit-reload")
    try:
        _add_users(lab)
        lab.start("store")
        lab.start("submit")
        wait_port(lab.ports["submit-tls"])

        def subject():
            s = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
            der = s.sock.getpeercert(binary_form=True)
            s.close()
            out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                                 capture_output=True, timeout=30)
            return out.stdout.decode()

        check("submit.example.test" in subject(), "the first certificate: %r" % subject())
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=renewed.example.test", "-keyout", lab.path("key.pem"), "-out", lab.path("cert.pem")],
                       check=True, capture_output=True)
        lab.procs["submit"].send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and "renewed.example.test" not in subject():
            time.sleep(0.2)
        check("renewed.example.test" in subject(), "the renewed certificate after SIGHUP: %r" % subject())
        # and STARTTLS on 587 too
        c = smtplib.SMTP("127.0.0.1", lab.ports["submit"], timeout=30)
        c.ehlo("c.example.org")
        c.starttls(context=_tls_ctx())
        der = c.sock.getpeercert(binary_form=True)
        c.close()
        out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der, capture_output=True)
        check(b"renewed.example.test" in out.stdout, "587 too: %r" % out.stdout)
    finally:
        lab.close()


def test_login_reaches_the_outgoing_ledger():
    """submit -> out -> the Internet: XFORWARD carries the login, so the
    outgoing stage's per-sender ledger names the account."""
    lab = _lab("submit-out")
    try:
        _add_users(lab)
        lab.add_out(next_hops="127.0.0.1:%d" % lab.ports["internet"], xforward_hosts="127.0.0.0/8",
                    smarthost_tls="none")
        lab.sections["check.relay.out"] = {"relay_networks": "127.0.0.0/8"}
        lab.sections["submit"]["next_hops"] = "127.0.0.1:%d" % lab.ports["out"]
        lab.start("store")
        lab.start("out")
        lab.start("submit")
        s = smtplib.SMTP_SSL("127.0.0.1", lab.ports["submit-tls"], context=_tls_ctx(), timeout=30)
        s.ehlo("c.example.org")
        s.login("alice@example.test", "alice-secret")
        s.sendmail("alice@example.test", ["someone@example.net", "other@example.net"], _msg("out", "alice@example.test"))
        s.quit()
        got = lab.wait_outbound("example.net", 1)[0]
        check(b"(Authenticated sender: alice@example.test)" in got, "left with the submission's Received")
        lab.stop("out")                     # the ledger is saved at exit
        out = subprocess.run([os.path.join(BUILD, "rampartctl"), "-c", lab.path("rampart.conf"), "-n", "out", "stats",
                              "senders", "login"], capture_output=True, text=True, timeout=30)
        rows = {l.split()[1]: l.split() for l in out.stdout.splitlines()[1:] if l.strip()}
        check(out.returncode == 0 and rows.get("alice@example.test", [])[2:4] == ["1", "2"],
              "out's ledger names the login:\n%s%s" % (out.stdout, out.stderr))
    finally:
        lab.close()
