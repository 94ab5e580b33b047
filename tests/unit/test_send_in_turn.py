"""``Producer.send_in_turn``: the second part only after the first is written, never when it is not."""

from __future__ import annotations

from collections.abc import Sequence

from eventlog import Acknowledged, Outgoing, Producer


class _Scripted(Producer):
    """Acknowledges each ``send_acknowledged`` with the next scripted outcome."""

    def __init__(self, outcomes: list[BaseException | None], send_fails: bool = False) -> None:
        self.outcomes = outcomes
        self.send_fails = send_fails
        self.sent: list[list[Outgoing]] = []
        self.waiting: list[tuple[list[Outgoing], Acknowledged]] = []

    def send(self, records: Sequence[Outgoing]) -> None:
        if self.send_fails:
            raise RuntimeError("no metadata")
        self.sent.append(list(records))

    def send_acknowledged(self, records: Sequence[Outgoing], on_done: Acknowledged) -> None:
        self.sent.append(list(records))
        self.waiting.append((list(records), on_done))

    def acknowledge(self) -> None:
        _, on_done = self.waiting.pop(0)
        on_done(self.outcomes.pop(0))

    def flush(self, timeout_s: float) -> None:
        pass

    def close(self) -> None:
        pass


hold = Outgoing("tollgate.commands", "org", b"hold")
job = Outgoing("tollgate.dispatch.default", "org", b"job")


def test_the_job_leaves_only_once_its_hold_is_written() -> None:
    producer = _Scripted([None])
    failures: list[BaseException] = []
    producer.send_in_turn([hold], [job], failures.append)
    assert producer.sent == [[hold]]  # nothing of the job before the acknowledgement
    producer.acknowledge()
    assert producer.sent == [[hold], [job]]
    assert failures == []


def test_a_hold_that_was_not_written_dispatches_no_job() -> None:
    refused = ConnectionError("broker gone")
    producer = _Scripted([refused])
    failures: list[BaseException] = []
    producer.send_in_turn([hold], [job], failures.append)
    producer.acknowledge()
    assert producer.sent == [[hold]]
    assert failures == [refused]


def test_a_job_that_cannot_be_sent_is_reported_not_raised_on_the_acknowledging_thread() -> None:
    producer = _Scripted([None])
    failures: list[BaseException] = []
    producer.send_in_turn([hold], [job], failures.append)
    producer.send_fails = True
    producer.acknowledge()  # raises nothing into the producer's thread
    assert [str(f) for f in failures] == ["no metadata"]
