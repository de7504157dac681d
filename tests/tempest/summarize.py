"""Summarizes a tempest (stestr) subunit v2 stream for tests/tempest/run.sh.

Usage: summarize.py RESULTS.subunit FAILURES.txt [SELECTED.txt]

Prints the passed, skipped and failed counts, the skip reasons grouped with
the tests they hit, and for each failure its id, the requests it made that
ocellus answered with an error status, and the end of its traceback (the last request when none was refused). The whole
traceback and captured log of every failure go to FAILURES.txt. The last line
is `tempest: N passed, N failed, N skipped`. Exits 1 if a test failed (or
none ran), else 0.

A class whose setUpClass skipped or failed is reported by stestr as one test,
`setUpClass (module.Class)`: it counts once, and its tests do not appear;
with SELECTED.txt (the ids `tempest run --list-tests` selected), how many
tests each such class holds is shown beside it.
"""

import collections
import re
import sys

import subunit
import testtools

# tempest.lib.common.rest_client logs one line per request at INFO:
#   Request (ImagesTest:test_x): 404 GET http://127.0.0.1:PORT/v2/... 0.003s
REQUEST_LINE = re.compile(r"Request \(([^)]*)\): (\d{3}) (\w+) (\S+)")


def read_tests(path):
    tests = []
    with open(path, "rb") as stream:
        case = subunit.ByteStreamToStreamResult(stream, non_subunit_name="stdout")
        result = testtools.StreamToDict(tests.append)
        result.startTestRun()
        try:
            case.run(result)
        finally:
            result.stopTestRun()
    return [t for t in tests if t["status"] not in ("exists", "inprogress")]


def text(test, name):
    # the captured log is named "pythonlogging:''" (the logger's name)
    content = test["details"].get(name)
    if content is None:
        content = next(
            (v for k, v in test["details"].items() if k.split(":")[0] == name), None
        )
    if content is None:
        return ""
    try:
        return content.as_text()
    except Exception:  # noqa: BLE001 - a detail that is not text is skipped
        return ""


def short_id(test_id):
    # Drop the idempotent id and tags tempest appends: name[id-...,smoke]
    return re.sub(r"\[[^\]]*\]$", "", test_id)


def traceback_tail(traceback, lines=8):
    """The exception part of a traceback: what follows its last frame."""
    all_lines = traceback.rstrip().splitlines()
    last_frame = 0
    for i, line in enumerate(all_lines):
        if line.startswith("  File "):
            last_frame = i
    # the frame line and its source line, then the exception
    tail = all_lines[last_frame + 2:] or all_lines[-lines:]
    # Python 3.11 marks the failing expression with a line of carets
    tail = [line for line in tail if line.strip(" ^~")]
    if len(tail) > lines:
        tail = tail[:lines] + ["    [...]"]
    return tail


CLASS_ENTRY = re.compile(r"^(setUpClass|tearDownClass) \((.*)\)$")


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    tests = read_tests(sys.argv[1])
    selected = []
    if len(sys.argv) == 4:
        with open(sys.argv[3], encoding="utf-8") as listing:
            selected = [
                line.strip() for line in listing
                if re.match(r"^[A-Za-z_][\w.]*\.\w+(\[.*\])?$", line.strip())
            ]

    def label(test_id):
        match = CLASS_ENTRY.match(test_id)
        if not match or not selected:
            return short_id(test_id)
        prefix = match.group(2) + "."
        count = sum(1 for t in selected if t.startswith(prefix))
        return f"{test_id}: {count} test{'s' if count != 1 else ''}"

    by_status = collections.defaultdict(list)
    for test in tests:
        status = test["status"]
        if status in ("success", "xfail"):
            by_status["passed"].append(test)
        elif status == "skip":
            by_status["skipped"].append(test)
        else:  # fail, uxsuccess
            by_status["failed"].append(test)
    passed, skipped, failed = (by_status[k] for k in ("passed", "skipped", "failed"))

    print()
    print("==== tempest results ====")
    print(f"passed:  {len(passed)}")
    print(f"skipped: {len(skipped)}")
    print(f"failed:  {len(failed)}")
    if selected:
        print(f"(of {len(selected)} selected tests; a setUpClass entry stands "
              "for all the tests of its class)")

    if skipped:
        print()
        print("---- skip reasons ----")
        reasons = collections.defaultdict(list)
        for test in skipped:
            reason = text(test, "reason").strip() or "(no reason given)"
            reasons[reason].append(label(test["id"]))
        for reason, ids in sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            print(f"[{len(ids)}] {reason}")
            for test_id in sorted(ids):
                print(f"      {test_id}")

    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for test in sorted(failed, key=lambda t: t["id"]):
            out.write("=" * 78 + "\n")
            out.write(f"FAIL: {test['id']}\n")
            out.write("-" * 78 + "\n")
            out.write(text(test, "traceback"))
            log = text(test, "pythonlogging")
            if log:
                out.write("\n---- captured log ----\n")
                out.write(log)
            out.write("\n")

    if failed:
        print()
        print("---- failures (full tracebacks and logs in "
              f"{sys.argv[2]}) ----")
        for test in sorted(failed, key=lambda t: t["id"]):
            print(f"FAIL {label(test['id'])}")
            # the requests ocellus refused, else the last one made
            requests = list(REQUEST_LINE.finditer(text(test, "pythonlogging")))
            shown = [m for m in requests if int(m.group(2)) >= 400][-3:] or requests[-1:]
            for m in shown:
                url = re.sub(r"^https?://[^/]+", "", m.group(4))
                print(f"    request: {m.group(3)} {url} -> {m.group(2)}")
            for line in traceback_tail(text(test, "traceback")):
                print(f"    {line}")

    print()
    print(f"tempest: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed or not tests else 0


if __name__ == "__main__":
    sys.exit(main())
