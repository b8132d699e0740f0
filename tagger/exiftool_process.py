"""exiftool's `-stay_open` protocol: one process, one command at a time, a dead process noticed.

A command is its arguments, one per line on exiftool's stdin (its argument file), then
`-execute<N>`. exiftool answers on stdout, ending with `{ready<N>}`; `-echo4` puts the exit status
and a matching marker at the end of stderr. A process that dies (end of file on its pipes) or stops
answering (a timeout) is noticed within moments instead of being waited on forever. On POSIX both
pipes are polled with select(); on Windows, where pipes cannot be, two reader threads move the output
into queues.
"""
from __future__ import annotations

import os
import queue
import re
import selectors
import subprocess
import threading
import time
from collections.abc import Sequence

_CAN_SELECT = os.name == "posix"  # Windows cannot select() on pipes: reader threads there
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
        self._buffers = {"out": b"", "err": b""}
        if _CAN_SELECT:
            # POSIX: wait on both pipes in this thread (a thread hand-off costs ~2 ms per command).
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._process.stdout, selectors.EVENT_READ, "out")
            self._selector.register(self._process.stderr, selectors.EVENT_READ, "err")
            self._readers: list[threading.Thread] = []
        else:
            self._queues = {"out": queue.Queue(), "err": queue.Queue()}
            self._readers = [threading.Thread(target=_pump, args=(stream, self._queues[name]), daemon=True,
                                              name="exiftool-reader")
                             for name, stream in (("out", self._process.stdout), ("err", self._process.stderr))]
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
        finders = {"out": lambda data: data.rfind(ready), "err": lambda data: _find(status_tail, data)}
        deadline = time.monotonic() + timeout
        try:
            while True:
                pending = [name for name, find in finders.items() if find(self._buffers[name]) < 0]
                if not pending:
                    break
                for name, chunk in self._next_chunks(pending, deadline, timeout):
                    if not chunk:
                        raise ExifToolDied(self._death())
                    self._buffers[name] += chunk
        except KeyboardInterrupt:
            # Its answer would be read as the next command's; and a write it finished after the
            # caller removed the temporary file would leave one behind. Stop it now.
            self.kill()
            raise
        stdout, stderr = (self._take(name, finders[name]) for name in ("out", "err"))
        match = status_tail.search(stderr)
        stdout = stdout[: stdout.rfind(ready)]
        stderr = stderr[: match.start()]
        status = int(match.group(1)) if match.group(1).lstrip(b"-").isdigit() else 0
        return status, stdout, stderr

    def _next_chunks(self, pending: list[str], deadline: float, timeout: float) -> list[tuple[str, bytes]]:
        """What arrived on the pipes; b"" means end of file (the process is gone)."""
        left = deadline - time.monotonic()
        found: list[tuple[str, bytes]] = []
        if left > 0 and _CAN_SELECT:
            found = [(key.data, os.read(key.fd, 65536)) for key, _events in self._selector.select(left)]
        elif left > 0:
            try:
                found = [(pending[0], self._queues[pending[0]].get(timeout=left))]
            except queue.Empty:
                pass
        if not found:
            self.kill()
            raise ExifToolDied(f"exiftool gave no answer within {timeout:.0f} s and was stopped")
        return found

    def _take(self, name: str, find) -> bytes:
        """This command's output: up to the end of the marker's line; the rest stays buffered."""
        data = self._buffers[name]
        line_end = data.find(b"\n", find(data))
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
        if _CAN_SELECT:
            self._selector.close()
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
