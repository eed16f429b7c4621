"""The antivirus stage (rampart-av, check clamav) over real sessions, with
signatures the tests write themselves (no official database can be
downloaded here): EICAR as an .ndb hex signature, and the payload of
Debian's clamav-testfiles samples as one .hdb line."""

import base64
import email.message
import io
import os
import re
import signal
import smtplib
import subprocess
import threading
import time
import urllib.request
import zipfile

from lib import Lab, check, free_port, message

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_NDB = "Eicar-Test-Signature:0:*:%s\n" % EICAR.hex()
TESTFILES_HDB = "71e7b604d18aefd839e51a39c88df8383bb4c071dc31f87f00a2b5df580d4495:544:ClamAV-Test-File\n"
TESTFILES = "/usr/share/clamav-testfiles"


def _lab(name, sigs=(EICAR_NDB, TESTFILES_HDB), mode="proxy", metrics=False, av=None, **clamav):
    lab = Lab(name)
    db = lab.path("clamav-db")
    os.makedirs(db)
    if EICAR_NDB in sigs:
        with open(os.path.join(db, "eicar.ndb"), "w") as f:
            f.write(EICAR_NDB)
    if TESTFILES_HDB in sigs:
        with open(os.path.join(db, "testfiles.hdb"), "w") as f:
            f.write(TESTFILES_HDB)
    lab.add_store()
    port = free_port()
    lab.ports["av"] = port
    lab.sections["av"] = {
        "listen": "127.0.0.1:%d" % port,
        "hostname": "av.example.test",
        "local_domains": "example.test",
        "mode": mode,
        "next_hops": "127.0.0.1:%d" % lab.ports["store"],
        "next_protocol": "lmtp",
        "retry_min": "1s",
        "retry_max": "2s",
    }
    lab.sections["av"].update(av or {})
    if metrics:                         # only when a test reads it: one free port less to race for
        lab.ports["av-metrics"] = free_port()
        lab.sections["av"]["metrics_listen"] = "127.0.0.1:%d" % lab.ports["av-metrics"]
    sec = {"database_dir": db, "database_check_interval": "1s"}
    sec.update(clamav)
    lab.sections["check.clamav"] = sec
    lab.start("store")
    lab.start("av")
    return lab


def _mail(subject, body=b"Hello.\n", attachments=()):
    m = email.message.EmailMessage()
    m["From"] = "sender@example.org"
    m["To"] = "alice@example.test"
    m["Subject"] = subject
    m["Message-ID"] = "<%s.%d@example.org>" % (subject.replace(" ", "."), time.time_ns())
    m.set_content(body.decode("latin-1"))
    for name, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes().replace(b"\n", b"\r\n")


def _zip(name, data):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return b.getvalue()


def _send(lab, msg, rcpt="alice@example.test"):
    """(code, text) of the end of DATA."""
    with smtplib.SMTP("127.0.0.1", lab.ports["av"], timeout=60) as c:
        c.ehlo("client.example.org")
        c.mail("sender@example.org")
        c.rcpt(rcpt)
        code, text = c.data(msg)
        return code, text.decode(errors="replace")


def test_eicar_rejected_in_every_wrapping():
    lab = _lab("av-eicar", metrics=True)
    try:
        cases = [
            ("plain body", _mail("plain", EICAR)),
            ("base64 attachment", _mail("attached", attachments=[("eicar.com", EICAR)])),
            ("zipped attachment", _mail("zipped", attachments=[("eicar.zip", _zip("eicar.com", EICAR))])),
            ("nested zip", _mail("nested", attachments=[("outer.zip", _zip("inner.zip", _zip("eicar.com", EICAR)))])),
        ]
        for what, msg in cases:
            code, text = _send(lab, msg)
            check(code == 554 and "5.7.1" in text and "Eicar-Test-Signature" in text, "%s: %d %s" % (what, code, text))
        # clean mail passes, byte for byte apart from the added headers
        clean = _mail("clean", b"Nothing to see here.\n", attachments=[("notes.zip", _zip("notes.txt", b"hello" * 100))])
        code, _ = _send(lab, clean)
        check(code == 250, "clean: %d" % code)
        got = lab.wait_mail("alice", 1)[0]
        check(b"X-Virus-Status: Clean" in got and b"X-Virus-Scanned: ClamAV using Rampart on av.example.test" in got,
              "headers added: %r" % got[:800])
        body = clean.replace(b"\r\n", b"\n")
        check(got.endswith(body), "the message itself is unchanged")
        log = lab.log("av")
        check('"event":"av.result","result":"infected","signature":"Eicar-Test-Signature.UNOFFICIAL","action":"reject"' in log,
              "verdict logged")
        m = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % lab.ports["av-metrics"]).read().decode()
        check(re.search(r'^rampart_av_infected_total\{[^}]*signature="Eicar-Test-Signature.UNOFFICIAL"[^}]*\} 4$', m, re.M),
              "counted by signature:\n%s" % "\n".join(l for l in m.splitlines() if "rampart_av" in l))
    finally:
        lab.close()


def test_every_clamav_testfile_is_caught():
    lab = _lab("av-testfiles", sigs=(TESTFILES_HDB,))
    try:
        files = sorted(os.listdir(TESTFILES))
        check(len(files) == 44, "clamav-testfiles has its 44 samples: %d" % len(files))
        missed = []
        for name in files:
            data = open(os.path.join(TESTFILES, name), "rb").read()
            code, text = _send(lab, _mail("sample " + name, attachments=[(name, data)]))
            if code != 554 or "ClamAV-Test-File" not in text:
                missed.append("%s: %d %s" % (name, code, text))
        check(not missed, "not caught:\n" + "\n".join(missed))
    finally:
        lab.close()


def test_policies_quarantine_tag_discard_and_the_clean_cache():
    lab = _lab("av-policy", action="quarantine", mode="queue")
    try:
        code, text = _send(lab, _mail("q", attachments=[("eicar.com", EICAR)]))
        check(code == 250, "quarantined, answered like any message: %d %s" % (code, text))
        out = lab.ctl("-n", "av", "quarantine", "list")
        check(out.returncode == 0 and "1 message in quarantine" in out.stdout
              and "check clamav: virus found (Eicar-Test-Signature.UNOFFICIAL)" in out.stdout, "list:\n%s%s" % (out.stdout, out.stderr))
        qid = out.stdout.split()[0]
        # release: it goes on to the next hop
        out = lab.ctl("-n", "av", "quarantine", "release", qid)
        check(out.returncode == 0, "release: %s" % out.stderr)
        got = lab.wait_mail("alice", 1)[0]
        check(b'filename="eicar.com"' in got and base64.b64encode(EICAR)[:40] in got.replace(b"\n", b""),
              "the released message is delivered whole: %r" % got[-600:])
        lab.stop("av")
        # tag
        lab.sections["check.clamav"]["action"] = "tag"
        lab.start("av")
        code, _ = _send(lab, _mail("t", attachments=[("eicar.com", EICAR)]), rcpt="bob@example.test")
        check(code == 250, "tagged and passed: %d" % code)
        got = lab.wait_mail("bob", 1)[0]
        check(b"X-Virus-Status: Infected (Eicar-Test-Signature.UNOFFICIAL)" in got, "tag: %r" % got[:600])
        lab.stop("av")
        # discard
        lab.sections["check.clamav"]["action"] = "discard"
        lab.start("av")
        code, _ = _send(lab, _mail("d", attachments=[("eicar.com", EICAR)]), rcpt="postmaster@example.test")
        check(code == 250, "discarded: %d" % code)
        # a retry of the same clean message is not scanned again
        clean = _mail("clean twice", b"Same body.\n")
        for _ in range(2):
            check(_send(lab, clean, rcpt="postmaster@example.test")[0] == 250, "clean")
        time.sleep(1.5)
        box = lab.maildir("postmaster")
        check(len(box) == 2 and all(b"clean twice" in m for m in box), "only the two clean ones arrived")
        log = lab.log("av")
        check('"action":"discard"' in log and '"event":"message.discarded"' in log, "discard logged")
        check(log.count('"result":"clean"') >= 2 and '"cached":"yes"' in log, "the retry came from the cache")
    finally:
        lab.close()


def test_signature_reload_under_load():
    """EICAR is not known at first; its signature is added while mail flows:
    the new engine is built in the background and swapped in, no message
    is refused or lost meanwhile, and EICAR is refused from then on."""
    lab = _lab("av-reload", sigs=(TESTFILES_HDB,))
    try:
        code, _ = _send(lab, _mail("before", attachments=[("eicar.com", EICAR)]), rcpt="bob@example.test")
        check(code == 250, "unknown before the reload: %d" % code)
        results = []
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    results.append(_send(lab, _mail("load %d" % i, b"load %d\n" % i))[0])
                except Exception as e:      # a refused connection would be a failure too
                    results.append(str(e))

        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.5)
        with open(lab.path("clamav-db", "eicar.ndb"), "w") as f:
            f.write(EICAR_NDB)
        deadline = time.time() + 20
        while time.time() < deadline and '"event":"av.reloaded"' not in lab.log("av"):
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        t.join(60)
        check('"event":"av.reloaded"' in lab.log("av"), "reloaded:\n%s" % lab.log("av")[-2000:])
        check(results and all(r == 250 for r in results), "every message during the reload accepted: %r" % results[-20:])
        check(len(lab.wait_mail("alice", len(results))) == len(results), "and delivered")
        code, text = _send(lab, _mail("after", attachments=[("eicar.com", EICAR)]))
        check(code == 554 and "Eicar-Test-Signature" in text, "known after the reload: %d %s" % (code, text))
        # SIGHUP builds a new engine too (in the background), and sessions go on
        import signal
        n = lab.log("av").count('"event":"av.reloaded"')
        lab.procs["av"].send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while time.time() < deadline and lab.log("av").count('"event":"av.reloaded"') <= n:
            time.sleep(0.2)
        check(lab.log("av").count('"event":"av.reloaded"') == n + 1 and '"engine":3' in lab.log("av"),
              "SIGHUP reload:\n%s" % lab.log("av")[-1500:])
        check(_send(lab, _mail("after hup", attachments=[("eicar.com", EICAR)]))[0] == 554, "still scanning")
        # a broken database: the old engine stays, and says why
        with open(lab.path("clamav-db", "broken.ndb"), "w") as f:
            f.write("this is not a signature\n")
        deadline = time.time() + 20
        while time.time() < deadline and '"event":"av.reload_failed"' not in lab.log("av"):
            time.sleep(0.2)
        check('"event":"av.reload_failed"' in lab.log("av"), "reload failure logged")
        code, _ = _send(lab, _mail("still", attachments=[("eicar.com", EICAR)]))
        check(code == 554, "the old engine still scans: %d" % code)
    finally:
        lab.close()


def test_scanner_failures_tempfail():
    # a scan past max_scan_time: 451, never a silent pass
    big = [(n, open(os.path.join(TESTFILES, n), "rb").read()) for n in sorted(os.listdir(TESTFILES))]
    lab = _lab("av-timeout", max_scan_time="1ms")
    try:
        code, text = _send(lab, _mail("slow", attachments=big))
        check(code == 451 and "4.7.1" in text and "temporarily unavailable" in text, "timeout: %d %s" % (code, text))
        check('"error":"scan time limit reached"' in lab.log("av"), "logged: %s" % lab.log("av")[-1500:])
    finally:
        lab.close()
    # failure_action = tag: the site prefers tag-and-pass
    lab = _lab("av-timeout-tag", max_scan_time="1ms", failure_action="tag")
    try:
        code, _ = _send(lab, _mail("slow but tagged", attachments=big))
        check(code == 250, "tagged and passed: %d" % code)
        got = lab.wait_mail("alice", 1)[0]
        check(b"X-Virus-Status: Unscanned (scanner failure)" in got, "tagged: %r" % got[:500])
    finally:
        lab.close()
    # over a scan limit: limits_action
    lab = _lab("av-limits", max_files="2", limits_action="tempfail")
    try:
        code, text = _send(lab, _mail("many", attachments=[("a%d.zip" % i, _zip("f.txt", b"x%d" % i)) for i in range(5)]))
        check(code == 451 and "over a scan limit" in text, "limits: %d %s" % (code, text))
    finally:
        lab.close()


def test_shutdown_with_a_scan_in_progress():
    # SIGTERM while a long scan runs, with no grace (shutdown_timeout 0):
    # the scanning thread finishes before the session, and the message it
    # reads, are torn down; the process exits cleanly (the sanitizers
    # watch), the client gets no 250 and nothing is delivered.  The scan:
    # 400 MB of zeros in a zip (a 400 KB attachment), several seconds of
    # libclamav.
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (400 << 20))
    msg = _mail("slow to scan", attachments=[("zeros.zip", b.getvalue())])
    lab = _lab("av-shutdown", av={"shutdown_timeout": "0"}, max_file_size="1g", max_scan_size="1g",
               max_scan_time="120s")
    try:
        got = {}

        def send():
            try:
                got["reply"] = _send(lab, msg)
            except (smtplib.SMTPException, OSError) as e:
                got["error"] = repr(e)

        t = threading.Thread(target=send)
        t.start()
        time.sleep(1.0)                 # the message is in; the scan runs
        check(t.is_alive(), "the scan was over before the signal: %r" % got)
        p = lab.procs["av"]
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        took = time.monotonic() - t0
        t.join(30)
        check(p.returncode == 0, "exit status %s after %.1f s" % (p.returncode, took))
        check("reply" not in got or got["reply"][0] != 250, "no 250 for a cut session: %r" % got)
        log = lab.log("av")
        check('"event":"stage.drain_timeout"' in log and '"event":"stage.stopped"' in log,
              "shutdown logged: %s" % log[-1500:])
        time.sleep(0.5)
        check(lab.maildir("alice") == [], "nothing delivered")
    finally:
        lab.close()


def test_bad_database_stops_startup():
    lab = Lab("av-conf")
    try:
        lab.add_store()
        lab.sections["av"] = {"listen": "127.0.0.1:%d" % free_port(), "next_hops": "127.0.0.1:%d" % lab.ports["store"],
                              "local_domains": "example.test"}
        lab.sections["check.clamav"] = {"database_dir": lab.path("nonexistent")}
        lab.write_config()
        from lib import BUILD
        r = subprocess.run([os.path.join(BUILD, "rampart-av"), "-c", lab.path("rampart.conf"), "-n", "av", "-t"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "checks: check clamav: database_dir:" in r.stderr and "cannot read the directory" in r.stderr, "no database: %r" % r.stderr)
        os.makedirs(lab.path("empty-db"))
        lab.sections["check.clamav"] = {"database_dir": lab.path("empty-db")}
        lab.write_config()
        r = subprocess.run([os.path.join(BUILD, "rampart-av"), "-c", lab.path("rampart.conf"), "-n", "av", "-t"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "no signature databases (expected" in r.stderr, "empty database: %r" % r.stderr)
        # a temporary directory it cannot write (libclamav would scan less, silently)
        lab.sections["check.clamav"] = {"database_dir": lab.path("clamav-db"), "tmp_dir": "/nonexistent/av-tmp"}
        os.makedirs(lab.path("clamav-db"))
        with open(lab.path("clamav-db", "eicar.ndb"), "w") as f:
            f.write(EICAR_NDB)
        lab.write_config()
        r = subprocess.run([os.path.join(BUILD, "rampart-av"), "-c", lab.path("rampart.conf"), "-n", "av", "-t"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "tmp_dir: /nonexistent/av-tmp: No such file or directory" in r.stderr,
              "bad tmp_dir: %r" % r.stderr)
    finally:
        lab.close()


def test_rejection_reaches_the_original_client_through_a_proxy_mx():
    """MX (proxy) -> AV (proxy) -> store: the client of the MX gets the 554
    with the signature at the end of its own DATA; nothing is queued, so
    nobody is bounced to."""
    lab = _lab("av-pipeline")
    try:
        lab.add_mx(mode="proxy", next_hops="127.0.0.1:%d" % lab.ports["av"], next_protocol="smtp")
        lab.sections["av"]["xforward_hosts"] = "127.0.0.0/8"
        lab.stop("av")
        lab.start("av")
        lab.start("mx")
        with smtplib.SMTP("127.0.0.1", lab.ports["mx"], timeout=60) as c:
            c.ehlo("client.example.org")
            c.mail("sender@example.org")
            c.rcpt("alice@example.test")
            code, text = c.data(_mail("through the mx", attachments=[("eicar.zip", _zip("eicar.com", EICAR))]))
        check(code == 554 and b"5.7.1" in text and b"Eicar-Test-Signature" in text, "at SMTP time: %d %r" % (code, text))
        with smtplib.SMTP("127.0.0.1", lab.ports["mx"], timeout=60) as c:
            c.ehlo("client.example.org")
            c.sendmail("sender@example.org", ["alice@example.test"], _mail("clean through the mx"))
        got = lab.wait_mail("alice", 1)
        check(len(got) == 1 and b"clean through the mx" in got[0] and b"X-Virus-Status: Clean" in got[0], "clean delivered")
        out = lab.ctl("-n", "mx", "queue", "list")
        check("0 messages" in out.stdout, "nothing queued at the MX: %s" % out.stdout)
        check('"client":"127.0.0.1"' in lab.log("av"), "the AV saw the original client (XFORWARD)")
    finally:
        lab.close()


def test_proxy_keeps_its_next_hop_connection_for_the_session():
    """In proxy mode a session's messages share one connection to the next
    hop; one the next hop closed meanwhile is replaced, and nothing fails."""
    lab = _lab("av-reuse")
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["av"], timeout=60) as c:
            c.ehlo("client.example.org")
            for i in range(3):
                c.sendmail("sender@example.org", ["alice@example.test"], _mail("reuse %d" % i))
            check(lab.log("av").count('"event":"smtp_client_connected"') == 1, "one next-hop connection for three messages")
            # the next hop goes away and comes back: the kept connection is dead
            lab.stop("store")
            lab.start("store")
            c.sendmail("sender@example.org", ["alice@example.test"], _mail("after the restart"))
        check(len(lab.wait_mail("alice", 4)) == 4, "all four delivered")
        check(lab.log("av").count('"event":"smtp_client_connected"') == 2, "a new connection after the restart")
    finally:
        lab.close()
