"""The statistics' one home (gradscope.statistics) agrees with everything that uses them."""

from pathlib import Path

import numpy as np
import pytest

import gradscope
from gradscope import statistics as catalog
from gradscope.diagnosis import KIND_ORDER, diagnose
from gradscope.figures import stat_words
from gradscope.store import RunWriter

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stat", catalog.STATISTICS, ids=lambda s: s.name)
def test_every_statistic_is_described_and_has_a_rule_or_says_why_not(stat):
    assert stat.title and stat.title[0].isupper() and stat_words(stat.name) == stat.title
    assert stat.group in catalog.GROUPS
    assert stat.over and stat.sums and all(s in catalog.RAW_SUMS for s in stat.sums)
    assert stat.combines.count(":") == len(stat.sums)
    assert bool(stat.rules) != bool(stat.no_rule), "a rule, or an explicit 'no rule' reason"
    assert set(stat.rules) <= set(KIND_ORDER), "rules are diagnosis finding kinds"


def test_raw_sums_say_how_they_combine():
    for raw in catalog.RAW_SUMS.values():
        assert raw.source in ("parameters", "small batches", "outputs", "output gradients")
        assert raw.combine in ("sum", "max", "units", "any", "argmax")
        assert (raw.combine in ("max", "any")) == (raw.counted_by in catalog.RAW_SUMS)


def test_the_diagnosis_reads_exactly_the_statistics_that_name_a_rule(tmp_path):
    layers = [{"name": f"l{j}", "type": "Linear", "params": 4} for j in range(3)]
    with RunWriter(tmp_path / "r.h5", layers, list(catalog.ALL_STATS)) as writer:
        for step in range(4):
            writer.append(step, np.ones((len(catalog.ALL_STATS), 3), dtype=np.float32))
    read = set()
    with gradscope.open_run(tmp_path / "r.h5") as run:
        original = run.read

        def reading(stat, *args, **kwargs):
            read.add(stat)
            return original(stat, *args, **kwargs)

        run.read = reading
        diagnose(run)
    assert read == {s.name for s in catalog.STATISTICS if s.rules}


def test_the_recorder_forms_statistics_from_catalogued_sums(tmp_path, monkeypatch):
    import torch

    from gradscope.recorder import _recorder

    seen = []
    original = _recorder.finish_record

    def finishing(sums, *args):
        seen.append(set(sums))
        return original(sums, *args)

    monkeypatch.setattr(_recorder, "finish_record", finishing)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, tmp_path / "r.h5", optimizer=opt):
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
    (keys,) = seen
    assert keys == set(catalog.RAW_SUMS)


def test_selection_errors_name_the_statistics():
    assert catalog.resolve_stats(None) == catalog.ALL_STATS
    assert catalog.resolve_stats(["act_grad_norm", "grad_norm"]) == ("grad_norm", "act_grad_norm")
    with pytest.raises(gradscope.UsageError, match="unknown statistic.*available: grad_norm"):
        catalog.resolve_stats(["grad_nrm"])
    with pytest.raises(ValueError, match="groups: grad"):
        catalog.names_in("gradient")
    assert catalog.title("my_stat") == "my_stat"


def test_the_readme_lists_every_statistic():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Statistics") :]
    for name in catalog.ALL_STATS:
        assert f"`{name}`" in table, name
