"""Distillation and int8 quantization of fine-tuned models: the loss against a hand computation,
the frozen teacher (unchanged, no optimizer state, not checkpointed), a distilled run through
the CLI, and a quantized workdir's logits and int8 weights through evaluate's session."""

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import finetune_classify
from pretrain import tasks
from pretrain.inference import quantized
from pretrain.inference.session import open_session, run_evaluation
from pretrain.models.params import named_leaves
from pretrain.tasks.classification import ClassificationTask
from pretrain.tasks.distillation import distilled, layer_init, soft_loss
from pretrain.training import sharding
from pretrain.training.checkpoint import Checkpointer
from pretrain.training.errors import ConfigError
from pretrain.training.workdir import checkpoints_dir, finetuned_checkpoints
from tests.cli_utils import (
    assert_one_line_error,
    read_metrics,
    run_module,
    tiny_config,
    tiny_overrides,
)
from tests.test_finetune import (  # noqa: F401 - keyword_task, keyword_run, pretrained: fixtures.
    TINY_MODEL,
    _steps,
    finetune_flags,
    keyword_run,
    keyword_task,
    pretrained,
    read_rows,
)

STUDENT = {"model.num_hidden_layers": 1, "model.hidden_size": 16, "model.num_attention_heads": 2,
           "model.intermediate_size": 32, "model.max_position_embeddings": 32}  # fmt: skip


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_soft_loss_is_the_hand_computed_one():
    student = np.array([[1.0, 2.0, 0.0], [0.3, -1.0, 4.0]], np.float32)
    teacher = np.array([[0.5, 0.0, 1.0], [2.0, 0.0, -2.0]], np.float32)
    p, q = _softmax(teacher / 2.0), _softmax(student / 2.0)
    expected = 4.0 * (p * np.log(p / q)).sum(axis=-1)
    np.testing.assert_allclose(soft_loss(student, teacher, 2.0), expected, rtol=1e-5)
    assert float(np.abs(soft_loss(teacher, teacher, 1.0)).max()) < 1e-6
    # Regression (one output): the squared error between the scores.
    np.testing.assert_allclose(soft_loss(student[:, :1], teacher[:, :1], 2.0), [0.25, 2.89],
                               rtol=1e-5)  # fmt: skip


def _config(keyword_task, teacher, **values) -> ml_collections.ConfigDict:
    """The classification config of `finetune_flags`, distilled from `teacher`."""
    train, evals, tokenizer = keyword_task
    config = finetune_classify.get_config()
    flags = finetune_flags("unused", train, evals, data__tokenizer_model=tokenizer,
                           distill__teacher=teacher, **values)  # fmt: skip
    for flag in flags[2:]:
        key, value = flag.removeprefix("--config.").split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = type(node[leaf])(value) if node[leaf] is not None else int(value)
    return config


def _teacher_params(workdir) -> dict:
    directory = finetuned_checkpoints(workdir)
    checkpointer = Checkpointer(directory)
    try:
        step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    tree = ocp.PyTreeCheckpointer().restore(directory / str(step) / "state")
    return {k: np.asarray(v) for k, v in named_leaves(tree["params"]).items()}


@pytest.mark.slow
def test_the_teacher_is_frozen_on_the_8_device_mesh_and_not_saved(keyword_task, keyword_run,
                                                                  tmp_path):  # fmt: skip
    teacher_dir, _ = keyword_run
    config = _config(keyword_task, teacher_dir, **STUDENT)
    task = distilled(ClassificationTask).build(config, tmp_path)
    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    jitted = _steps(task, config, mesh)
    state = jitted.init(task.initial_params(jitted.abstract_state.params))
    expected = _teacher_params(teacher_dir)
    before = {k: np.asarray(v) for k, v in named_leaves(state.params["teacher"]).items()}
    assert before.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(before[name], value, err_msg=name)
    student_before = np.asarray(state.params["classifier"]["kernel"].get_value())
    # Adam's moments for the student only.
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    student = sum(x.size for k, x in nnx.to_pure_dict(state.params).items() if k != "teacher"
                  for x in jax.tree.leaves(x))  # fmt: skip
    assert moments == 2 * student

    for step in range(2):
        state, metrics = jitted.train_step(state, task.train_data.batch(step))
    after = named_leaves(state.params["teacher"])
    for name, value in before.items():
        np.testing.assert_array_equal(np.asarray(after[name]), value, err_msg=name)
    assert not np.array_equal(state.params["classifier"]["kernel"].get_value(), student_before)
    m = {k: float(v) for k, v in metrics.items()}
    assert m["soft_loss"] > 0 and m["loss"] == pytest.approx(
        0.5 * m["hard_loss"] + 0.5 * m["soft_loss"], rel=1e-5
    )
    assert "teacher" not in jitted.saveable(state).params


def test_distilbert_init_takes_the_embeddings_and_every_other_layer():
    teacher = {"embeddings": {"w": 1.0}, "pooler": {"k": 5.0},
               "layers": {i: {"k": 10.0 + i} for i in range(4)}}  # fmt: skip
    student = {
        "embeddings": {"w": 0.0},
        "pooler": {"k": 0.0},
        "layers": {0: {"k": 0.0}, 1: {"k": 0.0}},
    }
    assert layer_init(student, teacher, teacher_layers=4) == {
        "embeddings": {"w": 1.0}, "pooler": {"k": 5.0}, "layers": {0: {"k": 10.0}, 1: {"k": 12.0}}
    }  # fmt: skip


@pytest.mark.slow
def test_distilbert_init_starts_the_student_as_the_teacher(keyword_task, keyword_run, tmp_path):
    teacher_dir, _ = keyword_run
    config = _config(keyword_task, teacher_dir, distill__init_layers="True", **TINY_MODEL)
    task = distilled(ClassificationTask).build(config, tmp_path)
    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                                jax.devices()[:1])  # fmt: skip
    jitted = _steps(task, config, mesh)
    params = jitted.init(task.initial_params(jitted.abstract_state.params)).params
    student = named_leaves(params["encoder"])
    teacher = _teacher_params(teacher_dir)
    assert student  # Every encoder tensor, the layers included, is the teacher's.
    for name, value in student.items():
        np.testing.assert_array_equal(np.asarray(value), teacher[f"encoder/{name}"], name)

    narrow = _config(keyword_task, teacher_dir, distill__init_layers="True", **STUDENT)
    with pytest.raises(ConfigError, match="model.hidden_size=16 must be the teacher's 32"):
        distilled(ClassificationTask).check_config(narrow)


@pytest.mark.slow
def test_a_student_identical_to_its_teacher_at_t1_has_zero_kl(keyword_task, keyword_run,
                                                             tmp_path):  # fmt: skip
    teacher_dir, _ = keyword_run
    config = _config(keyword_task, teacher_dir, distill__temperature=1.0, **TINY_MODEL)
    task = distilled(ClassificationTask).build(config, tmp_path)
    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                                jax.devices()[:1])  # fmt: skip
    jitted = _steps(task, config, mesh)
    params = nnx.to_pure_dict(jitted.init(task.initial_params(jitted.abstract_state.params)).params)
    params.update({k: v for k, v in params["teacher"].items()})  # The student := the teacher.
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param)
    nnx.replace_by_pure_dict(abstract, params)
    sums = task.loss_sums(nnx.merge(graphdef, abstract), task.train_data.batch(0), None)
    assert float(sums["soft_sum"]) == pytest.approx(0.0, abs=1e-5)
    assert float(sums["loss_sum"]) > 0


@pytest.mark.slow
def test_teacher_mistakes_are_config_errors(keyword_task, keyword_run, tmp_path):
    teacher_dir, _ = keyword_run
    other = tmp_path / "other.model"
    other.write_bytes(b"not the teacher's tokenizer")
    cases = [
        ({"distill.teacher": str(tmp_path / "none")}, "does not exist"),
        ({"data.tokenizer_model": str(other)}, "differs from the teacher's"),
        ({"data.max_seq_length": 64}, "max_position_embeddings=32"),
        ({"distill.soft_weight": 0.0, "distill.hard_weight": 0.0}, "both 0"),
    ]
    for values, message in cases:
        config = _config(keyword_task, teacher_dir)
        for key, value in values.items():
            section, leaf = key.split(".")
            config[section][leaf] = value
        with pytest.raises(ConfigError, match=message):
            distilled(ClassificationTask).check_config(config)


@pytest.mark.slow
def test_a_distilled_run_through_the_cli_saves_the_student_alone(keyword_task, keyword_run,
                                                                tmp_path):  # fmt: skip
    train, evals, tokenizer = keyword_task
    teacher_dir, _ = keyword_run
    workdir = tmp_path / "student"
    flags = finetune_flags(workdir, train, evals, data__tokenizer_model=tokenizer,
                           distill__teacher=teacher_dir, **STUDENT)  # fmt: skip
    run_module("pretrain.finetune", flags)
    train_rows, eval_rows = read_rows(workdir)
    assert {"hard_loss", "soft_loss"} <= set(train_rows[60]) and 60 in eval_rows
    saved = named_leaves(
        ocp.PyTreeCheckpointHandler().metadata(checkpoints_dir(workdir) / "60" / "state").tree
    )
    assert any(n.startswith("params/encoder") for n in saved)
    assert not any("teacher" in n for n in saved)
    # An ordinary fine-tuning workdir: evaluate's session reads it, without the teacher.
    row, _ = run_evaluation(open_session(str(workdir)), str(evals))
    best = max(eval_rows.values(), key=lambda r: r["eval_accuracy"])
    assert row["eval_accuracy"] == pytest.approx(best["eval_accuracy"], abs=1e-6)


@pytest.fixture(scope="module")
def quantized_run(keyword_run, tmp_path_factory):
    """keyword_run's model quantized through the CLI: (float workdir, int8 workdir)."""
    workdir, _ = keyword_run
    output = tmp_path_factory.mktemp("quantized") / "q"
    run_module("pretrain.quantize", [f"--workdir={workdir}", f"--output={output}"])
    return workdir, output


@pytest.mark.slow
def test_int8_logits_are_near_float32_on_the_8_device_mesh(keyword_task, quantized_run):
    _, evals, _ = keyword_task
    workdir, output = quantized_run
    q_session = open_session(str(output))  # Data parallel over the 8 simulated devices.
    kernels = {n: v for n, v in named_leaves(q_session.params).items() if "kernel" in n}
    assert kernels and all(v.dtype == np.int8 for n, v in kernels.items() if "qvalue" in n)
    assert {n.rsplit("/", 1)[0] for n in kernels if "qvalue" in n} == {
        n.rsplit("/", 1)[0] for n in kernels if "scale" in n
    }  # Every kernel is int8 values with their scales; no float kernel is left.
    q_row, q_out = run_evaluation(q_session, str(evals))
    row, out = run_evaluation(open_session(str(workdir)), str(evals))
    # absmax int8 per output channel: each weight within 0.4% of its channel's largest.
    np.testing.assert_allclose(q_out["logits"], out["logits"], atol=0.05)
    assert np.mean(q_out["logits"].argmax(-1) == out["logits"].argmax(-1)) >= 0.99
    assert q_row["eval_accuracy"] == pytest.approx(row["eval_accuracy"], abs=0.02)


@pytest.mark.slow
def test_quantize_mistakes_are_config_errors(quantized_run, tmp_path):
    _, output = quantized_run
    with pytest.raises(ConfigError, match="exists"):
        quantized.check_output(str(output))
    with pytest.raises(ConfigError, match="leave --step unset"):
        open_session(str(output), step=30)
    pretraining = tmp_path / "pretrained"
    pretraining.mkdir()
    (pretraining / "workdir.json").write_text(json.dumps({"kind": "pretraining"}))
    with pytest.raises(ConfigError, match="is a pretraining workdir"):
        open_session(str(pretraining))


def _pretraining_config(data_dir, teacher, **values) -> ml_collections.ConfigDict:
    """configs/smoke.py's tiny run (`tiny_config`), distilled from the pretraining `teacher`."""
    data_dir.mkdir(exist_ok=True)
    return tiny_config(
        data_dir,
        task="distill",
        distill__teacher=str(teacher),
        data__tokenizer_model=str(teacher / "tokenizer.model"),
        **values,
    )


@pytest.mark.slow
def test_mlm_distillation_of_a_student_identical_to_its_teacher(pretrained, tmp_path):
    """At T=1 the KL is zero; a train step moves the student and leaves the teacher alone."""
    config = _pretraining_config(tmp_path / "data", pretrained, distill__temperature=1.0)
    task = tasks.pretraining_task(config).build(config, tmp_path)
    mesh = sharding.create_mesh(
        ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1]
    )
    jitted = _steps(task, config, mesh)
    state = jitted.init(task.initial_params(jitted.abstract_state.params))
    params = nnx.to_pure_dict(state.params)
    params.update(params["teacher"])  # The student := the teacher.
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))), nnx.Param)
    nnx.replace_by_pure_dict(abstract, params)
    batch = task.train_data.batch(0)
    sums = task.loss_sums(nnx.merge(graphdef, abstract), batch, None)
    assert float(sums["soft_sum"]) == pytest.approx(0.0, abs=1e-5)
    assert float(sums["mlm_loss_sum"]) > 0

    before = {k: np.asarray(v) for k, v in named_leaves(state.params["teacher"]).items()}
    state, metrics = jitted.train_step(state, batch)
    for name, value in named_leaves(state.params["teacher"]).items():
        np.testing.assert_array_equal(np.asarray(value), before[name], err_msg=name)
    m = {k: float(v) for k, v in metrics.items()}
    assert m["soft_loss"] > 0 and m["loss"] == pytest.approx(
        0.5 * m["hard_loss"] + 0.5 * m["soft_loss"], rel=1e-5
    )
    assert "teacher" not in jitted.saveable(state).params


@pytest.mark.slow
def test_mlm_distillation_through_the_cli_saves_the_student_alone(pretrained, tmp_path):
    workdir = tmp_path / "student"
    (tmp_path / "data").mkdir()
    flags = tiny_overrides(
        tmp_path / "data",
        task="distill",
        distill__teacher=pretrained,
        data__tokenizer_model=pretrained / "tokenizer.model",
        num_train_steps=3,
        model__hidden_size=16,
        model__intermediate_size=32,
    )
    run_module("pretrain.train", ["--config=configs/smoke.py", f"--workdir={workdir}", *flags])
    train_rows, eval_rows = read_metrics(workdir)
    assert {"hard_loss", "soft_loss", "mlm_loss"} <= set(train_rows[3]) and 3 in eval_rows
    saved = named_leaves(
        ocp.PyTreeCheckpointHandler().metadata(checkpoints_dir(workdir) / "3" / "state").tree
    )
    assert any(n.startswith("params/encoder") for n in saved)
    assert not any("teacher" in n for n in saved)


@pytest.mark.slow
def test_mlm_distillation_mistakes_are_one_line_config_errors(pretrained, tmp_path):
    other = tmp_path / "other.model"
    other.write_bytes(b"not the teacher's tokenizer")
    cases = [
        ({"data.tokenizer_model": str(other)}, "differs from the teacher's"),
        ({"data.tokenizer_model": ""}, "tokenizer_model is empty"),
        ({"distill.temperature": 0.0}, "must be > 0"),
    ]
    for values, message in cases:
        config = _pretraining_config(tmp_path / "data", pretrained)
        for key, value in values.items():
            section, leaf = key.split(".")
            config[section][leaf] = value
        with pytest.raises(ConfigError, match=message):
            tasks.pretraining_task(config).check_config(config)
    flags = tiny_overrides(tmp_path / "data", task="distill", distill__teacher=tmp_path / "none")
    proc = run_module(
        "pretrain.train",
        ["--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}", *flags],
        check=False,
    )
    assert_one_line_error(proc, "does not exist", "a pretraining workdir")
