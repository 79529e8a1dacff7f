"""The custom-scalars layout and the compare hparams, read back with TensorBoard's own loaders."""

from __future__ import annotations

import re

import pytest

from lrctl.config import RunConfig
from lrctl.session import RunSession


def _multiplexer(logdir):
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return mux


def _layout(mux, run):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    events = mux.Tensors(run, metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout()
    layout.ParseFromString(events[0].tensor_proto.string_val[0])
    return layout


def test_every_run_shows_train_and_test_on_one_chart_with_the_lr_beneath(tmp_path):
    session = RunSession.open(tmp_path, "r", RunConfig(), save_every=1e9)
    session.load()
    session.train(2, "0.03")
    session.undo()  # back to epoch 0: TensorBoard's purge must not hide the layout
    session.train(3, "0.01")
    session.close()
    mux = _multiplexer(tmp_path)
    assert mux.Runs().keys() == {"r"}
    layout = _layout(mux, "r")
    charts = [(c.title, [ch.multiline.tag[0] for ch in c.chart]) for c in layout.category]
    assert [title for title, _ in charts] == ["train_mse and test_mse", "learning rate"]  # lr beneath
    scalar_tags = mux.Runs()["r"]["tensors"]
    shown = [[t for t in scalar_tags if re.search(regexes[0], t)] for _, regexes in charts]
    assert sorted(shown[0]) == ["test_mse", "train_mse"] and shown[1] == ["lr"]
    assert [e.step for e in mux.Tensors("r", "lr")] == [0, 1, 2]


def test_compare_gives_the_hparams_tab_plan_seed_and_final_and_best_metrics(tmp_path):
    from tensorboard.plugins.hparams import metadata

    from lrctl.cli import main

    plans = ["3@0.03", "3@exp 0.05 gamma=0.5"]
    assert main(["compare", "--plans", *plans, "--seeds", "24,25", "--name", "g", "--runs-dir", str(tmp_path)]) == 0
    mux = _multiplexer(tmp_path / "g")
    experiment = metadata.parse_experiment_plugin_data(
        mux.SummaryMetadata(".", metadata.EXPERIMENT_TAG).plugin_data.content)
    assert [h.name for h in experiment.hparam_infos] == ["plan", "seed"]
    assert [m.name.tag for m in experiment.metric_infos] == ["test_mse", "train_mse", "best_test_mse"]
    seen = set()
    for run in set(mux.Runs()) - {"."}:
        start = metadata.parse_session_start_info_plugin_data(
            mux.SummaryMetadata(run, metadata.SESSION_START_INFO_TAG).plugin_data.content)
        plan, seed = start.hparams["plan"].string_value, int(start.hparams["seed"].number_value)
        seen.add((plan, seed))
        test = [e.tensor_proto.float_val[0] for e in mux.Tensors(run, "test_mse")]
        best = mux.Tensors(run, "best_test_mse")
        assert len(test) == 3 and best[-1].step == 2
        assert best[-1].tensor_proto.float_val[0] == pytest.approx(min(test))
    assert seen == {(p, s) for p in plans for s in (24, 25)}
