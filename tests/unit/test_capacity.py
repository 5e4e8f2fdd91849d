"""A worker's slots and the rotation of its queues."""

from __future__ import annotations

from durable_trio._core.capacity import QueueRotation, Slots


def test_a_fresh_worker_may_claim_its_concurrency() -> None:
    slots = Slots(4)
    assert slots.executing == 0
    assert slots.free(in_hand=0) == 4


def test_executing_runs_and_reservations_take_slots() -> None:
    slots = Slots(4)
    slots.occupy("a")
    slots.occupy("b")
    assert slots.free(in_hand=2) == 2
    slots.reserved += 1
    assert slots.free(in_hand=2) == 1


def test_a_run_writing_its_completion_frees_its_slot_but_stays_in_hand() -> None:
    slots = Slots(2)
    for run in "abcd":
        slots.occupy(run)
    for run in "abcd":
        assert slots.vacate(run) is True
    # Four runs still writing: in hand they count against twice the limit.
    assert slots.free(in_hand=4) == 0
    assert slots.free(in_hand=3) == 1
    assert slots.free(in_hand=0) == 2


def test_vacating_is_idempotent() -> None:
    slots = Slots(2)
    slots.occupy("a")
    assert slots.holds("a")
    assert slots.vacate("a") is True
    assert slots.vacate("a") is False  # its code had returned already
    assert not slots.holds("a")
    assert slots.executing == 0


def test_runs_are_told_apart_by_identity() -> None:
    class Run:
        __hash__ = object.__hash__

    first, again = Run(), Run()  # the same run id claimed again while the first unwinds
    slots = Slots(2)
    slots.occupy(first)
    slots.occupy(again)
    assert slots.executing == 2
    slots.vacate(first)
    assert slots.holds(again)


def test_free_may_be_negative_when_over_committed() -> None:
    slots = Slots(1)
    slots.occupy("a")
    slots.reserved = 1
    assert slots.free(in_hand=1) == -1


def test_claims_ride_along_with_writes_only_for_the_last_finishing_run() -> None:
    slots = Slots(8)
    assert slots.claim_with_writes(in_hand=0)
    assert slots.claim_with_writes(in_hand=1)
    assert not slots.claim_with_writes(in_hand=2)
    slots.occupy("a")
    assert not slots.claim_with_writes(in_hand=1)


def test_queues_rotate_one_further_at_each_claim() -> None:
    rotation = QueueRotation(["a", "b", "c"])
    orders = [rotation.next_order() for _ in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_no_queues_no_order() -> None:
    assert QueueRotation([]).next_order() == []


def test_one_queue_is_always_first() -> None:
    rotation = QueueRotation(["only"])
    assert [rotation.next_order() for _ in range(3)] == [["only"]] * 3
