"""Every default in one place: the lifecycle's, the controller's, the optimizer's and a run's.

Each constant is read where it belongs: the gate defaults by
:class:`~esper.leyline.config.QualityGates`, the task defaults by
:class:`~esper.leyline.config.TaskConfig`, the policy defaults by
``esper.tamiyo.ControllerConfig``, the optimizers' by ``esper.optim.SGDConfig`` and
``esper.optim.AdamWConfig``,
a run's by both ``esper.tolaria.config.GrowConfig`` and the ``esper`` command
line, and the rest by the state and telemetry.
"""

from types import MappingProxyType
from typing import Final

# Quality gates (accuracy is in percentage points).
# G2 probes a training seed at this alpha and wants the validation loss to fall by at
# least this fraction (0.0: no rise) against the host alone at its slot.
DEFAULT_PROBE_ALPHA: Final = 0.1
DEFAULT_MIN_PROBE_LOSS_REDUCTION: Final = 0.0
DEFAULT_MIN_BLENDING_EPOCHS: Final = 3
DEFAULT_MIN_SEED_GRADIENT_RATIO: Final = 0.05
DEFAULT_ALPHA_COMPLETE_THRESHOLD: Final = 0.95
DEFAULT_MIN_FOSSILIZE_CONTRIBUTION: Final = 1.0
# Epochs a seed spends in HOLDING (alpha at 1.0, counterfactual measured) before G5.
DEFAULT_MIN_HOLDING_EPOCHS: Final = 1
DEFAULT_MAX_ISOLATION_VIOLATIONS: Final = 10

# Task timing.
DEFAULT_MAX_EPOCHS: Final = 25
DEFAULT_TRAIN_TO_BLEND_FRACTION: Final = 0.2
DEFAULT_BLENDING_STEPS: Final = 5
DEFAULT_EMBARGO_EPOCHS: Final = 5
# HOLDING times out after this fraction of max_epochs, but never sooner than the minimum.
DEFAULT_HOLDING_TIMEOUT_FRACTION: Final = 0.1
DEFAULT_MIN_HOLDING_TIMEOUT_EPOCHS: Final = 5

# State bookkeeping.
DEFAULT_MAX_HISTORY: Final = 100

# Tournaments (esper.nn.candidates): K candidate seeds of one blueprint in one slot.
MAX_CANDIDATES: Final = 16  # the stacked forward holds K copies of the slot's features
DEFAULT_CANDIDATES: Final = 1  # one seed: no tournament
CANDIDATE_INIT_JITTER: Final = 1e-2  # std of the noise on what a blueprint zero-initialises
LOST_SELECTION: Final = "lost_selection"  # the prune reason of a tournament's losers
NO_WINNER: Final = "no_winner"  # a tournament pruned: no live candidate had a finite score
NON_FINITE: Final = "non_finite"  # the prune reason of a seed or candidate that went non-finite
DEFAULT_BLEND_ALGORITHM: Final = "sigmoid"
BLEND_ALGORITHMS: Final = ("linear", "sigmoid", "gated")
# Steepness of the sigmoid alpha ramp over its normalised [0, 1] time axis.
DEFAULT_SIGMOID_STEEPNESS: Final = 12.0

# One run of ``esper grow`` (GrowConfig's defaults and the CLI's: one source). 30 epochs
# leave room, on the contract's timing (a training dwell of 0.2 x epochs, 5 blending
# steps, 5 embargo epochs), for a seed germinated on the first plateau to train, blend,
# hold and be fossilized or pruned, and for a second one after it.
DEFAULT_RUN_EPOCHS: Final = 30
DEFAULT_RUN_MAX_SEEDS: Final = 2
DEFAULT_RUN_LR: Final = 0.05
DEFAULT_RUN_BATCH_SIZE: Final = 64
DEFAULT_RUN_SEED: Final = 0
MAX_RUN_SEED: Final = 2**32 - 1  # every generator a run seeds accepts it
DEFAULT_RUN_TASK: Final = "digits"
RUN_TASKS: Final = ("digits", "cifar10", "chars")
DEFAULT_RUN_SLOTS: Final = ("early", "mid", "late")
# The blueprints the controller plants, in turn, when a run names none (per topology).
DEFAULT_RUN_BLUEPRINTS: Final = MappingProxyType({
    "cnn": ("norm", "conv_light", "attention", "depthwise"),
    "transformer": ("lora", "mlp", "norm", "attention"),
})
DEFAULT_RUN_DIR: Final = "runs/grow"
DEFAULT_COMPILE_BACKEND: Final = "inductor"
# When the training step compiles: "always", "never", or "auto": on every device the run
# times its first eager steps and compiles only when the steps it has left would
# take at least AUTO_COMPILE_MIN_EAGER_SECONDS eagerly, then goes back to eager if its
# compiled steps are not faster. Measured on a 2-core CPU (python -m bench.compile_choice,
# torch 2.13, inductor): a cold compile costs 27-30 s per graph, one graph per topology
# (about four in a default run); it saves 66% of the digits CNN's step (paid back after
# ~40-55 s of eager steps per graph) and 0-16% of the CIFAR CNN's (~300 s per graph, or
# never at one thread).
COMPILE_MODES: Final = ("auto", "always", "never")
DEFAULT_COMPILE_MODE: Final = "auto"
AUTO_COMPILE_MIN_EAGER_SECONDS: Final = 600.0
AUTO_COMPILE_TIMED_STEPS: Final = 5  # eager steps timed, after one untimed warm-up step
# Under torchrun: how long a rank waits for the others in a collective.
DEFAULT_DIST_TIMEOUT_S: Final = 120.0
# The chars task's transformer host: its attention heads (they divide its width).
RUN_TRANSFORMER_HEADS: Final = 4
# The console of ``esper grow``: plain mode prints the epoch's step at most this often; the
# live display redraws its step bar at most this often.
PROGRESS_LINE_SECONDS: Final = 10.0
STEP_REFRESH_SECONDS: Final = 0.25
# ``esper demo``: the hand-driven lifecycle's length.
DEFAULT_DEMO_EPOCHS: Final = 12

# The heuristic controller's policy (esper.tamiyo.ControllerConfig; a run sets its own
# blueprints and max_seeds from the run's).
DEFAULT_CONTROLLER_MAX_SEEDS: Final = 3
DEFAULT_MAX_GERMINATIONS_PER_SLOT: Final = 2
DEFAULT_WARMUP_EPOCHS: Final = 1
DEFAULT_PLATEAU_PATIENCE: Final = 2
DEFAULT_PLATEAU_DELTA: Final = 0.5
DEFAULT_STALL_EPOCHS: Final = 4
DEFAULT_PRUNE_BELOW: Final = -1.0

# The optimizers of the training step (esper.optim.SGDConfig, esper.optim.AdamWConfig);
# SGD's learning rate defaults to DEFAULT_RUN_LR. Weight decay applies to matrices and
# kernels only, never to norms and biases (parameters of fewer than 2 dimensions).
OPTIMIZERS: Final = ("sgd", "adamw")
DEFAULT_OPTIMIZER: Final = "sgd"
DEFAULT_MOMENTUM: Final = 0.9
DEFAULT_WEIGHT_DECAY: Final = 5e-4
DEFAULT_ADAMW_LR: Final = 1e-3
DEFAULT_ADAMW_BETAS: Final = (0.9, 0.999)
DEFAULT_ADAMW_EPS: Final = 1e-8
DEFAULT_ADAMW_WEIGHT_DECAY: Final = 0.01
# The learning-rate schedule of a run: a multiplier of every group's rate, a tensor input
# of the compiled step (so it never recompiles), after a linear warmup of this many steps.
SCHEDULES: Final = ("constant", "cosine")
DEFAULT_SCHEDULE: Final = "constant"
DEFAULT_WARMUP_STEPS: Final = 0
# Numeric precision of the forward pass (autocast); fp16 adds a loss scale that starts
# here, halves on an overflow and doubles after this many overflow-free steps.
PRECISIONS: Final = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION: Final = "fp32"
INITIAL_LOSS_SCALE: Final = 2.0**16
LOSS_SCALE_GROWTH_INTERVAL: Final = 2000
# Where a run trains: "auto" picks CUDA when it is available (each torchrun rank its own).
DEVICES: Final = ("auto", "cpu", "cuda")
DEFAULT_DEVICE: Final = "auto"

# The largest learning rate accepted anywhere (SGD diverges at once far below it).
MAX_LEARNING_RATE: Final = 10.0

# Gradient telemetry.
DEFAULT_TELEMETRY_STRIDE: Final = 10
DEFAULT_TELEMETRY_EMA_DECAY: Final = 0.9
DEFAULT_MAX_GRADIENT_RATIO: Final = 10.0
DEFAULT_ISOLATION_TOLERANCE: Final = 1e-3

# Seed safety (the step's health flags; see esper.ops.health.seed_health).
# A seed whose alpha-weighted output exceeds this many times the host's largest
# activation at its slot has blown up: its step is skipped and it is denied.
DEFAULT_MAX_BLEND_ACTIVATION_RATIO: Final = 100.0
# A blended seed whose validation loss exceeds this many times the host-alone loss at
# its slot (its counterfactual) has blown up: it is pruned at the epoch's end.
DEFAULT_MAX_BLEND_LOSS_RATIO: Final = 2.0
