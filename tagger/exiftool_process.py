"""exiftool's `-stay_open` protocol: one process, one command at a time, a dead process noticed.

A command is its arguments, one per line on exiftool's stdin (its argument file), then
`-execute<N>`. exiftool answers on stdout, ending with `{ready<N>}`; `-echo4` puts the exit status
and a matching marker at the end of stderr. Two reader threads move the output into queues, so a
process that dies (end of file on its pipes) or stops answering (a timeout) is noticed within
moments instead of being waited on forever, and it works the same on Windows, where pipes cannot
be polled.
"""
from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
from collections.abc import Sequence

COMMAND_TIMEOUT_S = 600.0  # one photo, even a 1 GB TIFF, is read or written well within this


class ExifToolDied(Exception):
    """The process ended, or stopped answering, in the middle of a command."""


def _pump(stream, sink: queue.Queue) -> None:
    fd = stream.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        sink.put(chunk)
        if not chunk:
            return  # end of file: the process is gone


class StayOpenProcess:
    """`exiftool [-config FILE] -stay_open True -@ - -common_args ARGS`."""

    def __init__(self, executable: str, config: str | None, common_args: Sequence[str]):
        command = [executable] + (["-config", config] if config else []) + [
            "-stay_open", "True", "-@", "-", "-common_args", *common_args]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        self._out: queue.Queue = queue.Queue()
        self._err: queue.Queue = queue.Queue()
        self._buffers = {"out": b"", "err": b""}
        self._readers = [threading.Thread(target=_pump, args=(stream, sink), daemon=True, name="exiftool-reader")
                         for stream, sink in ((self._process.stdout, self._out), (self._process.stderr, self._err))]
        for reader in self._readers:
            reader.start()
        self._sequence = 0

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def execute(self, args: Sequence[str | bytes], timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of one command. Raises ExifToolDied."""
        self._sequence += 1
        ready = f"{{ready{self._sequence}}}".encode()
        # `${status}` needs exiftool 12.10; an older one prints something else there, still ended by the marker.
        status_tail = re.compile(rb"=([^=\n]*)=post" + str(self._sequence).encode() + rb"\r?\n?$")
        lines = [a.encode("utf-8") if isinstance(a, str) else a for a in args]
        lines += [b"-echo4", f"=${{status}}=post{self._sequence}".encode(), f"-execute{self._sequence}".encode()]
        try:
            self._process.stdin.write(b"\n".join(lines) + b"\n")
            self._process.stdin.flush()
        except (OSError, ValueError):  # broken pipe: it is already gone
            raise ExifToolDied(self._death()) from None
        stdout = self._read_until("out", self._out, lambda data: data.rfind(ready), timeout)
        stderr = self._read_until("err", self._err, lambda data: _find(status_tail, data), timeout)
        match = status_tail.search(stderr)
        stdout = stdout[: stdout.rfind(ready)]
        stderr = stderr[: match.start()]
        status = int(match.group(1)) if match.group(1).lstrip(b"-").isdigit() else 0
        return status, stdout, stderr

    def _read_until(self, name: str, source: queue.Queue, find, timeout: float) -> bytes:
        data = self._buffers[name]
        while find(data) < 0:
            try:
                chunk = source.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                raise ExifToolDied(f"exiftool gave no answer within {timeout:.0f} s and was stopped") from None
            if not chunk:
                source.put(b"")  # keep end of file visible to the other waits
                self._buffers[name] = b""
                raise ExifToolDied(self._death())
            data += chunk
        end = find(data)
        # Everything up to the end of the marker's line belongs to this command.
        line_end = data.find(b"\n", end)
        cut = len(data) if line_end < 0 else line_end + 1
        self._buffers[name] = data[cut:]
        return data[:cut]

    def _death(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "exiftool stopped answering and was stopped"
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return f"exiftool ended unexpectedly ({how})"

    def close(self) -> None:
        """Ask exiftool to finish; kill it if it does not within a few seconds."""
        if self.running:
            try:
                self._process.stdin.write(b"-stay_open\nFalse\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        for reader in self._readers:  # they see end of file once the process is gone
            reader.join(timeout=1)
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def kill(self) -> None:
        if self.running:
            self._process.kill()
            self._process.wait()


def _find(pattern: re.Pattern, data: bytes) -> int:
    match = pattern.search(data)
    return -1 if match is None else match.start()
