"""BatchScores.concat: several batches' scores as one (dynamic sampling's rounds of a step)."""

from collections import Counter

from reward.scores import BatchScores


def test_concat_keeps_order_aligns_parts_and_sums_counts():
    a = BatchScores(scores=[1.0, None], reasons=[None, "timeout"], parts={"acc": [1.0, None]},
                    none_reasons=Counter(timeout=1), non_numeric_parts=Counter(fmt=1), output_bytes=5)
    b = BatchScores(scores=[0.0], reasons=[None], parts={"fmt": [0.5]}, batch_fallbacks=1, output_bytes=2)
    c = BatchScores.concat([a, b])
    assert c.scores == [1.0, None, 0.0] and c.reasons == [None, "timeout", None]
    assert c.parts == {"acc": [1.0, None, None], "fmt": [None, None, 0.5]}
    assert c.none_reasons == {"timeout": 1} and c.non_numeric_parts == {"fmt": 1}
    assert (c.batch_fallbacks, c.output_bytes) == (1, 7)
    m = c.metrics()
    assert m["reward/mean"] == 0.5 and m["reward/acc"] == 1.0 and m["reward/fmt"] == 0.5 and m["reward/count"] == 3.0
