"""Runs every test_* function of every test_*.py module here, each in
turn, and prints one line per test and a final 'RESULT passed failed'.
Usage: run.py [NAME-SUBSTRING ...]"""

import importlib
import os
import sys
import time
import traceback

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)


def main():
    want = sys.argv[1:]
    passed = failed = 0
    for fn in sorted(os.listdir(here)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        mod = importlib.import_module(fn[:-3])
        for name in sorted(n for n in dir(mod) if n.startswith("test_")):
            full = "%s.%s" % (fn[:-3], name)
            if want and not any(w in full for w in want):
                continue
            t0 = time.time()
            try:
                getattr(mod, name)()
                passed += 1
                print("PASS %s (%.1fs)" % (full, time.time() - t0), flush=True)
            except Exception:
                failed += 1
                print("FAIL %s (%.1fs)\n%s" % (full, time.time() - t0, traceback.format_exc()), flush=True)
    print("integration: %d passed, %d failed" % (passed, failed))
    print("RESULT %d %d" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
