"""The one-command lab (deploy/lab/up and down): it comes up with its
self-checks passing, its demonstrations of the MX defences behave as the
lab says, and down stops everything it started.  The lab listens on its
fixed ports (2424, 2525, 2526, 2527, 2626, 10026, 2587, 2465, 9024-9029): they must be free."""

import os
import re
import shutil
import subprocess
import tempfile
import time

from lib import REPO, check


def _swaks(*args):
    p = subprocess.run(["swaks", "--server", "127.0.0.1:2525", "--helo", "client.example.net",
                        "--from", "bob@example.net", "--to", "alice@example.test"] + list(args),
                       capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def test_lab_up_demo_and_down():
    d = tempfile.mkdtemp(prefix="rampart-it-lab-")
    env = dict(os.environ, RAMPART_LAB_DIR=d)
    try:
        up = subprocess.run([os.path.join(REPO, "deploy", "lab", "up")], capture_output=True, text=True,
                            timeout=180, env=env)
        check(up.returncode == 0, "lab up failed: %s %s" % (up.stdout[-3000:], up.stderr[-3000:]))
        check("Rampart lab is up" in up.stdout, "banner: %s" % up.stdout[-500:])
        pids = [int(open(os.path.join(d, "pids", f)).read()) for f in os.listdir(os.path.join(d, "pids"))]
        check(len(pids) >= 7, "mx, av, spam, store, out, submit and the lab Internet run: %r" % pids)
        # submission: the passwords printed and kept in credentials (0600)
        cred_path = os.path.join(d, "credentials")
        check(os.stat(cred_path).st_mode & 0o777 == 0o600, "credentials file is 0600")
        creds = dict(l.split() for l in open(cred_path).read().splitlines())
        check(set(creds) == {"alice@example.test", "bob@example.test"}
              and all(pw in up.stdout for pw in creds.values()), "passwords printed: %r" % creds)
        bob = os.path.join(d, "mail", "example.test", "bob", "Maildir", "new")
        check(any("Rampart lab submission self-check" in open(os.path.join(bob, f)).read() for f in os.listdir(bob)),
              "the submission self-check reached bob")
        # bob on the implicit-TLS port, to the outside: DKIM-signed at the lab Internet
        r = subprocess.run(["swaks", "--server", "127.0.0.1:2465", "--tlsc", "--auth", "PLAIN", "--auth-user",
                            "bob@example.test", "--auth-password", creds["bob@example.test"], "--from",
                            "bob@example.test", "--h-From", "<bob@example.test>", "--to", "someone@example.net",
                            "--h-Subject", "from bob via 465"], capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and "235 2.7.0" in r.stdout, "swaks 465: %s" % r.stdout[-1000:])
        obox = os.path.join(d, "outbound", "example.net")
        deadline = time.time() + 20
        got = None
        while time.time() < deadline and not got:
            for f in sorted(os.listdir(obox)) if os.path.isdir(obox) else []:
                text = open(os.path.join(obox, f), errors="replace").read()
                if "from bob via 465" in text:
                    got = text
            time.sleep(0.2)
        check(got and "DKIM-Signature:" in got and "(Authenticated sender: bob@example.test)" in got
              and "X-Virus-Status: Clean" in got, "bob's message left scanned and signed: %r" % (got or "")[:1500])
        # EICAR, as the lab says: rampart-av quarantines it
        nbob = len(os.listdir(bob))
        r = subprocess.run(["swaks", "--server", "127.0.0.1:2587", "-tls", "--auth", "PLAIN", "--auth-user",
                            "alice@example.test", "--auth-password", creds["alice@example.test"], "--from",
                            "alice@example.test", "--h-From", "<alice@example.test>", "--to", "bob@example.test",
                            "--attach", "@" + os.path.join(d, "eicar.com")], capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "EICAR accepted by submission: %s" % r.stdout[-800:])
        ctl = [os.path.join(REPO, "build", "rampartctl"), "-c", os.path.join(d, "rampart.conf"), "-n", "av",
               "quarantine", "list"]
        deadline = time.time() + 20
        out = ""
        while time.time() < deadline and "Eicar-Test-Signature" not in out:
            out = subprocess.run(ctl, capture_output=True, text=True, timeout=30).stdout
            time.sleep(0.3)
        check("1 message in quarantine" in out and "Eicar-Test-Signature" in out, "quarantined:\n%s" % out)
        check(len(os.listdir(bob)) == nbob, "bob did not get it")
        # spam, as the lab says: rampart-spam tags it (the classifier was
        # trained at up), and an ordinary message is left alone
        for subject, body in (("Cheap pills online!!!", "Buy cheap pills now at http://deals.example.com/"),
                              ("Meeting agenda", "The agenda for the project meeting is attached.")):
            r = subprocess.run(["swaks", "--server", "127.0.0.1:2587", "-tls", "--auth", "PLAIN", "--auth-user",
                                "alice@example.test", "--auth-password", creds["alice@example.test"], "--from",
                                "alice@example.test", "--h-From", "<alice@example.test>", "--to", "bob@example.test",
                                "--h-Subject", subject, "--body", body], capture_output=True, text=True, timeout=60)
            check(r.returncode == 0, "submitted %r: %s" % (subject, r.stdout[-800:]))
        deadline = time.time() + 20
        tagged = plain = None
        while time.time() < deadline and not (tagged and plain):
            for f in os.listdir(bob):
                text = open(os.path.join(bob, f), errors="replace").read()
                if "Cheap pills online" in text:
                    tagged = text
                if "Subject: Meeting agenda" in text:
                    plain = text
            time.sleep(0.2)
        check(tagged and "X-Spam-Flag: YES" in tagged and "Subject: [SPAM] Cheap pills online!!!" in tagged
              and re.search(r"X-Spam-Status: Yes, score=[0-9.]+ required=5\.0 tests=\S*BAYES_9", tagged),
              "the spam demo is tagged: %r" % (tagged or "")[:1500])
        check(plain and "X-Spam-Status: No," in plain and "X-Spam-Flag" not in plain,
              "the ordinary message is scored and left alone: %r" % (plain or "")[:1500])
        # the self-check message came from example.net, signed: the MX verified it
        box = os.path.join(d, "mail", "example.test", "postmaster", "Maildir", "new")
        got = open(os.path.join(box, sorted(os.listdir(box))[-1])).read()
        ar = re.sub(r"\n[ \t]+", " ", got).split("\n")
        ar = [l for l in ar if l.startswith("Authentication-Results:")]
        check(len(ar) == 1 and re.search(r"dkim=pass[^;]* header\.d=example\.net", ar[0])
              and "spf=pass" in ar[0], "self-check verified: %r" % ar)
        # the demonstrations the lab prints
        # a new triplet is greylisted, its retry after the lab's 2 s passes
        out = _swaks("--to", "bob@example.test")
        check("451 4.7.1" in out and "Greylisted" in out, "first attempt greylisted: %s" % out[-800:])
        time.sleep(2.5)
        out = _swaks("--to", "bob@example.test")
        check("250 2.0.0" in out and "Ok" in out, "retry accepted: %s" % out[-800:])
        # a spam trap blocks the client that writes to it
        out = _swaks("--from", "spammer@example.org", "--to", "trap@example.test", "--xclient-addr", "192.0.2.99")
        check("550" in out, "trap address refused: %s" % out[-800:])
        out = _swaks("--from", "spammer@example.org", "--xclient-addr", "192.0.2.99")
        check("554 5.7.1" in out and "trap" in out, "trapped client blocked: %s" % out[-800:])
        out = _swaks("--xclient-addr", "192.0.2.66")
        check("554 5.7.1" in out and "dnsbl.example.net" in out, "listed client refused: %s" % out[-800:])
        out = _swaks("--to", "bob@example.test", "--h-Subject", "cheap viagra")   # a passed triplet
        check("550 5.7.1" in out, "header rule: %s" % out[-800:])
        log = open(os.path.join(d, "log", "mx.log")).read()
        check('"event":"spf.result","result":"pass"' in log, "SPF passes for the lab's own domains")
        down = subprocess.run([os.path.join(REPO, "deploy", "lab", "down")], capture_output=True, text=True,
                              timeout=60, env=env)
        check(down.returncode == 0, "down: %s %s" % (down.stdout, down.stderr))
        for pid in pids:
            check(not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
                  "process %d still running after down" % pid)
    finally:
        subprocess.run([os.path.join(REPO, "deploy", "lab", "down")], capture_output=True, env=env, timeout=60)
        shutil.rmtree(d, ignore_errors=True)
