"""`unziplora ui` stops within seconds of Ctrl-C (it took 5 s and more: the interpreter tore down gradio and torch)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_stops_the_page_within_five_seconds(tiny_base, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "unziplora.app.cli", "ui", "--runs", str(tmp_path / "runs"), "--base-model",
         str(tiny_base), "--port", str(_free_port())],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in child.stdout:  # the page is up when it says where
            if "Ctrl-C to stop" in line:
                break
        else:
            raise AssertionError(f"the page did not start (exit {child.wait()})")
        t0 = time.monotonic()
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
        assert time.monotonic() - t0 < 3, f"stopped after {time.monotonic() - t0:.1f} s"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
