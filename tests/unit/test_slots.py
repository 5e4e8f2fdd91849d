"""`Slots` with `WorkerOptions.prefetch`: runs claimed ahead are held, first claimed
first, and take slots as they free; without prefetch nothing changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from durable_trio._core.capacity import Slots


def test_without_prefetch_every_claimed_run_takes_a_slot() -> None:
    slots: Slots[str] = Slots(1)
    assert slots.place("a")
    assert slots.place("b")  # claims take free slots only: never held
    assert slots.held == 0
    assert slots.executing == 2
    assert slots.may_claim()
    slots.reserved = 1
    assert slots.may_claim()  # the claim loop and the writer may claim side by side


def test_prefetch_claims_ahead_of_the_slots() -> None:
    slots: Slots[str] = Slots(1, prefetch=4)
    assert slots.free(in_hand=0) == 5
    assert slots.place("a")
    assert [slots.place(r) for r in "bcde"] == [False] * 4
    assert (slots.executing, slots.held) == (1, 4)
    assert slots.free(in_hand=5) == 0
    # a's code returns: b takes the slot; a's completion is still being written.
    assert slots.vacate("a")
    assert slots.promote() == ["b"]
    assert slots.free(in_hand=5) == 1
    slots.reserved = 1
    assert slots.free(in_hand=5) == 0
    assert not slots.may_claim()  # one claim at a time while runs are held


def test_held_runs_start_first_claimed_first() -> None:
    slots: Slots[str] = Slots(2, prefetch=3)
    assert slots.place("a")
    assert slots.place("b")
    assert not slots.place("c")
    assert not slots.place("d")
    assert slots.promote() == []  # no slot free
    slots.vacate("a")
    assert slots.promote() == ["c"]
    assert slots.is_held("d")
    assert not slots.place("e")  # a slot may be free, but d was claimed before it
    slots.vacate("b")
    slots.vacate("c")
    assert slots.promote() == ["d", "e"]
    assert slots.held_runs() == []


def test_a_held_run_that_ends_is_dropped_without_a_slot() -> None:
    slots: Slots[str] = Slots(1, prefetch=2)
    slots.place("a")
    slots.place("b")
    slots.place("c")
    assert slots.drop("b")  # handed back or lost while it waited
    assert not slots.drop("b")
    assert not slots.drop("a")  # a holds a slot: vacate frees it
    assert slots.held_runs() == ["c"]
    assert slots.executing == 1


def test_runs_being_written_bound_the_runs_in_hand() -> None:
    slots: Slots[str] = Slots(2, prefetch=3)
    for run in "abcde":
        slots.place(run)
    slots.vacate("a")
    slots.vacate("b")
    assert slots.promote() == ["c", "d"]
    slots.place("f")
    slots.place("g")
    # c, d executing; e, f, g held; a, b writing: 2 * 2 + 3 in hand, no room.
    assert slots.free(in_hand=7) == 0
    assert slots.free(in_hand=6) == 0  # held and executing at their bound too
    slots.vacate("c")
    assert slots.promote() == ["e"]
    assert slots.free(in_hand=7) == 0
    assert slots.free(in_hand=6) == 1


@given(st.integers(1, 16), st.integers(0, 16), st.data())
def test_never_more_than_concurrency_executing(
    concurrency: int, prefetch: int, data: st.DataObject
) -> None:
    """Claims, finishes and completed writes in any order: executing never exceeds the
    limit, held runs never exceed prefetch, and no held run waits by a free slot."""
    slots: Slots[int] = Slots(concurrency, prefetch)
    executing: list[int] = []
    writing = 0
    next_run = 0
    for _ in range(40):
        action = data.draw(st.sampled_from(["claim", "finish", "written"]))
        in_hand = slots.executing + slots.held + writing
        if action == "claim":
            for _ in range(data.draw(st.integers(0, max(slots.free(in_hand), 0)))):
                if slots.place(next_run):
                    executing.append(next_run)
                next_run += 1
        elif action == "finish" and executing:
            run = executing.pop(data.draw(st.integers(0, len(executing) - 1)))
            assert slots.vacate(run)
            writing += 1
            executing.extend(slots.promote())
        elif action == "written" and writing:
            writing -= 1
        assert slots.executing == len(executing) <= concurrency
        assert slots.held <= prefetch
        assert slots.held == 0 or slots.executing == concurrency


def test_claims_ride_with_the_writer() -> None:
    one: Slots[str] = Slots(1)
    assert one.claim_with_writes(in_hand=1)
    one.place("a")
    assert not one.claim_with_writes(in_hand=1)
    # At concurrency 1 with runs held, the refill rides with every completion.
    ahead: Slots[str] = Slots(1, prefetch=4)
    ahead.place("a")
    ahead.place("b")
    assert ahead.claim_with_writes(in_hand=2)
    many: Slots[str] = Slots(8, prefetch=4)
    for run in "abcdefghi":
        many.place(run)
    assert not many.claim_with_writes(in_hand=9)
