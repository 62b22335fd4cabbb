"""The HTTP server: API scores equal the model's, raw values map to the ids training used (Criteo
hex keys and table text, through vocabularies or hashing), /metrics is Prometheus text whose
counters add up, a full queue answers 503 at once and recovers, SIGTERM drains an in-flight
request, and a fuzzer finds no 5xx, hang or dead worker."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.store import FIRST_VOCAB_ID, MISSING_ID, OOV_ID, Dataset
from recstack.serve.api import RankRequest, RequestEncoder, RequestError
from recstack.serve.app import create_app
from recstack.serve.engine import EngineConfig, InferenceEngine
from tests.conftest import REPO, shared_data
from tests.test_engine import Recorder, reference

with warnings.catch_warnings():  # starlette's TestClient asks for httpx2; httpx is what it runs on here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def tiny() -> InferenceEngine:
    engine = InferenceEngine.from_preset("tiny", EngineConfig(workers=2, sub_batch=8, max_batch=64), seed=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, close_engine=False, max_candidates=256)) as c:
        yield c


def as_request(batch: Batch, shared: set[str]) -> tuple[dict, Batch]:
    """A /v1/rank body for a batch's rows, the `shared` features taken from row 0, and the batch it
    stands for (row 0's shared values repeated on every row): built without the server's encoder."""
    n = batch.batch_size
    dense = batch.dense.clone()
    body: dict = {"shared": {}, "candidates": {}}
    names = list(batch.sparse.keys)
    for j, name in enumerate(dense_names_of(batch)):
        if name in shared:
            body["shared"][name] = float(dense[0, j])
            dense[:, j] = dense[0, j]
        else:
            body["candidates"][name] = dense[:, j].tolist()
    features = {}
    for name, (values, lengths) in batch.sparse.to_dict().items():
        bags = [bag.tolist() for bag in torch.split(values, lengths.tolist())]
        if name in shared:
            body["shared"][name] = bags[0]
            bags = [bags[0]] * n
        else:
            body["candidates"][name] = bags
        features[name] = (torch.tensor([v for bag in bags for v in bag], dtype=torch.int64),
                          torch.tensor([len(bag) for bag in bags], dtype=torch.int32))
    assert list(features) == names
    return body, Batch(dense, JaggedFeatures.from_dict(features), torch.zeros(n))


def dense_names_of(batch: Batch) -> list[str]:
    return [f"I{j + 1}" for j in range(batch.dense.shape[1])]  # the synthetic presets' dense names


# --- the API ------------------------------------------------------------------------------------


def test_rank_round_trip_equals_the_model(client, tiny):
    batch = tiny.candidates.draw(40, np.random.default_rng(0))
    body, expected = as_request(batch, shared={"I1", "I2", "C1", "C4"})  # C4: a variable-length bag
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 200, response.text
    scores = torch.tensor(response.json()["scores"])
    torch.testing.assert_close(scores, reference(tiny.model, expected), rtol=0, atol=1e-6)
    assert float(scores.std()) > 0  # candidates differ


def test_batch_and_synthetic_forms(client, tiny):
    rng = np.random.default_rng(1)
    bodies, expected = zip(*(as_request(tiny.candidates.draw(n, rng), {"I3", "C2"}) for n in (1, 9, 30)))
    response = client.post("/v1/rank/batch", json={"queries": list(bodies)})
    assert response.status_code == 200, response.text
    for result, batch in zip(response.json()["results"], expected):
        torch.testing.assert_close(torch.tensor(result["scores"]), reference(tiny.model, batch), rtol=0, atol=1e-6)
    response = client.post("/v1/rank/synthetic", json={"size": 12, "seed": 7})
    drawn = tiny.synthetic_query(0, 12, 0.0, np.random.default_rng(7)).batch
    torch.testing.assert_close(torch.tensor(response.json()["scores"]), reference(tiny.model, drawn), rtol=0, atol=1e-6)


def test_schema_health_and_openapi(client):
    features = client.get("/v1/schema").json()["features"]
    assert [f["name"] for f in features] == ["I1", "I2", "I3", "I4", "C1", "C2", "C3", "C4", "C5"]
    assert {f["kind"] for f in features} == {"dense", "id"}
    assert next(f for f in features if f["name"] == "C3")["bag_length"] == 3
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert {"/v1/rank", "/v1/rank/batch", "/v1/rank/synthetic", "/health", "/metrics", "/v1/schema"} <= set(spec["paths"])
    assert "RankRequest" in spec["components"]["schemas"]


@pytest.mark.parametrize("mutate,status,message", [
    (lambda b: b["candidates"].update(bogus=[1] * 5), 422, "unknown features"),
    (lambda b: b["candidates"].pop("C2"), 422, "1 missing features: C2;"),
    (lambda b: b["shared"].update(C2=3), 422, "both in shared and in candidates"),
    (lambda b: b["candidates"]["C2"].__setitem__(0, 1000), 422, "out of range"),
    (lambda b: b["candidates"]["C2"].__setitem__(0, -1), 422, "out of range"),
    (lambda b: b["candidates"]["C2"].__setitem__(0, 2**80), 422, "out of range"),
    (lambda b: b["candidates"]["C2"].__setitem__(0, 1.5), 422, "ids must be integers, got number"),
    (lambda b: b["candidates"]["C2"].__setitem__(0, True), 422, "ids must be integers, got bool"),
    (lambda b: b["candidates"]["C2"].__setitem__(0, "7"), 422, "ids must be integers, got string"),
    (lambda b: b["candidates"]["C3"].__setitem__(0, [1, 2]), 422, "exactly 3"),
    (lambda b: b["candidates"]["C2"].append(3), 422, "different lengths"),
    (lambda b: b["shared"].update(I1=float("nan")), 422, "finite"),
    (lambda b: b["shared"].update(I1=float("inf")), 422, "finite"),
    (lambda b: b["shared"].update(I1=1e39), 422, "finite"),
    (lambda b: b["shared"].update(I1="0.5"), 422, "must be numbers"),
    (lambda b: b["shared"].update(I1=[0.5]), 422, "must be numbers"),
    (lambda b: b["shared"].update(I1=None), 422, "got null"),
    (lambda b: b.update(candidates={k: [] for k in b["candidates"]}), 422, "empty"),
    (lambda b: b.update(candidates={}), 422, "empty"),
    (lambda b: b.update(extra=1), 422, "extra"),
    (lambda b: b.pop("candidates"), 422, "candidates: Field required"),
])
def test_bad_queries_get_a_clear_422(client, tiny, mutate, status, message):
    body, _ = as_request(tiny.candidates.draw(5, np.random.default_rng(2)), shared={"I1", "C1"})
    mutate(body)
    response = client.post("/v1/rank", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize("raw,status,message", [
    (b"{bad", 422, "malformed JSON: key must be a string"),
    (b"[" * 50_000 + b"]" * 50_000, 422, "malformed JSON: recursion limit exceeded"),
    (b"", 422, ""),
    (b"\xff\xfe", 422, ""),
    (json.dumps({"size": -3}).encode(), 422, "size must be 1 to 256"),
    (json.dumps({"size": 10**30}).encode(), 422, "size must be 1 to 256"),
    (json.dumps({"size": 257}).encode(), 422, "size must be 1 to 256"),
    (json.dumps({"size": "12"}).encode(), 422, ""),
])
def test_malformed_bodies_and_sizes(client, raw, status, message):
    response = client.post("/v1/rank/synthetic", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_too_many_candidates_and_queries(client):
    body = {"candidates": {"C2": [1] * 257}}
    assert "at most 256" in client.post("/v1/rank", json=body).json()["detail"]
    response = client.post("/v1/rank/batch", json={"queries": []})
    assert response.status_code == 422 and "give 1 to 64" in response.json()["detail"]


def test_oversized_bodies_get_413_before_parsing(tiny):
    with TestClient(create_app(tiny, close_engine=False, max_body_bytes=1000)) as small:
        big = b'{"size": 1, "pad": "' + b"x" * 2000 + b'"}'
        response = small.post("/v1/rank/synthetic", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "over the limit of 1,000 bytes" in response.json()["detail"]
        chunked = small.post("/v1/rank/synthetic", content=iter([big[:600], big[600:]]),
                             headers={"content-type": "application/json"})  # no content-length: counted as read
        assert chunked.status_code == 413
        assert small.post("/v1/rank/synthetic", json={"size": 2}).status_code == 200


# --- raw categorical values ---------------------------------------------------------------------


def encoder_for(dataset: Dataset) -> RequestEncoder:
    vocab = {name: dataset.vocab(name) for name in dataset.schema.vocab}
    return RequestEncoder(dataset.schema, vocab)


def ids_of(batch: Batch, name: str) -> list[int]:
    return batch.sparse.to_dict()[name][0].tolist()


def test_criteo_hex_values_map_to_the_ids_prepare_wrote(tmp_path):
    from recstack.data.prepare import prepare_criteo

    lines = shared_data("criteo", "train_sample.tsv").read_text().splitlines()[:300]
    (tmp_path / "head.tsv").write_text("\n".join(lines) + "\n")
    prepare_criteo([tmp_path / "head.tsv"], tmp_path / "data", vocab_min_count=2, show_progress=False)
    dataset = Dataset(tmp_path / "data")
    assert len(dataset) == 300 and dataset.schema.vocab
    fields = [line.split("\t") for line in lines]
    # the raw values of the TSV, as `predict --input` reads them: the server applies log(1 + max(x, 0)),
    # and an empty field (sent as null or "") is missing, as in training
    assert any(f[1 + j] == "" for f in fields for j in range(13)) and any(f[1 + j].startswith("-") for f in fields
                                                                          for j in range(13))
    body = {"candidates": {
        **{f"I{j + 1}": [None if f[1 + j] == "" and k % 2 else f[1 + j] if k % 3 == 0 else
                         (int(f[1 + j]) if f[1 + j] else "") for k, f in enumerate(fields)] for j in range(13)},
        **{f"C{j + 1}": [None if f[14 + j] == "" and k % 2 else f[14 + j] for k, f in enumerate(fields)]
           for j in range(26)},
    }}
    batch = encoder_for(dataset).encode(RankRequest.model_validate(body))
    expected = dataset.gather(slice(0, 300))
    assert torch.equal(batch.sparse.values, expected.sparse.values)
    torch.testing.assert_close(batch.dense, expected.dense, rtol=1e-6, atol=1e-6)
    # unseen -> OOV, empty -> missing, either case of hex digits reads the same key
    known = fields[0][14]
    probe = {"candidates": {**{k: v[:4] for k, v in body["candidates"].items()}, "C1": [known.upper(), "ffffffff", "", known]}}
    got = ids_of(encoder_for(dataset).encode(RankRequest.model_validate(probe)), "C1")
    assert got[0] == got[3] == ids_of(expected, "C1")[0] >= FIRST_VOCAB_ID and got[1:3] == [OOV_ID, MISSING_ID]
    with pytest.raises(RequestError, match="38 missing features: I1, I2, .*I10 and 28 more"):
        encoder_for(dataset).encode(RankRequest.model_validate({"candidates": {"C1": [known]}}))
    with pytest.raises(RequestError, match="not a Criteo categorical value"):
        probe["candidates"]["C1"][1] = "0x12"
        encoder_for(dataset).encode(RankRequest.model_validate(probe))


@pytest.mark.parametrize("hashed", [False, True])
def test_table_text_values_map_to_the_ids_prepare_wrote(tmp_path, hashed):
    from recstack.data.table import prepare_table

    rows = ["click,price,city,item", "1,3.5,paris,a1", "0,0,berlin,b2", "1,12,paris,c3", "0,7,rome,a1"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    spec = {"label": "click", "dense": ["price"], "categorical": ["city", "item"], **({"hash_buckets": 101} if hashed else {})}
    prepare_table(tmp_path / "t.csv", spec, tmp_path / "data", show_progress=False)
    dataset = Dataset(tmp_path / "data")
    body = {"shared": {}, "candidates": {"price": [3.5, None, "12", 7],
                                         "city": ["paris", "berlin", "paris", "rome"], "item": ["a1", "b2", "c3", "a1"]}}
    encoder = encoder_for(dataset)
    assert encoder.kinds == {"price": "dense", "city": "raw", "item": "raw"}
    batch = encoder.encode(RankRequest.model_validate(body))
    assert torch.equal(batch.sparse.values, dataset.gather(slice(0, 4)).sparse.values)
    torch.testing.assert_close(batch.dense, dataset.gather(slice(0, 4)).dense)  # raw values, transformed here
    assert batch.dense[:, 0].tolist() == pytest.approx([math.log1p(x) for x in (3.5, 0, 12, 7)])
    unseen = encoder.encode(RankRequest.model_validate({"shared": {"price": 1.0, "city": "oslo"},
                                                        "candidates": {"item": ["", "zz"]}}))
    if not hashed:
        assert ids_of(unseen, "city") == [OOV_ID, OOV_ID] and ids_of(unseen, "item") == [MISSING_ID, OOV_ID]
    else:
        assert ids_of(unseen, "item")[0] == MISSING_ID and min(ids_of(unseen, "city")) >= FIRST_VOCAB_ID
    with pytest.raises(RequestError, match="raw categorical values must be strings"):
        encoder.encode(RankRequest.model_validate({"shared": {"price": 1.0, "city": 3.5}, "candidates": {"item": ["a1"]}}))
    with pytest.raises(RequestError, match="'cheap' is not a number"):
        encoder.encode(RankRequest.model_validate({"shared": {"price": "cheap", "city": "x"}, "candidates": {"item": ["a1"]}}))
    described = {f["name"]: f for f in encoder.describe()["features"]}
    assert described["price"]["transform"] == "log1p" and "log(1 + max(x, 0))" in described["price"]["expects"]
    assert "missing" in described["city"]["expects"]


# --- a live server: metrics, shedding, shutdown -------------------------------------------------


@contextmanager
def live(app):
    """The app under a real uvicorn on a free loopback port, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.perf_counter() + 30
    while not server.started and time.perf_counter() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_are_prometheus_text_and_add_up(tiny):
    engine = InferenceEngine(tiny.model, tiny.schema, EngineConfig(workers=1, sub_batch=4))
    with TestClient(create_app(engine, max_body_bytes=10_000)) as client:
        sizes = [3, 10, 4]
        for size in sizes:
            assert client.post("/v1/rank/synthetic", json={"size": size}).status_code == 200
        for _ in range(2):
            assert client.post("/v1/rank/synthetic", json={"size": 0}).status_code == 422
        assert client.post("/v1/rank", content=b"x" * 20_000).status_code == 413
        assert client.get("/nowhere").status_code == 404
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)

    def requests(endpoint: str, status: str) -> float:
        return got.get(("recstack_http_requests_total", (("endpoint", endpoint), ("status", status))), 0.0)

    assert requests("/v1/rank/synthetic", "200") == 3 and requests("/v1/rank/synthetic", "422") == 2
    assert requests("/v1/rank", "413") == 1 and requests("other", "404") == 1
    count = got[("recstack_http_request_duration_seconds_count", (("endpoint", "/v1/rank/synthetic"),))]
    inf_bucket = got[("recstack_http_request_duration_seconds_bucket", (("endpoint", "/v1/rank/synthetic"), ("le", "+Inf")))]
    assert count == inf_bucket == 5
    assert got[("recstack_engine_queries_total", ())] == got[("recstack_engine_completed_total", ())] == 3
    assert got[("recstack_engine_items_total", (("pool", "cpu"),))] == sum(sizes)
    assert got[("recstack_engine_sub_requests_total", (("pool", "cpu"),))] == sum(math.ceil(s / 4) for s in sizes)
    assert got[("recstack_engine_queue_items", (("pool", "cpu"),))] == 0 and got[("recstack_engine_in_flight", ())] == 0
    assert got[("recstack_engine_rejected_total", ())] == 0


def test_a_full_queue_answers_503_at_once_and_recovers(tiny):
    gate = threading.Event()
    model = Recorder(tiny.model, gate=gate)
    engine = InferenceEngine(model, tiny.schema, EngineConfig(workers=1, queue_limit=8))
    results: dict[int, httpx.Response] = {}
    with live(create_app(engine)) as url:
        def post(size: int) -> None:
            results[size] = httpx.post(f"{url}/v1/rank/synthetic", json={"size": size}, timeout=60)

        first = threading.Thread(target=post, args=(4,))
        first.start()
        assert model.entered.wait(30)  # 4 rows held in the model
        second = threading.Thread(target=post, args=(6,))
        second.start()
        deadline = time.perf_counter() + 30
        while engine.stats()["queue_items"] < 6 and time.perf_counter() < deadline:
            time.sleep(0.01)
        start = time.perf_counter()
        shed = httpx.post(f"{url}/v1/rank/synthetic", json={"size": 5}, timeout=60)  # 6 + 5 > 8
        shed_seconds = time.perf_counter() - start
        gate.set()
        first.join(60)
        second.join(60)
        recovered = httpx.post(f"{url}/v1/rank/synthetic", json={"size": 5}, timeout=60)
        metrics = samples(httpx.get(f"{url}/metrics").text)
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and "overloaded" in shed.json()["detail"]
    assert shed_seconds < 2.0  # at once, not after the held request
    assert results[4].status_code == results[6].status_code == recovered.status_code == 200
    assert len(recovered.json()["scores"]) == 5
    assert metrics[("recstack_http_requests_total", (("endpoint", "/v1/rank/synthetic"), ("status", "503")))] == 1
    assert metrics[("recstack_engine_rejected_total", ())] == 1


def test_requests_over_the_in_flight_limit_get_503_before_the_engine_sees_them(tiny):
    gate = threading.Event()
    model = Recorder(tiny.model, gate=gate)
    engine = InferenceEngine(model, tiny.schema, EngineConfig(workers=1))  # no row limit: only the HTTP one
    results: list[httpx.Response] = []
    with live(create_app(engine, max_in_flight=2)) as url:
        def post() -> None:
            results.append(httpx.post(f"{url}/v1/rank/synthetic", json={"size": 3}, timeout=60))

        held = [threading.Thread(target=post) for _ in range(2)]
        for thread in held:
            thread.start()
        assert model.entered.wait(30)
        deadline = time.perf_counter() + 30
        while engine.stats()["queries"] < 2 and time.perf_counter() < deadline:
            time.sleep(0.01)
        start = time.perf_counter()
        shed = httpx.post(f"{url}/v1/rank", content=b"not even JSON", timeout=60)  # shed before parsing
        shed_seconds = time.perf_counter() - start
        health = httpx.get(f"{url}/health", timeout=60)  # other endpoints are not limited
        gate.set()
        for thread in held:
            thread.join(60)
        recovered = httpx.post(f"{url}/v1/rank/synthetic", json={"size": 3}, timeout=60)
        metrics = samples(httpx.get(f"{url}/metrics").text)
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and "in flight" in shed.json()["detail"]
    assert shed_seconds < 2.0 and health.status_code == 200
    assert [r.status_code for r in results] == [200, 200] and recovered.status_code == 200
    assert metrics[("recstack_http_shed_total", ())] == 1
    assert metrics[("recstack_engine_queries_total", ())] == 3  # the shed request never reached the engine
    assert metrics[("recstack_http_requests_total", (("endpoint", "/v1/rank", ), ("status", "503")))] == 1


@contextmanager
def served(tmp_path, *options: str):
    """`recstack serve --preset tiny --port 0 OPTIONS` in a subprocess (stderr into stdout), once it
    has printed its URL: (the process, the URL, the lines printed so far); killed on the way out if
    it is still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "recstack.cli", "serve", "--preset", "tiny", "--port", "0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "RECSTACK_CACHE": str(tmp_path / "cache")},
    )
    try:
        url = None
        deadline = time.perf_counter() + 120
        lines = []
        while url is None and time.perf_counter() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("listening on "):
                url = line.split()[2]
            elif not line and proc.poll() is not None:
                break
        assert url, "".join(lines)
        yield proc, url, lines
    finally:
        if proc.poll() is None:
            proc.kill()


def exit_of(proc: subprocess.Popen, lines: list[str]) -> tuple[int, str]:
    """The server's exit code and everything it printed."""
    code = proc.wait(60)
    return code, "".join(lines) + proc.stdout.read()


def test_sigterm_drains_the_request_in_flight(tmp_path):
    # a lone request waits 2 s in the batching queue: SIGTERM arrives while it is in flight
    with served(tmp_path, "--workers", "1", "--max-wait-ms", "2000") as (proc, url, lines):
        box: dict = {}
        request = threading.Thread(target=lambda: box.update(
            response=httpx.post(f"{url}/v1/rank/synthetic", json={"size": 3}, timeout=60)))
        started = time.perf_counter()
        request.start()
        while httpx.get(f"{url}/health", timeout=30).json()["in_flight"] < 1:  # admitted, waiting in the queue
            assert time.perf_counter() - started < 30
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        request.join(60)
        code, output = exit_of(proc, lines)
    response = box["response"]
    assert response.status_code == 200 and len(response.json()["scores"]) == 3
    assert time.perf_counter() - started > 1.9  # it was answered after its 2 s wait, not cut off
    assert code == 0, output
    assert "stopped by SIGTERM: 1 queries served" in output


@pytest.mark.parametrize("signals", [1, 2])
def test_sigint_at_once_or_twice_stops_cleanly(tmp_path, signals):
    """SIGINT right after the URL is printed (uvicorn has not taken over the handlers yet: the server
    used to ignore it and run on), and twice once it serves (uvicorn's force quit: the app's lifespan
    task used to be cancelled and logged as a CancelledError traceback). Both: exit 0, no traceback."""
    with served(tmp_path) as (proc, url, lines):
        if signals == 2:
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        code, output = exit_of(proc, lines)
    assert code == 0 and "Traceback" not in output and "stopped by SIGINT" in output, output


@pytest.mark.parametrize("argv, message", [
    (["--port", "-1"], "--port: expected a port in [0, 65535]"),
    (["--port", "70000"], "--port: expected a port in [0, 65535]"),  # was an OverflowError traceback
    (["--shutdown-timeout", "nan"], "--shutdown-timeout: expected a finite number >= 0"),
    (["--shutdown-timeout", "-1"], "--shutdown-timeout: expected a finite number >= 0"),
    (["--seed", "-1"], "--seed: expected a seed"),
    (["--workers", "0"], "--workers: expected a number of workers in [1, 256]"),
    (["--max-wait-ms", "1e300"], "--max-wait-ms: expected a number of ms in [0, 60000]"),  # killed the workers
    (["--max-candidates", "1000000000"], "--max-candidates: expected a query size in [1, 1048576]"),
    (["--max-in-flight", "-1"], "--max-in-flight: expected an integer >= 0"),
])
def test_serve_options_out_of_range_are_refused_by_argparse(argv, message, capsys):
    from recstack.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--preset", "tiny", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--accelerator", "cpu"], "--accelerator cpu is the pool"),  # was ignored: no pool without a threshold
    (["--accelerator-workers", "2"], "--accelerator-workers sizes the pool"),
])
def test_an_accelerator_without_an_offload_threshold_is_an_error(argv, message, capsys):
    from recstack.cli import main

    assert main(["serve", "--preset", "tiny", "--port", "0", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


# --- the fuzzer ---------------------------------------------------------------------------------

_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=0, max_value=1100),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.booleans(), st.none(),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=5), st.lists(st.lists(_scalars, max_size=3), max_size=3))
_names = st.sampled_from(["I1", "I2", "I3", "I4", "C1", "C2", "C3", "C4", "C5", "bogus", "", "i1"])
_column = st.integers(0, 5).flatmap(lambda n: st.lists(_values, min_size=n, max_size=n))
_rank_body = st.fixed_dictionaries({}, optional={
    "shared": st.one_of(st.dictionaries(_names, _values, max_size=10), _scalars),
    "candidates": st.one_of(st.dictionaries(_names, st.one_of(_column, _values), max_size=10), _scalars),
    "junk": _scalars,
})
_json_junk = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                          max_leaves=12)


@st.composite
def _near_valid(draw):
    """A valid query with one feature replaced by a drawn value, in shared or in candidates."""
    n = draw(st.integers(1, 4))
    body = {"shared": {"I1": 0.5, "I2": 1.0, "C1": 3, "C3": [1, 2, 3]},
            "candidates": {"I3": [0.0] * n, "I4": [2.0] * n, "C2": [5] * n, "C4": [[1, 2]] * n, "C5": [[]] * n}}
    name = draw(_names)
    body["shared"].pop(name, None)
    body["candidates"].pop(name, None)
    if draw(st.booleans()):
        body["shared"][name] = draw(_values)
    else:
        body["candidates"][name] = draw(st.lists(_values, min_size=n, max_size=n))
    return body


_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_client(tiny):
    with TestClient(create_app(tiny, close_engine=False, max_candidates=64, max_body_bytes=50_000),
                    raise_server_exceptions=False) as c:
        yield c


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert isinstance(response.json().get("detail", ""), str) or response.status_code == 200


@_fuzz
@given(body=st.one_of(_rank_body, _near_valid(), _json_junk))
def test_fuzz_rank(fuzz_client, body):
    _check(fuzz_client.post("/v1/rank", content=json.dumps(body), headers={"content-type": "application/json"}))


@_fuzz
@given(queries=st.one_of(st.lists(st.one_of(_near_valid(), _rank_body), max_size=3), _json_junk))
def test_fuzz_rank_batch(fuzz_client, queries):
    _check(fuzz_client.post("/v1/rank/batch", content=json.dumps({"queries": queries}),
                            headers={"content-type": "application/json"}))


@_fuzz
@given(body=st.one_of(st.fixed_dictionaries({"size": _scalars}, optional={"seed": _scalars}), _json_junk),
       raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzz_synthetic_and_raw_bytes(fuzz_client, body, raw):
    content = raw if raw is not None else json.dumps(body).encode()
    _check(fuzz_client.post("/v1/rank/synthetic", content=content, headers={"content-type": "application/json"}))


def test_the_server_still_answers_after_the_fuzzers(fuzz_client, tiny):
    assert fuzz_client.get("/health").json()["status"] == "ok"
    response = fuzz_client.post("/v1/rank/synthetic", json={"size": 5, "seed": 1})
    assert response.status_code == 200 and len(response.json()["scores"]) == 5
    stats = tiny.stats()
    assert stats["in_flight"] == 0 and stats["queue_items"] == 0 and stats["errors"] == 0
