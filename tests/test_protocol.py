"""The protocol a language model's perplexity was measured under, recorded with every run: window
length, split and windows evaluated, and what the pruning calibrated on (source, windows, seed) as
it drew them."""

from __future__ import annotations

import pytest
from conftest import runs
from test_owl import llama_on_wikitext  # noqa: F401 (a fixture)

from prunelab.names import Protocol


@pytest.mark.parametrize(
    ("options", "calibration", "windows"),
    [
        (["method=sparsegpt", "scope=local", "method.samples=8", "calibration_seed=3"], "train", "8"),
        (["method=magnitude", "scope=local", "calibration_seed=3"], "none", "0"),
        (["method=wanda", "scope=owl", "method.samples=6", "calibration_seed=3", "ratio=0.6"], "train", "6"),
    ],
    ids=["sparsegpt", "magnitude", "owl"],
)
def test_a_language_model_run_records_the_protocol_its_perplexity_is_measured_under(
    cli,
    workdir,
    llama_on_wikitext,  # noqa: F811
    options,
    calibration,
    windows,
):
    result = cli(*llama_on_wikitext, "train.epochs=0", "finetune.epochs=0", *options)

    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    params = run.data.params
    assert params[Protocol.SEQ_LEN] == params["dataset.seq_len"] == "32"
    assert params[Protocol.EVAL_SPLIT] == "test"
    assert int(params[Protocol.EVAL_WINDOWS]) > 0
    assert params[Protocol.CALIBRATION] == calibration
    assert params[Protocol.CALIBRATION_WINDOWS] == windows
    assert params[Protocol.CALIBRATION_SEED] == "3"


def test_an_image_classifier_run_records_no_language_model_protocol(cli, workdir):
    result = cli("ratio=0.5")

    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    assert not [k for k in run.data.params if k.startswith("protocol.")]
