"""One vocabulary: the names of everything a run records in MLflow, for the code that writes them
(the runner, the dense stage, the schedules, the sweep) and the code that reads them back
(``prunelab.analysis``, the tests). A name lives here once; a module that writes or reads it
imports it: ``from prunelab.names import Metric, Tag``.

* :class:`Tag`: what identifies a run (its role and keys) and where it came from.
* :class:`Metric`: a run's results (``test_accuracy``, ``sparsity.prunable``, ...), its figures
  after each stage (``dense.*``, ``pruned.*``, ``finetuned.*``), its series (``finetune.loss`` per
  epoch, ``schedule.sparsity`` per update, a lottery's ``level.*``) and its costs
  (``cost.<form>.<figure>``).
* :class:`Artifact`: the files a run logs beside them.
* :data:`IGNORE`: the label of a position that predicts nothing, for the data that write it and
  every loss and accuracy that must skip it.
"""

from __future__ import annotations

import re

# The label of a position that predicts nothing (a token window's last position, as the papers
# evaluate): skipped by the loss (``F.cross_entropy``'s default ``ignore_index``) and by accuracy.
IGNORE = -100


class Role:
    """The values of the ``prunelab.role`` tag."""

    DENSE = "dense"  # the trained dense model: the ratio-0 point of every curve
    PRUNED = "pruned"  # one point: pruned, fine-tuned, measured
    SWEEP = "sweep"  # a sweep's parent run


class Tag:
    ROLE = "prunelab.role"
    RUN_KEY = "prunelab.run_key"  # everything that decides the result (prunelab.experiment.keys)
    POINT_KEY = "prunelab.point_key"  # the run key without the seeds: the seeds of one point share it
    DENSE_KEY = "prunelab.dense_key"  # the dense model the run started from
    ERROR = "prunelab.error"  # why a run ended FAILED or KILLED
    OVERRIDES = "prunelab.overrides"  # a sweep point's command-line overrides
    SWEEP_ID = "prunelab.sweep_id"  # the parent run of the sweep a point belongs to
    SWEEP_KEY = "prunelab.sweep_key"  # a sweep's definition, hashed: a rerun finds its parent by it
    SWEEP_DEFINITION = "prunelab.sweep.definition"
    REPRODUCES = "prunelab.reproduces"  # the recorded run (or sweep) a reproduction re-executed
    NOTE = "mlflow.note.content"  # Markdown on the run's overview page in the MLflow UI
    GIT_COMMIT = "mlflow.source.git.commit"
    PARENT = "mlflow.parentRunId"
    # The process a run lives in: a rerun ends an earlier RUNNING run of its key whose process is gone.
    HOST, PID, PID_STARTED = "prunelab.host", "prunelab.pid", "prunelab.pid_started"
    # The chosen options of these config groups are tagged (group(): prunelab.method, ...) as well as
    # logged as params.
    METHOD, SCOPE, CRITERION = "method", "scope", "criterion"
    GROUPS = (METHOD, SCOPE, CRITERION)

    @staticmethod
    def group(name: str) -> str:
        """The tag of the option chosen for a config group: ``Tag.group(Tag.METHOD)`` is ``prunelab.method``."""
        return f"prunelab.{name}"

    @staticmethod
    def in_sweep(sweep_id: str) -> str:
        """The tag every point of a sweep carries, points reused from earlier runs included."""
        return f"prunelab.in_sweep.{sweep_id}"

    @staticmethod
    def version(package: str) -> str:
        return f"prunelab.version.{package}"


class Metric:
    # A run's results (the fine-tuned model; the dense run logs its own under the same names).
    TEST_ACCURACY, VAL_ACCURACY = "test_accuracy", "val_accuracy"
    TEST_LOSS, TEST_PERPLEXITY = "test_loss", "test_perplexity"
    # What pruning removed (prunelab.experiment.measure).
    SPARSITY_PRUNABLE, SPARSITY_ALL, SPARSITY_CHANNELS = "sparsity.prunable", "sparsity.all", "sparsity.channels"
    PARAMS_TOTAL, PARAMS_NONZERO = "params.total", "params.nonzero"
    PARAMS_PRUNABLE, PARAMS_PRUNABLE_NONZERO = "params.prunable", "params.prunable_nonzero"
    BUDGET_RATIO = "budget.ratio"  # the ratio a MACs budget search found
    PRUNE_SECONDS = "time.prune_s"  # the mask (and SparseGPT's update), no evaluation
    # a block-by-block prune resumed after a kill: the index of the first block it pruned (the
    # blocks before it restored from the run's progress, prunelab.pruning.progress)
    PRUNE_RESUMED_BLOCK = "prune.resumed_block"
    # scope=owl, per block: its outlier ratio (percent of its Wanda scores above m x their mean)
    # and the sparsity it was given (Metric.owl(i, ...): owl.block_3.sparsity)
    OWL_OUTLIER_RATIO, OWL_SPARSITY = "owl.outlier_ratio", "owl.sparsity"
    # method.refit=dsnot: the refitted layers' output error ‖(W − Ŵ)X‖² / ‖WX‖² on the calibration
    # data before and after the refit (their mean), and the swaps it made (all layers)
    REFIT_ERROR_BEFORE, REFIT_ERROR_AFTER = "refit.error_before", "refit.error_after"
    REFIT_SWAPS = "refit.swaps"
    # finetune.lora: the parameters the adapters train (the optimizer's state is per trained parameter)
    FINETUNE_TRAINABLE = "finetune.trainable_params"
    # One run across processes (torchrun): how many, and whether every rank computed the same mask
    # and ended with the same weights (1.0) before rank 0's were kept (prunelab.experiment.distributed).
    RANKS_WORLD = "ranks.world"
    RANKS_MASKS_IDENTICAL, RANKS_WEIGHTS_IDENTICAL = "ranks.masks_identical", "ranks.weights_identical"

    # Figures after a stage (see at()): the dense model, right after pruning, after fine-tuning.
    DENSE, PRUNED, FINETUNED = "dense", "pruned", "finetuned"
    STAGES = (DENSE, PRUNED, FINETUNED)

    ZEROSHOT = "zeroshot"  # lm-evaluation-harness tasks (prunelab.experiment.zeroshot)

    @staticmethod
    def owl(block: int, figure: str) -> str:
        """OWL's ``figure`` (:data:`OWL_SPARSITY`, ...) of repeated block ``block``: ``owl.block_3.sparsity``."""
        head, tail = figure.split(".", 1)
        return f"{head}.block_{block}.{tail}"

    @staticmethod
    def zeroshot(task: str, figure: str = "acc") -> str:
        """``Metric.zeroshot("piqa")`` is ``zeroshot.piqa.acc``."""
        return f"{Metric.ZEROSHOT}.{task}.{figure}"

    @staticmethod
    def at(stage: str, figure: str) -> str:
        """``Metric.at(Metric.PRUNED, Metric.TEST_ACCURACY)`` is ``pruned.test_accuracy``."""
        return f"{stage}.{figure}"

    # Series, one point per epoch (step = epoch): dense training and fine-tuning.
    TRAIN_LOSS, TRAIN_ACCURACY, TRAIN_VAL_ACCURACY = "train.loss", "train.train_accuracy", "train.val_accuracy"
    FINETUNE_LOSS = "finetune.loss"  # the objective: the cross-entropy, or distillation's mix
    FINETUNE_KD_LOSS = "finetune.kd_loss"  # distillation's KL term (T^2 * KL), the epoch's mean
    FINETUNE_ACCURACY, FINETUNE_VAL_ACCURACY = "finetune.train_accuracy", "finetune.val_accuracy"

    # A schedule's trajectory, one point per mask update (step: the schedule's round, level or step).
    SCHEDULE_SPARSITY = "schedule.sparsity"  # of the prunable weights
    SCHEDULE_CHANNELS = "schedule.channels"  # structured: of the output channels
    SCHEDULE_CHANGED = "schedule.changed"  # weights whose mask flipped since the previous update
    SCHEDULE_TARGET = "schedule.target"  # the overall ratio the update aimed at
    SCHEDULE_FRACTION = "schedule.fraction"  # dynamic sparse training: the share moved
    SCHEDULE_RESUMED_AFTER = "schedule.resumed_after"  # a resumed lottery: the level it resumed after
    # The lottery's levels (step = level): the ticket's accuracy and what it keeps; the control's.
    LEVEL_TEST_ACCURACY, LEVEL_VAL_ACCURACY = "level.test_accuracy", "level.val_accuracy"
    LEVEL_REMAINING = "level.remaining"
    REINIT_TEST_ACCURACY, REINIT_VAL_ACCURACY = "reinit.test_accuracy", "reinit.val_accuracy"

    # The hand-over files' own test accuracy (raw inputs).
    HANDOVER_ONNX_ACCURACY = "handover.onnx.test_accuracy"
    INT8_ACCURACY = "int8.test_accuracy"
    COMPACT_ACCURACY = "compact.test_accuracy"
    # A language model's Hugging Face folder, reloaded, and the run's model, on the same sample of
    # the test split (deploy/handover.py: CHECK_TOKENS): equal, or the folder is not the model.
    HANDOVER_HF_PERPLEXITY = "handover.hf.test_perplexity"
    HANDOVER_PERPLEXITY = "handover.test_perplexity"

    # A sweep's parent.
    SWEEP_FINISHED, SWEEP_FAILED = "sweep.points_finished", "sweep.points_failed"

    # The cost ledger (prunelab.deploy.ledger): cost.<form>.<figure>, and cost.ratio[.<form>].<figure>
    # (the form against the dense PyTorch model). The forms: the dense and the pruned PyTorch model,
    # and the hand-over's ONNX Runtime files, fp32 and int8.
    ONNX, INT8 = "onnx", "int8"
    FORMS = (DENSE, PRUNED, ONNX, INT8)
    # The figures of a form: parameters, MACs per sample (nonzero: what a sparse kernel could skip),
    # the file's size, a language model's tokens per second (batch 64); and the latencies (latency()).
    PARAMS, NONZERO_PARAMS = "params", "nonzero_params"
    MACS, NONZERO_MACS = "macs", "nonzero_macs"
    FILE_BYTES, TOKENS_PER_S = "file_bytes", "tokens_per_s"
    COST_FIGURES = (PARAMS, NONZERO_PARAMS, MACS, NONZERO_MACS, FILE_BYTES, TOKENS_PER_S)
    LATENCY_THREADS = "cost.latency_threads"  # the CPU threads the latencies were measured with
    LATENCY_SEQ_LEN = "cost.latency_seq_len"  # a language model's: the tokens of a timed window

    @staticmethod
    def measured(name: str) -> bool:
        """Whether metric ``name`` is measured, not computed: a duration (``time.prune_s``), a
        latency (``cost.pruned.latency_b1_ms``, ``cost.ratio.int8.latency_b64``), a throughput
        (``tokens_per_s``) or what the timing ran with (``cost.latency_threads``). Two runs of one
        config differ in these by the machine and its load, so ``prunelab.reproduce`` shows and
        compares only the others."""
        parts = name.split(".")
        return (
            parts[0] == "time"
            or name == Metric.LATENCY_THREADS
            or any(p == Metric.TOKENS_PER_S or re.fullmatch(r"latency_b\d+(_ms)?", p) for p in parts)
        )

    @staticmethod
    def latency(batch: int) -> str:
        """A forward pass's CPU latency at a batch size, as a ratio (no unit):
        ``Metric.cost_ratio(Metric.latency(64))`` is ``cost.ratio.latency_b64``."""
        return f"latency_b{batch}"

    @staticmethod
    def latency_ms(batch: int) -> str:
        """A form's median CPU latency at a batch size, in ms:
        ``Metric.cost(Metric.PRUNED, Metric.latency_ms(64))`` is ``cost.pruned.latency_b64_ms``."""
        return f"latency_b{batch}_ms"

    @staticmethod
    def cost(form: str, figure: str) -> str:
        """``Metric.cost(Metric.PRUNED, Metric.MACS)`` is ``cost.pruned.macs``."""
        return f"cost.{form}.{figure}"

    @staticmethod
    def cost_ratio(figure: str, form: str | None = None) -> str:
        """The pruned model's figure over the dense one's: ``Metric.cost_ratio(Metric.MACS)`` is
        ``cost.ratio.macs``; a form's: ``Metric.cost_ratio(Metric.FILE_BYTES, Metric.INT8)`` is
        ``cost.ratio.int8.file_bytes``."""
        return f"cost.ratio.{form}.{figure}" if form else f"cost.ratio.{figure}"


class Protocol:
    """Params of a language model's run: the protocol its perplexities were measured under, which
    makes them comparable (the papers' numbers differ between sequence lengths, calibration sources
    and counts: Wanda's issue #47). ``calibration``: the sources pruning drew windows from (none:
    it looked at no data), ``calibration_windows`` the most it drew at once."""

    SEQ_LEN, EVAL_SPLIT, EVAL_WINDOWS = "protocol.seq_len", "protocol.eval_split", "protocol.eval_windows"
    CALIBRATION, CALIBRATION_WINDOWS = "protocol.calibration", "protocol.calibration_windows"
    CALIBRATION_SEED = "protocol.calibration_seed"


class Artifact:
    CONFIG = "config.yaml"  # the resolved config (credentials masked)
    LAYERS = "layers.csv"  # per parameter: total, nonzero, sparsity, channels kept
    PLAN = "plan.json"  # how much of each layer / channel group was kept (scope=plan reads it)
    MASKED_WEIGHTS = "model/masked_weights.pt"  # the fine-tuned weights and the mask
    # The mask alone (its bits), instead, where the hand-over's files hold the weights and they are
    # large (deploy.handover.weights_shipped)
    MASK = "model/mask.pt"
    POINTS, SUMMARY = "points.csv", "summary.md"  # a sweep's parent
    # What a run ran with beyond its config (prunelab.tracking.record): package versions, commit,
    # device, threads, determinism; and, for a working tree with uncommitted changes, the changes.
    ENVIRONMENT, GIT_DIFF = "environment.json", "git.diff"
