"""How the worker groups deal items to ranks and put the results back (no Ray actors)."""

from ovlt_rl.workers.group import merge_from_ranks, split_for_ranks


def test_round_robin_shares_merge_back_in_item_order():
    items = list("abcdefg")
    shares = split_for_ranks(items, 3)
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert merge_from_ranks([[x.upper() for x in s] for s in shares], 3, len(items)) == list("ABCDEFG")


def test_fewer_items_than_ranks_leave_ranks_empty():
    shares = split_for_ranks(["a", "b"], 4)
    assert shares == [["a"], ["b"], [], []]
    # The empty ranks' results may be empty lists or left out (the rollout group calls no worker for them).
    assert merge_from_ranks([["A"], ["B"], [], []], 4, 2) == ["A", "B"]
    assert merge_from_ranks([["A"], ["B"]], 4, 2) == ["A", "B"]
