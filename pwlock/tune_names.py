"""The names of a sweep's Tune trials, in a module that imports nothing, so that it travels with the
experiment.

Tune pickles its `trial_name_creator` into the experiment's state (tuner.pkl and each trial's entry
of experiment_state-*.json). A function of pwlock's internals there would tie every experiment to
that function's module and name: renamed, moved, or absent (a notebook without pwlock's heavy
dependencies) and Tune's own `ExperimentAnalysis` and `Tuner.restore` fail. So each trial's config
carries its name as a plain string (`run.name`, the plan's `sftlock-sft-k32-seed0`), and
pwlock.sweep registers this module with Ray's cloudpickle to be pickled by value: Tune's state holds
the few lines of `trial_name` itself, and loads wherever Ray does.
"""

from __future__ import annotations

from typing import Any


def trial_name(trial: Any) -> str:
    """Tune's trial_name_creator and trial_dirname_creator: the trial's name from its config, then
    Tune's trial id (`sftlock-sft-k32-seed0-a1b2c_00003`)."""
    return f"{trial.config['run']['name']}-{trial.trial_id}"


class RebuiltNames:
    """The namer of a run rebuilt from the plan because Tune's state could not be read
    (pwlock.tune_state): each trial under the name its journal has (`earlier`, by run.name), so it
    goes on from there; a trial without a journal as `trial_name` names it."""

    def __init__(self, earlier: dict[str, str]):
        self.earlier = earlier

    def __call__(self, trial: Any) -> str:
        return self.earlier.get(trial.config["run"]["name"]) or trial_name(trial)
