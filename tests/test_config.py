"""The typed config: every shipped option composes against the schema; out-of-range values and
unknown options are refused early, in one sentence that names the value and what is allowed; run
keys change with what decides a result and with nothing else."""

from __future__ import annotations

import pytest
from hydra.utils import get_object

from prunelab.cli import preflight
from prunelab.config import GROUPS, ConfigError, validate
from prunelab.experiment.keys import identity
from prunelab.paths import conf_dir, experiments_dir
from prunelab.plugins import options

CRITERIA, SCOPES = ", ".join(options("criterion")), ", ".join(options("scope"))

OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((conf_dir() / group).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (experiments_dir() / "experiment").glob("*.yaml"))


def refused(check, *args) -> str:
    """The message of the ConfigError that ``check(*args)`` raises, checked to be one line."""
    with pytest.raises(ConfigError) as error:
        check(*args)
    message = str(error.value)
    assert message
    assert "\n" not in message
    return message


# --- every shipped option composes ------------------------------------------------------------


def test_every_group_has_options():
    assert {group for group, _ in OPTIONS} == set(GROUPS)


# The tests' one epoch is before a step recipe's first milestone (refused: the step would never
# come); these bring the milestones within it.
WITHIN_ONE_EPOCH = ("train.milestones=[1]", "finetune.milestones=[1]")


def shortened(*overrides: str) -> tuple[str, ...]:
    steps = any(o in ("recipe=cifar", "recipe=imagenet") or o.startswith("+experiment=cifar10_") for o in overrides)
    return (*overrides, *WITHIN_ONE_EPOCH) if steps and not any("smoke" in o for o in overrides) else overrides


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_against_the_schema(make_cfg, group, option):
    cfg = make_cfg(*shortened(f"{group}={option}", "handover=true"))  # (quantize=int8 quantizes the hand-over)
    validate(cfg)
    if group == "recipe":  # a recipe sets the training numbers and names itself
        assert cfg.recipe == option
        assert callable(get_object(cfg.train.optimizer._target_))
    else:  # every other group's option is a plug-in named by _target_ (or, quantize=none, nothing)
        none = (group, option) in (("quantize", "none"), ("augment", "none"))
        assert callable(get_object(cfg[group]._target_)) if cfg[group] else none
        assert cfg.choices[group] == option


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_overlay_composes(make_cfg, name):
    preflight([f"+experiment={name}"])
    validate(make_cfg(*shortened(f"+experiment={name}")))


def test_the_defaults_are_valid(make_cfg):
    cfg = make_cfg()
    validate(cfg)
    assert 0 <= cfg.ratio < 1
    assert (cfg.choices.method, cfg.choices.criterion, cfg.choices.scope) == ("unstructured", "l2", "global")


# --- validation of a composed config ----------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("ratio=1.5", ["ratio=1.5", "0 <= ratio < 1"]),
        ("ratio=-0.1", ["ratio=-0.1", "0 <= ratio < 1"]),
        ("ratio=1", ["ratio=1", "0 <= ratio < 1"]),
        ("method=structured method.normalize=max", ["method.normalize='max'", "mean, none"]),
        ("method=nm method.n=4", ["method.n=4", "0 < n < m"]),
        ("budget.macs=0", ["budget.macs=0", "0 < budget.macs <= 1"]),
        ("device=tpu", ["device='tpu'", "auto, cpu, cuda, cuda:N or mps"]),
        ("train.epochs=-1", ["train.epochs=-1", ">= 0"]),
        ("train.batch_size=-8", ["train.batch_size=-8", "> 0"]),
        ("train.lr=0", ["train.lr=0", "> 0"]),
        ("train.schedule=linear", ["train.schedule='linear'", "cosine, step, constant"]),
        ("train.schedule=step", ["train.schedule=step needs train.milestones", "[100, 150]"]),
        ("finetune.milestones=[5]", ["finetune.milestones are the step schedule's", "finetune.schedule=step"]),
        ("train.precision=fp8", ["train.precision='fp8'", "32, bf16, fp16"]),
        ("train.gamma=0.5", ["train.gamma=0.5 is the step schedule's", "train.schedule=step"]),
        ("recipe=cifar train.epochs=50", ["train.milestones=[100, 150]: train.epochs=50 never reaches 150"]),
        ("+augment.padding=4", ["augment=none takes no options (padding)"]),
        ("finetune.lr=0", ["finetune.lr=0", "> 0"]),
        ("finetune.epochs=-1", ["finetune.epochs=-1", ">= 0"]),
    ],
)
def test_a_bad_value_is_refused_in_one_sentence_naming_it_and_what_is_allowed(make_cfg, override, words):
    message = refused(validate, make_cfg(*override.split()))
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "override",
    [
        "ratio=0",
        "ratio=0.99",
        "device=cpu",
        "device=cuda:1",
        "train.epochs=0",
        "finetune.epochs=0",
        "criterion=random",
        "budget.macs=1",
    ],
)
def test_edge_values_inside_the_range_are_accepted(make_cfg, override):
    validate(make_cfg(override))


# --- the command line's preflight -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ratio=abc"], ["ratio=abc", "could not be converted to Float"]),
        (["ratio=0.1,0.5,1.2"], ["ratio=1.2", "0 <= ratio < 1"]),
        (["ratio=0.1,abc"], ["ratio=abc", "could not be converted to Float"]),
        (["method=nm", "method.n=1,4"], ["method.n=4", "0 < n < m"]),  # a check across two options
        (["-m", "ratio=range(0,1.5,0.5)"], ["ratio=1.0", "0 <= ratio < 1"]),
        (["model=nope"], ["model='nope'", "lenet5", "resnet20"]),
        (["recipe=adam"], ["recipe='adam'", "adamw", "sgd"]),
        (["model=lenet5,nope"], ["model='nope'"]),
        (["dataset=mnist"], ["dataset='mnist'", "fashion_mnist", "digits"]),
        (["criterion=l3"], ["criterion='l3'", CRITERIA]),
        (["-m", "criterion=l1,l3"], ["criterion='l3'", CRITERIA]),
        (["scope=everywhere"], ["scope='everywhere'", SCOPES]),
        (["method.normalize=mean"], ["method=unstructured takes no option 'normalize'", "ignore"]),  # structured's
        (["method=structured", "method.normalise=none"], ["no option 'normalise'", "ignore, normalize"]),  # a typo
        (["dataset.valsize=3"], ["dataset=fashion_mnist takes no option 'valsize'", "val_size"]),  # any plug-in
        (["criterion=taylor", "criterion.batch=3"], ["criterion=taylor takes no option 'batch'", "batches"]),
        (["method=structured", "device=tpu"], ["device='tpu'"]),
        (["+experiment=surely_not_an_experiment"], ["experiment='surely_not_an_experiment'"]),
        (["ratio=[0.1"], ["cannot parse the overrides"]),
        (["finetune.alpha=0.9"], ["finetune.alpha is distillation's option", "finetune.distill=true"]),
        (["finetune.distill=true", "finetune.temperature=0"], ["finetune.temperature=0.0 must be > 0"]),
    ],
)
def test_preflight_refuses_bad_overrides_before_hydra_starts(args, words):
    message = refused(preflight, args)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["method=structured", "ratio=0.1,0.9"],
        ["-m", "ratio=range(0,1,0.25)", "scope=global,local"],
        ["model=lenet5,resnet20", "dataset=digits"],
        ["~ratio"],
        ["train.epochs=3", "--cfg=job"],
        *([f"+experiment={name}"] for name in EXPERIMENTS),
    ],
)
def test_preflight_accepts_valid_overrides_and_sweeps(args):
    preflight(args)


@pytest.mark.parametrize("args", [["--cfg", "job"], ["-cn", "config"], ["--info", "searchpath"]])
def test_preflight_leaves_hydras_own_flags_and_their_values_alone(args):
    preflight(["ratio=0.3", *args])
    with pytest.raises(ConfigError, match="ratio=3"):
        preflight(["ratio=3", *args])


def test_an_interval_sweep_needs_an_optimising_sweeper():
    with pytest.raises(ConfigError, match="interval"):
        preflight(["-m", "ratio=interval(0,0.9)"])
    # with one, the sweeper picks the values (each job's config is validated when it runs): what
    # is left to check is that the sweeper is installed (not here: Hydra's optuna plugin)
    assert "hydra/sweeper='optuna'" in refused(preflight, ["-m", "hydra/sweeper=optuna", "ratio=interval(0,2)"])


# --- run identity ------------------------------------------------------------------------------


def test_the_run_key_ignores_where_results_and_caches_go(make_cfg, tmp_path):
    base = identity(make_cfg(), "cpu").run
    assert identity(make_cfg(), "cpu").run == base
    assert identity(make_cfg(f"tracking.uri=sqlite:///{tmp_path}/other.db"), "cpu").run == base
    assert identity(make_cfg("tracking.experiment=elsewhere"), "cpu").run == base
    assert identity(make_cfg(f"cache_dir={tmp_path}/other-cache"), "cpu").run == base
    assert identity(make_cfg("force=true"), "cpu").run == base


def test_the_run_key_ignores_where_the_data_files_lie(make_cfg, tmp_path):
    fm = identity(make_cfg("dataset=fashion_mnist"), "cpu").run
    assert identity(make_cfg("dataset=fashion_mnist", f"dataset.root={tmp_path}"), "cpu").run == fm
    assert identity(make_cfg("dataset=fashion_mnist", "dataset.url=null", "dataset.verify=false"), "cpu").run == fm


@pytest.mark.parametrize(
    "change",
    [
        "ratio=0.7",
        "method=structured",
        "scope=local",
        "criterion=random",
        "measure_latency=true",
        "budget.macs=0.5",
        "quantize=int8",
        "finetune.epochs=2",
        "finetune.distill=true",
        "seed=1",
        "train.lr=0.01",
        "model=lenet300_100",
    ],
)
def test_the_run_key_changes_with_what_decides_the_result(make_cfg, change):
    assert identity(make_cfg(*change.split()), "cpu").run != identity(make_cfg(), "cpu").run


def test_the_run_key_depends_on_the_device_that_runs(make_cfg):
    cfg = make_cfg()
    assert identity(cfg, "cpu").run != identity(cfg, "cuda").run
    assert identity(cfg, "cpu").dense != identity(cfg, "cuda").dense


@pytest.mark.parametrize(
    "change",
    [
        "ratio=0.7",
        "method=structured",
        "scope=local",
        "criterion=random",
        "finetune.epochs=5",
        "finetune.lr=0.01",
        "force=true",
    ],
)
def test_the_dense_key_ignores_pruning_and_fine_tuning(make_cfg, change):
    assert identity(make_cfg(*change.split()), "cpu").dense == identity(make_cfg(), "cpu").dense


@pytest.mark.parametrize(
    "change", ["train.lr=0.01", "train.epochs=2", "seed=1", "model=lenet300_100", "dataset=digits"]
)
def test_the_dense_key_changes_with_what_training_depends_on(make_cfg, change):
    assert identity(make_cfg(*change.split()), "cpu").dense != identity(make_cfg(), "cpu").dense


def test_a_config_folder_on_hydra_searchpath_brings_its_own_model(tmp_path):
    """A user's own config folder outside the repo: its model option passes the preflight."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mynet.yaml").write_text("_target_: prunelab.models.lenet300_100\n")
    preflight([f"hydra.searchpath=[file://{tmp_path}]", "model=mynet"])
    assert "mynet" in refused(preflight, [f"hydra.searchpath=[file://{tmp_path}]", "model=mynet2"])
    assert "model='mynet'" in refused(preflight, ["model=mynet"])  # not without the folder


def test_every_value_of_an_experiments_own_sweep_is_checked(tmp_path):
    (tmp_path / "experiment").mkdir()
    for name, values in (("first_bad", "1.5,0.5"), ("last_bad", "0.5,1.5")):
        (tmp_path / "experiment" / f"{name}.yaml").write_text(
            f"# @package _global_\nhydra:\n  sweeper:\n    params:\n      ratio: {values}\n"
        )
        assert "ratio=1.5" in refused(preflight, ["-m", f"hydra.searchpath=[file://{tmp_path}]", f"+experiment={name}"])
