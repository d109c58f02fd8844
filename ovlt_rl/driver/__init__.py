"""The pieces of the driver (ovlt_rl/controller.py holds the loops that put them together).

    run.py         Run: output folder and lock, workers, resume, non-finite streak, logging, checkpoints, shutdown
    datasets.py    a run's train/val datasets and its number of steps
    rollouts.py    a GRPO step's groups: generate, score, dynamic sampling's refill
    samples.py     training samples: advantages, mini-batches, a batch's loss normaliser
    metrics.py     step metrics reduced over ranks, updates and responses
    timer.py       seconds per phase of a step
    validation.py  held-out accuracy, SFT validation loss, rollout/policy agreement after a sync
"""
