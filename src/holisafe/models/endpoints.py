"""Many servers of one model: the endpoints an API model's requests are spread over.

An API model always talks through an `EndpointPool`; a single `--base-url` is a pool of one.
Each endpoint takes up to its own `concurrency` requests at once, and a request goes to the
endpoint with the most room. A request that an endpoint fails (it cannot be reached, it timed
out or answered a server error after the SDK's retries) goes to another endpoint it has not
tried yet; its last failure is its answer only when none is left.

An endpoint that cannot be reached, or that fails `strikes` requests in a row, is taken out of
rotation and probed again later with one real request (after `probe_s`, doubling up to
`max_probe_s` while probes fail); a probe that succeeds puts it back. The last endpoint in
rotation is never taken out for failed requests (no one else could answer them), and when the
last one cannot be reached the run stops (ModelError): a rerun resumes from the store.

An endpoints file holds one endpoint a line, `URL` or `URL concurrency=N`; blank lines and
lines starting with `#` are skipped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from holisafe.core.files import read_regular_text
from holisafe.core.records import ModelError

S = TypeVar("S")
RATE_WINDOW_S = 30.0  # an endpoint's rate counts its answers over the last half minute


@dataclass(frozen=True)
class Endpoint:
    """One server: its base URL (None: the provider's own) and how many requests it takes at
    once (None: the model's concurrency)."""

    url: str | None
    concurrency: int | None = None


def endpoints_of(base_url: str | Sequence[str | Endpoint] | None) -> tuple[Endpoint, ...]:
    """The endpoints a `base_url` option names: none (the provider's own), one URL, or several
    URLs and Endpoints."""
    if base_url is None or isinstance(base_url, str):
        return (Endpoint(base_url),)
    endpoints = tuple(e if isinstance(e, Endpoint) else Endpoint(e) for e in base_url)
    return endpoints or (Endpoint(None),)


def read_endpoints_file(path: str | Path) -> tuple[Endpoint, ...]:
    """The endpoints listed in the file `path` (see the module's docstring); ModelError naming
    the file and line for anything else."""
    try:
        text = read_regular_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"endpoints file {path}: cannot read it: {exc}") from None
    endpoints = []
    for number, line in enumerate(text.split("\n"), start=1):
        words = line.split()
        if words and not words[0].startswith("#"):
            endpoints.append(_endpoint_line(words, f"endpoints file {path}, line {number}"))
    if not endpoints:
        raise ModelError(f"endpoints file {path}: no endpoints in it (one URL a line)")
    return tuple(endpoints)


def _endpoint_line(words: list[str], where: str) -> Endpoint:
    url, *settings = words
    if not url.startswith(("http://", "https://")):
        raise ModelError(f"{where}: {url!r} is not an http:// or https:// URL")
    concurrency = None
    for setting in settings:
        name, _, value = setting.partition("=")
        if name != "concurrency" or not value.isdigit() or int(value) < 1:
            raise ModelError(
                f"{where}: {setting!r} is not concurrency=N with N a whole number of at "
                "least 1 (a line is URL [concurrency=N])"
            )
        concurrency = int(value)
    return Endpoint(url, concurrency)


class EndpointFault(Exception):
    """An endpoint failed one request in a way another endpoint might not: unreachable
    (`down`), or timed out / a server error after the SDK's retries. Carries the request's
    answer should no endpoint be left to try it on."""

    def __init__(self, failure: Exception, *, down: bool):
        super().__init__(str(failure))
        self.failure = failure
        self.down = down


@dataclass
class _Member(Generic[S]):
    """One endpoint in the pool: its sender and its state."""

    url: str
    sender: S
    capacity: int
    in_flight: int = 0
    last_used: int = 0  # the pool's count of tries when it was last given one
    strikes: int = 0  # failed requests in a row
    in_rotation: bool = True
    probing: bool = False
    probe_at: float = 0.0
    probe_wait_s: float = 0.0
    outages: int = 0
    answered: deque[float] = field(default_factory=deque)  # when each recent answer came
    total: int = 0


@dataclass(frozen=True)
class EndpointState:
    """What the progress display shows of one endpoint."""

    url: str
    answered: int
    rate: float  # answers per second over the last RATE_WINDOW_S
    in_rotation: bool
    outages: int  # times it was taken out of rotation


def summary(states: Sequence[EndpointState]) -> str:
    """The endpoints' rates in one line, e.g. `127.0.0.1:8001 4.1/s, 127.0.0.1:8002 out`."""
    return ", ".join(
        f"{state.url.split('://')[-1].split('/')[0]} "
        + (f"{state.rate:.1f}/s" if state.in_rotation else "out")
        for state in states
    )


def _forget_before(times: deque[float], start: float) -> None:
    while times and times[0] < start:
        times.popleft()


class EndpointPool(Generic[S]):
    """Sends each request to one endpoint's sender (see the module's docstring)."""

    def __init__(
        self,
        members: Sequence[tuple[str, S, int]],
        *,
        strikes: int = 3,
        probe_s: float = 1.0,
        max_probe_s: float = 30.0,
    ):
        self._members = [_Member(url, sender, capacity) for url, sender, capacity in members]
        self.strikes = strikes
        self.probe_s = probe_s
        self.max_probe_s = max_probe_s
        self._changed = threading.Condition()
        self._tries = 0
        self._last_down: Exception | None = None  # the error of the last endpoint found down

    @property
    def concurrency(self) -> int:
        return sum(member.capacity for member in self._members)

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self._members]

    def send(self, ask: Callable[[S], object]) -> object:
        """`ask(sender)` on one endpoint after another until one answers. Raises the last
        EndpointFault when every endpoint failed this request, and ModelError when no
        endpoint is left in rotation (a pool of one: the endpoint's own error)."""
        tried: set[int] = set()
        while True:
            member = self._acquire(tried)
            try:
                answer = ask(member.sender)
            except EndpointFault as fault:
                tried.add(id(member))
                if not self._failed(member, fault):
                    raise self._all_down() from None
                if len(tried) == len(self._members):
                    raise
                continue
            except BaseException:
                self._release(member)
                raise
            self._succeeded(member)
            return answer

    def states(self) -> list[EndpointState]:
        now = time.monotonic()
        with self._changed:
            for member in self._members:
                _forget_before(member.answered, now - RATE_WINDOW_S)
            return [
                EndpointState(m.url, m.total, self._rate(m, now), m.in_rotation, m.outages)
                for m in self._members
            ]

    def _rate(self, member: _Member, now: float) -> float:
        if len(member.answered) < 2:
            return 0.0
        return (len(member.answered) - 1) / max(now - member.answered[0], 1e-3)

    def _acquire(self, tried: set[int]) -> _Member[S]:
        """The endpoint for the next try: a probe that is due, else the one in rotation with
        the most room; waits while all are busy or out. Raises when none is in rotation."""
        with self._changed:
            while True:
                now = time.monotonic()
                if not any(m.in_rotation or m.probing for m in self._members):
                    raise self._all_down()
                untried = [m for m in self._members if id(m) not in tried]
                due = [m for m in untried if not m.in_rotation and not m.probing]
                due = [m for m in due if m.probe_at <= now]
                if due:
                    due[0].probing = True
                    return self._take(due[0])
                free = [m for m in untried if m.in_rotation and m.in_flight < m.capacity]
                if free:
                    # the most room; among equals, the one left alone longest
                    member = min(free, key=lambda m: (m.in_flight / m.capacity, m.last_used))
                    return self._take(member)
                probes = [m.probe_at for m in untried if not m.in_rotation and not m.probing]
                self._changed.wait(max(min(probes) - now, 0.01) if probes else None)

    def _take(self, member: _Member[S]) -> _Member[S]:
        self._tries += 1
        member.last_used = self._tries
        member.in_flight += 1
        return member

    def _release(self, member: _Member) -> None:
        with self._changed:
            member.in_flight -= 1
            member.probing = False
            self._changed.notify_all()

    def _succeeded(self, member: _Member) -> None:
        with self._changed:
            now = time.monotonic()
            member.in_flight -= 1
            member.strikes = 0
            member.answered.append(now)
            _forget_before(member.answered, now - RATE_WINDOW_S)
            member.total += 1
            member.probing = False
            member.in_rotation = True  # a probe, or a late answer, that came back
            member.probe_wait_s = 0.0
            self._changed.notify_all()

    def _failed(self, member: _Member, fault: EndpointFault) -> bool:
        """Counts the failure and takes the endpoint out when it should go; whether any
        endpoint is left in rotation."""
        with self._changed:
            member.in_flight -= 1
            member.strikes += 1
            if fault.down:
                self._last_down = fault.failure
            others = any(m.in_rotation for m in self._members if m is not member)
            if member.probing:
                member.probing = False
                self._probe_later(member, double=True)
            elif member.in_rotation and (fault.down or (others and member.strikes >= self.strikes)):
                member.in_rotation = False
                member.outages += 1
                self._probe_later(member, double=False)
            self._changed.notify_all()
            return others or member.in_rotation

    def _probe_later(self, member: _Member, *, double: bool) -> None:
        wait_s = min(member.probe_wait_s * 2, self.max_probe_s) if double else self.probe_s
        member.probe_wait_s = wait_s
        member.probe_at = time.monotonic() + wait_s

    def _all_down(self) -> Exception:
        if len(self._members) == 1 and self._last_down is not None:
            return self._last_down  # the endpoint's own error says it best
        return ModelError(
            f"none of the {len(self._members)} endpoints can be reached "
            f"({', '.join(self.urls)}); run the same command again when one is back"
        )
