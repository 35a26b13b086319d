"""The knobs' names, in one place.

RENAMED_KEYS maps a knob's former dotted name to its name now. A command line that still writes
the former name is refused in one line naming the new one; a record written under the former name
(config.json of an older run) is read as if written under the new one, so a resume compares like
with like and the analysis shows one column per knob.
"""

RENAMED_KEYS = {
    "schedule.decay": "schedule.gamma",  # geometric: the factor per epoch, torch's ExponentialLR gamma
    "schedule.epoch": "schedule.switch_epoch",  # step: the epoch after which lr2 takes over
    "data.n_train": "data.generated_train",  # synthetic: images generated, before any split or subset
    "data.n_test": "data.generated_test",
}

# metrics.jsonl / steps.jsonl columns renamed: the per-epoch and per-step learning rate are not
# the `lr` knob (the rate the schedule starts from).
RENAMED_COLUMNS = {"metrics.jsonl": {"lr": "epoch_lr"}, "steps.jsonl": {"lr": "step_lr"}}


def renamed(flat: dict) -> dict:
    """A flat {dotted key: value} record with its former names replaced by today's."""
    return {RENAMED_KEYS.get(k, k): v for k, v in flat.items()}
