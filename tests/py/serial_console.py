"""A user's websocket client on a serial console URL (what `openstack
console url show --serial` gives), driven by tests/it/console.rs.

usage: serial_console.py URL
Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"send": TEXT}                    types TEXT           -> {"ok": true}
  {"expect": TEXT, "timeout": S}    reads until TEXT has appeared in the
                                    output since the last expect
                                    -> {"ok": true|false, "output": ...}
  {"closed": S}                     waits up to S seconds for the proxy to
                                    close the connection -> {"ok": true|false}
Connecting failing prints {"ok": false, "error": ...} and exits 1.
Runs with any Python that has websocket-client (Debian's python3-websocket).
"""
import json
import sys
import time

import websocket


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    url = sys.argv[1]
    try:
        # nova-serialproxy (websockify) speaks the 'binary' subprotocol
        ws = websocket.create_connection(url, timeout=30, subprotocols=["binary"])
    except Exception as e:  # noqa: BLE001 -- reported to the test
        say({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
        return 1
    say({"ok": True, "connected": True})
    seen = b""
    closed = False
    for line in sys.stdin:
        cmd = json.loads(line)
        if "send" in cmd:
            try:
                ws.send_binary(cmd["send"].encode())
                say({"ok": True})
            except Exception as e:  # noqa: BLE001
                say({"ok": False, "error": str(e)})
        elif "expect" in cmd:
            want = cmd["expect"].encode()
            deadline = time.monotonic() + cmd.get("timeout", 30)
            while want not in seen and not closed and time.monotonic() < deadline:
                ws.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    op, data = ws.recv_data(control_frame=False)
                except websocket.WebSocketTimeoutException:
                    break
                except Exception:  # noqa: BLE001 -- closed
                    closed = True
                    break
                if op == websocket.ABNF.OPCODE_CLOSE or (op == 0 and not data):
                    closed = True
                    break
                seen += data
            ok = want in seen
            say({"ok": ok, "output": seen.decode(errors="replace"), "closed": closed})
            if ok:
                seen = seen[seen.index(want) + len(want):]
        elif "closed" in cmd:
            deadline = time.monotonic() + cmd["closed"]
            while not closed and time.monotonic() < deadline:
                ws.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    op, data = ws.recv_data(control_frame=False)
                except websocket.WebSocketTimeoutException:
                    break
                except Exception:  # noqa: BLE001
                    closed = True
                    break
                if op == websocket.ABNF.OPCODE_CLOSE:
                    closed = True
                seen += data or b""
            say({"ok": closed, "output": seen.decode(errors="replace")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
