"""The SMTP engine against bad input: every case gets the right reply and
the session goes on (or ends cleanly), and nothing is half-delivered."""

import os
import re
import socket
import ssl
import subprocess
import time

from lib import Lab, Raw, check, message


def _lab(**mx):
    lab = Lab("proto")
    lab.add_store()
    lab.start("store")
    lab.add_mx(**mx)
    lab.start("mx")
    return lab


def _start_txn(r):
    r.cmd("EHLO client.example.org")
    check(r.cmd("MAIL FROM:<s@example.org>")[0] == 250, "MAIL")
    check(r.cmd("RCPT TO:<alice@example.test>")[0] == 250, "RCPT")
    check(r.cmd("DATA")[0] == 354, "DATA")


def test_overlong_line_then_session_continues():
    lab = _lab()
    try:
        r = Raw(lab.ports["mx"])
        code, text, _ = r.cmd("EHLO " + "a" * 5000)
        check(code == 500 and text.startswith("5.5.2"), "over-long line: %d %s" % (code, text))
        check(r.cmd("EHLO client.example.org")[0] == 250, "session must go on")
        # A line longer than what the server buffers at once, without LF yet.
        r.send("NOOP " + "b" * 300000)
        time.sleep(0.2)
        r.send("\r\n")
        code, _, _ = r.reply()
        check(code == 500, "huge line: %d" % code)
        check(r.cmd("NOOP")[0] == 250, "still usable")
        r.cmd("QUIT")
    finally:
        lab.close()


def test_unknown_commands_limit_then_disconnect():
    lab = _lab(max_errors="3")
    try:
        r = Raw(lab.ports["mx"])
        check(r.cmd("FOO")[0] == 500, "unknown command")
        check(r.cmd("BAR baz")[0] == 500, "unknown command 2")
        code, _, lines = r.cmd("QUUX")
        # The third error gets its 500 then the 421.
        check(code == 500, "third: %d" % code)
        code, text, _ = r.reply()
        check(code == 421, "then 421: %d %s" % (code, text))
        check(r.closed(), "connection must be closed")
    finally:
        lab.close()


def test_out_of_order_commands():
    lab = _lab()
    try:
        r = Raw(lab.ports["mx"])
        code, text, _ = r.cmd("MAIL FROM:<s@example.org>")
        check(code == 503 and text.startswith("5.5.1"), "MAIL before EHLO: %d %s" % (code, text))
        r.cmd("EHLO client.example.org")
        check(r.cmd("RCPT TO:<alice@example.test>")[0] == 503, "RCPT before MAIL")
        check(r.cmd("DATA")[0] == 503, "DATA before MAIL")
        r.cmd("MAIL FROM:<s@example.org>")
        check(r.cmd("MAIL FROM:<s@example.org>")[0] == 503, "nested MAIL")
        check(r.cmd("DATA")[0] == 503, "DATA before RCPT")
        check(r.cmd("RCPT TO:<nobody@example.test>")[0] == 550, "unknown")
        code, text, _ = r.cmd("DATA")
        check(code == 554 and "no valid recipients" in text, "DATA with only rejected RCPTs: %d %s" % (code, text))
        check(r.cmd("RSET")[0] == 250, "RSET")
        check(r.cmd("DATA extra")[0] == 501, "DATA takes no argument")
        check(r.cmd("GET / HTTP/1.0")[0] == 521, "HTTP command")
        check(r.closed(), "closed after HTTP command")
    finally:
        lab.close()


def test_malformed_addresses():
    lab = _lab(max_errors="50")
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        for bad in ("MAIL FROM:s@example.org", "MAIL FROM:<s@example.org", "MAIL FROM:<s@@example.org>",
                    "MAIL FROM:<s@example.org> BOGUS", "MAIL FROM:<" + "l" * 65 + "@example.org>",
                    "MAIL FROM:<postmaster>", "MAIL FROM:<a b@example.org>"):
            code, text, _ = r.cmd(bad)
            check(code in (501, 553, 555), "%r: %d %s" % (bad, code, text))
        check(r.cmd("MAIL FROM:<>")[0] == 250, "null sender is fine")
        for bad in ("RCPT TO:<>", "RCPT TO:alice@example.test", "RCPT TO:<alice@example..test>",
                    "RCPT TO:<\u00e9l\u00e8ve@example.test>"):
            code, text, _ = r.cmd(bad)
            check(code in (501, 553), "%r: %d %s" % (bad, code, text))
        check(r.cmd("RCPT TO:<alice@example.test>")[0] == 250, "good RCPT after bad ones")
        # With SMTPUTF8, UTF-8 addresses are fine (RFC 6531).
        check(r.cmd("RSET")[0] == 250, "RSET")
        code, text, _ = r.cmd("MAIL FROM:<\u00e9l\u00e8ve@\u00e9cole.example> SMTPUTF8")
        check(code == 250, "UTF-8 sender with SMTPUTF8: %d %s" % (code, text))
        check(r.cmd("RCPT TO:<alice@example.test>")[0] == 250, "RCPT in an SMTPUTF8 transaction")
        r.cmd("QUIT")
    finally:
        lab.close()


def test_nul_byte_in_command():
    lab = _lab()
    try:
        r = Raw(lab.ports["mx"])
        r.send(b"EHLO cl\x00ient\r\n")
        code, text, _ = r.reply()
        check(code == 500 and "NUL" in text, "NUL: %d %s" % (code, text))
        check(r.cmd("EHLO client.example.org")[0] == 250, "session continues")
        r.cmd("QUIT")
    finally:
        lab.close()


def test_pregreet_talker_refused():
    lab = _lab(greet_pause="700ms")
    try:
        r = Raw(lab.ports["mx"], greet=False)
        r.send("EHLO impatient.example.org\r\n")
        code, text, _ = r.reply()
        check(code == 554, "pregreet: %d %s" % (code, text))
        check(r.closed(), "pregreet talker disconnected")
        # A patient client is greeted after the pause.
        t0 = time.time()
        r = Raw(lab.ports["mx"])
        check(r.banner[0] == 220 and time.time() - t0 >= 0.6, "banner after the pause")
        r.cmd("QUIT")
    finally:
        lab.close()


def test_bare_lf_and_bare_cr_rejected_no_smuggling():
    lab = _lab()
    try:
        for name, payload in (
            ("bare LF", "Subject: a\r\n\r\nline one\nline two\r\n"),
            ("bare CR", "Subject: b\r\n\r\nline one\rline two\r\n"),
            # The classic smuggling payload: a "\n.\n" that some servers
            # take as the end, followed by a second, forged transaction.
            ("smuggle", "Subject: c\r\n\r\nhi\n.\nMAIL FROM:<evil@example.org>\nRCPT TO:<bob@example.test>\nDATA\nSubject: smuggled\n\nx\n.\r\n"),
            ("smuggle CR", "Subject: d\r\n\r\nhi\r.\rMAIL FROM:<evil@example.org>\r\n"),
        ):
            r = Raw(lab.ports["mx"])
            _start_txn(r)
            r.send(payload + ".\r\n")
            code, text, _ = r.reply()
            check(code == 550 and text.startswith("5.5.2"), "%s: %d %s" % (name, code, text))
            check(r.cmd("NOOP")[0] == 250, "%s: session continues" % name)
            r.cmd("QUIT")
        time.sleep(1)
        check(lab.maildir("alice") == [] and lab.maildir("bob") == [], "nothing may be delivered")
        # "\r\n.\r\n" inside a dot-stuffed line is data, and ".." unstuffs.
        r = Raw(lab.ports["mx"])
        _start_txn(r)
        r.send("Subject: e\r\n\r\n..\r\n.. not the end\r\n.\r\n")
        check(r.reply()[0] == 250, "proper message")
        r.cmd("QUIT")
        m = lab.wait_mail("alice", 1)[0]
        check(m.endswith(b"\n\n.\n. not the end\n"), "dot unstuffing: %r" % m[-60:])
    finally:
        lab.close()


def test_client_vanishes_mid_data_nothing_delivered():
    lab = _lab()
    try:
        r = Raw(lab.ports["mx"])
        _start_txn(r)
        r.send("Subject: half\r\n\r\nsome text\r\n")
        r.close()
        time.sleep(1.5)
        check(lab.maildir("alice") == [], "half a message was delivered")
        check(lab.ctl("queue", "list").stdout.strip().endswith("0 messages"), "half a message was queued")
        # Same in proxy mode.
        lab2 = Lab("proto-proxy")
        lab2.add_store()
        lab2.start("store")
        lab2.add_mx(mode="proxy")
        lab2.start("mx")
        try:
            r = Raw(lab2.ports["mx"])
            _start_txn(r)
            r.send("Subject: half\r\n\r\nsome text\r\n")
            r.close()
            time.sleep(1.5)
            check(lab2.maildir("alice") == [], "proxy: half a message was delivered")
        finally:
            lab2.close()
    finally:
        lab.close()


def test_starttls_and_plaintext_injection_discarded():
    lab = Lab("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=mx.example.test", "-keyout", lab.path("key.pem"), "-out", lab.path("cert.pem")],
                   check=True, capture_output=True)
    lab.add_store()
    lab.start("store")
    lab.add_mx(tls_cert=lab.path("cert.pem"), tls_key=lab.path("key.pem"))
    lab.start("mx")
    try:
        r = Raw(lab.ports["mx"])
        code, _, lines = r.cmd("EHLO client.example.org")
        check(any(ln[4:] == "STARTTLS" for ln in lines), "STARTTLS offered")
        # Pipelined plaintext after STARTTLS must be discarded (CVE-2011-0411 class).
        r.send("STARTTLS\r\nRSET\r\n")
        code, text, _ = r.reply()
        check(code == 220, "STARTTLS: %d %s" % (code, text))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        tls = ctx.wrap_socket(r.s, server_hostname="mx.example.test")
        check(tls.version() in ("TLSv1.2", "TLSv1.3"), "TLS version %s" % tls.version())
        tls.sendall(b"EHLO client.example.org\r\n")
        data = b""
        while not data.endswith(b"\r\n") or b"250 " not in data:
            data += tls.recv(4096)
        check(data.startswith(b"250"), "first reply over TLS must answer EHLO, not the injected RSET: %r" % data)
        check(b"STARTTLS" not in data, "STARTTLS not offered again")
        tls.sendall(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        data = b""
        while data.count(b"\r\n") < 3:
            data += tls.recv(4096)
        check(data.split(b"\r\n")[2].startswith(b"354"), "pipelined over TLS: %r" % data)
        tls.sendall(message("tls").encode() + b".\r\n")
        data = tls.recv(4096)
        check(data.startswith(b"250"), "queued over TLS: %r" % data)
        tls.sendall(b"QUIT\r\n")
        m = lab.wait_mail("alice", 1)[0]
        check(b"with ESMTPS" in m and b"TLSv1." in m, "Received must show TLS: %r" % m[:600])
        # An old protocol is refused.
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        check(r.cmd("STARTTLS")[0] == 220, "STARTTLS")
        try:
            old.wrap_socket(r.s, server_hostname="mx.example.test")
            check(False, "TLS 1.1 handshake must fail")
        except (ssl.SSLError, OSError):
            pass
    finally:
        lab.close()


def test_timeout_gives_421():
    lab = _lab(command_timeout="1s")
    try:
        r = Raw(lab.ports["mx"])
        t0 = time.time()
        code, text, _ = r.reply()
        check(code == 421 and text.startswith("4.4.2"), "idle client: %d %s" % (code, text))
        check(r.closed() and time.time() - t0 < 5, "closed after the deadline")
    finally:
        lab.close()


def test_message_bounds_lines_and_headers():
    lab = _lab(max_line_length="2000", max_headers="20", max_header_size="1k")
    try:
        for name, payload, code, enh in (
            ("long line", "Subject: a\r\n\r\n" + "x" * 3000 + "\r\n", 554, "5.6.0"),
            ("many headers", "".join("X-H%d: v\r\n" % i for i in range(25)) + "\r\nbody\r\n", 552, "5.3.4"),
            ("big header", "Subject: " + "y" * 600 + "\r\n " + "z" * 600 + "\r\n\r\nbody\r\n", 552, "5.3.4"),
        ):
            r = Raw(lab.ports["mx"])
            _start_txn(r)
            r.send(payload + ".\r\n")
            c, text, _ = r.reply()
            check(c == code and text.startswith(enh), "%s: %d %s" % (name, c, text))
            check(r.cmd("NOOP")[0] == 250, "%s: session continues" % name)
            r.cmd("QUIT")
        # Just under every bound passes.
        r = Raw(lab.ports["mx"])
        _start_txn(r)
        r.send("".join("X-H%d: v\r\n" % i for i in range(19)) + "Subject: ok\r\n\r\n" + "w" * 1990 + "\r\n.\r\n")
        check(r.reply()[0] == 250, "within bounds")
        r.cmd("QUIT")
        lab.wait_mail("alice", 1)
    finally:
        lab.close()


def test_half_close_still_gets_its_reply():
    lab = _lab()
    try:
        r = Raw(lab.ports["mx"])
        r.cmd("EHLO client.example.org")
        r.send("MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        check([r.reply()[0] for _ in range(3)] == [250, 250, 354], "transaction")
        r.send(message("half close") + ".\r\nQUIT\r\n")
        r.s.shutdown(socket.SHUT_WR)
        code, text, _ = r.reply()
        check(code == 250 and "queued" in text, "the message's reply after a half-close: %d %s" % (code, text))
        check(r.reply()[0] == 221, "QUIT answered")
        check(r.closed(), "then closed")
        lab.wait_mail("alice", 1)
    finally:
        lab.close()


def test_client_not_reading_is_not_served_without_bound():
    lab = _lab()
    try:
        s = socket.create_connection(("127.0.0.1", lab.ports["mx"]))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        chunk = b"NOOP\r\n" * 10000
        sent = 0
        try:
            for _ in range(400):        # up to 24 MB of NOOPs, never reading a reply
                sent += s.send(chunk)
        except (socket.timeout, BlockingIOError):
            pass
        pid = lab.procs["mx"].pid
        with open("/proc/%d/status" % pid) as f:
            rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        check(sent < 24 * 1000 * 1000, "the server must stop reading from a client that does not read (sent %d)" % sent)
        check(rss < 200 * 1024, "resident memory bounded: %d kB" % rss)
        s.close()
    finally:
        lab.close()
