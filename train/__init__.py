"""`[torchrun ...] python -m train`: the GPT-2 pretraining stage (see docs/train.md).

Exit codes (the contract with Slurm scripts and the orchestrator):
"""

EXIT_OK = 0  # finished: max_steps reached, or train.target_loss reached
EXIT_USER_ERROR = 2  # bad config, data, checkpoint or arguments (one `error:` line on stderr)
EXIT_PREEMPTED = 3  # stopped on SIGTERM/SIGINT/SIGUSR1/SIGHUP/SIGQUIT after writing a checkpoint: requeue
EXIT_NONFINITE = 4  # train.max_bad_steps non-finite steps in a row; last good checkpoint kept
