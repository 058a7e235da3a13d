"""fit's thread count: fixed, untouched, or measured on the run's first steps ("auto")."""

from __future__ import annotations

import pytest
import torch

from probgen.inference import accel, fit
from probgen.inference.accel import (
    PROBE_ABORT_ABOVE,
    PROBE_KEEP_BELOW,
    PROBE_MIN_STEPS,
    PROBE_TIMED_STEPS,
    ThreadTuner,
    check_threads,
)

CPU = torch.device("cpu")


class _Fit(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": ((self.net(x) - x) ** 2).mean()}


def _drive(tuner: ThreadTuner, seconds: dict[int, float]) -> list[int]:
    """Runs the probe with a step time per thread count; returns the counts it stepped at."""
    counts = []
    while tuner.probing:
        tuner.before_step()
        counts.append(torch.get_num_threads())
        tuner.after_step(seconds[torch.get_num_threads()])
    return counts


@pytest.fixture
def idle(monkeypatch):
    """Sets how many cores /proc/stat reports idle during the single-thread probe steps."""
    def set_idle(cores: float | None) -> None:
        monkeypatch.setattr(accel, "idle_cores", lambda start, end: cores)
    set_idle(1.0)
    return set_idle


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two", "Auto"])
def test_bad_thread_counts_are_value_errors_naming_the_argument(bad):
    with pytest.raises(ValueError, match="threads: expected 'auto', None or a positive int"):
        check_threads(bad)
    with pytest.raises(ValueError, match="threads"):
        fit(_Fit(), torch.randn(8, 2), steps=1, batch_size=4, progress=False, threads=bad)


@pytest.mark.threads(2)
def test_the_probe_times_one_thread_then_torchs_count_after_an_untimed_step_of_each(idle):
    tuner = ThreadTuner("auto", CPU, steps_left=1000)
    counts = _drive(tuner, {1: 1.0, 2: 0.5})
    assert counts == [1] * (1 + PROBE_TIMED_STEPS) + [2] * (1 + PROBE_TIMED_STEPS)
    assert tuner.chosen == 2 and torch.get_num_threads() == 2
    assert tuner.times == {1: [1.0] * PROBE_TIMED_STEPS, 2: [0.5] * PROBE_TIMED_STEPS}


@pytest.mark.threads(2)
@pytest.mark.parametrize("ratio, expected", [(0.5, 2), (PROBE_KEEP_BELOW * 0.99, 2),
                                             (PROBE_KEEP_BELOW, 1), (1.0, 1), (1.9, 1)])
def test_more_threads_are_kept_only_when_measured_clearly_faster(idle, ratio, expected):
    tuner = ThreadTuner("auto", CPU, steps_left=1000)
    _drive(tuner, {1: 0.01, 2: 0.01 * ratio})
    assert tuner.chosen == expected == torch.get_num_threads()


@pytest.mark.threads(2)
def test_a_step_far_slower_at_more_threads_ends_the_probe_at_once(idle):
    tuner = ThreadTuner("auto", CPU, steps_left=1000)
    counts = _drive(tuner, {1: 0.01, 2: 0.01 * PROBE_ABORT_ABOVE * 1.01})
    assert counts == [1] * (1 + PROBE_TIMED_STEPS) + [2]  # one step at 2, then decided
    assert tuner.chosen == 1 == torch.get_num_threads()


@pytest.mark.threads(2)
@pytest.mark.parametrize("cores, step, expected", [
    (0.7, 0.05, [1] * (1 + PROBE_TIMED_STEPS)),  # busy: no step at 2 threads
    (1.0, 0.05, [1] * (1 + PROBE_TIMED_STEPS) + [2] * (1 + PROBE_TIMED_STEPS)),
    (None, 0.05, [1] * (1 + PROBE_TIMED_STEPS) + [2] * (1 + PROBE_TIMED_STEPS)),  # unknown
    (0.2, 0.004, [1] * (1 + PROBE_TIMED_STEPS) + [2] * (1 + PROBE_TIMED_STEPS)),  # too short
])
def test_a_busy_machine_keeps_one_thread_without_trying_more(idle, cores, step, expected):
    idle(cores)
    tuner = ThreadTuner("auto", CPU, steps_left=1000)
    assert _drive(tuner, {1: step, 2: step / 2}) == expected


def test_idle_cores_from_two_cpu_time_readings():
    import os

    cores = len(os.sched_getaffinity(0))
    assert accel.idle_cores((100.0, 1000.0), (150.0, 1100.0)) == pytest.approx(cores * 0.5)
    assert accel.idle_cores(None, (1.0, 2.0)) is None
    assert accel.idle_cores((1.0, 2.0), (1.0, 2.0)) is None
    reading = accel.cpu_times()
    if reading is not None:  # Linux
        assert 0 <= reading[0] <= reading[1]


@pytest.mark.threads(2)
def test_no_probe_for_fixed_untouched_short_saved_environment_or_gpu_runs(monkeypatch):
    assert ThreadTuner(3, CPU, 1000).chosen == 3 == torch.get_num_threads()
    torch.set_num_threads(2)
    untouched = ThreadTuner(None, CPU, 1000)
    assert not untouched.probing and untouched.chosen is None and untouched.current == 2
    short = ThreadTuner("auto", CPU, PROBE_MIN_STEPS - 1)
    assert not short.probing and short.chosen == 1 == torch.get_num_threads()
    torch.set_num_threads(2)
    saved = ThreadTuner("auto", CPU, 1000, saved=2)
    assert not saved.probing and saved.chosen == 2
    assert not ThreadTuner("auto", CPU, 1000, distributed=True).probing
    assert not ThreadTuner("auto", torch.device("cuda"), 1000).probing
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not ThreadTuner("auto", CPU, 1000).probing


def test_one_thread_processes_are_not_probed():
    # torch's count is the upper candidate: a process set to one thread stays there
    assert torch.get_num_threads() == 1
    tuner = ThreadTuner("auto", CPU, 1000)
    assert not tuner.probing and tuner.chosen == 1


@pytest.mark.threads(2)
@pytest.mark.parametrize("threads, steps, expected", [(1, 5, 1), ("auto", 5, 1), (None, 5, 2)])
def test_fit_reports_its_count_and_restores_torchs_setting(threads, steps, expected):
    history = fit(_Fit(), torch.randn(64, 2), steps=steps, batch_size=8, progress=False,
                  threads=threads)
    assert history.threads == expected
    assert torch.get_num_threads() == 2


@pytest.mark.threads(2)
def test_a_probed_fit_trains_every_step_and_chooses_a_count(tmp_path, idle):
    history = fit(_Fit(), torch.randn(256, 2), steps=PROBE_MIN_STEPS, batch_size=8,
                  progress=False, out_dir=tmp_path, log_every=1)
    assert history.threads in (1, 2)
    assert [r["step"] for r in history.records] == list(range(1, PROBE_MIN_STEPS + 1))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["threads"] == history.threads
    assert torch.get_num_threads() == 2


@pytest.mark.threads(2)
def test_a_resumed_run_keeps_the_count_it_was_trained_with(tmp_path):
    x = torch.randn(256, 2)
    fit(_Fit(), x, steps=5, batch_size=8, progress=False, out_dir=tmp_path, threads=2)
    resumed = fit(_Fit(), x, steps=5 + 2 * PROBE_MIN_STEPS, batch_size=8, progress=False,
                  out_dir=tmp_path, resume=True)
    assert resumed.threads == 2


@pytest.mark.threads(2)
def test_the_run_layer_samples_with_the_count_training_measured(tmp_path):
    from probgen.run.experiment import set_threads

    fit(_Fit(), torch.randn(64, 2), steps=3, batch_size=8, progress=False, out_dir=tmp_path,
        threads=1)
    assert set_threads({}, None, tmp_path) == 1
    assert set_threads({"train": {"threads": 2}}, None, tmp_path) == 2
    assert set_threads({}, 1, tmp_path) == 1
