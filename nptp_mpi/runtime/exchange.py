"""Everything that touches MPI: the job's ranks, halo exchange, input scatter, head gather, agreement.

Messages are described by MPI subarray datatypes built once per tensor and reused every inference.
A halo travels through a contiguous staging buffer (MPI_Pack before the send, MPI_Unpack after the
receive): MPICH over TCP moves a non-contiguous message of 64 KB or more only inside MPI calls, so
sent straight from the tile buffer it would not travel while the rank computes its core; contiguous,
it does. The bytes each rank moves are read back from MPI (datatype sizes and receive statuses),
independently of the plan, so tests can check the wire against the plan's prediction.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from nptp_mpi.errors import JobError, PeerLost, PeerTimeout
from nptp_mpi.plan.program import ARRIVE_TAG, FAULT_TAG, HOST_TAG

Rect = tuple[int, int, int, int]


MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.uint8): MPI.UNSIGNED_CHAR}  # the buffers' element types


def _subarray(shape: tuple[int, ...], buf_rect: Rect, rect: Rect, dtype: np.dtype) -> MPI.Datatype:
    """Datatype selecting rect (all channels) of a (C, h, w) buffer of dtype that holds buf_rect."""
    c = shape[0]
    sub = (c, rect[2] - rect[0], rect[3] - rect[1])
    start = (0, rect[0] - buf_rect[0], rect[1] - buf_rect[1])
    return MPI_TYPES[np.dtype(dtype)].Create_subarray(list(shape), list(sub), list(start)).Commit()


_unwaited: list[MPI.Request] = []


def unwaited(req: MPI.Request) -> MPI.Request:
    """req, a message no one waits for (a rank's host name to rank 0, a timed-out rank's report), kept with its
    buffer (mpi4py's request holds it) until MPI is done with it: a World dropped with its host names still due
    (a test's, one that never communicates) once had MPI write a late name over the weights allocated next."""
    _unwaited[:] = [r for r in _unwaited if not r.Test()]  # (a completed request frees itself)
    _unwaited.append(req)
    return req


@dataclass
class Traffic:
    """Bytes and seconds one rank spent communicating (measured, not predicted)."""

    halo_sent: int = 0
    halo_recv: int = 0
    other_sent: int = 0
    other_recv: int = 0
    wait_s: float = 0.0

    def reset(self) -> None:
        self.__init__()


@dataclass(frozen=True)
class Message:
    """One pre-built message: the peer, the datatype selecting it in its buffer, and where the datatype
    is not contiguous, the contiguous buffer it is packed into (sends) or received into (receives)."""

    peer: int
    dtype: MPI.Datatype
    stage: np.ndarray | None = None

    @classmethod
    def staged(cls, peer: int, dtype: MPI.Datatype, elements: np.dtype) -> Message:
        return cls(peer, dtype, np.empty(dtype.Get_size() // np.dtype(elements).itemsize, elements))

    def spec(self, buf: np.ndarray) -> list | np.ndarray:
        """What MPI sends from or receives into."""
        return [buf, 1, self.dtype] if self.stage is None else self.stage


@dataclass
class Messages:
    """Pre-built point-to-point messages on one buffer, to send and to receive."""

    sends: list[Message] = field(default_factory=list)
    recvs: list[Message] = field(default_factory=list)

    def free(self) -> None:
        for m in self.sends + self.recvs:
            m.dtype.Free()
        self.sends.clear()
        self.recvs.clear()


@dataclass
class Pending:
    """An exchange in flight: its requests, what they carry, and the buffer staged receives unpack into."""

    reqs: list[MPI.Request]
    msgs: Messages
    halo: bool
    buf: np.ndarray


MAX_VALUE_BYTES = 1 << 20  # one rank's start-up facts or timings: kilobytes in practice


def _encode(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), np.uint8)


def _decode(buf: np.ndarray, offset: int, size: int, rank: int):
    """JSON from rank's slice of buf; anything else is one clear error (never unpickled)."""
    try:
        return json.loads(buf[offset:offset + size].tobytes())
    except ValueError:
        raise JobError(f"rank {rank} sent start-up data that is not JSON; is every rank this program?") from None


JUDGE_S = 0.5  # rank 0 gathers the timed-out ranks' reports this long before it names the stalled rank


def grace(limit: float, rank: int) -> float:
    """How long a rank other than 0 waits, after its timeout, for rank 0 to end the job; staggered by rank so
    that if rank 0 is the one stuck, one rank (the lowest waiting) reports it first."""
    return max(2.0, min(30.0, 0.2 * limit)) + 0.3 * rank


def nap(waited_s: float) -> float:
    """Seconds to sleep between polls after waiting waited_s: 0.2 ms, growing to 2% of the wait so far (at
    most 5 ms), so a wait ends at most 2% (and 5 ms) late and a rank idle for a second polls ~50 times."""
    return min(5e-3, max(2e-4, waited_s / 50))


class World:
    """This job's ranks: who we are, agreement at start-up, abort, and the messages of a plan."""

    def __init__(self, comm: MPI.Comm | None = None, timeout: float | None = None) -> None:
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = socket.gethostname()
        self.hosts: list[str] | None = None  # every rank's host, once agreed (for messages)
        self.timeout = timeout
        self.traffic = Traffic()
        # Every rank's host name to rank 0 now, before anything can stall, so that rank 0 can name the host
        # of a rank that stalls before the start-up agreement.
        self._host = np.frombuffer(self.host.encode()[:255].ljust(256, b"\0"), np.uint8).copy()
        self._host_from = np.zeros((self.size, 256), np.uint8) if self.rank == 0 else None
        self._host_reqs = [unwaited(self.comm.Irecv(self._host_from[r], source=r, tag=HOST_TAG))
                           for r in range(1, self.size)] if self.rank == 0 else []
        if self.rank != 0:  # nobody waits for it
            unwaited(self.comm.Isend(self._host, dest=0, tag=HOST_TAG))

    def wait(self, reqs: list[MPI.Request], what: str, peers: list[int | None] | None = None,
             statuses: list[MPI.Status] | None = None, at_least: float = 0.0) -> None:
        """Waitall bounded by self.timeout that gives the core away while waiting.

        MPICH busy-polls; with ranks sharing a laptop's cores that steals the peers' compute time. We
        poll with sched_yield for about a millisecond (prompt on a board's own core), then sleep between
        polls (nap): a short wait gains at most 0.2 ms, a long one (an idle rank while rank 0 runs a
        tail) wakes rarely enough to leave the cores to the ranks that compute. at_least: a floor on the
        timeout, for waits that are long by nature (a peer compiling). peers: each request's rank (None for
        a collective's).

        A stall is judged by rank 0 alone, so the job ends with one line naming the stalled rank: a rank
        that times out tells rank 0 whom it waits for (FAULT_TAG) and waits a grace period more; rank 0
        (on its own timeout, or on such a report) names the ranks waited for that have not reported
        themselves waiting, and ends the job. If rank 0 does not within the grace, it is the one stuck.
        """
        start = time.monotonic()
        polls = 0
        limit = None if self.timeout is None else max(self.timeout, at_least)
        statuses = [MPI.Status() for _ in reqs] if statuses is None else statuses
        reported = False
        while True:
            try:
                if self._testall(reqs, statuses):
                    return
            except MPI.Exception as e:  # MPICH: a peer's socket closed before the launcher ended the job
                failed = [i for i, st in enumerate(statuses) if st.Get_error() not in (MPI.SUCCESS, MPI.ERR_PENDING)]
                why = MPI.Get_error_string(statuses[failed[0]].Get_error() if failed else e.Get_error_code())
                raise PeerLost(f"MPI failed a message with {self._ranks(peers, failed)} in {what} "
                               f"({why.strip()}): did that rank die, or its link fail?") from None
            waited = time.monotonic() - start
            if self.rank == 0 and waited > 0.05 and self.comm.Iprobe(MPI.ANY_SOURCE, FAULT_TAG):
                self._judge(self._late(reqs, peers), what, limit or waited)
            if limit is not None and waited > limit:
                if self.rank == 0:
                    self._judge(self._late(reqs, peers), what, limit)
                if not reported:
                    self._report(self._late(reqs, peers), what)
                    reported = True
                elif waited > limit + grace(limit, self.rank):
                    raise PeerTimeout(f"timed out after {limit:g} s waiting for "
                                      f"{self._named(self._late(reqs, peers) or [0])} in {what} (rank 0, which "
                                      "ends a stalled job, did not answer either)")
            polls += 1
            if polls < 1000:  # ~1 ms of prompt polling
                os.sched_yield()
            else:
                time.sleep(nap(waited))

    @staticmethod
    def _testall(reqs: list[MPI.Request], statuses: list[MPI.Status]) -> bool:
        return MPI.Request.Testall(reqs, statuses)

    @staticmethod
    def _late(reqs: list[MPI.Request], peers: list[int | None] | None) -> list[int]:
        """The ranks of the point-to-point requests not done yet."""
        return sorted({int(p) for r, p in zip(reqs, peers or [None] * len(reqs), strict=True)
                       if p is not None and not r.Get_status()})

    def _ranks(self, peers: list[int | None] | None, which: list[int]) -> str:
        """The peers of the requests numbered `which`, with their hosts (collectives have no single peer)."""
        return self._named(sorted({int(peers[i]) for i in which if peers[i] is not None}) if peers else [])

    def _named(self, ranks: list[int]) -> str:
        hosts = self.hosts or [self._host_of(r) for r in range(self.size)]
        return ", ".join(f"rank {p} (host {hosts[p]})" for p in ranks) or "another rank"

    def _host_of(self, r: int) -> str:
        """Rank r's host from the name it sent at start (rank 0; '?' elsewhere, or if none came)."""
        if r == self.rank:
            return self.host
        if self._host_from is None or self._host_reqs and not self._host_reqs[r - 1].Test():
            return "?"
        return self._host_from[r].tobytes().rstrip(b"\0").decode(errors="replace")

    def _report(self, late: list[int], what: str) -> None:
        """Tell rank 0 that this rank timed out, waiting for whom (rank 0 receives it when it judges)."""
        unwaited(self.comm.Isend(_encode({"late": late, "what": what}), dest=0, tag=FAULT_TAG))

    def _judge(self, late: list[int], what: str, limit: float) -> None:
        """Rank 0: gather the timed-out ranks' reports for a moment, then raise PeerTimeout naming the ranks
        waited for that are not themselves waiting (the stalled ones; rank 0's own wait counts)."""
        reports: dict[int, dict] = {}
        until = time.monotonic() + JUDGE_S
        while True:
            st = MPI.Status()
            while self.comm.Iprobe(MPI.ANY_SOURCE, FAULT_TAG, st) and st.Get_count(MPI.BYTE) <= MAX_VALUE_BYTES:
                buf = np.empty(st.Get_count(MPI.BYTE), np.uint8)
                self.comm.Recv(buf, source=st.Get_source(), tag=FAULT_TAG)
                with contextlib.suppress(JobError):
                    reports[st.Get_source()] = _decode(buf, 0, buf.size, st.Get_source())
            if time.monotonic() > until:
                break
            time.sleep(0.01)
        waiting = {0, *reports}
        told = {r for rep in reports.values() if isinstance(rep, dict) for r in rep.get("late", ())
                if isinstance(r, int) and 0 <= r < self.size}
        stalled = sorted((told | set(late)) - waiting)
        if not late and reports:  # rank 0 is not waiting for anyone in particular: say where the others were
            what = next(rep.get("what", what) for rep in reports.values() if isinstance(rep, dict))
        raise PeerTimeout(f"timed out after {limit:g} s waiting for {self._named(stalled)} in {what}")

    # -- start-up agreement: small JSON values, each after a bounded barrier --------------------
    # Plain bytes only: mpi4py's lowercase collectives unpickle what another rank sends, so a foreign
    # program started as one rank of the job could run code in ours. JSON turns tuples into lists.
    def allgather(self, value):
        """Small JSON values from every rank (start-up facts, timings); never feature maps."""
        self.barrier()
        data = _encode(value)
        sizes = np.zeros(self.size, np.int64)
        self.wait([self.comm.Iallgather(np.array([data.size], np.int64), sizes)], "the start-up agreement")
        buf, offsets = self._inbox(sizes)
        self.wait([self.comm.Iallgatherv(data, [buf, sizes, offsets, MPI.BYTE])], "the start-up agreement")
        return [_decode(buf, o, s, r) for r, (o, s) in enumerate(zip(offsets, sizes, strict=True))]

    def bcast(self, value, root: int = 0):
        """value from root on every rank (JSON)."""
        self.barrier()
        data = _encode(value) if self.rank == root else np.empty(0, np.uint8)
        size = np.array([data.size], np.int64)
        self.wait([self.comm.Ibcast(size, root=root)], "the start-up agreement")
        buf, _ = self._inbox(size)
        if self.rank == root:
            buf[:] = data
        self.wait([self.comm.Ibcast(buf, root=root)], "the start-up agreement")
        return _decode(buf, 0, int(size[0]), root)

    def gather_values(self, value, root: int = 0):
        """Small JSON values from every rank at root (a list there, None elsewhere)."""
        self.barrier()
        data = _encode(value)
        sizes = np.zeros(self.size, np.int64)
        self.wait([self.comm.Igather(np.array([data.size], np.int64), sizes, root=root)], "gathering results")
        if self.rank != root:
            self.wait([self.comm.Igatherv(data, None, root=root)], "gathering results")
            return None
        buf, offsets = self._inbox(sizes)
        self.wait([self.comm.Igatherv(data, [buf, sizes, offsets, MPI.BYTE], root=root)], "gathering results")
        return [_decode(buf, o, s, r) for r, (o, s) in enumerate(zip(offsets, sizes, strict=True))]

    def _inbox(self, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A receive buffer for messages of these sizes, refused beyond MAX_VALUE_BYTES each."""
        big = next((r for r, s in enumerate(sizes) if not 0 <= s <= MAX_VALUE_BYTES), None)
        if big is not None:
            raise JobError(f"rank {big} sent {int(sizes[big])} bytes of start-up data (at most {MAX_VALUE_BYTES}); "
                           "is every rank this program?")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return np.empty(int(sizes.sum()), np.uint8), offsets

    def abort(self, code: int) -> None:
        """End the whole job now: no rank may be left waiting in a collective."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.2)  # let the launcher forward our last words before it kills everyone
        self.comm.Abort(code)

    def barrier(self) -> None:
        """A bounded barrier; each rank also sends rank 0 an empty token, so a stall names who has not arrived."""
        none = np.empty(0, np.uint8)
        tokens = [self.comm.Irecv(none, source=r, tag=ARRIVE_TAG) for r in range(1, self.size)] \
            if self.rank == 0 else [self.comm.Isend(none, dest=0, tag=ARRIVE_TAG)]
        peers = list(range(1, self.size)) if self.rank == 0 else [None]
        self.wait([self.comm.Ibarrier(), *tokens], "a barrier", [None, *peers])
        if self._host_reqs and MPI.Request.Testall(self._host_reqs):  # all in (and freed): done with them
            self._host_reqs = []

    def first_on_each_host(self, fn: Callable[[], None], what: str, at_least: float = 600.0) -> None:
        """fn on the first rank of each host (ranks sharing memory) while that host's other ranks wait, at
        least at_least seconds whatever the job's timeout: what the first rank does is slow by nature."""
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            if node.Get_rank() == 0:
                fn()
            self.wait([node.Ibarrier()], what, at_least=at_least)
        finally:
            node.Free()

    # -- messages ---------------------------------------------------------------------------
    def messages(self, shape: tuple[int, ...], buf_rect: Rect, sends: list[tuple[int, Rect]],
                 recvs: list[tuple[int, Rect]], elements: np.dtype = np.float32) -> Messages:
        """Sends and receives of (peer, rect) on a (C, h, w) buffer of `elements` (float32, or an image's uint8
        pixels) holding buf_rect: staged through a contiguous buffer, except a message that is the whole
        buffer (already contiguous)."""
        def one(peer: int, rect: Rect) -> Message:
            dtype = _subarray(shape, buf_rect, rect, elements)
            return Message(peer, dtype) if tuple(rect) == tuple(buf_rect) else Message.staged(peer, dtype, elements)
        return Messages([one(*s) for s in sends], [one(*r) for r in recvs])

    def halo_messages(self, shape: tuple[int, ...], buf_rect: Rect, transfers) -> Messages:
        """This rank's sends and receives of one tensor's transfers, on its (C, h, w) buffer holding buf_rect."""
        return self.messages(shape, buf_rect, [(t.dst, t.rect) for t in transfers if t.src == self.rank],
                             [(t.src, t.rect) for t in transfers if t.dst == self.rank])

    def post(self, buf: np.ndarray, msgs: Messages, tag: int, halo: bool = True) -> Pending:
        """Start an exchange on buf: receives posted first, then sends (packed first where staged);
        complete() waits for it."""
        reqs = [self.comm.Irecv(m.spec(buf), source=m.peer, tag=tag) for m in msgs.recvs]
        for m in msgs.sends:
            if m.stage is not None:
                m.dtype.Pack(buf, m.stage, 0, self.comm)
            reqs.append(self.comm.Isend(m.spec(buf), dest=m.peer, tag=tag))
        return Pending(reqs, msgs, halo, buf)

    def complete(self, p: Pending, what: str) -> None:
        """Wait for a posted exchange, unpack staged receives, and count the bytes MPI says it moved."""
        t0 = time.perf_counter()
        statuses = [MPI.Status() for _ in p.reqs]
        self.wait(p.reqs, what, [m.peer for m in p.msgs.recvs + p.msgs.sends], statuses)
        for m in p.msgs.recvs:
            if m.stage is not None:
                m.dtype.Unpack(m.stage, 0, p.buf, self.comm)
        self.traffic.wait_s += time.perf_counter() - t0
        recv = sum(s.Get_count(MPI.BYTE) for s in statuses[: len(p.msgs.recvs)])
        sent = sum(m.dtype.Get_size() for m in p.msgs.sends)
        if p.halo:
            self.traffic.halo_recv += recv
            self.traffic.halo_sent += sent
        else:
            self.traffic.other_recv += recv
            self.traffic.other_sent += sent

    def exchange(self, buf: np.ndarray, msgs: Messages, tag: int, what: str, halo: bool = True) -> None:
        """The basic neighbour-only exchange: post, then wait at once."""
        self.complete(self.post(buf, msgs, tag, halo), what)

    def reduce_sum(self, x: np.ndarray, root: int | None = 0,
                   what: str = "the global-pooling reduction") -> np.ndarray | None:
        """Element-wise sum over ranks at root, or at every rank with root None (per-tile partial sums: global
        pooling, a split FC layer, squeeze-and-excitation's channel means)."""
        out = np.empty_like(x) if self.rank == root or root is None else None
        t0 = time.perf_counter()
        req = self.comm.Iallreduce(x, out, op=MPI.SUM) if root is None else \
            self.comm.Ireduce(x, out, op=MPI.SUM, root=root)
        self.wait([req], what)
        self.traffic.wait_s += time.perf_counter() - t0
        if self.rank != root:
            self.traffic.other_sent += x.nbytes
        return out
