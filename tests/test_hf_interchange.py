"""`pretrain.export_hf` / `pretrain.import_hf` end to end against transformers (PyTorch).

The tiny HF model has the shapes of `tiny_overrides`, so the pretraining runs here share
compiled steps (persistent XLA cache) with tests/test_train_cli.py.
"""

import importlib.util
import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipeline import vocab
from data_pipeline.vocab import unigram as tok_lib
from data_pipeline.vocab import wordpiece
from pretrain.hf import exporting, importing
from pretrain.hf import tokenizer_files as hf_tokenizer
from pretrain.models import heads
from pretrain.models.config import EncoderConfig
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import checkpoint, sharding, steps
from pretrain.training import workdir as workdir_lib
from pretrain.training.optimizer import make_optimizer
from tests.cli_utils import read_metrics, run_module, tiny_overrides
from tests.test_wordpiece import PIECES, SENTENCES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

VOCAB = [*PIECES, *(f"[unused{i}]" for i in range(99, 99 + 300 - len(PIECES)))]
# The model of tests/cli_utils.py:tiny_overrides, as an HF config.
HF_TINY = dict(
    vocab_size=300,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
BATCH_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions")
TOLERANCE = 1e-4  # float32 max abs logit difference.


def tiny_hf(cls, **overrides):
    """A seeded tiny HF model in eval mode, every parameter moved off its init (no zero biases,
    no unit LayerNorm); tied tensors stay tied."""
    torch.manual_seed(0)
    model = cls(transformers.BertConfig(**{**HF_TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def make_batch(vocab_size: int, seed: int, batch: int = 3, length: int = 24, preds: int = 5):
    rng = np.random.default_rng(seed)
    lengths = np.array([length, 17, 9])[:batch]
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return dict(
        input_ids=rng.integers(1, vocab_size, (batch, length)).astype(np.int32) * mask,
        input_mask=mask,
        segment_ids=((np.arange(length)[None] >= 5) * mask).astype(np.int32),
        masked_lm_positions=np.stack([rng.choice(n, preds, replace=False) for n in lengths]),
    )


def hf_logits(model, x) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(x["input_ids"]).long(),
            attention_mask=torch.from_numpy(x["input_mask"]).long(),
            token_type_ids=torch.from_numpy(x["segment_ids"]).long(),
        )
    logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
    positions = x["masked_lm_positions"][..., None].astype(np.int64)
    result = {"mlm": np.take_along_axis(logits.numpy(), positions, axis=1)}
    if hasattr(out, "seq_relationship_logits"):
        result["nsp"] = out.seq_relationship_logits.numpy()
    return result


def restore_params(workdir: str):
    """(params, model config, step, tokenizer) of a workdir's newest checkpoint."""
    restored = exporting.restore(workdir)
    return restored.params, restored.model_config, restored.step, restored.tokenizer


def our_logits(params: dict, config: EncoderConfig, x) -> dict[str, np.ndarray]:
    """Our model's logits with `params` (a pure dict), jitted: one compilation, not one per op."""
    abstract = nnx.eval_shape(lambda: heads.PreTrainingModel(config, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    nnx.replace_by_pure_dict(state, params)

    @jax.jit
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        ids, mask, segments, positions = (x[k] for k in BATCH_KEYS)
        return model(ids, mask, segments, positions, deterministic=True)

    mlm, nsp = forward(state, {k: x[k] for k in BATCH_KEYS})
    return {"mlm": np.asarray(mlm), "nsp": np.asarray(nsp)}


def assert_parity(got: dict, expected: dict, what: str) -> None:
    for head, value in expected.items():
        diff = float(np.abs(got[head] - value).max())
        print(f"{what}: {head} logits max abs diff {diff:.2e} (scale {np.abs(value).mean():.2f})")
        assert diff <= TOLERANCE, (what, head, diff)
        assert np.abs(value).mean() > 0.01  # Not a comparison of near-zero numbers.


def hf_ids(hf_tokenizer, *texts: str) -> list[int]:
    return hf_tokenizer(*texts)["input_ids"]


def our_ids(tokenizer, a: str, b: str | None = None) -> list[int]:
    ids = [tokenizer.cls_id, *tokenizer.encode(a), tokenizer.sep_id]
    return ids if b is None else [*ids, *tokenizer.encode(b), tokenizer.sep_id]


def assert_same_ids(ours, theirs) -> None:
    for text in SENTENCES:
        assert our_ids(ours, text) == hf_ids(theirs, text), text
    pair = theirs(SENTENCES[0], SENTENCES[2])
    assert pair["input_ids"] == our_ids(ours, SENTENCES[0], SENTENCES[2])
    first = len(our_ids(ours, SENTENCES[0]))
    assert pair["token_type_ids"] == [0] * first + [1] * (len(pair["input_ids"]) - first)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random BertForPreTraining as `save_pretrained` writes it, with a BERT vocab."""
    path = tmp_path_factory.mktemp("hf_source")
    (path / "vocab.txt").write_text("".join(p + "\n" for p in VOCAB))
    tokenizer = transformers.BertTokenizer(vocab=str(path / "vocab.txt"))
    (path / "vocab.txt").unlink()  # transformers v5 saves tokenizer.json only: import that.
    tokenizer.save_pretrained(path)
    tiny_hf(transformers.BertForPreTraining).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imported") / "workdir"
    out = run_module("pretrain.import_hf", [f"--hf_dir={hf_dir}", f"--workdir={workdir}"])
    assert "pretrain_config.py" in out.stdout
    return workdir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    """A sentencepiece workdir from a tiny CLI run (test_train_cli's flags) and its export."""
    workdir = tmp_path_factory.mktemp("pretrained")
    flags = tiny_overrides(data_dir, optimizer__decay="constant")
    run_module("pretrain.train", ["--config=configs/smoke.py", f"--workdir={workdir}", *flags])
    output = tmp_path_factory.mktemp("exported")
    out = run_module("pretrain.export_hf", [f"--workdir={workdir}", f"--output={output}"])
    assert "Exported step 6" in out.stdout
    return workdir, output


@pytest.fixture(scope="module")
def continued(imported, data_dir, tmp_path_factory):
    """Continued pretraining of the imported workdir through the CLI, with `pretrained`'s flags:
    same shapes and settings, so its compiled steps come from the cache."""
    workdir = tmp_path_factory.mktemp("continued") / "workdir"
    shutil.copytree(imported, workdir)
    flags = tiny_overrides(data_dir, optimizer__decay="constant")
    config = f"--config={workdir / importing.CONFIG_FILE}"
    out = run_module("pretrain.train", [config, f"--workdir={workdir}", *flags])
    return workdir, out.stderr


def test_import_gives_hf_logits(hf_dir, imported):
    hf = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
    params, config, step, _ = restore_params(str(imported))
    assert step == 0 and config.vocab_size == 300
    x = make_batch(300, seed=0)
    assert_parity(our_logits(params, config, x), hf_logits(hf, x), "HF -> import -> ours")


def test_imported_workdir_is_a_fresh_train_state_with_the_trainers_config(imported):
    saved = checkpoint.Checkpointer(imported / "checkpoints").read_config(0)
    assert sorted(p.name for p in (imported / "checkpoints").iterdir()) == ["0"]
    # The config the trainer would have saved: default.py with the imported sizes.
    spec = importlib.util.spec_from_file_location(
        "imported_config", imported / "pretrain_config.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert saved == json.loads(json.dumps(config.to_dict()))  # Tuples are lists in JSON.
    assert json.loads((imported / "config.json").read_text())["model"] == saved["model"]
    assert config.model.hidden_size == 32 and config.model.hidden_dropout_prob == 0.0
    assert config.data.vocab_size == 300 and config.data.lower_case

    # Exactly the structure, shapes and dtypes of steps.init_train_state, optimizer state fresh.
    task = PretrainingTask(config, vocab_size=300)
    tx, _ = make_optimizer(config.optimizer, config.num_train_steps)
    abstract = jax.eval_shape(
        lambda key: steps.init_train_state(key, None, make_model=task.make_model, tx=tx),
        jax.random.key(0),
    )
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
    checkpointer = checkpoint.Checkpointer(imported / "checkpoints")
    state = checkpointer.restore(0, target)
    checkpointer.close()
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    assert int(state.step) == 0 and int(state.bad_steps) == 0 and int(state.first_bad_step) == -1
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * len(jax.tree.leaves(state.params))  # Adam's mu and nu.
    assert all(not np.asarray(m).any() for m in moments)


def test_imported_tokenizer_gives_hf_ids(hf_dir, imported):
    ours = vocab.load(str(workdir_lib.tokenizer_file(imported)))
    assert isinstance(ours, wordpiece.WordPieceTokenizer)
    assert (ours.cls_id, ours.sep_id, ours.mask_id, ours.unk_id) == (101, 102, 103, 100)
    assert_same_ids(ours, transformers.AutoTokenizer.from_pretrained(hf_dir))


def test_import_then_export_leaves_every_tensor_unchanged(hf_dir, imported, tmp_path):
    exported = exporting.export_workdir(str(imported), str(tmp_path))
    assert exported.step == 0
    source = safetensors_numpy.load_file(str(hf_dir / "model.safetensors"))
    back = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    assert back.keys() == source.keys()
    for name, value in source.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    for key in (*HF_TINY, "hidden_act", "layer_norm_eps", "type_vocab_size", "model_type"):
        assert config[key] == hf_config[key], key
    assert (tmp_path / "vocab.txt").read_text().splitlines() == VOCAB
    assert_same_ids(
        vocab.load(str(tmp_path / "vocab.txt")),
        transformers.AutoTokenizer.from_pretrained(tmp_path),
    )


@pytest.mark.slow
def test_export_of_a_pretraining_run_gives_our_logits_and_ids(pretrained):
    workdir, output = pretrained
    params, config, step, tokenizer = restore_params(str(workdir))
    assert step == 6 and isinstance(tokenizer, tok_lib.SentencePieceTokenizer)
    hf = transformers.BertForPreTraining.from_pretrained(output).eval()
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    x = make_batch(config.vocab_size, seed=1)
    assert_parity(our_logits(params, config, x), hf_logits(hf, x), "ours -> export -> HF")
    assert_same_ids(tokenizer, transformers.AutoTokenizer.from_pretrained(output))


@pytest.mark.slow
def test_exported_fill_mask_pipeline_gives_our_probabilities(pretrained):
    workdir, output = pretrained
    params, config, _, tokenizer = restore_params(str(workdir))
    fill = transformers.pipeline("fill-mask", model=str(output), top_k=5)
    text = "ab ki [MASK] tu."
    ids = [tokenizer.cls_id, *tokenizer.encode("ab ki"), tokenizer.mask_id]
    ids += [*tokenizer.encode("tu."), tokenizer.sep_id]
    assert fill.tokenizer(text)["input_ids"] == ids  # [MASK] recognized in the text.
    position = ids.index(tokenizer.mask_id)
    x = dict(
        input_ids=np.array([ids], np.int32),
        input_mask=np.ones((1, len(ids)), np.int32),
        segment_ids=np.zeros((1, len(ids)), np.int32),
        masked_lm_positions=np.array([[position]], np.int32),
    )
    probs = jax.nn.softmax(our_logits(params, config, x)["mlm"][0, 0])
    predictions = fill(text)
    assert len(predictions) == 5
    for p in predictions:
        assert p["score"] == pytest.approx(float(probs[p["token"]]), abs=1e-5)
    assert predictions[0]["token"] == int(np.argmax(probs))


@pytest.mark.parametrize("lower_case", [True, False])
def test_exported_sentencepiece_gives_our_ids_on_real_text(lower_case, tmp_path):
    path = tok_lib.train_tokenizer(
        ["data/sample/eval.txt"], 600, str(tmp_path / "sp"), lower_case=lower_case
    )
    ours = tok_lib.SentencePieceTokenizer(path)
    output = tmp_path / "hf"
    output.mkdir()
    hf_tokenizer.export_tokenizer(ours, str(output), model_max_length=128)
    theirs = transformers.AutoTokenizer.from_pretrained(output)
    assert_same_ids(ours, theirs)
    lines = [line for line in open("data/sample/eval.txt", encoding="utf-8") if line.strip()]
    for line in lines[:300]:
        assert ours.encode(line) == theirs(line, add_special_tokens=False)["input_ids"], line
    assert (hf_ids(theirs, "HELLO") == hf_ids(theirs, "hello")) == lower_case


@pytest.mark.slow
def test_continued_pretraining_resumes_the_import_and_exports(continued, imported, tmp_path):
    workdir, stderr = continued
    assert "Resumed" in stderr and "at step 0" in stderr
    train, evals = read_metrics(workdir)
    assert sorted(train) == [1, 2, 3, 4, 5, 6] and sorted(evals) == [3, 6]
    exported = exporting.export_workdir(str(workdir), str(tmp_path))
    assert exported.step == 6
    params, config, _, tokenizer = restore_params(str(workdir))
    # Trained on from the imported weights: 6 Adam steps of lr 1e-3 move each by < 0.01, while
    # they sit ~0.3 (the perturbation) away from any fresh init.
    start, _, _, _ = restore_params(str(imported))
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, start)
    assert 0 < max(jax.tree.leaves(moved)) < 0.01
    assert isinstance(tokenizer, wordpiece.WordPieceTokenizer)
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    x = make_batch(300, seed=2)
    assert_parity(our_logits(params, config, x), hf_logits(hf, x), "continued -> export -> HF")
    assert_same_ids(tokenizer, transformers.AutoTokenizer.from_pretrained(tmp_path))


def test_checkpoint_saved_on_8_devices_exports_every_tensor_unchanged(hf_dir, imported, tmp_path):
    """The imported state, sharded over an fsdp x tensor mesh of 8 devices and saved from there,
    exports to exactly the tensors of the HF model it came from."""
    config = ml_collections.ConfigDict(
        checkpoint.Checkpointer(imported / "checkpoints").read_config(0)
    )
    config.mesh.fsdp, config.mesh.tensor = 4, 2
    config.dtype = "float32"
    tx, schedule = make_optimizer(config.optimizer, config.num_train_steps)
    mesh = sharding.create_mesh(config.mesh)
    jitted = steps.build_steps(
        PretrainingTask(config, vocab_size=300),
        tx,
        schedule,
        mesh,
        tuple(config.mesh.logical_axis_rules),
        grad_accum_steps=1,
        seed=config.seed,
    )
    source = checkpoint.Checkpointer(imported / "checkpoints")
    state = source.restore(0, jitted.abstract_state)
    source.close()
    kernel = state.params["encoder"]["layers"][0]["mlp_in"]["kernel"][...]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated

    workdir = tmp_path / "sharded"
    shutil.copytree(imported, workdir, ignore=shutil.ignore_patterns("checkpoints"))
    target = checkpoint.Checkpointer(workdir / "checkpoints")
    target.save(5, state, config.to_dict())
    target.close()
    exported = exporting.export_workdir(str(workdir), str(tmp_path / "hf"))
    assert exported.step == 5
    original = safetensors_numpy.load_file(str(hf_dir / "model.safetensors"))
    back = safetensors_numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert back.keys() == original.keys()
    for name, value in original.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_pytorch_bin_masked_lm_with_vocab_txt_imports(tmp_path):
    """A BertForMaskedLM (no pooler, no NSP head) in pytorch_model.bin; a cased vocab.txt with
    fewer lines than embedding rows."""
    hf_dir = tmp_path / "hf"
    hf = tiny_hf(transformers.BertForMaskedLM, vocab_size=len(VOCAB) + 2)
    hf.config.save_pretrained(hf_dir)
    torch.save(hf.state_dict(), hf_dir / "pytorch_model.bin")  # The pre-safetensors format.
    (hf_dir / "vocab.txt").write_text("".join(p + "\n" for p in VOCAB))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))

    imported = importing.import_hf_dir(str(hf_dir), str(tmp_path / "workdir"))
    assert imported.fresh_parts == ["pooler", "next-sentence head"]
    tokenizer = vocab.load(imported.tokenizer_file)
    assert tokenizer.vocab_size == len(VOCAB) + 2 and not tokenizer.lower_case
    assert tokenizer.id_to_piece(len(VOCAB)) == "[EMBEDDING_ROW_300]"
    params, our_config, _, _ = restore_params(str(tmp_path / "workdir"))
    x = make_batch(len(VOCAB), seed=3)
    got = our_logits(params, our_config, x)
    assert_parity({"mlm": got["mlm"]}, hf_logits(hf, x), "BertForMaskedLM .bin -> ours")


def test_user_errors(imported, hf_dir, tmp_path):
    proc = run_module(
        "pretrain.export_hf",
        [f"--workdir={imported}", f"--output={tmp_path}", "--step=7"],
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --step=7 has no complete")
    with pytest.raises(ValueError, match="is not empty"):
        importing.import_hf_dir(str(hf_dir), str(imported))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        importing.import_hf_dir(str(tmp_path), str(tmp_path / "new"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer or no checkpoints"):
        exporting.export_workdir(str(tmp_path), str(tmp_path / "out"))
