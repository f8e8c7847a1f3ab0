"""A ModernBERT workdir through the command lines: packed pretraining, export to transformers,
import back, fine-tuning from it and export of the fine-tuned classifier."""

import json

import numpy as np
import pytest
from flax import nnx

from pretrain.hf import exporting, importing
from pretrain.models import heads
from tests.cli_utils import read_metrics, run_module, tiny_overrides
from tests.test_finetune import finetune_flags, read_rows, write_keyword_task

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TOLERANCE = 1e-4  # float32 max abs logit difference.
TEXT = "ab ki tu la mo. sa re ti."


def load(model: nnx.Module, params: dict) -> None:
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """6 steps of a 2-layer ModernBERT (layer 1 local, window 8) on packed rows of 32."""
    workdir = tmp_path_factory.mktemp("modern") / "workdir"
    flags = tiny_overrides(
        tmp_path_factory.mktemp("corpus"),
        data__max_predictions_per_seq=10,
        model__num_hidden_layers=2,
        model__local_attention=16,
    )
    run_module("pretrain.train", ["--config=configs/modernbert_smoke.py", f"--workdir={workdir}",
                                  *flags])  # fmt: skip
    return workdir


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory):
    output = tmp_path_factory.mktemp("modern_hf")
    out = run_module("pretrain.export_hf", [f"--workdir={pretrained}", f"--output={output}"])
    assert "as ModernBertForMaskedLM" in out.stdout
    return output


@pytest.mark.slow
def test_packed_pretraining_rows_have_no_nsp_fields(pretrained):
    train, evals = read_metrics(pretrained)
    assert sorted(train) == [1, 2, 3, 4, 5, 6] and sorted(evals) == [3, 6]
    assert not any("nsp" in key for row in [*train.values(), *evals.values()] for key in row)
    assert all(np.isfinite(row["mlm_loss"]) for row in train.values())


@pytest.mark.slow
def test_export_loads_in_transformers_with_our_logits_and_ids(pretrained, exported):
    restored = exporting.restore(str(pretrained))
    assert restored.head == "masked_lm" and restored.model_config.arch == "modernbert"
    hf = transformers.ModernBertForMaskedLM.from_pretrained(exported).eval()
    assert hf.config.local_attention == 16 and hf.config.global_attn_every_n_layers == 3
    tokenizer = restored.tokenizer
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ids = [tokenizer.cls_id, *tokenizer.encode(TEXT), tokenizer.sep_id]
    assert hf_tokenizer(TEXT)["input_ids"] == ids
    assert len(ids) > 9  # Longer than the local window: the local layer's mask matters.

    model = heads.PreTrainingModel(restored.model_config, with_nsp=False, rngs=nnx.Rngs(0))
    load(model, restored.params)
    x = np.array([ids], np.int32)
    ours, _ = model(x, np.ones_like(x), np.zeros_like(x), np.arange(len(ids))[None],
                    deterministic=True)  # fmt: skip
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(x).long()).logits.numpy()
    diff = float(np.abs(np.asarray(ours) - theirs).max())
    print(f"ModernBERT export: MLM logits max abs diff {diff:.2e}")
    assert diff <= TOLERANCE and np.abs(theirs).mean() > 0.01


@pytest.mark.slow
def test_import_of_the_export_is_bit_exact(pretrained, exported, tmp_path):
    workdir = tmp_path / "imported"
    out = run_module("pretrain.import_hf", [f"--hf_dir={exported}", f"--workdir={workdir}"])
    assert "Imported the modernbert model" in out.stdout
    original, back = exporting.restore(str(pretrained)), exporting.restore(str(workdir))
    assert back.step == 0 and back.model_config == original.model_config
    flat = lambda tree: {"/".join(map(str, k)): v for k, v in _leaves(tree)}  # noqa: E731
    assert flat(back.params).keys() == flat(original.params).keys()
    for name, value in flat(original.params).items():
        np.testing.assert_array_equal(flat(back.params)[name], value, err_msg=name)
    exporting.export_workdir(str(workdir), str(tmp_path / "again"))
    first = safetensors_numpy.load_file(str(exported / "model.safetensors"))
    again = safetensors_numpy.load_file(str(tmp_path / "again" / "model.safetensors"))
    assert first.keys() == again.keys()
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    config = (workdir / importing.CONFIG_FILE).read_text()
    assert "modernbert_base" in config and "c.model.local_attention = 16" in config


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_finetune_from_modernbert_and_export_the_classifier(pretrained, tmp_path, pooling):
    write_keyword_task(tmp_path / "train.tsv", 200, seed=0)
    write_keyword_task(tmp_path / "eval.tsv", 64, seed=1)
    workdir = tmp_path / "ft"
    flags = finetune_flags(
        workdir, tmp_path / "train.tsv", tmp_path / "eval.tsv", init_from=pretrained,
        num_train_steps=10, eval_every_steps=5, checkpoint_every_steps=5,
        model__classifier_pooling=pooling,
    )  # fmt: skip
    out = run_module("pretrain.finetune", flags)
    assert f"Encoder and head restored from {pretrained}" in out.stderr
    _, evals = read_rows(workdir)
    assert sorted(evals) == [5, 10]

    restored = exporting.restore(str(workdir))
    assert restored.head == "classification"
    assert restored.model_config.classifier_pooling == pooling
    output = tmp_path / "hf"
    exporting.export_workdir(str(workdir), str(output))
    hf = transformers.ModernBertForSequenceClassification.from_pretrained(output).eval()
    assert hf.config.classifier_pooling == pooling
    assert sorted(hf.config.id2label.values()) == ["no", "yes"]
    assert json.loads((output / "config.json").read_text())["architectures"] == [
        "ModernBertForSequenceClassification"
    ]
    model = heads.SequenceClassifier(restored.model_config, 2, dropout_rate=0.0, rngs=nnx.Rngs(0))
    load(model, restored.params)
    tokenizer = restored.tokenizer
    assert transformers.AutoTokenizer.from_pretrained(output)(TEXT)["input_ids"] == [
        tokenizer.cls_id,
        *tokenizer.encode(TEXT),
        tokenizer.sep_id,
    ]
    ids = [tokenizer.cls_id, *tokenizer.encode(TEXT), tokenizer.sep_id]
    x = np.array([ids + [0] * 4], np.int32)
    mask = (np.arange(x.shape[1]) < len(ids)).astype(np.int32)[None]
    ours = np.asarray(model(x, mask, np.zeros_like(x), deterministic=True))
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.from_numpy(x).long(), attention_mask=torch.from_numpy(mask).long()
        ).logits.numpy()
    assert np.abs(ours - theirs).max() <= TOLERANCE
