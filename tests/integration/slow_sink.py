#!/usr/bin/python3
"""tests/integration/slow_sink.py — an SMTP receiver for the tests that
takes its time over DATA and records, per recipient domain, how many
transactions were in DATA at once and when each message arrived.

    slow_sink.py --listen 127.0.0.1:PORT --state FILE [--delay SECONDS]

After every change it rewrites FILE (JSON, atomically):
    {"max": {domain: most at once}, "arrivals": {domain: [unix time, ...]},
     "messages": [raw message text, ...]}
Runs on Debian's python3 with python3-aiosmtpd."""

import argparse
import asyncio
import json
import os
import signal
import time

from aiosmtpd.controller import Controller


class Slow:
    def __init__(self, state, delay):
        self.state, self.delay = state, delay
        self.now = {}
        self.max = {}
        self.arrivals = {}
        self.messages = []

    def save(self):
        tmp = self.state + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"max": self.max, "arrivals": self.arrivals, "messages": self.messages}, f)
        os.rename(tmp, self.state)

    async def handle_DATA(self, server, session, envelope):
        doms = sorted({r.rsplit("@", 1)[-1].lower() for r in envelope.rcpt_tos})
        for d in doms:
            self.now[d] = self.now.get(d, 0) + 1
            self.max[d] = max(self.max.get(d, 0), self.now[d])
        self.save()
        await asyncio.sleep(self.delay)
        for d in doms:
            self.now[d] -= 1
            self.arrivals.setdefault(d, []).append(time.time())
        self.messages.append((envelope.original_content or envelope.content).decode("utf-8", "replace"))
        self.save()
        return "250 2.0.0 Accepted, slowly"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--delay", type=float, default=0.5)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    h = Slow(a.state, a.delay)
    h.save()
    ctl = Controller(h, hostname=host, port=int(port), decode_data=False, server_hostname="slow.lab")
    ctl.start()
    loop = asyncio.new_event_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, loop.stop)
    loop.run_forever()
    ctl.stop()


if __name__ == "__main__":
    main()
