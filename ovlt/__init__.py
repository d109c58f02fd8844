"""ovlt's application layer: the `ovlt` command line, the cycle, and data preparation for a run.

The packages form layers, each importing only from those below it (tests/test_layers.py checks):

    ovlt        the CLI (cli.py), the SFT -> GRPO cycle (cycle.py), the config tree's root and
                loading (config.py), a run's data preparation (run_data.py)
    data_prep   data preparation: synthetic task, distillation, filters, mixes, source adapters
    ovlt_rl     the engine: config sections, the GRPO/SFT driver, workers, engines, models, algos, data, eval
    reward      verifiable-answer rewards
"""
