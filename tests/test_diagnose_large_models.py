"""The large-model rules (kurtosis_growing, batch_above_noise_scale) on synthetic run files."""

import numpy as np
import pytest

import gradscope
from gradscope.diagnosis import diagnose
from tests.run_files import LAYERS, NOISE_LARGE, open_writer, write_noise_run


def write_kurtosis_run(path, records=40):
    """conv1 Gaussian (3), layer1.0.conv1 heavy-tailed but steady (150), layer1.0.bn1 from 3
    to 400 from record 20 on with outlier channel 17, fc growing 3 -> 40 (below the floor)."""
    n = len(LAYERS)
    writer = open_writer(path, LAYERS, ["act_kurtosis", "act_outlier_channel"])
    for i in range(records):
        kurtosis = np.full(n, 3.0)
        kurtosis[1] = 150.0
        kurtosis[2] = 3.0 if i < 20 else 400.0
        kurtosis[-1] = 3.0 + i
        channel = np.full(n, 5.0)
        channel[2] = 17.0
        writer.append(10 * i, np.stack([kurtosis, channel]).astype(np.float32))
    writer.close()


def test_kurtosis_growing_names_the_layer_its_step_and_channel(tmp_path):
    write_kurtosis_run(tmp_path / "k.h5")
    with gradscope.open_run(tmp_path / "k.h5") as run:
        result = diagnose(run)
    found = [f for f in result.findings if f.kind == "kurtosis_growing"]
    assert [(f.layer, f.step, f.value) for f in found] == [(LAYERS[2]["name"], 200, 400.0)]
    assert "from 3 to 400" in found[0].message and "outlier channel is 17" in found[0].message
    with gradscope.open_run(tmp_path / "k.h5") as run:  # the thresholds are settable
        lower = diagnose(run, kurtosis_floor=20.0)
    assert {f.layer for f in lower.findings} == {LAYERS[2]["name"], LAYERS[-1]["name"]}


@pytest.mark.parametrize("factor, fires", [(0.5, True), (2.0, False)])
def test_batch_above_noise_scale_is_a_note_about_the_whole_net(tmp_path, factor, fires):
    truth = write_noise_run(tmp_path / "n.h5", records=30)
    ratio = NOISE_LARGE / truth["model"]
    with gradscope.open_run(tmp_path / "n.h5") as run:
        result = diagnose(run, batch_noise_ratio=factor * ratio)
    found = [f for f in result.findings if f.kind == "batch_above_noise_scale"]
    if not fires:
        assert found == []
        return
    (finding,) = found
    assert finding.layer is None and finding.step == 0
    np.testing.assert_allclose(finding.value, ratio, rtol=1e-5)
    assert f"({NOISE_LARGE} rows)" in finding.message


def test_batch_above_noise_scale_is_skipped_without_small_batches(tmp_path):
    write_noise_run(tmp_path / "one.h5", measured=False)
    with gradscope.open_run(tmp_path / "one.h5") as run:
        result = diagnose(run)
    assert not [f for f in result.findings if f.kind == "batch_above_noise_scale"]
    assert any("batch_above_noise_scale: " in s and "small batch" in s for s in result.skipped)
