#!/usr/bin/python3
"""dkim_verify.py — verify every DKIM-Signature of a message with
python3-dkim (Debian's python3-dkim), independently of libopendkim.

    /usr/bin/python3 dkim_verify.py KEYS MESSAGE

KEYS holds the public keys instead of the DNS, one record a line:
"SELECTOR._domainkey.DOMAIN TXT-DATA" (what `rampartctl dkim keygen
--txt-only` prints).  One line per signature, in header order:

    sig IDX a=ALGORITHM d=DOMAIN s=SELECTOR pass|fail [reason]

then "signatures N".  Exit status 0 when every signature passed, 1 when one
failed or there was none, 2 on a usage or input error.
"""
import re
import sys

try:
    import dkim
except ImportError as e:  # the Debian package python3-dkim, for /usr/bin/python3
    print("error: python3-dkim is missing (%s): apt-get install python3-dkim" % e, file=sys.stderr)
    sys.exit(2)


def load_keys(path):
    keys = {}
    with open(path, encoding="ascii") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, txt = line.partition(" ")
            if not sep:
                raise ValueError("%s:%d: expected NAME TXT-DATA" % (path, n))
            keys[name.rstrip(".").lower()] = txt.strip().encode("ascii")
    return keys


def tag(sig, name):
    m = re.search(rb"(?:^|;)\s*" + name + rb"\s*=\s*([^;]*)", sig)
    return re.sub(rb"\s+", b"", m.group(1)).decode("ascii", "replace") if m else "?"


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    try:
        keys = load_keys(argv[1])
        with open(argv[2], "rb") as f:
            msg = f.read()
    except (OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return keys.get(name.rstrip(".").lower())

    d = dkim.DKIM(msg)
    headers = [v for (k, v) in dkim.rfc822_parse(msg)[0] if k.lower() == b"dkim-signature"]
    ok = len(headers) > 0
    for idx, sig in enumerate(headers):
        reason = ""
        try:
            good = d.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DKIMException as e:
            good, reason = False, str(e)
        ok = ok and good
        print("sig %d a=%s d=%s s=%s %s%s" % (idx, tag(sig, b"a"), tag(sig, b"d"), tag(sig, b"s"),
                                             "pass" if good else "fail",
                                             (" " + reason) if reason else ""))
    print("signatures %d" % len(headers))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
