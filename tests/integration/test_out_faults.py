"""The outgoing stage (F) as the anti-loss relay, under faults at the next
hop (DESIGN.md §3 "Nothing is lost", issue 3 "Tests"): the next hop down
while 500 messages are accepted; 421/451 for a while (Postfix's
smtp-sink); 550 for one recipient of three; kill -9 of rampart-out in the
middle of a 2,000-message run; the maximum queue lifetime passing.

Every test counts Message-IDs at the receiving end: what got a 250 from
rampart-out arrives (exactly once, or at least once across a kill -9),
and what failed for good comes back to the sender as one RFC 3464 report.

The faulty next hops are real processes or real sockets on 127.0.0.1:
Postfix's smtp-sink (-Q, -r, -b inject 421 and 451), the lab's catch-all
receiver (deploy/lab/internet.py), and a scripted aiosmtpd server run in
this process (Peer) where a reply must depend on the recipient or on the
time."""

import asyncio
import email
import os
import re
import smtplib
import subprocess
import threading
import time

from lib import REPO, Lab, TestFailure, check, free_port, wait_port

SMTP_SINK = "/usr/sbin/smtp-sink"


# ---- helpers ---------------------------------------------------------------

def _msg(msgid, subject=None, frm="app@example.test", to="user@example.net"):
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nbody of %s\r\n"
            % (frm, to, subject or msgid, msgid, msgid))


def _send_all(port, sender, rcpts, msgids, acked, errors, codes=None):
    """Send one message per Message-ID over as few connections as possible;
    a Message-ID goes into acked only when DATA got exactly 250.  After a
    broken connection, reconnect and go on with the next Message-ID (a
    message whose reply was lost is never resent, so a duplicate at the
    receiver can only come from rampart-out)."""
    c = None
    for mid in msgids:
        try:
            if c is None:
                c = smtplib.SMTP("127.0.0.1", port, local_hostname="app.example.test", timeout=30)
                c.ehlo()
            code, text = c.mail(sender)
            if code != 250:
                raise smtplib.SMTPResponseException(code, text)
            for r in rcpts:
                code, text = c.rcpt(r)
                if code != 250:
                    raise smtplib.SMTPResponseException(code, text)
            code, text = c.data(_msg(mid))
            if codes is not None:
                codes.append(code)
            if code == 250:
                acked.add(mid)
            else:
                errors.append("%s: DATA %d %s" % (mid, code, text))
                c.rset()
        except (smtplib.SMTPException, OSError) as e:
            errors.append("%s: %s" % (mid, e))
            try:
                if c is not None:
                    c.close()
            except OSError:
                pass
            c = None
            time.sleep(0.02)
    if c is not None:
        try:
            c.quit()
        except (smtplib.SMTPException, OSError):
            pass


def _send_parallel(port, msgids, threads=5, sender="app@example.test", rcpts=("user@example.net",)):
    acked, errors, codes = set(), [], []
    chunks = [msgids[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=_send_all, args=(port, sender, list(rcpts), ch, acked, errors, codes))
          for ch in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return acked, errors, codes


MSGID_RE = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.M | re.I)


def _msgid(raw):
    m = MSGID_RE.search(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n")
    return m.group(1).decode() if m else None


def _start_catchall(lab, port, name="internet"):
    """deploy/lab/internet.py on a chosen port (the lab's add_internet picks
    its own; here the next hop's port is fixed before it comes up)."""
    os.makedirs(lab.path("outbound"), exist_ok=True)
    log = lab.path("log", name + ".log")
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(REPO, "deploy", "lab", "internet.py"),
                          "--listen", "127.0.0.1:%d" % port, "--dir", lab.path("outbound")],
                         stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    lab.procs[name] = p
    lab.ports[name] = port
    wait_port(port, proc=p, log=log)
    return p


class Sink:
    """Postfix's smtp-sink on 127.0.0.1:port with fault options; stopped by
    its PID only."""

    def __init__(self, lab, port, *opts):
        self.log = lab.path("log", "smtp-sink.log")
        self.p = subprocess.Popen([SMTP_SINK, "-u", "nobody"] + list(opts) + ["127.0.0.1:%d" % port, "64"],
                                  stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_port(port, proc=self.p, log=self.log)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)


class Peer:
    """A scripted next hop: aiosmtpd in a thread of this process, on
    127.0.0.1.  policy(address) returns None to accept a recipient, or
    (delay_seconds, reply) to answer reply after a delay.  Every accepted
    transaction is recorded: {"from", "to", "data", "t"}."""

    def __init__(self, policy=None):
        from aiosmtpd.controller import Controller
        self.policy = policy or (lambda a: None)
        self.msgs = []
        self.rcpt_log = []
        self.port = free_port()
        self.ctl = Controller(self, hostname="127.0.0.1", port=self.port, decode_data=False,
                              server_hostname="peer.lab", ready_timeout=10)
        self.ctl.start()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        verdict = self.policy(address)
        self.rcpt_log.append((time.time(), address, verdict[1] if verdict else "250"))
        if verdict is None:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        delay, reply = verdict
        if delay:
            await asyncio.sleep(delay)
        return reply

    async def handle_DATA(self, server, session, envelope):
        self.msgs.append({"from": envelope.mail_from or "", "to": list(envelope.rcpt_tos),
                          "data": envelope.original_content or envelope.content, "t": time.time()})
        return "250 2.0.0 Accepted by the scripted peer"

    def dsns(self):
        return [m for m in self.msgs if m["from"] in ("", "<>")]

    def originals(self):
        return [m for m in self.msgs if m["from"] not in ("", "<>")]

    def stop(self):
        try:
            self.ctl.stop()
        except Exception:       # already stopped, or never fully started
            pass


def _queue_list(lab):
    return lab.ctl("-n", "out", "queue", "list").stdout


def _queue_lines(out):
    return [l for l in out.splitlines() if re.match(r"^[0-9A-Za-z]{16}\s", l)]


def _queue_count(out):
    """The total on the last line of rampartctl queue list ("N messages")."""
    m = re.search(r"(?:^|\n)(\d+) messages?\s*$", out)
    return int(m.group(1)) if m else None


def _wait_queue_empty(lab, timeout=10.0):
    end = time.time() + timeout
    out = _queue_list(lab)
    while time.time() < end and _queue_count(out) != 0:
        time.sleep(0.2)
        out = _queue_list(lab)
    check(_queue_count(out) == 0, "the queue must end empty (nothing left in failed/ either): %s" % out)


def _parse_report(raw):
    """An RFC 3464 report: (message, the delivery-status part's text,
    the returned original's text).  Checks the outer structure."""
    m = email.message_from_bytes(raw)
    check(m.get_content_type() == "multipart/report" and m.get_param("report-type") == "delivery-status",
          "a DSN is multipart/report; report-type=delivery-status: %s %r" % (m.get_content_type(), raw[:600]))
    parts = [p for p in m.walk()]
    status = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    check(len(status) == 1, "one message/delivery-status part: %r" % [p.get_content_type() for p in parts])
    returned = [p for p in parts if p.get_content_type() in ("text/rfc822-headers", "message/rfc822")]
    check(returned, "the original (headers) is returned: %r" % [p.get_content_type() for p in parts])
    # The delivery-status part: per-message fields, then one block per recipient.
    st = status[0]
    payload = st.get_payload()
    if isinstance(payload, list):
        text = "\n\n".join(b.as_string() for b in payload)
    else:
        text = st.get_payload(decode=True).decode(errors="replace")
    ret = returned[0]
    rp = ret.get_payload()
    if isinstance(rp, list):
        rtext = "".join(x.as_string() for x in rp)
    else:
        rtext = ret.get_payload(decode=True).decode(errors="replace")
    return m, text, rtext


def _rcpt_blocks(status_text):
    """The per-recipient blocks of a delivery-status text, as dicts of
    lower-cased field names."""
    blocks = []
    for chunk in re.split(r"\r?\n\s*\r?\n", status_text.strip()):
        fields = {}
        for line in re.split(r"\r?\n(?![ \t])", chunk):
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = " ".join(v.split())
        if "final-recipient" in fields:
            blocks.append(fields)
    return blocks


def _out_lab(name, **out):
    lab = Lab(name)
    lab.add_out(**out)
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    return lab


def _mx_dns(lab, *extra):
    lab.dns([
        "example.net. 3600 IN MX 10 mx.example.net.",
        "mx.example.net. 3600 IN A 127.0.0.1",
        "example.org. 3600 IN MX 10 mx.example.org.",
        "mx.example.org. 3600 IN A 127.0.0.1",
    ] + list(extra))


# ---- 1. the next hop is down while 500 messages are accepted ---------------

def test_next_hop_down_500_accepted_then_all_delivered_exactly_once():
    hop = free_port()                                 # nothing listens there yet
    lab = _out_lab("out-down", next_hops="127.0.0.1:%d" % hop, retry_min="1s", retry_max="2s")
    lab.dns(["example.net. 3600 IN MX 0 ."])          # only the smarthost can deliver
    lab.start("out", binary="rampart-out")
    try:
        ids = ["down-%03d@example.test" % i for i in range(500)]
        t0 = time.time()
        acked, errors, codes = _send_parallel(lab.ports["out"], ids, threads=5)
        print("    500 messages accepted in %.1fs with the next hop down" % (time.time() - t0))
        check(len(codes) == 500 and all(c == 250 for c in codes) and acked == set(ids),
              "every message gets 250 while the next hop is down: %d acked, errors %s" % (len(acked), errors[:5]))

        # Deferred, not bounced: all 500 wait in active/ with the refusal as the last error.
        end = time.time() + 15
        while time.time() < end:
            out = _queue_list(lab)
            lines = _queue_lines(out)
            if len(lines) == 500 and not any("tries=0 " in l for l in lines):
                break
            time.sleep(0.3)
        check(_queue_count(out) == 500 and len(lines) == 500,
              "500 messages queued: %s" % out[-500:])
        check(all(re.search(r"\sactive\s", l) for l in lines), "all in active/, none failed: %s"
              % [l for l in lines if not re.search(r"\sactive\s", l)][:3])
        check(not any("tries=0 " in l for l in lines), "each was tried at least once: %s"
              % [l for l in lines if "tries=0 " in l][:3])
        check(all("refused" in l.lower() for l in lines),
              "the last error says the connection was refused: %s" % lines[:2])

        # The next hop comes up: everything arrives, each Message-ID once.
        t1 = time.time()
        _start_catchall(lab, hop)
        lab.wait_outbound("example.net", 500, timeout=45)
        print("    500 delivered %.1fs after the next hop came up" % (time.time() - t1))
        time.sleep(2.5)                               # > retry_max: a re-delivery would show
        got = [_msgid(m) for m in lab.outbound("example.net")]
        check(None not in got, "every delivered message has its Message-ID")
        dups = len(got) - len(set(got))
        check(set(got) == set(ids), "all 500 arrive: missing %s, unknown %s"
              % (sorted(set(ids) - set(got))[:5], sorted(set(got) - set(ids))[:5]))
        check(len(got) == 500, "each exactly once: %d deliveries, %d duplicates" % (len(got), dups))
        _wait_queue_empty(lab)
    finally:
        lab.close()


# ---- 2. 421 and 451 for a while (smtp-sink), then accepted ------------------

def test_next_hop_421_then_451_then_accepts_delivered_after_retries():
    hop = free_port()
    lab = _out_lab("out-tempfail", next_hops="127.0.0.1:%d" % hop, retry_min="1s", retry_max="2s")
    lab.dns(["example.net. 3600 IN MX 0 ."])
    sink = Sink(lab, hop, "-Q", "RCPT")               # 421 and disconnect at RCPT
    lab.start("out", binary="rampart-out")
    try:
        ids = ["tempfail-%d@example.test" % i for i in range(5)]
        acked, errors, codes = _send_parallel(lab.ports["out"], ids, threads=1)
        check(acked == set(ids), "all accepted: %s" % errors)

        def wait_error(pattern, min_tries, what):
            end = time.time() + 20
            while time.time() < end:
                lines = _queue_lines(_queue_list(lab))
                if len(lines) == 5 and all(re.search(pattern, l) and int(re.search(r"tries=(\d+)", l).group(1))
                                           >= min_tries for l in lines):
                    return lines
                time.sleep(0.3)
            raise TestFailure("%s: expected 5 queued messages with last error /%s/ and tries >= %d:\n%s\nlogs:\n%s"
                              % (what, pattern, min_tries, _queue_list(lab), lab.all_logs()))

        lines = wait_error(r"last: .*421 4\.0\.0 Server closing connection", 2, "421 from the next hop")
        qid = lines[0].split()[0]
        show = lab.ctl("-n", "out", "queue", "show", qid).stdout
        check(re.search(r"^location:\s+active", show, re.M) and re.search(r"state=pending", show)
              and "421" in show and re.search(r"^next_try:\s+\S", show, re.M),
              "queue show: pending, with the 421 and a next retry time: %s" % show)
        sink.stop()

        sink = Sink(lab, hop, "-r", "RCPT", "-b", "451 4.3.0 Try again later (test)")
        lines = wait_error(r"last: .*451 4\.3\.0 Try again later", 3, "451 from the next hop")
        show = lab.ctl("-n", "out", "queue", "show", qid).stdout
        check(re.search(r"state=pending attempts=\d+ code=451 reply=\"451 4\.3\.0 Try again later", show),
              "queue show: the recipient's last reply is the 451: %s" % show)
        check(not lab.outbound("example.net"), "nothing is delivered meanwhile")
        sink.stop()

        _start_catchall(lab, hop)
        lab.wait_outbound("example.net", 5, timeout=20)
        time.sleep(2.5)
        got = [_msgid(m) for m in lab.outbound("example.net")]
        check(sorted(got) == sorted(ids), "each delivered exactly once after the retries: %s" % got)
        check("bounce" not in lab.log("out") and not [m for m in lab.outbound("example.test")],
              "temporary errors never bounce")
        _wait_queue_empty(lab)
    finally:
        try:
            sink.stop()
        finally:
            lab.close()


# ---- 3. 550 for one recipient of three --------------------------------------

def test_550_for_one_of_three_recipients_one_dsn_two_delivered():
    refused = "b@example.net"
    peer = Peer(lambda a: (0, "550 5.1.1 <%s>: Recipient address rejected: no such user" % a)
                if a.lower() == refused else None)
    lab = _out_lab("out-550", smtp_port=str(peer.port))
    _mx_dns(lab)
    lab.start("out", binary="rampart-out")
    try:
        rcpts = ["a@example.net", refused, "c@example.net"]
        acked, errors = set(), []
        _send_all(lab.ports["out"], "dave@example.org", rcpts, ["three@example.org"], acked, errors)
        check(acked == {"three@example.org"}, "accepted: %s" % errors)
        end = time.time() + 20
        while time.time() < end and not (peer.dsns() and peer.originals()):
            time.sleep(0.1)
        time.sleep(2.5)                               # > retry_max: no second report, no re-delivery
        orig = peer.originals()
        delivered = sorted(r.lower() for m in orig for r in m["to"])
        check(delivered == ["a@example.net", "c@example.net"],
              "the other two are delivered, once each: %s (logs:\n%s)" % (delivered, lab.all_logs()))
        check(all(_msgid(m["data"]) == "three@example.org" for m in orig), "the original was delivered")
        dsns = peer.dsns()
        check(len(dsns) == 1, "exactly one DSN to the sender: %d (%s)" % (len(dsns), [d["to"] for d in dsns]))
        d = dsns[0]
        check(d["to"] == ["dave@example.org"], "the DSN goes to the envelope sender: %s" % d["to"])
        m, text, returned = _parse_report(d["data"])
        blocks = _rcpt_blocks(text)
        check(len(blocks) == 1, "one recipient reported: %s" % text)
        b = blocks[0]
        check(refused in b["final-recipient"].lower() and b.get("action") == "failed" and
              b.get("status") == "5.1.1", "the refused recipient, Action: failed, Status: 5.1.1: %s" % text)
        check("550" in b.get("diagnostic-code", ""), "the remote 550 as Diagnostic-Code: %s" % text)
        check("a@example.net" not in text and "c@example.net" not in text,
              "delivered recipients are not reported: %s" % text)
        check("three@example.org" in returned, "the original's headers come back: %s" % returned[:500])
        _wait_queue_empty(lab)
    finally:
        try:
            lab.close()
        finally:
            peer.stop()


# ---- 4. kill -9 in the middle of a 2,000-message run -----------------------

def test_kill9_out_mid_2000_messages_every_acked_delivered():
    threads, max_deliveries = 4, 10
    lab = Lab("out-kill9")
    hop = lab.add_internet()
    lab.add_out(next_hops="127.0.0.1:%d" % hop, max_deliveries=str(max_deliveries))
    lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
    lab.dns(["example.net. 3600 IN MX 0 ."])
    lab.start("out", binary="rampart-out")
    port = lab.ports["out"]
    acked, errors = set(), []
    ids = ["k9-%04d@example.test" % i for i in range(2000)]
    chunks = [ids[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=_send_all, args=(port, "app@example.test", ["user@example.net"], ch, acked, errors))
          for ch in chunks]
    try:
        t0 = time.time()
        for t in ts:
            t.start()
        end = time.time() + 60
        while time.time() < end and len(acked) < 700:
            time.sleep(0.01)
        delivered_before = len(lab.outbound("example.net"))
        acked_before = len(acked)
        lab.kill9("out")
        time.sleep(0.3)
        lab.start("out", binary="rampart-out")
        for t in ts:
            t.join(120)
        check(not any(t.is_alive() for t in ts), "the senders finish")
        run = time.time() - t0
        check(500 < acked_before < 2000 and len(acked) > acked_before,
              "the kill must land in the middle of the run: %d acked before, %d in all" % (acked_before, len(acked)))
        check(delivered_before > 0, "deliveries were going on at the kill")
        # Everything acknowledged arrives (the restarted rampart-out recovers its spool).
        end = time.time() + 60
        while time.time() < end:
            got = [_msgid(m) for m in lab.outbound("example.net")]
            if acked <= set(got):
                break
            time.sleep(0.3)
        time.sleep(2.5)
        got = [_msgid(m) for m in lab.outbound("example.net")]
        gotset = set(got)
        lost = sorted(acked - gotset)
        dups = len(got) - len(gotset)
        unacked_delivered = len(gotset - acked)
        print("    kill -9 rampart-out: %d of 2000 acknowledged (%d before the kill, %d of them delivered by then), "
              "%d delivered, %d duplicates, %d delivered without a 250 (in flight at the kill), "
              "%d client errors; run %.1fs"
              % (len(acked), acked_before, delivered_before, len(gotset), dups, unacked_delivered, len(errors), run))
        check(None not in gotset and gotset <= set(ids), "only our messages arrive")
        check(not lost, "LOST %d acknowledged messages: %s" % (len(lost), lost[:10]))
        check(len(acked) >= 1500, "most of the run got through: %d (%s)" % (len(acked), errors[:3]))
        check(dups <= max_deliveries + threads,
              "more duplicates (%d) than messages that can be in flight (%d deliveries + %d senders)"
              % (dups, max_deliveries, threads))
        _wait_queue_empty(lab)
    finally:
        lab.close()


# ---- 5. the maximum queue lifetime passes -----------------------------------

def test_queue_lifetime_passes_dsn_with_5_4_7():
    """Two messages expire at the same time in one run (queue_lifetime
    12 s): one whose next hop answers 451 at once on every try, and one
    whose next hop turns slow (holds its 451 for 6 s) just before the
    lifetime runs out, so that the lifetime passes during an attempt.  Both
    senders must get one report with Status: 5.4.7."""
    hang_at = [None]

    def policy(addr):
        dom = addr.rsplit("@", 1)[-1].lower()
        if dom == "example.net":
            return (0, "451 4.3.0 Try again later (test)")
        if dom == "slow.example.net":
            if hang_at[0] is not None and time.time() >= hang_at[0]:
                return (6, "451 4.3.0 Try again later, slowly (test)")
            return (0, "451 4.3.0 Try again later (test)")
        return None

    peer = Peer(policy)
    lab = _out_lab("out-lifetime", smtp_port=str(peer.port), queue_lifetime="12s", retry_min="1s", retry_max="2s")
    _mx_dns(lab, "slow.example.net. 3600 IN MX 10 mx.example.net.")
    lab.start("out", binary="rampart-out")
    try:
        t0 = time.time()
        hang_at[0] = t0 + 9
        cases = [("dave@example.org", "x@example.net", "expire-fast@example.org"),
                 ("erin@example.org", "y@slow.example.net", "expire-slow@example.org")]
        for sender, rcpt, mid in cases:
            acked, errors = set(), []
            _send_all(lab.ports["out"], sender, [rcpt], [mid], acked, errors)
            check(acked == {mid}, "accepted: %s" % errors)
        time.sleep(3)
        lines = _queue_lines(_queue_list(lab))
        check(len(lines) == 2 and all("451 4.3.0" in l for l in lines),
              "both wait in the queue with the 451: %s" % lines)

        def report_for(sender, rcpt, mid, what):
            """None if the sender got one good report, else what is wrong."""
            mine = [d for d in peer.dsns() if d["to"] == [sender]]
            if not mine:
                qid = [l.split()[0] for l in _queue_lines(_queue_list(lab)) if "<%s>" % sender in l]
                return ("%s: no DSN to %s for %s %.0fs after it was accepted (queue_lifetime 12s); "
                        "the queue holds: %s; rampart-out logged:\n%s"
                        % (what, sender, mid, time.time() - t0,
                           [l for l in _queue_lines(_queue_list(lab)) if "<%s>" % sender in l],
                           "\n".join(l for l in lab.log("out").splitlines()
                                     if qid and qid[0] in l and re.search(r"expire|dsn|bounce|removed", l))))
            print("    %s: DSN to %s %.1fs after acceptance" % (what, sender, mine[0]["t"] - t0))
            try:
                m, text, returned = _parse_report(mine[0]["data"])
                blocks = _rcpt_blocks(text)
                check(len(mine) == 1, "%s: one report, not %d" % (what, len(mine)))
                check(len(blocks) == 1 and rcpt in blocks[0]["final-recipient"].lower(),
                      "%s: the expired recipient is reported: %s" % (what, text))
                check(blocks[0].get("action") == "failed" and blocks[0].get("status") == "5.4.7",
                      "%s: Action: failed, Status: 5.4.7: %s" % (what, text))
                check(mid in returned, "%s: the original's headers come back" % what)
                check(mine[0]["t"] - t0 >= 11, "%s: not before the lifetime: %.1fs" % (what, mine[0]["t"] - t0))
            except TestFailure as e:
                return str(e)
            return None

        end = t0 + 30                                 # expiry at ~12 s; the slow attempt ends at ~15 s
        while time.time() < end and len({tuple(d["to"]) for d in peer.dsns()}) < 2:
            time.sleep(0.2)
        time.sleep(2.5)                               # > retry_max: no second report
        problems = [p for p in (
            report_for("dave@example.org", "x@example.net", "expire-fast@example.org",
                       "next hop answering 451 at once"),
            report_for("erin@example.org", "y@slow.example.net", "expire-slow@example.org",
                       "lifetime passing during a slow attempt")) if p]
        check(not problems, "\n\n".join(problems))
        check(not peer.originals(), "the expired messages were never delivered")
        _wait_queue_empty(lab)
    finally:
        try:
            lab.close()
        finally:
            peer.stop()
