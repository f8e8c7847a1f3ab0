"""Serving: the `jax.export` artifact against `pretrain.predict`, the batcher, the HTTP app's
answers, refusals and metrics (in process, through an ASGI client), and one real server under
load and SIGTERM.

One tiny classifier (4 fine-tuning steps) serves every test of the module; its answers are
compared with `pretrain.predict`'s on the same texts.
"""

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from data_pipeline.tasks import classification as classification_data
from data_pipeline.tasks import conll, squad
from data_pipeline.vocab import unigram as tokenizer_lib
from pretrain.serving import app as app_lib
from pretrain.serving import artifact, inputs
from pretrain.serving.batcher import Batcher, QueueFull
from tests.cli_utils import REPO, cli_env, run_in_process, run_module
from tests.test_finetune import TINY_MODEL, finetune_flags, write_keyword_task


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(fine-tuning workdir, artifact dir, texts, pretrain.predict's rows for them)."""
    root = tmp_path_factory.mktemp("serving")
    write_keyword_task(root / "train.tsv", 120, seed=0)
    write_keyword_task(root / "eval.tsv", 24, seed=1)
    texts = [row.split("\t")[1] for row in (root / "eval.tsv").read_text().splitlines()]
    (root / "text.txt").write_text("\n".join(texts) + "\n")
    sp = tokenizer_lib.train_tokenizer([str(root / "text.txt")], 80, str(root / "sp"))
    flags = finetune_flags(root / "ft", root / "train.tsv", root / "eval.tsv", **TINY_MODEL,
                           data__tokenizer_model=sp, num_train_steps=4, eval_every_steps=4,
                           checkpoint_every_steps=4, log_every_steps=4)  # fmt: skip
    run_module("pretrain.finetune", flags)
    run_module("pretrain.predict", [f"--workdir={root / 'ft'}", f"--input={root / 'text.txt'}",
                                    f"--output={root / 'out.jsonl'}"])  # fmt: skip
    expected = [json.loads(x) for x in (root / "out.jsonl").read_text().splitlines()]
    out = run_module("pretrain.export_serving", [f"--workdir={root / 'ft'}",
                                                 f"--output={root / 'serve'}",
                                                 "--buckets=16,32", "--batch_size=4"])  # fmt: skip
    assert "buckets [16, 32]" in out.stdout
    return root / "ft", root / "serve", texts, expected


@pytest.fixture(scope="module")
def predictor(served):
    return artifact.load(str(served[1]))


def assert_same_rows(ours, theirs):
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert [r["probability"] for r in ours] == pytest.approx(
        [r["probability"] for r in theirs], abs=1e-5
    )


def test_the_artifact_gives_predicts_outputs(served, predictor):
    _, serve_dir, texts, expected = served
    manifest = json.loads((serve_dir / "manifest.json").read_text())
    assert manifest["format_version"] == artifact.FORMAT_VERSION
    assert (manifest["task"], manifest["buckets"], manifest["batch_size"]) == (
        "classification", [16, 32], 4)  # fmt: skip
    assert (
        manifest["step"] == 4
        and manifest["project_version"]
        and manifest["row_buckets"] == [1, 2, 4]
    )
    assert manifest["outputs"]["logits"] == {"dtype": "float32", "shape": ["batch", 2]}
    predictor.warm_up()
    rows, tokens = predictor.predict(texts)  # 24 texts: several calls, short and long buckets.
    assert_same_rows(rows, expected)
    assert tokens > len(texts) * 3  # [CLS], [SEP] and at least one piece each.


def test_wrong_artifacts_are_one_line(served, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(served[1], old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    code, lines = run_in_process(lambda: artifact.load(str(old)), capsys)
    assert code == 2 and len(lines) == 1
    assert "format version 0" in lines[0] and "re-export" in lines[0]
    code, lines = run_in_process(lambda: artifact.open_model(str(tmp_path)), capsys)
    assert code == 2 and len(lines) == 1 and "neither a serving artifact" in lines[0]
    code, lines = run_in_process(lambda: artifact.load(str(tmp_path)), capsys)
    assert code == 2 and "not a serving artifact" in lines[0]


def test_items_become_each_tasks_own_prediction_input(tmp_path):
    path = str(tmp_path / "input")
    pairs = [("who came?", "mr alba came\thome"), ("q2", "a\nb")]
    inputs.write_inputs("qa", pairs, path)
    assert [(q.question, q.context) for q in squad.read_questions(path, labelled=False)] == pairs
    inputs.write_inputs("classification", pairs, path)
    raw = classification_data.read_inputs(path)
    assert (raw.text_a, raw.text_b) == (["who came?", "q2"], ["mr alba came home", "a b"])
    texts = ["mr\talba  jr", "in bruno\r\n"]
    inputs.write_inputs("tagging", texts, path)
    sentences = conll.read_text(path)
    # Tabs and line breaks read as spaces, one for one: character offsets stay those of the text.
    assert sentences.texts == ["mr alba  jr", "in bruno  "]
    assert sentences.words == [["mr", "alba", "jr"], ["in", "bruno"]]


# --- The batcher alone: a run function that blocks until released, so every batch is known.


class GatedRun:
    def __init__(self):
        self.release, self.started, self.batches = threading.Event(), threading.Event(), []

    def __call__(self, items):
        self.started.set()
        self.release.wait(30)
        self.batches.append(list(items))
        if "boom" in items:
            raise RuntimeError("boom in the model")
        return [x.upper() for x in items], len(items)


async def _until(condition):
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_the_batcher_fills_batches_up_to_max_batch_in_order():
    async def scenario():
        run = GatedRun()
        batcher = Batcher(run, max_batch=8, max_wait_ms=50, max_queue=16)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(run.started.is_set)
        requests = [[f"r{i}x", f"r{i}y", f"r{i}z"] for i in range(5)]
        futures = [asyncio.ensure_future(batcher.submit(r)) for r in requests]
        await _until(lambda: batcher.depth == 5)
        run.release.set()
        answers = await asyncio.gather(first, *futures)
        await batcher.close()
        return run.batches, answers, requests

    batches, answers, requests = asyncio.run(scenario())
    # Three-item requests: two fit in a batch of 8, the third starts the next batch.
    assert [len(b) for b in batches] == [1, 6, 6, 3]
    assert answers[1:] == [[x.upper() for x in r] for r in requests]


def test_a_failed_batch_fails_only_its_requests_and_a_full_queue_refuses():
    async def scenario():
        run = GatedRun()
        batcher = Batcher(run, max_batch=8, max_wait_ms=0, max_queue=2, dynamic=False)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(run.started.is_set)
        bad = asyncio.ensure_future(batcher.submit(["boom"]))
        good = asyncio.ensure_future(batcher.submit(["b"]))
        await _until(lambda: batcher.depth == 2)
        with pytest.raises(QueueFull):
            await batcher.submit(["c"])
        run.release.set()
        results = await asyncio.gather(first, bad, good, return_exceptions=True)
        await batcher.close()
        return results

    first, bad, good = asyncio.run(scenario())
    assert first == ["A"] and good == ["B"]
    assert isinstance(bad, RuntimeError)


# --- The app in process.


def serve_in_process(predictor, scenario, **settings):
    """Runs `scenario(client)` against the app once warm (its lifespan started and ended)."""

    async def main():
        app = app_lib.create_app(predictor, app_lib.Settings(**settings))
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                for _ in range(1000):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                return await scenario(client)

    return asyncio.run(main())


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_concurrent_requests_get_predicts_answers_and_nothing_compiles(served, predictor):
    texts, expected = served[2], served[3]
    groups = [list(range(i, min(i + 1 + i % 3, len(texts)))) for i in range(len(texts))]

    async def scenario(client):
        answers = await asyncio.gather(
            *(client.post("/v1/predict", json={"texts": [texts[i] for i in g]}) for g in groups)
        )
        return answers, (await client.get("/metrics")).text

    answers, metrics = serve_in_process(predictor, scenario, max_batch=8, max_wait_ms=20)
    for group, answer in zip(groups, answers):
        assert answer.status_code == 200
        assert_same_rows(answer.json()["predictions"], [expected[i] for i in group])
    assert metric(metrics, "serving_requests_total") == len(groups)
    assert metric(metrics, "serving_batch_size_sum") == sum(len(g) for g in groups)
    assert metric(metrics, "serving_compiles_since_ready") == 0
    assert metric(metrics, "serving_tokens_total") > 0
    assert metric(metrics, "serving_request_latency_seconds_count") == len(groups)


def test_bad_requests_are_refused_with_one_line(predictor):
    long_text = " ".join(["zebra"] * 40)
    cases = [
        (b"{not json", 400, "not JSON"),
        (json.dumps({"text": ["a"]}), 400, 'one field, "texts" or "pairs"'),
        (json.dumps({"texts": []}), 400, "non-empty list"),
        (json.dumps({"texts": ["a", 3]}), 400, "texts[1] is int"),
        (json.dumps({"pairs": [["a"]]}), 400, "pairs[0] must be a list of two strings"),
        (json.dumps({"texts": ["a"] * 5}), 413, "the limit is 4"),
        (json.dumps({"texts": ["a", long_text]}), 413, "item 1 has"),
    ]

    async def scenario(client):
        return [await client.post("/v1/predict", content=body) for body, _, _ in cases]

    refused = serve_in_process(predictor, scenario, max_batch=4, long_texts="reject")
    for (_, status, fragment), response in zip(cases, refused):
        assert response.status_code == status, response.text
        reason = response.json()["error"]
        assert fragment in reason and "\n" not in reason

    async def truncating(client):
        return await client.post("/v1/predict", json={"texts": ["a", long_text]})

    cut = serve_in_process(predictor, truncating, max_batch=4)
    assert cut.status_code == 200 and cut.json()["truncated"] == [1]
    assert len(cut.json()["predictions"]) == 2


class Faulty:
    """The real predictor, but a batch holding "boom" fails and the first batch waits for
    `release`: the app's 500 and 503 paths."""

    def __init__(self, predictor):
        self.inner, self.release, self.started = predictor, threading.Event(), threading.Event()
        self.warmed = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def warm_up(self, max_items=None):
        self.inner.warm_up(max_items)
        self.warmed = True

    def predict(self, items):
        if self.warmed and not self.release.is_set():
            self.started.set()
            self.release.wait(30)
        if "boom" in items:
            raise RuntimeError("the model broke")
        return self.inner.predict(items)


def test_a_failing_batch_is_500_a_full_queue_503_and_the_server_goes_on(served, predictor):
    texts, expected = served[2], served[3]
    faulty = Faulty(predictor)

    async def scenario(client):
        held = asyncio.ensure_future(client.post("/v1/predict", json={"texts": [texts[0]]}))
        await _until(faulty.started.is_set)
        queued = asyncio.ensure_future(client.post("/v1/predict", json={"texts": ["boom"]}))
        while metric((await client.get("/metrics")).text, "serving_queue_depth") < 1:
            await asyncio.sleep(0.01)
        full = await client.post("/v1/predict", json={"texts": [texts[1]]})
        faulty.release.set()
        held, queued = await held, await queued
        after = await client.post("/v1/predict", json={"texts": [texts[2]]})
        return held, queued, full, after

    held, failed, full, after = serve_in_process(
        faulty, scenario, max_batch=4, max_queue=1, max_wait_ms=0, dynamic=False
    )
    assert held.status_code == 200 and after.status_code == 200
    assert_same_rows(held.json()["predictions"] + after.json()["predictions"],
                     [expected[0], expected[2]])  # fmt: skip
    assert failed.status_code == 500 and "the model broke" in failed.json()["error"]
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert "queue is full" in full.json()["error"]


# --- A real server: the short load test, then SIGTERM during load.


@pytest.mark.slow
def test_a_real_server_under_load_and_sigterm_loses_no_request(served, record_property):
    from benchmarks import serving_load

    workdir, _, texts, expected = served
    proc = subprocess.Popen(
        [sys.executable, "-m", "pretrain.serve", f"--model={workdir}", "--port=0",
         "--buckets=16,32", "--batch_size=8", "--max_batch=16", "--max_wait_ms=3000"],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = re.search(r"http://\S+", proc.stdout.readline()).group(0)
        asyncio.run(serving_load.wait_ready(url, timeout_s=120))
        result = asyncio.run(serving_load.run_load(url, texts, clients=16, requests=200,
                                                   max_seconds=120))  # fmt: skip
        assert result.errors == 0 and len(result.answers) == 200
        for i, row in result.answers:
            assert row["label"] == expected[i]["label"]
            assert row["probability"] == pytest.approx(expected[i]["probability"], abs=1e-5)
        p99_ms = result.percentile(99) * 1000
        record_property("p99_ms", p99_ms)  # In the JUnit report; printed with -s.
        print(f"200 requests, 16 clients: p99 {p99_ms:.1f} ms")

        async def drain():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                calls = [asyncio.ensure_future(client.post("/v1/predict", json={"texts": [t]}))
                         for t in texts[:12]]  # fmt: skip
                waiting = 0
                while waiting < 12 and not all(c.done() for c in calls):
                    waiting = metric((await client.get("/metrics")).text,
                                     "serving_requests_in_flight")  # fmt: skip
                    await asyncio.sleep(0.02)
                assert waiting == 12  # All wait for their batch to fill up to 16, or 3 s.
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*calls)

        answers = asyncio.run(drain())
        assert [a.status_code for a in answers] == [200] * 12
        assert_same_rows([a.json()["predictions"][0] for a in answers], expected[:12])
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
