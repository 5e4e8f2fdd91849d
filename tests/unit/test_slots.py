"""A worker's slot bookkeeping (`Slots`): claims, starts of held runs, claims riding
with the writer, with and without prefetch."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from durable_trio._core.slots import Slots


@given(
    st.integers(1, 64),
    st.integers(0, 64),
    st.integers(0, 64),
    st.integers(0, 64),
)
def test_without_prefetch_the_room_is_what_it_always_was(
    concurrency: int, executing: int, writing: int, reserved: int
) -> None:
    executing = min(executing, concurrency)
    slots = Slots(concurrency)
    in_hand = executing + writing
    room = slots.claim_room(executing=executing, held=0, in_hand=in_hand, reserved=reserved)
    assert room == min(concurrency - executing, 2 * concurrency - in_hand) - reserved
    # Claimed runs always start: the claim took free slots only.
    assert slots.may_start(executing=concurrency, held=0)
    assert slots.batch(None) == concurrency


def test_prefetch_claims_ahead_of_the_slots() -> None:
    slots = Slots(1, prefetch=4)
    assert slots.claim_room(executing=0, held=0, in_hand=0, reserved=0) == 5
    assert slots.claim_room(executing=1, held=4, in_hand=5, reserved=0) == 0
    # The running run's code returned; its completion is being written, a held run started.
    assert slots.claim_room(executing=1, held=3, in_hand=5, reserved=0) == 1
    assert slots.claim_room(executing=1, held=3, in_hand=5, reserved=1) == 0
    assert slots.batch(None) == 5
    assert slots.batch(2) == 2


def test_runs_being_written_bound_the_runs_in_hand() -> None:
    slots = Slots(2, prefetch=3)
    # Two runs executing, three held, two more finishing: 2*2+3 in hand, no room.
    assert slots.claim_room(executing=2, held=3, in_hand=7, reserved=0) == 0
    assert slots.claim_room(executing=1, held=3, in_hand=7, reserved=0) == 0
    assert slots.claim_room(executing=1, held=3, in_hand=6, reserved=0) == 1


def test_held_runs_start_first_and_only_into_free_slots() -> None:
    slots = Slots(2, prefetch=3)
    assert slots.may_start(executing=1, held=0)
    assert not slots.may_start(executing=1, held=1)  # an earlier claim waits: it goes first
    assert not slots.may_start(executing=2, held=0)
    assert slots.to_start(executing=0, held=3) == 2
    assert slots.to_start(executing=1, held=3) == 1
    assert slots.to_start(executing=2, held=3) == 0
    assert slots.to_start(executing=0, held=0) == 0


@given(st.integers(1, 16), st.integers(0, 16), st.data())
def test_never_more_than_concurrency_executing(
    concurrency: int, prefetch: int, data: st.DataObject
) -> None:
    """Play claims, starts and finishes in any order: executing never exceeds the limit,
    held runs never exceed prefetch."""
    slots = Slots(concurrency, prefetch)
    executing = held = writing = 0
    for _ in range(40):
        action = data.draw(st.sampled_from(["claim", "finish", "written"]))
        if action == "claim":
            room = slots.claim_room(
                executing=executing, held=held, in_hand=executing + held + writing, reserved=0
            )
            for _ in range(data.draw(st.integers(0, max(room, 0)))):
                if slots.may_start(executing=executing, held=held):
                    executing += 1
                else:
                    held += 1
        elif action == "finish" and executing:
            executing -= 1
            writing += 1
            started = slots.to_start(executing=executing, held=held)
            executing, held = executing + started, held - started
        elif action == "written" and writing:
            writing -= 1
        assert executing <= concurrency
        assert held <= prefetch
        assert held == 0 or executing == concurrency  # a held run never waits by a free slot


def test_claims_ride_with_the_writer() -> None:
    one = Slots(1)
    assert one.claim_with_writes(executing=0, held=0, in_hand=1)
    assert not one.claim_with_writes(executing=1, held=0, in_hand=1)
    assert not Slots(8).claim_with_writes(executing=0, held=0, in_hand=2)
    # At concurrency 1 with runs held, the refill always rides with the completion.
    ahead = Slots(1, prefetch=4)
    assert ahead.claim_with_writes(executing=1, held=3, in_hand=5)
    assert not Slots(8, prefetch=4).claim_with_writes(executing=7, held=2, in_hand=10)


def test_with_runs_held_one_claim_at_a_time() -> None:
    # Without prefetch the claim loop and the writer may claim side by side, as before.
    assert Slots(4).may_claim(reserved=2)
    # With it, a second claim could answer first and hold a lower priority ahead.
    assert not Slots(1, prefetch=4).may_claim(reserved=1)
    assert Slots(1, prefetch=4).may_claim(reserved=0)
