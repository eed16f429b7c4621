"""Nothing is lost: kill -9 of the MX or the store under load, and a full
disk.  Every message that got a 250 ends up in a Maildir; duplicates are
only possible for messages in flight at the kill, and are counted."""

import os
import re
import smtplib
import subprocess
import threading
import time

from lib import Lab, Raw, check, message, send_mail


def _sender(port, prefix, acked, errors, stop):
    i = 0
    while not stop.is_set():
        i += 1
        subj = "%s-%d" % (prefix, i)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.sendmail("load@example.org", ["alice@example.test"], message(subj, "payload %s\r\n" % subj))
            acked.add(subj)
        except (smtplib.SMTPException, OSError) as e:
            errors.append(str(e))
            time.sleep(0.05)


def _subjects(lab):
    subs = []
    for m in lab.maildir("alice"):
        g = re.search(rb"^Subject: (\S+)$", m, re.M)
        if g:
            subs.append(g.group(1).decode())
    return subs


def _load_and_kill(victim):
    lab = Lab("kill-" + victim)
    lab.add_store()
    lab.start("store")
    lab.add_mx(max_deliveries="10")
    lab.start("mx")
    acked, errors, stop = set(), [], threading.Event()
    threads = [threading.Thread(target=_sender, args=(lab.ports["mx"], "t%d" % t, acked, errors, stop))
               for t in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        before = len(acked)
        lab.kill9(victim)
        time.sleep(0.3)
        lab.start(victim)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        check(before > 20 and len(acked) > before, "load must run before and after the kill: %d then %d"
              % (before, len(acked)))
        lab.stop("mx")
        lab.start("mx")       # restart recovery once more, then drain
        end = time.time() + 60
        while time.time() < end:
            got = set(_subjects(lab))
            if acked <= got:
                break
            time.sleep(0.2)
        subs = _subjects(lab)
        got = set(subs)
        lost = sorted(acked - got)
        dups = len(subs) - len(got)
        print("    kill -9 %s: %d acknowledged, %d delivered, %d duplicates, %d client errors"
              % (victim, len(acked), len(got), dups, len(errors)))
        check(len(acked) > 50, "too little load got through: %d (%s)" % (len(acked), errors[:3]))
        check(not lost, "LOST %d acknowledged messages: %s" % (len(lost), lost[:10]))
        # In flight at a kill: up to 10 deliveries out and 4 client transactions.
        check(dups <= 10 + 4, "more duplicates (%d) than messages that can be in flight" % dups)
    finally:
        stop.set()
        lab.close()


def test_kill9_mx_under_load_loses_nothing():
    _load_and_kill("mx")


def test_kill9_store_under_load_loses_nothing():
    _load_and_kill("store")


def test_corrupt_queue_file_moved_aside():
    lab = Lab("corrupt")
    lab.add_store()
    lab.add_mx(checks="relay limits")
    spool = lab.path("state", "spool", "mx")
    lab.start("mx")
    try:
        with smtplib.SMTP("127.0.0.1", lab.ports["mx"]) as c:
            c.sendmail("s@example.org", ["alice@example.test"], message("ok1"))
        lab.stop("mx")
        active = os.path.join(spool, "active")
        files = os.listdir(active)
        check(len(files) == 1, "one queued file: %r" % files)
        with open(os.path.join(active, "AAAAAAAAAAAAAAAA"), "wb") as f:
            f.write(b"this is not a queue file\n")
        with open(os.path.join(active, files[0]), "rb") as f:
            good = f.read()
        with open(os.path.join(active, "BBBBBBBBBBBBBBBB"), "wb") as f:
            f.write(good[: len(good) // 2])      # truncated
        lab.start("mx")
        lab.start("store")
        lab.wait_mail("alice", 1)
        time.sleep(0.5)
        moved = sorted(os.listdir(os.path.join(spool, "corrupt")))
        check("AAAAAAAAAAAAAAAA" in moved[0] and "BBBBBBBBBBBBBBBB" in moved[1] if len(moved) == 2 else False,
              "corrupt files moved aside: %r" % moved)
        check("corrupt" in lab.log("mx"), "corrupt file logged")
    finally:
        lab.close()


def test_full_disk_tempfails_and_corrupts_nothing():
    lab = Lab("fulldisk")
    spool = lab.path("spool")
    os.makedirs(spool)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", spool], capture_output=True, text=True)
    check(p.returncode == 0, "cannot mount a small tmpfs for the full-disk test (needs root): %s" % p.stderr)
    try:
        lab.add_store()
        lab.add_mx(checks="relay limits", spool_dir=spool)
        lab.start("mx")
        codes = []
        big = "x" * 998 + "\r\n"
        for i in range(20):
            r = Raw(lab.ports["mx"])
            r.cmd("EHLO client.example.org")
            r.cmd("MAIL FROM:<s@example.org>")
            r.cmd("RCPT TO:<alice@example.test>")
            r.cmd("DATA")
            r.send(message("fill-%d" % i, big * 50) + ".\r\n")
            codes.append(r.reply()[0])
            r.cmd("QUIT")
        print("    replies while filling the disk: %s" % codes)
        check(250 in codes, "some messages fit")
        check(any(400 <= c < 500 for c in codes), "a full disk must give 4xx: %s" % codes)
        check(not any(c >= 500 for c in codes), "never 5xx for a full disk: %s" % codes)
        check(lab.procs["mx"].poll() is None, "the MX must survive a full disk")
        acked = codes.count(250)
        # Everything acknowledged is intact: start the store and drain.
        lab.start("store")
        lab.wait_mail("alice", acked, timeout=30)
        time.sleep(1)
        check(len(lab.maildir("alice")) == acked, "exactly the acknowledged messages are delivered")
        corrupt = os.path.join(spool, "corrupt")
        check(not os.path.isdir(corrupt) or os.listdir(corrupt) == [], "no corrupt queue files")
        # With space again, mail is accepted.
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.cmd("MAIL FROM:<s@example.org>")
        r.cmd("RCPT TO:<alice@example.test>")
        r.cmd("DATA")
        r.send(message("after", "ok\r\n") + ".\r\n")
        check(r.reply()[0] == 250, "accepting again once there is room")
    finally:
        try:
            lab.close()
        finally:
            subprocess.run(["umount", "-l", spool], capture_output=True)
            import shutil
            shutil.rmtree(lab.dir, ignore_errors=True)


def test_store_full_disk_defers_and_delivers_later():
    lab = Lab("storefull")
    mail = lab.path("mail")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", mail], capture_output=True, text=True)
    check(p.returncode == 0, "cannot mount a small tmpfs for the full-disk test (needs root): %s" % p.stderr)
    try:
        lab.add_store()
        lab.start("store")
        lab.add_mx(retry_min="1s", retry_max="1s")
        lab.start("mx")
        big = "x" * 998 + "\r\n"
        for i in range(8):
            send_mail(lab.ports["mx"], "s@example.org", ["bob@example.test"], message("big-%d" % i, big * 50))
        time.sleep(2)
        delivered = len(lab.maildir("bob"))
        check(0 < delivered < 8, "the small disk holds some, not all: %d" % delivered)
        out = lab.ctl("queue", "list").stdout
        check("4.3.0" in out or "451" in out, "the rest wait in the MX queue with a temporary error: %s" % out)
        check(lab.procs["store"].poll() is None, "the store survives a full disk")
        tmpdir = os.path.join(mail, "example.test", "bob", "Maildir", "tmp")
        check(os.listdir(tmpdir) == [], "no half-written files left in tmp/")
        # Make room: the rest arrive on the next retries, each once.
        newdir = os.path.join(mail, "example.test", "bob", "Maildir", "new")
        for n in os.listdir(newdir):
            os.remove(os.path.join(newdir, n))
        end = time.time() + 30
        while time.time() < end and len(lab.maildir("bob")) + delivered < 8:
            time.sleep(0.2)
        check(len(lab.maildir("bob")) + delivered == 8, "all eight delivered exactly once")
    finally:
        try:
            lab.close()
        finally:
            subprocess.run(["umount", "-l", mail], capture_output=True)
            import shutil
            shutil.rmtree(lab.dir, ignore_errors=True)
