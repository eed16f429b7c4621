"""The anti-spam tools over real files and the real state store: rampartctl
bayes train (message files, an mbox file, a Maildir, a directory),
bayes stats, spam score (standard input and files), untraining, the
configuration's [state] or an LMDB file named by --db, and the errors of
bad arguments and missing files."""

import os
import re
import smtplib
import subprocess
import time
import urllib.request

from lib import BUILD, Lab, check, free_port

SPAM = ["Subject: Cheap pills {n}\nFrom: deals{n}@pharma.example\n\nBuy cheap pills now, best price {n}!\n"
        "Visit http://pharma.example/{n} for the offer.\n",
        "Subject: You are a winner {n}\nFrom: lottery@prize.example\n\nClaim your prize money today {n}, "
        "click http://prize.example/claim now.\n"]
HAM = ["Subject: Meeting notes {n}\nFrom: alice@example.test\n\nThe agenda for Monday's meeting {n} is attached; "
       "please review the draft report.\n",
       "Subject: Lunch {n}\nFrom: bob@example.test\n\nShall we have lunch on Thursday {n}? The project review went "
       "well, thanks.\n"]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_train_stats_and_score():
    lab = Lab("spam-tools")
    try:
        lab.write_config()
        d = lab.path("corpus")
        # spam: an mbox file of six messages and two single files
        mbox = "".join("From sender@pharma.example Mon Dec  7 10:00:00 2026\n%s\n" % SPAM[n % 2].format(n=n)
                       for n in range(6))
        _write(os.path.join(d, "spam.mbox"), mbox)
        _write(os.path.join(d, "spam", "a.eml"), SPAM[0].format(n=100))
        _write(os.path.join(d, "spam", "b.eml"), SPAM[1].format(n=101))
        # ham: a Maildir (cur/ and new/) and a directory of files
        for n in range(4):
            _write(os.path.join(d, "Maildir", "cur" if n % 2 else "new", "%d.host:2," % n), HAM[n % 2].format(n=n))
        for n in range(4, 8):
            _write(os.path.join(d, "ham", "%d.eml" % n), HAM[n % 2].format(n=n))
        os.makedirs(os.path.join(d, "Maildir", "tmp"))
        db = lab.path("bayes.lmdb")

        r = lab.ctl("bayes", "train", "spam", "--db", db, os.path.join(d, "spam.mbox"), os.path.join(d, "spam"))
        check(r.returncode == 0 and "learned 8 messages as spam" in r.stdout, "train spam: %r %r" % (r.stdout, r.stderr))
        r = lab.ctl("bayes", "train", "ham", "--db", db, os.path.join(d, "Maildir"), os.path.join(d, "ham"))
        check(r.returncode == 0 and "learned 8 messages as ham" in r.stdout, "train ham: %r %r" % (r.stdout, r.stderr))
        r = lab.ctl("bayes", "stats", "--db", db)
        check(r.returncode == 0 and "messages: 8 spam, 8 ham" in r.stdout, "stats: %r" % r.stdout)

        # one message on standard input: score, verdict, clues
        probe = "From x Mon Dec  7 10:00:00 2026\n" + SPAM[0].format(n=999)
        r = subprocess_ctl(lab, ["spam", "score", "--db", db], probe)
        m = re.search(r"^bayes \+([0-9.]+): p=([0-9.]+) BAYES_\d\d \(spam; \d+ clues of \d+ tokens; trained on 8 spam, "
                      r"8 ham\)", r.stdout, re.M)
        check(r.returncode == 0 and m and float(m.group(2)) >= 0.95, "score: %r" % r.stdout)
        check(re.search(r"^score 5\.[0-9]: tag \(tag_score 5,", r.stdout, re.M), "decision: %r" % r.stdout)
        check(re.search(r"^  [0-9.]+ +\d+ +\d+  url:pharma\.example$", r.stdout, re.M), "clues: %r" % r.stdout)
        r = subprocess_ctl(lab, ["spam", "score", "--db", db], HAM[0].format(n=998))
        check(re.search(r"^bayes -[0-9.]+: p=0\.[01]\d* BAYES_\d\d \(ham; ", r.stdout, re.M), "ham: %r" % r.stdout)
        check(re.search(r"^score -5\.[0-9]: none ", r.stdout, re.M), "ham decision: %r" % r.stdout)

        # files: one line each
        _write(os.path.join(d, "probe", "s.eml"), SPAM[1].format(n=555))
        _write(os.path.join(d, "probe", "h.eml"), HAM[1].format(n=556))
        r = lab.ctl("spam", "score", "--db", db, os.path.join(d, "probe"))
        lines = sorted(r.stdout.splitlines(), key=lambda l: l.split()[-1])
        check(r.returncode == 0 and len(lines) == 2 and lines[0].split()[1] == "ham" and lines[1].split()[1] == "spam"
              and lines[1].split()[3] == "tag" and lines[0].split()[3] == "none", "batch: %r" % r.stdout)

        # untraining takes it back
        r = lab.ctl("bayes", "train", "spam", "--untrain", "--db", db, os.path.join(d, "spam"))
        check(r.returncode == 0 and "unlearned 2 messages as spam" in r.stdout, "untrain: %r" % r.stdout)
        r = lab.ctl("bayes", "stats", "--db", db)
        check("messages: 6 spam, 8 ham" in r.stdout, "stats after untrain: %r" % r.stdout)

        # the configuration's [state] when no --db: the stages' store
        r = lab.ctl("bayes", "train", "ham", os.path.join(d, "ham"))
        check(r.returncode == 0 and "learned 4 messages as ham" in r.stdout, "config store: %r %r" % (r.stdout, r.stderr))
        r = lab.ctl("bayes", "stats")
        check("messages: 0 spam, 4 ham" in r.stdout, "config store stats: %r" % r.stdout)

        # errors: clear, exit 2 for usage, 1 for a file that is not there
        for args, code, what in ((["bayes", "train", "junk", "x"], 2, "expected spam or ham"),
                                 (["bayes", "train", "spam", "--db", db], 2, "no messages given"),
                                 (["bayes", "train", "spam", "--bogus", "x"], 2, "unknown option --bogus"),
                                 (["bayes"], 2, "expected train"),
                                 (["spam", "score", "--db", lab.path("nonexistent.lmdb")], 1, "nonexistent.lmdb"),
                                 (["bayes", "train", "spam", "--db", db, lab.path("no-such-file")], 1, "no-such-file")):
            r = lab.ctl(*args)
            check(r.returncode == code and what in r.stderr, "%s: exit %d, %r" % (args, r.returncode, r.stderr))
    finally:
        lab.close()


def subprocess_ctl(lab, args, stdin):
    return subprocess.run([os.path.join(BUILD, "rampartctl"), "-c", lab.path("rampart.conf")] + args, input=stdin,
                          capture_output=True, text=True, timeout=30)


def _spam_lab(name, mode="proxy", **spam):
    lab = Lab(name)
    lab.add_store()
    port = free_port()
    lab.ports["spam"] = port
    lab.ports["spam-metrics"] = free_port()
    lab.sections["spam"] = {
        "listen": "127.0.0.1:%d" % port,
        "hostname": "spam.example.test",
        "local_domains": "example.test",
        "mode": mode,
        "next_hops": "127.0.0.1:%d" % lab.ports["store"],
        "next_protocol": "lmtp",
        "metrics_listen": "127.0.0.1:%d" % lab.ports["spam-metrics"],
        "retry_min": "1s",
    }
    rules = lab.path("spam-rules")
    _write(rules, "body PILLS /cheap\\s+pills/i 1.0 cheap pills\n"
                  "header:Subject SUBJ_SHOUT /!{3,}/ 0.5 shouting\n")
    sec = {"rules_file": rules}
    sec.update(spam)
    lab.sections["check.spam"] = sec
    lab.write_config()
    # train the classifier in the lab's own store, as an administrator would
    d = lab.path("train")
    for n in range(12):
        _write(os.path.join(d, "spam", "%d" % n), SPAM[n % 2].format(n=n))
        _write(os.path.join(d, "ham", "%d" % n), HAM[n % 2].format(n=n))
    for kind in ("spam", "ham"):
        r = lab.ctl("bayes", "train", kind, os.path.join(d, kind))
        check(r.returncode == 0, "train %s: %r %r" % (kind, r.stdout, r.stderr))
    lab.start("store")
    lab.start("spam")
    return lab


def _send(lab, text, rcpt="alice@example.test"):
    with smtplib.SMTP("127.0.0.1", lab.ports["spam"], timeout=30) as c:
        c.ehlo("client.example.org")
        c.mail("sender@example.org")
        c.rcpt(rcpt)
        code, resp = c.data(text.replace("\n", "\r\n").encode())
        return code, resp.decode(errors="replace")


def test_stage_scores_tags_and_rejects():
    lab = _spam_lab("spam-stage")
    try:
        spam = ("X-Spam-Status: No, forged\n" + SPAM[0].format(n=500)).replace("Subject: ", "Subject: ", 1)
        code, _ = _send(lab, spam)
        check(code == 250, "spam accepted and tagged: %d" % code)
        code, _ = _send(lab, HAM[0].format(n=501))
        check(code == 250, "ham: %d" % code)
        got = lab.wait_mail("alice", 2)
        tagged = [m for m in got if b"X-Spam-Flag: YES" in m]
        clean = [m for m in got if b"X-Spam-Flag" not in m]
        check(len(tagged) == 1 and len(clean) == 1, "one tagged, one not: %r" % [m[:600] for m in got])
        t = tagged[0]
        check(re.search(rb"X-Spam-Status: Yes, score=[0-9.]+ required=5\.0 tests=PILLS,BAYES_99 bayes=(?:0\.9\d+|1\.0+)", t),
              "status: %r" % t[:800])
        check(b"forged" not in t, "the message's own X-Spam-Status is gone: %r" % t[:800])
        check(re.search(rb"(?m)^Subject: \[SPAM\] Cheap pills 500", t), "subject tag: %r" % t[:800])
        check(re.search(rb"X-Spam-Status: No, score=-[0-9.]+ required=5\.0 tests=BAYES_00", clean[0]),
              "ham status: %r" % clean[0][:800])
        check(b"[SPAM]" not in clean[0], "ham subject untouched")
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % lab.ports["spam-metrics"], timeout=5).read()
        check(b'rampart_spam_score_count{stage="spam",instance="spam"} 2' in body, "histogram: %r" % body[-1500:])
        check(b'rampart_spam_actions_total{stage="spam",instance="spam",action="tag"} 1' in body, "actions")
        log = lab.log("spam")
        check('"event":"spam.result"' in log and '"action":"tag"' in log, "logged: %s" % log[-1500:])
    finally:
        lab.close()
    # over reject_score, in proxy mode: 554 at SMTP time, nothing delivered
    lab = _spam_lab("spam-reject", reject_score="4")
    try:
        code, text = _send(lab, SPAM[1].format(n=600))
        check(code == 554 and "5.7.1" in text and "spam" in text, "rejected: %d %s" % (code, text))
        code, _ = _send(lab, HAM[1].format(n=601))
        check(code == 250, "ham passes: %d" % code)
        got = lab.wait_mail("alice", 1)
        check(len(got) == 1 and b"Lunch 601" in got[0], "only the ham: %r" % [m[:200] for m in got])
    finally:
        lab.close()


def test_stage_bad_rules_stop_startup():
    lab = Lab("spam-badrules")
    try:
        rules = lab.path("bad-rules")
        _write(rules, "body OK /x/ 1\nbody BROKEN /(x/ 1\n")
        port = free_port()
        lab.ports["spam"] = port
        lab.sections["spam"] = {"listen": "127.0.0.1:%d" % port, "hostname": "spam.example.test",
                                "next_hops": "127.0.0.1:1"}
        lab.sections["check.spam"] = {"rules_file": rules}
        lab.write_config()
        p = subprocess.run([os.path.join(BUILD, "rampart-spam"), "-c", lab.path("rampart.conf"), "-n", "spam"],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode != 0 and "bad-rules:2: BROKEN: bad pattern at offset" in p.stderr,
              "exit %d: %r" % (p.returncode, p.stderr[-600:]))
    finally:
        lab.close()


def test_stage_routes_local_to_the_store_and_the_rest_out():
    # queue mode: one message for a local and two external recipients is
    # split into one transaction to the store and one to the next stage
    # (here the lab's Internet stands for the outgoing stage); nobody is
    # lost or served twice; both copies carry the score
    lab = Lab("spam-routing")
    try:
        lab.add_store()
        lab.add_internet()
        port = free_port()
        lab.ports["spam"] = port
        lab.sections["spam"] = {
            "listen": "127.0.0.1:%d" % port,
            "hostname": "spam.example.test",
            "local_domains": "example.test",
            "mode": "queue",
            "local_next_hops": "127.0.0.1:%d" % lab.ports["store"],
            "next_hops": "127.0.0.1:%d" % lab.ports["internet"],
            "retry_min": "1s",
        }
        lab.sections["check.spam"] = {"bayes": "no"}
        lab.write_config()
        lab.start("store")
        lab.start("spam")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("client.example.org")
            refused = c.sendmail("sender@example.test", ["alice@example.test", "carol@remote.example",
                                                         "dave@other.example"],
                                 HAM[0].format(n=700).replace("\n", "\r\n").encode())
            check(refused == {}, "all accepted: %r" % refused)
        got = lab.wait_mail("alice", 1)
        end = time.monotonic() + 15
        while time.monotonic() < end and (not lab.outbound("remote.example") or not lab.outbound("other.example")):
            time.sleep(0.1)
        time.sleep(0.5)
        check(len(lab.maildir("alice")) == 1, "alice once: %d" % len(lab.maildir("alice")))
        check(len(lab.outbound("remote.example")) == 1 and len(lab.outbound("other.example")) == 1,
              "each external recipient once: %r %r" % (lab.outbound("remote.example"), lab.outbound("other.example")))
        for data in [got[0]] + lab.outbound("remote.example") + lab.outbound("other.example"):
            check(b"X-Spam-Status: No, score=0.0 required=5.0 tests=none" in data, "scored: %r" % data[:600])
    finally:
        lab.close()
