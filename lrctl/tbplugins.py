"""What TensorBoard's plugins read besides the scalars: a run's custom-scalars layout, a compare run's hparams.

The lesson plots train and test metric on one chart with the lr beneath; TensorBoard's Scalars tab
draws one chart per tag, so every run carries a layout for the *Custom Scalars* tab (two categories,
stacked: ``train_mse`` + ``test_mse`` together, then ``lr``). ``lrctl compare`` gives each of its runs
the hparams (plan, seed) and the final and best metrics, for the *HParams* tab.

Everything is built from TensorBoard's protos, without TensorFlow (``custom_scalar.summary.pb`` and
the hparams ``summary`` module import it), and read back in the tests with TensorBoard's own loaders.

>>> run_layout("mse").value[0].tag
'custom_scalars__config__'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _string_tensor(data: bytes) -> Any:
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[data],
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto())


def layout_categories(metric: str) -> list[tuple[str, str]]:
    """(category title, tag regex) of a run's layout: the metric's train and test curves, then the lr."""
    return [(f"train_{metric} and test_{metric}", rf"^(train|test)_{metric}$"), ("learning rate", r"^lr$")]


def run_layout(metric: str) -> Any:
    """The custom-scalars layout of a run whose metric is ``metric``, as a Summary (write it at step 0).

    Runs with the same metric write the same layout, which TensorBoard merges into one (by title)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import metadata as cs_metadata

    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[layout_pb2.Chart(
            title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))])
        for title, regex in layout_categories(metric)])
    value = summary_pb2.Summary.Value(tag=cs_metadata.CONFIG_SUMMARY_TAG,
                                      metadata=cs_metadata.create_summary_metadata(),
                                      tensor=_string_tensor(layout.SerializeToString()))
    return summary_pb2.Summary(value=[value])


def best_tag(metric: str) -> str:
    """The scalar a compare run gets for its best test metric (the HParams tab shows the last point of a tag)."""
    return f"best_test_{metric}"


def write_experiment(group_dir: Path, metric: str, seeds: bool) -> None:
    """The HParams tab's columns for a compare group: hparams plan (and seed), metrics final train/test and best."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    from lrctl.tblog import TensorBoardLogger

    hparams = [hp.HParam("plan"), *([hp.HParam("seed")] if seeds else [])]
    metrics = [hp.Metric(f"test_{metric}", display_name=f"final test_{metric}"),
               hp.Metric(f"train_{metric}", display_name=f"final train_{metric}"),
               hp.Metric(best_tag(metric), display_name=f"best test_{metric}")]
    logger = TensorBoardLogger(group_dir)
    logger.write_summary(hp.hparams_config_pb(hparams, metrics), step=0)
    logger.close()


def write_trial(run_dir: Path, plan: str, seed: int | None, metric: str, best: float, step: int) -> None:
    """One compare run's hparams (its session start) and its best test metric at its last epoch ``step``."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    from lrctl.tblog import TensorBoardLogger

    values: dict[str, Any] = {"plan": plan}
    if seed is not None:
        values["seed"] = seed
    logger = TensorBoardLogger(run_dir)
    logger.write_summary(hp.hparams_pb(values, trial_id=run_dir.name), step=0)
    logger.log(best_tag(metric), best, step)
    logger.close()
