"""The one-command lab (deploy/lab/up and down): it comes up with its
self-checks passing, its demonstrations of the MX defences behave as the
lab says, and down stops everything it started.  The lab listens on its
fixed ports (2424, 2525, 2626, 10026, 9024-9026): they must be free."""

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
        check(len(pids) >= 4, "mx, store, out and the lab Internet run: %r" % pids)
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
