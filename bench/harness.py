"""What bench/memory.py and bench/soak.py share: `sluice dev` for a throwaway Postgres, a
`sluice serve` of their own in front of it, keys, a free port, the gateway's RSS, and stopping
what they started. Standard library only; everything listens on 127.0.0.1.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request


def rss_kb(pid):
    """The process's resident set (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def new_key(sluice):
    """A new API key and its `sha256:` hash for the config, from `sluice key`."""
    out = subprocess.run([sluice, "key"], capture_output=True, text=True, check=True).stdout
    key = next(l.split()[1] for l in out.splitlines() if l.startswith("key:"))
    key_hash = next(w.strip('"[]') for w in out.split() if w.strip('"[]').startswith("sha256:"))
    return key, key_hash


def free_port():
    """A port nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_dev(sluice, work):
    """`sluice dev --json` (its log in `work`): the process and its JSON line."""
    dev = subprocess.Popen([sluice, "dev", "--json", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                           stderr=open(os.path.join(work, "dev.log"), "w"), text=True)
    return dev, json.loads(dev.stdout.readline())


def serve(sluice, config, port, work, env=None):
    """`sluice serve --config config` (its log in `work`), once `/readyz` answers (or 10 s)."""
    gateway = subprocess.Popen([sluice, "serve", "--config", config], env=env,
                               stderr=open(os.path.join(work, "gateway.log"), "w"))
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    return gateway


def stop(process, timeout):
    """SIGTERM (a drain), then SIGKILL after `timeout` seconds; nothing if it has exited."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
