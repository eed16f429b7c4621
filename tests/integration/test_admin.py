"""Operations: SIGHUP reload without dropping sessions, rampartctl queue
commands, and the real clients administrators use (swaks, smtp-source)."""

import os
import re
import signal
import subprocess
import time

from lib import Lab, Raw, check, message, send_mail


def test_sighup_reload_keeps_sessions():
    lab = Lab("reload")
    lab.add_store()
    lab.start("store")
    lab.add_mx(max_message_size="100k")
    lab.start("mx")
    try:
        old = Raw(lab.ports["mx"])
        _, _, lines = old.cmd("EHLO before.example.org")
        check("250-SIZE 102400" in lines, "initial SIZE: %r" % lines)
        lab.sections["mx"]["max_message_size"] = "200k"
        lab.write_config()
        lab.procs["mx"].send_signal(signal.SIGHUP)
        time.sleep(0.5)
        new = Raw(lab.ports["mx"])
        _, _, lines = new.cmd("EHLO after.example.org")
        check("250-SIZE 204800" in lines, "reloaded SIZE: %r" % lines)
        # The session opened before the reload still works end to end.
        check(old.cmd("MAIL FROM:<s@example.org>")[0] == 250, "old session MAIL")
        check(old.cmd("RCPT TO:<alice@example.test>")[0] == 250, "old session RCPT")
        check(old.cmd("DATA")[0] == 354, "old session DATA")
        old.send(message("across reload") + ".\r\n")
        check(old.reply()[0] == 250, "old session message")
        lab.wait_mail("alice", 1)
        # A broken file is refused at reload; the running configuration stays.
        lab.sections["mx"]["max_message_size"] = "huge"
        lab.write_config()
        lab.procs["mx"].send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check(lab.procs["mx"].poll() is None, "a bad reload must not stop the MX")
        check("config.reload_failed" in lab.log("mx") and "max_message_size" in lab.log("mx"),
              "the failed reload is logged with its reason")
        r = Raw(lab.ports["mx"])
        _, _, lines = r.cmd("EHLO again.example.org")
        check("250-SIZE 204800" in lines, "old configuration kept: %r" % lines)
        for c in (old, new, r):
            c.cmd("QUIT")
    finally:
        lab.close()


def test_rampartctl_queue_commands():
    lab = Lab("ctl")
    lab.add_store()
    lab.add_mx(checks="relay limits", retry_min="1h", retry_max="2h")
    lab.start("mx")          # the store is down: mail waits in the queue
    try:
        for i in range(3):
            send_mail(lab.ports["mx"], "s%d@example.org" % i, ["alice@example.test", "bob@example.test"],
                      message("queued %d" % i))
        time.sleep(1.0)
        out = lab.ctl("queue", "list")
        check(out.returncode == 0 and out.stdout.strip().endswith("3 messages"), "list: %s %s" % (out.stdout, out.stderr))
        ids = [re.search(r"^(\S{16}) .*<s%d@example.org>" % i, out.stdout, re.M) for i in range(3)]
        check(all(ids), "three ids, one per sender: %s" % out.stdout)
        ids = [m.group(1) for m in ids]
        check("Connection refused" in out.stdout or "refused" in out.stdout.lower() or "unavailable" in out.stdout.lower(),
              "last error shown: %s" % out.stdout)
        show = lab.ctl("queue", "show", ids[0])
        check(show.returncode == 0 and "alice@example.test" in show.stdout and "bob@example.test" in show.stdout,
              "show lists recipients: %s" % show.stdout)
        check(lab.ctl("queue", "show", "../../etc/passwd").returncode != 0, "bad id refused")
        check(lab.ctl("queue", "hold", ids[1]).returncode == 0, "hold")
        check("hold" in lab.ctl("queue", "list").stdout, "held message listed")
        d = lab.ctl("queue", "delete", ids[2])
        check(d.returncode == 0, "delete: %s" % d.stderr)
        check(lab.ctl("queue", "list").stdout.strip().endswith("2 messages"), "two left")
        # Store up, flush: the active one is delivered now despite retry_min=1h.
        lab.start("store")
        f = lab.ctl("queue", "flush")
        check(f.returncode == 0, "flush: %s" % f.stderr)
        lab.wait_mail("alice", 1, timeout=20)
        lab.wait_mail("bob", 1, timeout=20)
        time.sleep(0.5)
        check(len(lab.maildir("alice")) == 1, "the held message stays held")
        check(lab.ctl("queue", "release", ids[1]).returncode == 0, "release")
        lab.wait_mail("alice", 2, timeout=20)
        subjects = sorted(re.search(rb"Subject: ([^\n]*)", m).group(1) for m in lab.maildir("alice"))
        check(subjects == [b"queued 0", b"queued 1"], "deleted message must not arrive: %r" % subjects)
    finally:
        lab.close()


def test_swaks_and_smtp_source():
    lab = Lab("clients")
    lab.add_store()
    lab.start("store")
    lab.add_mx()
    lab.start("mx")
    try:
        p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % lab.ports["mx"], "--from", "s@example.org",
                            "--to", "bob@example.test", "--header", "Subject: via swaks", "--pipeline"],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0 and "250 2.0.0 Ok: queued as" in p.stdout, "swaks: %s" % p.stdout[-800:])
        lab.wait_mail("bob", 1)
        p = subprocess.run(["/usr/sbin/smtp-source", "-s", "5", "-m", "200", "-l", "2048", "-f", "load@example.org",
                            "-t", "alice@example.test", "127.0.0.1:%d" % lab.ports["mx"]],
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, "smtp-source: %s %s" % (p.stdout, p.stderr))
        msgs = lab.wait_mail("alice", 200, timeout=60)
        check(len(msgs) == 200, "200 messages from smtp-source")
    finally:
        lab.close()
