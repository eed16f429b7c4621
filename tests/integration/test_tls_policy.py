"""Outbound TLS policy of the outgoing stage (F): per destination and by
default, none / may / encrypt / verify, against real receivers with
throw-away certificates.  A TLS the policy requires that fails defers the
mail (4xx, kept in the queue), is logged and counted with the reason."""

import glob
import json
import os
import re
import subprocess
import time
import urllib.request

from lib import REPO, Lab, check, free_port, message, send_mail

PEER = os.path.join(REPO, "tests", "unit", "peer_smtp.py")


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)


def _ca(lab, name):
    """A throw-away CA: (cert, key) paths."""
    cert, key = lab.path(name + ".pem"), lab.path(name + ".key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=Rampart test " + name, "-keyout", key, "-out", cert,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(lab, name, ca, sans):
    """A server certificate signed by ca for sans ("DNS:x", "IP:y"): (cert, key)."""
    cert, key, csr, ext = (lab.path(name + s) for s in (".pem", ".key", ".csr", ".ext"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=" + sans[0].split(":", 1)[1], "-keyout", key, "-out", csr)
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" % ",".join(sans))
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(int(time.time() * 1000)),
             "-days", "2", "-extfile", ext, "-out", cert)
    return cert, key


class Peer:
    """A receiver (tests/unit/peer_smtp.py) recording into its own directory."""

    def __init__(self, lab, name, *opts):
        self.dir = lab.path(name)
        os.makedirs(self.dir)
        self.p = subprocess.Popen(["/usr/bin/python3", PEER, "--dir", self.dir, "--ext", "PIPELINING"] + list(opts),
                                  stdout=subprocess.PIPE, text=True)
        self.port = int(self.p.stdout.readline())

    def conns_for(self, rcpt):
        """Connection numbers on which RCPT TO:<rcpt> was sent."""
        out = []
        for raw in glob.glob(os.path.join(self.dir, "raw.*")):
            with open(raw, "rb") as f:
                if ("RCPT TO:<%s>" % rcpt).encode() in f.read():
                    out.append(raw.rsplit(".", 1)[1])
        return out

    def has(self, conn, what):
        return os.path.exists(os.path.join(self.dir, "%s.%s" % (what, conn)))

    def read(self, conn, what):
        with open(os.path.join(self.dir, "%s.%s" % (what, conn))) as f:
            return f.read()

    def bodies(self):
        return glob.glob(os.path.join(self.dir, "body.*"))

    def close(self):
        self.p.terminate()
        self.p.wait(10)


def _wait(cond, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _queue(lab):
    return lab.ctl("-n", "out", "queue", "list").stdout


def _queue_line(out, sender):
    for line in out.splitlines():
        if "<%s>" % sender in line:
            return line
    return ""


def _events(lab, event):
    """The out stage's JSON log lines of one event."""
    out = []
    for line in lab.log("out").splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("event") == event:
            out.append(j)
    return out


def _has_event(lab, event, **fields):
    return any(all(e.get(k) == v for k, v in fields.items()) for e in _events(lab, event))


def _metrics(port):
    return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()


def test_verify_encrypt_may_against_a_tls_receiver():
    """One receiver, its certificate for mx.good.example, mx.otherca.example
    and mx.replaced.example signed by CA 1.  Default verify (tls_ca_file =
    CA 1): the right MX name is delivered, a wrong one deferred; a CA the
    certificate is not signed by (ca=) is deferred; match= names (any one of
    them; a leading dot for any name below) let another MX name pass, and
    replace the MX name (which then no longer passes); may and encrypt
    deliver over TLS without checking the certificate."""
    lab = Lab("tls-verify")
    peer = None
    try:
        ca1 = _ca(lab, "ca1")
        ca2 = _ca(lab, "ca2")
        leaf = _leaf(lab, "mx", ca1, ["DNS:mx.good.example", "DNS:mx.otherca.example", "DNS:mx.replaced.example"])
        peer = Peer(lab, "receiver", "--ext", "STARTTLS", "--tls", leaf[0], leaf[1])
        # Every destination has its own MX host name, so no connection is
        # shared between destinations with different policies.
        records = []
        for d in ("good", "wrong", "otherca", "replaced", "named", "dot", "may", "enc"):
            records += ["%s.example. 3600 IN MX 10 mx.%s.example." % (d, d), "mx.%s.example. 3600 IN A 127.0.0.1" % d]
        lab.dns(records)
        mport = free_port()
        lab.add_out(smtp_port=str(peer.port), tls_policy="verify", tls_ca_file=ca1[0],
                    tls_policy_domains="otherca.example:verify:ca=%s "
                                       "Named.Example:verify:match=mx.nomatch.example:match=MX.Good.Example "
                                       "dot.example:verify:match=.good.example "
                                       "replaced.example:verify:match=mx.elsewhere.example "
                                       "may.example:may enc.example:encrypt" % ca2[0],
                    retry_min="1h", retry_max="2h", metrics_listen="127.0.0.1:%d" % mport)
        lab.sections["global"]["log_level"] = "debug"
        lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
        lab.start("out", binary="rampart-out")

        for d in ("good", "wrong", "otherca", "replaced", "named", "dot", "may", "enc"):
            refused = send_mail(lab.ports["out"], "%s@example.test" % d, ["bob@%s.example" % d], message("to " + d))
            check(refused == {}, "refused: %r" % refused)

        check(_wait(lambda: len(peer.bodies()) >= 5), "5 delivered: %d; logs:\n%s" % (len(peer.bodies()), lab.all_logs()))
        check(_wait(lambda: _queue(lab).count("tries=1") == 3), "3 deferred: %s" % _queue(lab))
        time.sleep(0.5)
        check(len(peer.bodies()) == 5, "exactly 5 delivered: %d" % len(peer.bodies()))

        for d in ("good", "named", "dot", "may", "enc"):
            conns = peer.conns_for("bob@%s.example" % d)
            check(conns, "%s.example delivered" % d)
            for c in conns:
                check(peer.has(c, "tls"), "%s.example: connection %s used TLS" % (d, c))
        # SNI is the MX host name, not the address
        good = peer.conns_for("bob@good.example")[0]
        check(peer.has(good, "sni") and peer.read(good, "sni") == "mx.good.example",
              "SNI mx.good.example: %r" % (peer.read(good, "sni") if peer.has(good, "sni") else None))
        may = peer.conns_for("bob@may.example")[0]
        check(peer.read(may, "sni") == "mx.may.example", "SNI of may")

        # deferred, not bounced, nothing of them sent past the handshake
        for d in ("wrong", "otherca", "replaced"):
            check(peer.conns_for("bob@%s.example" % d) == [], "%s.example: no RCPT sent" % d)
        q = _queue(lab)
        check(q.strip().endswith("3 messages") and not re.search(r"^\S+\s+failed\s", q, re.M), "queued: %s" % q)
        wrong = _queue_line(q, "wrong@example.test")
        other = _queue_line(q, "otherca@example.test")
        check("454 4.7.5" in wrong and "mx.wrong.example[127.0.0.1]" in wrong and "hostname mismatch" in wrong,
              "wrong name: %s" % wrong)
        check("454 4.7.5" in other and "hostname mismatch" not in other and "certificate" in other,
              "not signed by the entry's CA: %s" % other)
        # match= names replace the MX host name (which the certificate has)
        replaced = _queue_line(q, "replaced@example.test")
        check("454 4.7.5" in replaced and "hostname mismatch" in replaced, "match= only: %s" % replaced)

        check(_has_event(lab, "tls.policy_failed", rcpt="bob@wrong.example", policy="verify", source="default",
                         reason="name_mismatch"), "failure logged with its reason (default policy): %s" % lab.log("out")[-3000:])
        check(_has_event(lab, "tls.policy_failed", rcpt="bob@otherca.example", policy="verify", source="domain",
                         entry="otherca.example", reason="certificate"), "failure logged (domain policy)")
        check(_has_event(lab, "tls.policy", domain="named.example", policy="verify", source="domain",
                         entry="named.example", ca=ca1[0], match=2), "policy of named.example logged")
        text = _metrics(mport)
        check('rampart_tls_policy_failures_total{stage="out",instance="out",level="verify",source="default",'
              'reason="name_mismatch"} 1' in text, "counted: %s" % text[-2000:])
        check('rampart_tls_policy_failures_total{stage="out",instance="out",level="verify",source="domain",'
              'reason="certificate"} 1' in text, "counted: %s" % text[-2000:])
    finally:
        if peer:
            peer.close()
        lab.close()


def test_encrypt_without_starttls_defers_and_none_overrides():
    """tls_policy = encrypt towards a receiver that does not offer STARTTLS:
    454 4.7.4, the message stays queued, and goes once its destination is
    given may (reload, flush); a destination with none is delivered in clear
    text meanwhile."""
    import signal

    lab = Lab("tls-encrypt")
    peer = None
    try:
        peer = Peer(lab, "plain")
        lab.dns(["notls.example. 3600 IN MX 10 mx.notls.example.", "mx.notls.example. 3600 IN A 127.0.0.1",
                 "plain.example. 3600 IN MX 10 mx.plain.example.", "mx.plain.example. 3600 IN A 127.0.0.1"])
        mport = free_port()
        lab.add_out(smtp_port=str(peer.port), tls_policy="encrypt", tls_policy_domains="plain.example:none",
                    retry_min="1h", retry_max="2h", metrics_listen="127.0.0.1:%d" % mport)
        lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
        lab.start("out", binary="rampart-out")

        send_mail(lab.ports["out"], "a@example.test", ["bob@notls.example"], message("needs tls"))
        send_mail(lab.ports["out"], "b@example.test", ["carol@plain.example"], message("no tls"))
        check(_wait(lambda: len(peer.bodies()) >= 1), "plain.example delivered; logs:\n%s" % lab.all_logs())
        check(_wait(lambda: "tries=1" in _queue(lab)), "deferred: %s" % _queue(lab))
        q = _queue(lab)
        line = _queue_line(q, "a@example.test")
        check(q.strip().endswith("1 messages") or q.strip().endswith("1 message"), "one queued: %s" % q)
        check("454 4.7.4" in line and "TLS required" in line and "not offered" in line, "4xx reason: %s" % line)
        check(peer.conns_for("bob@notls.example") == [], "nothing sent in clear text")
        check(peer.conns_for("carol@plain.example"), "none: delivered without TLS")
        text = _metrics(mport)
        check('rampart_tls_policy_failures_total{stage="out",instance="out",level="encrypt",source="default",'
              'reason="not_offered"} 1' in text, "counted: %s" % text[-1500:])
        check(_has_event(lab, "tls.policy_failed", rcpt="bob@notls.example", policy="encrypt", source="default",
                         reason="not_offered"), "logged: %s" % lab.log("out")[-2000:])

        # The administrator relents for that destination: reload, flush, delivered once.
        lab.sections["out"]["tls_policy_domains"] = "plain.example:none notls.example:may"
        lab.write_config()
        lab.procs["out"].send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check(lab.ctl("-n", "out", "queue", "flush").returncode == 0, "flush")
        check(_wait(lambda: len(peer.bodies()) >= 2), "delivered after the policy change: %s" % _queue(lab))
        check(_wait(lambda: _queue(lab).strip().endswith("0 messages")), "queue empty: %s" % _queue(lab))
    finally:
        if peer:
            peer.close()
        lab.close()


def test_smarthost_verify_by_address_and_bad_entries_stop_start_up():
    """smarthost_tls = verify checks the smarthost's certificate against
    tls_ca_file (here an IP address SAN); a bad tls_policy_domains entry
    stops config check and start-up with the entry and what was expected."""
    lab = Lab("tls-smarthost")
    peer = None
    try:
        ca = _ca(lab, "ca")
        leaf = _leaf(lab, "relay", ca, ["DNS:relay.example", "IP:127.0.0.1"])
        peer = Peer(lab, "relay", "--ext", "STARTTLS", "--tls", leaf[0], leaf[1])
        lab.add_out(next_hops="127.0.0.1:%d" % peer.port, smarthost_tls="verify", tls_ca_file=ca[0],
                    tls_policy_domains="example.net:none")   # not for the smarthost
        lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}

        lab.sections["out"]["tls_policy_domains"] = "example.net:none example.org:verify:match=*.example.org"
        lab.write_config()
        out = lab.ctl("config", "check")
        check(out.returncode != 0 and "[out] tls_policy_domains: 'example.org:verify:match=*.example.org'" in out.stderr
              and "expected DESTINATION:none|may|encrypt|verify" in out.stderr, "config check: %s" % out.stderr)
        p = lab.start("out", binary="rampart-out", wait=False)
        p.wait(20)
        lab.procs.pop("out", None)
        check(p.returncode != 0 and "tls_policy_domains: 'example.org:verify:match=*.example.org'" in lab.log("out"),
              "start-up refused: %s" % lab.log("out")[-1500:])

        lab.sections["out"]["tls_policy_domains"] = "example.net:none"
        lab.start("out", binary="rampart-out")
        send_mail(lab.ports["out"], "app@example.test", ["bob@example.net"], message("via verified smarthost"))
        check(_wait(lambda: len(peer.bodies()) >= 1), "delivered; logs:\n%s" % lab.all_logs())
        conn = peer.conns_for("bob@example.net")[0]
        check(peer.has(conn, "tls"), "over TLS")
        check(not peer.has(conn, "sni"), "no SNI for an address")
    finally:
        if peer:
            peer.close()
        lab.close()


def test_kept_connection_never_serves_a_stricter_policy():
    """a.example (may) and b.example (verify) share one MX whose certificate
    does not match its name.  One message to both: a.example is delivered;
    b.example's group must not ride on a.example's unverified connection
    kept for reuse, so it is deferred with the verify failure."""
    lab = Lab("tls-reuse")
    try:
        ca = _ca(lab, "ca")
        leaf = _leaf(lab, "mx", ca, ["DNS:mx.shared.example"])
        peer = Peer(lab, "r", "--ext", "STARTTLS", "--tls", leaf[0], leaf[1])
        try:
            lab.dns(["a.example. 3600 IN MX 10 mx.other.example.", "b.example. 3600 IN MX 10 mx.other.example.",
                     "mx.other.example. 3600 IN A 127.0.0.1"])
            lab.add_out(smtp_port=str(peer.port), tls_ca_file=ca[0],
                        tls_policy_domains="a.example:may b.example:verify",
                        next_idle_timeout="10s", retry_min="1h", retry_max="2h")
            lab.sections["check.relay"] = {"relay_networks": "127.0.0.0/8"}
            lab.start("out", binary="rampart-out")
            send_mail(lab.ports["out"], "s@example.test", ["x@a.example", "y@b.example"], message("reuse"))
            check(_wait(lambda: "4.7.5" in _queue(lab)), "b.example deferred: %s" % _queue(lab))
            check(len(peer.conns_for("x@a.example")) == 1, "a.example delivered")
            check(peer.conns_for("y@b.example") == [], "b.example never sent on a.example's connection")
            check("hostname mismatch" in _queue(lab), "the reason: %s" % _queue(lab))
        finally:
            peer.close()
    finally:
        lab.close()
