from daram.text import figure, plural


def test_plural_counts():
    assert plural(1, "shard") == "1 shard"
    assert plural(0, "shard") == "0 shards" and plural(2, "step") == "2 steps"
    assert plural(1024, "row") == "1,024 rows"
    assert plural(1, "sentence") == "1 sentence" and plural(3, "matrix", "matrices") == "3 matrices"


def test_figures_have_no_exponent():
    assert figure(1290.4) == "1,290" and figure(123456.0) == "123,456"
    assert figure(0.97634) == "0.976" and figure(10.84) == "10.8" and figure(99.96) == "100"
