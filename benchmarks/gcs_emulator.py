"""A gcp-storage-emulator server on a free loopback port, for the tests and `make bench`:
Beam's gs:// filesystem and google-cloud-storage honour STORAGE_EMULATOR_HOST=its url."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

_REQUEST_LINE = re.compile(r'^"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>[0-9]+) ')


def free_port():
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, server, timeout_s):
    """Returns once `port` accepts connections; stops `server` (a Popen) and raises if it exits
    first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.terminate()
                server.wait(timeout=10)
                raise RuntimeError(f"the GCS emulator did not start within {timeout_s} s") from None
            time.sleep(0.2)


class GcsEmulator:
    """The server, holding one `bucket` in memory; `url`; the requests it served, from its log."""

    def __init__(self, workdir, bucket):
        executable = shutil.which("gcp-storage-emulator")
        command = [executable] if executable else [sys.executable, "-m", "gcp_storage_emulator"]
        port = free_port()
        self.url, self.bucket = f"http://127.0.0.1:{port}", bucket
        self._log_path = os.path.join(workdir, "emulator.log")
        with open(self._log_path, "wb") as log:  # the server logs every request it serves (one line each)
            self._server = subprocess.Popen(command + ["start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
                                                       f"--default-bucket={bucket}"], stdout=log, stderr=log)
        wait_for_port(port, self._server, 30)

    def requests(self):
        """[(method, path, status)] of every request served so far, in order."""
        with open(self._log_path, errors="replace") as log:
            matches = (_REQUEST_LINE.match(line) for line in log)
            return [(m["method"], m["path"], int(m["status"])) for m in matches if m]

    def settled_requests(self, quiet_s=0.5, timeout_s=15):
        """requests() once the log has not grown for `quiet_s`: the server logs a request as it
        answers it, so the last lines of a burst land after the client has its bytes (a fixed
        sleep let one line of one phase fall into the next on a loaded machine)."""
        deadline = time.monotonic() + timeout_s
        served, since = self.requests(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.requests()
            if len(now) != len(served):
                served, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
        return served

    def stop(self):
        self._server.terminate()
        self._server.wait(timeout=10)
