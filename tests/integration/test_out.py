"""The outgoing stage (F): delivery by MX through the resolver, null MX,
smarthost lists, and delivery status notifications to the sender."""

import email
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
