"""`rram evaluate --analog`: Monte Carlo on the analog crossbar tiles (models.analog), from the command line."""

from __future__ import annotations

import json

from tests.helpers.cli import assert_one_line_error, rram

MLP = ["--model", "mlp", "--epochs", "4", "--val-draws", "1", "--no-progress"]  # a network well above chance


def test_evaluate_on_analog_tiles(tmp_path, capsys, monkeypatch) -> None:
    model = tmp_path / "m.pt"
    assert rram(capsys, monkeypatch, "train", *MLP, "--sigma", "0.05", "-o", str(model)).code == 0
    base = ["evaluate", str(model), "--mc", "20", "--json"]
    digital = json.loads(rram(capsys, monkeypatch, *base).out)
    ideal = json.loads(rram(capsys, monkeypatch, *base, "--analog", "ideal").out)
    # the ideal tile is the digital forward exactly (models/analog tests prove it bit for bit): same draws, same counts
    assert (ideal["mean"], ideal["clean_accuracy"]) == (digital["mean"], digital["clean_accuracy"])
    assert digital["analog"] is None and ideal["analog"] is not None
    coarse = json.loads(rram(capsys, monkeypatch, *base, "--analog", "ibm_table1", "--analog-opt", "adc_bits=2").out)
    assert coarse["analog"]["adc_bits"] == 2
    # two ADC bits leave three output levels per tile column: the network cannot keep its accuracy
    assert digital["mean"] > 0.6 and coarse["mean"] < digital["mean"] - 0.2
    text = rram(capsys, monkeypatch, *base[:-1], "--analog", "ibm_table1").out
    assert "on analog tiles (ibm_table1)" in text
    assert_one_line_error(rram(capsys, monkeypatch, *base, "--analog", "nope"), "unknown analog tile preset 'nope'")
    assert_one_line_error(rram(capsys, monkeypatch, *base, "--analog-opt", "adc_bits=6"), "give --analog PRESET too")
    assert_one_line_error(rram(capsys, monkeypatch, *base, "--analog", "ideal", "--analog-opt", "x"), "KEY=VALUE")
