"""The dkim check in the MX stage over real sessions: keys made by
rampartctl dkim keygen and published in the lab's DNS local data (with an
SPF record), messages signed by python3-dkim (RSA and ed25519), sent with
XCLIENT from the documentation network (192.0.2.0/24).  What lands in the
store's Maildir carries one Authentication-Results header, read back with
python3-authres (Debian's python3-authres, for /usr/bin/python3)."""

import base64
import os
import re
import smtplib
import subprocess

import authres
import dkim

from lib import BUILD, Lab, check, message

SPF = ['example.org. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"']


def _keygen(lab, domain, sel, ed25519=False):
    """Make a key; its zone line for the lab's DNS and its private key file."""
    args = [os.path.join(BUILD, "rampartctl"), "dkim", "keygen", domain, sel, "--dir", lab.dir]
    if ed25519:
        args.append("--ed25519")
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    rec = [ln for ln in out.splitlines() if " IN TXT " in ln]
    check(len(rec) == 1, "keygen printed %r" % out)
    return rec[0].replace(". IN TXT ", ". 300 IN TXT ", 1), lab.path("%s._domainkey.%s.key" % (sel, domain))


def _ed25519_seed(path):
    """python3-dkim wants the 32-byte seed of an ed25519 key, base64."""
    der = subprocess.run(["openssl", "pkey", "-in", path, "-outform", "DER"], capture_output=True,
                         timeout=30, check=True).stdout
    return base64.b64encode(der[-32:])


def _sign(msg, rsa_key, ed_seed):
    hdrs = [b"from", b"to", b"subject", b"message-id"]
    sig_rsa = dkim.sign(msg, b"rsa1", b"example.org", open(rsa_key, "rb").read(), include_headers=hdrs)
    sig_ed = dkim.sign(msg, b"ed1", b"example.org", ed_seed, signature_algorithm=b"ed25519-sha256",
                       include_headers=hdrs)
    return sig_rsa + sig_ed + msg


def _session(lab, addr, helo="client.example.org"):
    c = smtplib.SMTP("127.0.0.1", lab.ports["mx"], local_hostname="test.example", timeout=30)
    c.ehlo()
    code, text = c.docmd("XCLIENT", "ADDR=%s NAME=[UNAVAILABLE] HELO=%s" % (addr, helo))
    check(code == 220, "XCLIENT: %d %s" % (code, text))
    c.ehlo(helo)
    return c


def _auth_results(raw):
    """The Authentication-Results fields of a stored message, unfolded, in order."""
    head = re.split(rb"\r?\n\r?\n", raw, 1)[0].decode("ascii", "replace")
    fields = re.split(r"\r?\n(?![ \t])", head)
    return [re.sub(r"\r?\n[ \t]", " ", f) for f in fields if f.lower().startswith("authentication-results:")]


def _results(field):
    h = authres.AuthenticationResultsHeader.parse(field)
    out = []
    for r in h.results:
        props = dict(("%s.%s" % (p.type, p.name), p.value) for p in r.properties)
        out.append((r.method, r.result, props))
    return h.authserv_id, out


def test_dkim_in_the_mx_stage():
    lab = Lab("dkim")
    rsa_rec, rsa_key = _keygen(lab, "example.org", "rsa1")
    ed_rec, ed_key = _keygen(lab, "example.org", "ed1", ed25519=True)
    lab.dns(SPF + [rsa_rec, ed_rec])
    lab.add_store()
    lab.add_mx(checks="spf dkim relay limits users", xclient_hosts="127.0.0.1/32")
    lab.start("store")
    lab.start("mx")
    try:
        ed_seed = _ed25519_seed(ed_key)
        # dual signed, SPF pass: one header, spf=pass and two dkim=pass
        msg = _sign(message("signed").encode(), rsa_key, ed_seed)
        with _session(lab, "192.0.2.7") as c:
            c.sendmail("alice@example.org", ["alice@example.test"], msg)
        got = lab.wait_mail("alice", 1)[0]
        ar = _auth_results(got)
        check(len(ar) == 1, "one Authentication-Results: %r" % ar)
        ident, res = _results(ar[0])
        check(ident == "mx.example.test", "authserv-id %r" % ident)
        check(res[0] == ("spf", "pass", {"smtp.mailfrom": "example.org"}), "spf: %r" % (res,))
        dk = [r for r in res if r[0] == "dkim"]
        check(len(dk) == 2 and all(r[1] == "pass" for r in dk), "dkim: %r" % (res,))
        check(sorted((r[2]["header.s"], r[2]["header.a"]) for r in dk) ==
              [("ed1", "ed25519-sha256"), ("rsa1", "rsa-sha256")], "signatures: %r" % (dk,))
        check(all(r[2]["header.d"] == "example.org" and len(r[2]["header.b"]) == 8 for r in dk),
              "properties: %r" % (dk,))
        # header.b is the start of that signature's b=
        bvals = [re.sub(rb"\s", b"", m).decode() for m in re.findall(rb"[;\s]b=([^;]*)", msg)]
        check(all(any(b.startswith(r[2]["header.b"]) for b in bvals) for r in dk), "header.b: %r" % (dk,))
        # ours is above the message (after Received and Received-SPF)
        check(got.index(b"Received-SPF:") < got.index(b"Authentication-Results:") < got.index(b"DKIM-Signature:"),
              "order: %r" % got[:1500])

        # the body changed on the way: delivered (results only inform), dkim=fail
        bad = _sign(message("tampered", body="Pay 10 EUR.\r\n").encode(), rsa_key, ed_seed).replace(b"10 EUR", b"99 EUR")
        with _session(lab, "192.0.2.8") as c:
            c.sendmail("alice@example.org", ["bob@example.test"], bad)
        got = lab.wait_mail("bob", 1)[0]
        ar = _auth_results(got)
        _, res = _results(ar[0])
        check([r[1] for r in res] == ["pass", "fail", "fail"], "tampered: %r" % (res,))

        # unsigned, from a client SPF does not allow; two Authentication-Results
        # claim our name (one folded, in capitals): both are removed
        # (RFC 8601 5), another host's stays, below ours
        forged = message("unsigned", extra="Authentication-Results: mx.example.test; dkim=pass header.d=example.org\r\n"
                         "Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=example.net\r\n"
                         "Authentication-Results:\r\n MX.EXAMPLE.TEST; spf=pass smtp.mailfrom=example.net\r\n")
        with _session(lab, "203.0.113.5") as c:
            c.sendmail("carol@example.net", ["postmaster@example.test"], forged)
        got = lab.wait_mail("postmaster", 1)[0]
        ar = _auth_results(got)
        check(len(ar) == 2, "ours and relay.example.net's: %r" % ar)
        ident, res = _results(ar[0])
        check(ident == "mx.example.test", "ours first: %r" % ar)
        check(res == [("spf", "none", {"smtp.mailfrom": "example.net"}), ("dkim", "none", {})], "unsigned: %r" % (res,))
        check(_results(ar[1])[0] == "relay.example.net", "the other host's kept: %r" % ar)
        check(b"dkim=pass" not in got and b"MX.EXAMPLE.TEST" not in got, "forged fields gone: %r" % got[:2000])
        check(got.endswith(b"\n\n" + forged.encode().split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")), "body intact: %r" % got[-200:])

        log = lab.log("mx")
        check('"event":"dkim.result","result":"pass","signatures":2' in log, "result logged")
        check('"event":"dkim.forged_authentication_results","count":2' in log and '"removed":"yes"' in log,
              "forgery logged")
    finally:
        lab.close()


def test_dkim_reject_fail():
    lab = Lab("dkimrej")
    rsa_rec, rsa_key = _keygen(lab, "example.org", "rsa1")
    ed_rec, ed_key = _keygen(lab, "example.org", "ed1", ed25519=True)
    lab.dns(SPF + [rsa_rec, ed_rec])
    lab.add_store()
    lab.add_mx(checks="spf dkim relay limits users", xclient_hosts="127.0.0.1/32")
    lab.sections["check.dkim"] = {"reject_fail": "yes"}
    lab.start("store")
    lab.start("mx")
    try:
        ed_seed = _ed25519_seed(ed_key)
        bad = _sign(message("forged", body="Pay 10 EUR.\r\n").encode(), rsa_key, ed_seed).replace(b"10 EUR", b"99 EUR")
        with _session(lab, "192.0.2.7") as c:
            c.mail("alice@example.org")
            c.rcpt("alice@example.test")
            code, text = c.data(bad)
            text = text.decode(errors="replace")
            check(code == 550 and "5.7.20" in text and "No passing DKIM signature found" in text,
                  "reject: %d %s" % (code, text))
        good = _sign(message("good").encode(), rsa_key, ed_seed)
        with _session(lab, "192.0.2.7") as c:
            c.sendmail("alice@example.org", ["alice@example.test"], good)
        got = lab.wait_mail("alice", 1)
        check(len(got) == 1 and b"Subject: good" in got[0], "only the good one: %r" % got)
    finally:
        lab.close()
