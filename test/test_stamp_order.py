"""StampOrder: in order, out of order, outlier stamps dropped, time jumps taken once the next frame confirms them."""
import pytest

from prism_ros.nodes.prism_inputs import BadInput, StampOrder

S = 1_000_000_000
T0 = 1_700_000_000 * S
P = S // 30


def cause(order: StampOrder, stamp: int) -> str:
    with pytest.raises(BadInput) as bad:
        order.accept(stamp)
    return bad.value.cause


def test_in_order_out_of_order_and_unstamped():
    order = StampOrder({"time_jump_threshold": 1.0})
    assert order.accept(T0) is None and order.accept(T0 + P) is None
    assert cause(order, T0) == "out_of_order" and cause(order, T0 + P) == "out_of_order"
    assert cause(order, 0) == "bad_stamp"
    assert order.accept(T0 + 2 * P) is None and order.newest == T0 + 2 * P


def test_an_outlier_stamp_is_dropped_and_a_confirmed_jump_is_taken():
    order = StampOrder({"time_jump_threshold": 1.0})
    order.accept(T0)
    assert cause(order, T0 + 10 * 365 * 24 * 3600 * S) == "bad_stamp"  # a clock glitch: not the new time
    assert order.accept(T0 + P) is None and order.newest == T0 + P
    assert cause(order, T0 - 60 * S) == "bad_stamp"  # a looped bag's first frame is held back
    assert order.accept(T0 - 60 * S + P).startswith("time jumped back by 60.0")  # its second confirms: reset
    assert order.accept(T0 - 60 * S + 2 * P) is None
    assert cause(order, T0 + 5 * S) == "bad_stamp"  # a gap in the input: no reset once confirmed
    assert order.accept(T0 + 5 * S + P) is None and order.newest == T0 + 5 * S + P
    order.reset()
    assert order.accept(T0 - 3600 * S) is None  # after a requested reset any stamp is welcome
