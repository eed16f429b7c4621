"""The outgoing stage (F): delivery by MX through the resolver, null MX,
smarthost lists, and delivery status notifications to the sender."""

import email
import os
import time

from lib import Lab, Raw, check, message, send_mail


def _lab(**out):
    lab = Lab("out")
    lab.add_internet()
    lab.dns([
        "example.net. 3600 IN MX 10 mx.example.net.",
        "mx.example.net. 3600 IN A 127.0.0.1",
        "example.org. 3600 IN MX 10 mx.example.org.",
        "mx.example.org. 3600 IN A 127.0.0.1",
        "nullmx.example. 3600 IN MX 0 .",
    ])
    lab.add_out(smtp_port=str(lab.ports["internet"]), **out)
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.start("out", binary="rampart-out")
    return lab


def test_mx_routing_delivers_each_domain():
    lab = _lab()
    try:
        refused = send_mail(lab.ports["out"], "alice@example.test", ["bob@example.net", "carol@example.org"],
                            message("to the internet"))
        check(refused == {}, "refused: %r" % refused)
        net = lab.wait_outbound("example.net", 1)[0]
        org = lab.wait_outbound("example.org", 1)[0]
        check(b"X-Lab-Envelope-To: <bob@example.net>" in net and b"carol" not in net.split(b"\r\n\r\n")[0].split(b"X-Lab")[1],
              "one transaction per domain: %r" % net[:300])
        check(b"X-Lab-Envelope-To: <carol@example.org>" in org, "example.org copy")
        check(b"Subject: to the internet" in net and b"by out.example.test (Rampart)" in net, "content")
    finally:
        lab.close()


def test_null_mx_fails_and_the_sender_gets_a_dsn():
    lab = _lab()
    try:
        send_mail(lab.ports["out"], "dave@example.org", ["x@nullmx.example", "bob@example.net"], message("partly"))
        lab.wait_outbound("example.net", 1)
        msgs = lab.wait_outbound("example.org", 1)
        raw = msgs[0]
        check(b"X-Lab-Envelope-From: <>" in raw, "a DSN has the null sender: %r" % raw[:200])
        check(b"X-Lab-Envelope-To: <dave@example.org>" in raw, "to the original sender")
        body = raw[raw.index(b"From:"):] if b"From:" in raw else raw
        m = email.message_from_bytes(body)
        check(m.get_content_type() == "multipart/report" and m.get_param("report-type") == "delivery-status",
              "multipart/report: %s" % m.get_content_type())
        status = [p for p in m.walk() if p.get_content_type() == "message/delivery-status"]
        check(status, "a delivery-status part")
        text = status[0].as_string()
        check("x@nullmx.example" in text and "Action: failed" in text and "5.1.10" in text,
              "the failed recipient and the null MX status: %s" % text)
        check("bob@example.net" not in text, "the delivered recipient is not reported")
        out = lab.ctl("-n", "out", "queue", "list").stdout
        for _ in range(50):
            if out.strip().endswith("0 messages"):
                break
            time.sleep(0.1)
            out = lab.ctl("-n", "out", "queue", "list").stdout
        check(out.strip().endswith("0 messages"), "reported to the sender: nothing left in failed/: %s" % out)
    finally:
        lab.close()


def test_smarthost_list_replaces_mx_routing():
    lab = Lab("smarthost")
    port = lab.add_internet()
    lab.dns(["example.net. 3600 IN MX 0 ."])      # MX routing would fail
    lab.add_out(next_hops="127.0.0.1:%d" % port)
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.start("out", binary="rampart-out")
    try:
        send_mail(lab.ports["out"], "alice@example.test", ["bob@example.net"], message("via smarthost"))
        lab.wait_outbound("example.net", 1)
    finally:
        lab.close()


def test_out_refuses_proxy_mode():
    lab = Lab("outproxy")
    lab.add_out(mode="proxy")
    lab.write_config()
    out = lab.ctl("config", "check")
    check(out.returncode != 0 and "queue mode only" in out.stderr, "proxy mode refused: %s" % out.stderr)
    lab.close()


def test_smarthost_auth_failure_defers_then_flush_delivers():
    """A provider that refuses our API key (535) must not turn mail into
    bounces: the messages wait; with the key fixed and a flush they go,
    each exactly once, and credentials only ever travel over TLS."""
    import glob
    import os
    import signal
    import subprocess
    from lib import REPO

    lab = Lab("smarthost-auth")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=smtp.provider.example", "-keyout", lab.path("key.pem"), "-out", lab.path("cert.pem")],
                   check=True, capture_output=True)
    rec = lab.path("provider")
    os.makedirs(rec)
    provider = subprocess.Popen(["/usr/bin/python3", os.path.join(REPO, "tests", "unit", "peer_smtp.py"), "--dir", rec,
                                 "--ext", "PIPELINING", "--ext", "STARTTLS", "--ext", "AUTH PLAIN LOGIN",
                                 "--tls", lab.path("cert.pem"), lab.path("key.pem"),
                                 "--auth-user", "app1", "--auth-pass", "right-key", "--auth-required"],
                                stdout=subprocess.PIPE, text=True)
    port = int(provider.stdout.readline())
    with open(lab.path("api-key"), "w") as f:
        f.write("expired-key\n")
    from lib import free_port
    import urllib.request
    mport = free_port()
    lab.add_out(next_hops="127.0.0.1:%d" % port, smarthost_user="app1",
                smarthost_password_file=lab.path("api-key"), smarthost_tls="encrypt", retry_min="1h", retry_max="2h",
                metrics_listen="127.0.0.1:%d" % mport)
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.start("out", binary="rampart-out")
    try:
        for i in range(3):
            send_mail(lab.ports["out"], "app@example.test", ["user%d@example.net" % i], message("app %d" % i))
        end = time.time() + 20
        while time.time() < end:
            out = lab.ctl("-n", "out", "queue", "list").stdout
            if out.count("tries=1") == 3:
                break
            time.sleep(0.2)
        import re
        check(out.strip().endswith("3 messages") and not re.search(r"^\S{16}\s+failed\s", out, re.M),
              "deferred, not bounced: %s" % out)
        check(out.count("tries=1") == 3 and "535 5.7.8" in out and "454 4.7.8" in out,
              "the AUTH refusal, as a temporary failure, is the last error: %s" % out)
        check(glob.glob(os.path.join(rec, "body.*")) == [], "nothing delivered with a bad key")
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        check(re.search(r'^rampart_deferrals_total\{[^}]*reason="auth"[^}]*\} 3$', metrics, re.M),
              "three deferrals counted with their cause: %s" % metrics)
        check(re.search(r'^rampart_smarthost_auth_failures_total(\{[^}]*\})? 3$', metrics, re.M),
              "three AUTH failures at the smarthost: %s" % metrics)
        check(lab.log("out").count('"cause":"auth"') == 3, "the delivery lines name the cause")

        with open(lab.path("api-key"), "w") as f:
            f.write("right-key\n")
        lab.procs["out"].send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check(lab.ctl("-n", "out", "queue", "flush").returncode == 0, "flush")
        end = time.time() + 20
        while time.time() < end and len(glob.glob(os.path.join(rec, "body.*"))) < 3:
            time.sleep(0.1)
        time.sleep(0.5)
        check(len(glob.glob(os.path.join(rec, "body.*"))) == 3, "all three delivered exactly once")
        for a in glob.glob(os.path.join(rec, "auth.*")):
            conn = a.rsplit(".", 1)[1]
            check(os.path.exists(os.path.join(rec, "tls." + conn)), "AUTH on connection %s without TLS" % conn)
        for _ in range(50):
            if lab.ctl("-n", "out", "queue", "list").stdout.strip().endswith("0 messages"):
                break
            time.sleep(0.1)
        check(lab.ctl("-n", "out", "queue", "list").stdout.strip().endswith("0 messages"), "queue empty")
    finally:
        provider.terminate()
        provider.wait(10)
        lab.close()


def test_dkim_dual_signing_verifies_independently():
    """Mail from our domain leaves signed with RSA and ed25519 (keys made
    by rampartctl dkim keygen); python3-dkim and opendkim both verify it.
    Mail from another domain is not signed."""
    import os
    import subprocess
    from lib import BUILD, REPO

    lab = Lab("dkim")
    keys = []
    table = []
    for sel, extra, alg in (("r2026", [], "rsa-sha256"), ("e2026", ["--ed25519"], "ed25519-sha256")):
        p = subprocess.run([os.path.join(BUILD, "rampartctl"), "dkim", "keygen", "example.test", sel, "--dir",
                            lab.dir, "--txt-only"] + extra, capture_output=True, text=True, timeout=30)
        check(p.returncode == 0, "keygen: %s" % p.stderr)
        keys.append(p.stdout.strip())
        key = os.path.join(lab.dir, "%s._domainkey.example.test.key" % sel)
        check(oct(os.stat(key).st_mode & 0o777) == "0o600", "key file mode 0600")
        table.append("example.test %s %s %s" % (sel, alg, key))
    with open(lab.path("keys.txt"), "w") as f:
        f.write("\n".join(keys) + "\n")
    with open(lab.path("keytable"), "w") as f:
        f.write("\n".join(table) + "\n")
    lab.add_internet()
    lab.dns(["example.net. 3600 IN MX 10 mx.example.net.", "mx.example.net. 3600 IN A 127.0.0.1"])
    lab.add_out(smtp_port=str(lab.ports["internet"]), dkim_keytable=lab.path("keytable"))
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    # Full allocation stacks, so the suppression of libopendkim's known
    # ed25519 key leak (tests/lsan.supp) can see its frame.
    asan = os.environ.get("ASAN_OPTIONS", "")
    lab.start("out", binary="rampart-out", env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "fast_unwind_on_malloc=0"})
    try:
        body = ("From: Alice <alice@Example.Test>\r\nTo: bob@example.net\r\nSubject: signed\r\n"
                "Message-ID: <signed@example.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
                "Hello Bob.\r\n.dot line\r\n")
        send_mail(lab.ports["out"], "alice@example.test", ["bob@example.net"], body)
        send_mail(lab.ports["out"], "x@elsewhere.example", ["bob@example.net"],
                  body.replace("alice@Example.Test", "x@elsewhere.example"))
        msgs = lab.wait_outbound("example.net", 2)
        signed = [m for m in msgs if b"alice@Example.Test" in m][0]
        other = [m for m in msgs if b"x@elsewhere.example" in m][0]
        check(signed.count(b"DKIM-Signature:") == 2, "two signatures: %r" % signed[:1500])
        check(b"DKIM-Signature:" not in other, "foreign From is not signed")
        # A client that hangs up while its message is being signed: no
        # crash (the sanitizer build watches), and the message is kept.
        for i in range(5):
            r = Raw(lab.ports["out"])
            r.cmd("EHLO app.example.test")
            r.cmd("MAIL FROM:<alice@example.test>")
            r.cmd("RCPT TO:<bob@example.net>")
            r.cmd("DATA")
            r.send(body.replace("Subject: signed", "Subject: hangup %d" % i) + ".\r\n")
            r.close()
        lab.wait_outbound("example.net", 7)
        # Strip the lab receiver's envelope lines: they are not part of the message.
        msg = b"\r\n".join(l for l in signed.split(b"\r\n") if not l.startswith(b"X-Lab-Envelope"))
        with open(lab.path("signed.eml"), "wb") as f:
            f.write(msg)
        v = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "tests", "unit", "dkim_verify.py"),
                            lab.path("keys.txt"), lab.path("signed.eml")], capture_output=True, text=True, timeout=30)
        check(v.returncode == 0 and v.stdout.count(" pass") == 2, "python3-dkim verifies both: %s %s" % (v.stdout, v.stderr))
        with open(lab.path("opendkim.conf"), "w") as f:
            f.write("TestPublicKeys %s\nMode v\n" % lab.path("keys.txt"))
        o = subprocess.run(["opendkim", "-x", lab.path("opendkim.conf"), "-vvv", "-t", lab.path("signed.eml")],
                           capture_output=True, text=True, timeout=30)
        text = o.stdout + o.stderr
        check("verification (s=r2026 d=example.test, 2048-bit key) succeeded" in text or "dkim=pass" in text,
              "opendkim verifies: %s" % text[-800:])
        check("fail" not in text.lower() or "dkim=pass" in text, "opendkim: %s" % text[-800:])
    finally:
        lab.close()


def test_per_sender_accounting_survives_restart():
    import urllib.request
    from lib import free_port
    mport = free_port()
    lab = _lab(metrics_listen="127.0.0.1:%d" % mport)
    try:
        for i in range(3):
            send_mail(lab.ports["out"], "app1@example.test", ["u%d@example.net" % i, "v%d@example.org" % i],
                      message("acct %d" % i))
        send_mail(lab.ports["out"], "batch@example.test", ["x@nullmx.example"], message("acct x"))
        lab.wait_outbound("example.net", 3)
        time.sleep(1)
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        check('rampart_sender_messages_total{stage="out",instance="out",sender_domain="example.test"} 4' in text,
              "per sender domain on /metrics: %s" % text[-1200:])
        lab.stop("out")            # saves the ledger
        lab.start("out", binary="rampart-out")
        out = lab.ctl("-n", "out", "stats", "senders", "sender").stdout
        rows = {l.split()[1]: l.split() for l in out.splitlines()[1:]}
        check("app1@example.test" in rows and rows["app1@example.test"][2:5] == ["3", "6", rows["app1@example.test"][4]],
              "app1: 3 messages, 6 recipients: %s" % out)
        check(rows["app1@example.test"][5] == "6", "app1: 6 delivered: %s" % out)
        check(rows["batch@example.test"][7] == "1", "batch: 1 bounced (null MX): %s" % out)
        dom = lab.ctl("-n", "out", "stats", "senders", "domain").stdout
        check("example.test" in dom and " 4 " in dom, "by domain: %s" % dom)

        # a damaged line costs that line only: the rest loads, and the
        # file as it was is kept aside before the next save rewrites it
        lab.stop("out")
        ledger = lab.path("state", "ledger.out")
        with open(ledger) as f:
            lines = f.read().splitlines(True)
        lines.insert(2, "sender\tbroken@example.test\t-1 2 3\n")
        with open(ledger, "w") as f:
            f.write("".join(lines))
        lab.start("out", binary="rampart-out")
        check(os.path.exists(ledger + ".bad"), "the damaged ledger is kept aside")
        with open(ledger + ".bad") as f:
            check("broken@example.test" in f.read(), "ledger.bad holds the damaged line")
        check('"event":"ledger.load_failed"' in lab.log("out") and "1 line skipped" in lab.log("out"),
              "the skipped line is logged")
        out = lab.ctl("-n", "out", "stats", "senders", "sender").stdout
        check("app1@example.test" in out and "batch@example.test" in out,
              "the good lines after the damaged one loaded: %s" % out)
    finally:
        lab.close()


def test_quarantined_message_is_signed_when_released():
    """A check quarantines a message at the outgoing stage: it is kept as it
    would have left (DKIM-signed), and a release sends exactly that."""
    import os
    import subprocess
    from lib import BUILD

    lab = Lab("out-quarantine")
    p = subprocess.run([os.path.join(BUILD, "rampartctl"), "dkim", "keygen", "example.test", "q2026", "--dir", lab.dir,
                        "--txt-only"], capture_output=True, text=True, timeout=30)
    check(p.returncode == 0, "keygen: %s" % p.stderr)
    with open(lab.path("keytable"), "w") as f:
        f.write("example.test q2026 rsa-sha256 %s\n" % os.path.join(lab.dir, "q2026._domainkey.example.test.key"))
    with open(lab.path("rules"), "w") as f:
        f.write("/^Subject:.*hold me/i quarantine held for review\n")
    lab.add_internet()
    lab.dns(["example.net. 3600 IN MX 10 mx.example.net.", "mx.example.net. 3600 IN A 127.0.0.1"])
    lab.add_out(smtp_port=str(lab.ports["internet"]), dkim_keytable=lab.path("keytable"),
                checks="relay limits headers")
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.sections["check.headers"] = {"rules_file": lab.path("rules")}
    asan = os.environ.get("ASAN_OPTIONS", "")
    lab.start("out", binary="rampart-out", env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "fast_unwind_on_malloc=0"})
    try:
        body = ("From: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject: hold me\r\n"
                "Message-ID: <held@example.test>\r\n\r\nHello Bob.\r\n")
        send_mail(lab.ports["out"], "alice@example.test", ["bob@example.net"], body)
        out = lab.ctl("-n", "out", "quarantine", "list")
        check("1 message in quarantine" in out.stdout and "held for review" in out.stdout, "list:\n%s" % out.stdout)
        time.sleep(1)
        check(lab.outbound("example.net") == [], "nothing left before the release")
        qid = out.stdout.split()[0]
        check(lab.ctl("-n", "out", "quarantine", "release", qid).returncode == 0, "release")
        got = lab.wait_outbound("example.net", 1)[0]
        check(got.count(b"DKIM-Signature:") == 1 and b"s=q2026" in got, "released signed: %r" % got[:1200])
    finally:
        lab.close()
