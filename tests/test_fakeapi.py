"""The fake API serves what the real one does: its documents validate against OpenAI's OpenAPI spec.

tests/data/openai-fine-tuning-openapi.json is the fine-tuning part of OpenAI's published OpenAPI
document, unchanged.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault, SimulatedTraining
from tests.helpers import REPO, wait_for

SPEC = json.loads((REPO / "tests" / "data" / "openai-fine-tuning-openapi.json").read_text())


def validator(schema_name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    )


def job_validator() -> Draft202012Validator:
    """FineTuningJob's schema, with three adaptations said here rather than hidden: `paused` among
    the statuses (Azure's, and OpenAI's pause endpoint's; the schema does not list it yet); a multi
    grader's `graders` as the map of named graders that OpenAI's graders guide and RFT examples
    send (the schema has a single grader there); and the spec's OpenAPI 3.0 leftover
    `exclusiveMinimum: true` read as 3.0 meant it (greater than `minimum`), where JSON Schema
    2020-12 would read it as "greater than 1"."""
    components = json.loads(json.dumps(SPEC["components"]))
    schemas = components["schemas"]
    schemas["FineTuningJob"]["properties"]["status"]["enum"].append("paused")
    one_grader = schemas["GraderMulti"]["properties"]["graders"]
    schemas["GraderMulti"]["properties"]["graders"] = {"type": "object", "additionalProperties": one_grader}

    def adapt(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("exclusiveMinimum") is True:
                node["exclusiveMinimum"] = node.pop("minimum")
            for value in node.values():
                adapt(value)
        elif isinstance(node, list):
            for value in node:
                adapt(value)

    adapt(components)
    return Draft202012Validator({"$ref": "#/components/schemas/FineTuningJob", "components": components})


def get(server: FakeApiServer, path: str, key: str | None = "sk-k", **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.base_url + path, params=params, headers=headers, timeout=5)


@pytest.mark.parametrize("newest_first", [True, False])
def test_checkpoint_pages_validate_and_paginate(newest_first: bool) -> None:
    api = FakeApi(api_key="sk-k", newest_first=newest_first)
    api.add_job("ftjob-1")
    for step in (10, 20, 30):
        api.add_checkpoint("ftjob-1", step, {"train_loss": 1.0 / step, "full_valid_loss": 2.0 / step})
    with FakeApiServer(api) as server:
        first = get(server, "/fine_tuning/jobs/ftjob-1/checkpoints", limit=2).json()
        second = get(server, "/fine_tuning/jobs/ftjob-1/checkpoints", limit=2, after=first["last_id"]).json()
        for page in (first, second):
            validator("ListFineTuningJobCheckpointsResponse").validate(page)
        steps = [c["step_number"] for c in first["data"] + second["data"]]
        assert steps == ([30, 20, 10] if newest_first else [10, 20, 30])
        assert (first["has_more"], second["has_more"]) == (True, False)
        assert get(server, "/fine_tuning/jobs/ftjob-1/checkpoints", key="wrong").status_code == 401
        missing = get(server, "/fine_tuning/jobs/ftjob-nope/checkpoints")
        assert missing.status_code == 404
        assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


def test_demo_training_documents_validate() -> None:
    api = FakeApi(api_key="sk-k")
    training = SimulatedTraining(api, jobs=2)
    for _ in range(10):
        training.advance("ftjob-demo1")
    assert len(api.jobs["ftjob-demo1"].checkpoints) == SimulatedTraining.KEEP
    with FakeApiServer(api) as server:
        for job_id in training.job_ids:
            page = get(server, f"/fine_tuning/jobs/{job_id}/checkpoints", limit=100).json()
            validator("ListFineTuningJobCheckpointsResponse").validate(page)


def test_stop_does_not_wait_for_a_connection_that_is_still_open() -> None:
    """A client that keeps its connection open (here: a request the fake holds) must not hold up
    stop(): aiohttp's graceful shutdown would wait 60 s for it, past stop()'s own 10 s."""
    api = FakeApi()
    api.inject(None, Fault.hang(30), endpoint="jobs")
    server = FakeApiServer(api).start()
    with socket.create_connection((server.host, server.port)) as client:
        client.sendall(b"GET /v1/fine_tuning/jobs HTTP/1.1\r\nHost: fake\r\n\r\n")
        assert wait_for(lambda: bool(api.served()), timeout=10)  # the fake holds the request
        server.stop()  # raised TimeoutError after 10 s before the fake's shutdown_timeout
        assert not server.running
        assert client.recv(1024) == b""  # the fake closed the connection, answered nothing


# --- Azure's address forms and what each accepts (ckpt_exporter/fake/auth.py has the sources) -------

AZ_KEY = "az-key-0123456789"
VALID_TOKEN = "eyJhbGciOi.eyJhdWQiOi.c2lnbmF0dXJl"  # header.payload.signature, as Entra's are
EXPIRED_TOKEN = "eyJhbGciOi.eyJleHAiOi.ZXhwaXJlZA"
CLASSIC = "/openai/fine_tuning/jobs/ftjob-1/checkpoints?api-version=2024-10-21"
V1 = "/openai/v1/fine_tuning/jobs/ftjob-1/checkpoints"
PROJECT = "/api/projects/proj-demo/openai/v1/fine_tuning/jobs/ftjob-1/checkpoints"
OPENAI = "/v1/fine_tuning/jobs/ftjob-1/checkpoints"

BAD_KEY = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API endpoint for "
        "your resource.",
    }
}
BAD_TOKEN = {
    "statusCode": 401,
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired.",
}
KEYS_DISABLED = {
    "error": {
        "code": "AuthenticationTypeDisabled",
        "message": "Key based authentication is disabled for this resource.",
    }
}
NO_API_VERSION = {"error": {"code": "404", "message": "Resource not found"}}
OPENAI_BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


class Tokens:
    """A trivial token check: the tokens in `valid` are valid and unexpired."""

    def __init__(self, *valid: str) -> None:
        self.valid = set(valid)

    def __call__(self, token: str) -> bool:
        return token in self.valid


def api_with_a_job(**options: Any) -> FakeApi:
    api = FakeApi(**options)
    api.add_job("ftjob-1")
    api.add_checkpoint("ftjob-1", 10, {"train_loss": 0.5})
    return api


def answer(server: FakeApiServer, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    origin = f"http://{server.host}:{server.port}"
    response = httpx.get(origin + path, headers=headers, timeout=5)
    body = response.json()
    return response.status_code, body if response.status_code != 200 else len(body["data"])


def api_key(key: str) -> dict[str, str]:
    return {"api-key": key}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        (CLASSIC, api_key(AZ_KEY), (200, 1)),
        (CLASSIC, api_key("az-wrong"), (401, BAD_KEY)),
        (CLASSIC, bearer(VALID_TOKEN), (200, 1)),
        (CLASSIC, bearer(EXPIRED_TOKEN), (401, BAD_TOKEN)),
        (CLASSIC, bearer(AZ_KEY), (401, BAD_TOKEN)),  # classic takes a Bearer credential as a token
        (CLASSIC, {}, (401, BAD_KEY)),
        (
            CLASSIC.split("?")[0],
            api_key(AZ_KEY),
            (404, {"error": {"code": "404", "message": "Resource not found"}}),
        ),
        (V1, api_key(AZ_KEY), (200, 1)),
        (V1, bearer(AZ_KEY), (200, 1)),
        (V1, bearer(VALID_TOKEN), (200, 1)),
        (V1, bearer(EXPIRED_TOKEN), (401, BAD_TOKEN)),
        (V1, bearer("az-wrong"), (401, BAD_KEY)),
        (V1, api_key("az-wrong"), (401, BAD_KEY)),
        (V1 + "?api-version=2024-10-21", api_key(AZ_KEY), (200, 1)),
        (PROJECT, api_key(AZ_KEY), (200, 1)),
        (PROJECT, bearer(AZ_KEY), (200, 1)),
        (PROJECT, bearer(VALID_TOKEN), (200, 1)),
        (PROJECT, bearer(EXPIRED_TOKEN), (401, BAD_TOKEN)),
        (PROJECT, {}, (401, BAD_KEY)),
        (OPENAI, bearer(AZ_KEY), (200, 1)),
        (OPENAI, api_key(AZ_KEY), (401, OPENAI_BAD_KEY)),  # OpenAI knows no api-key header
        (OPENAI, bearer(VALID_TOKEN), (401, OPENAI_BAD_KEY)),  # nor Entra tokens
    ],
)
def test_each_address_form_accepts_what_azure_accepts(
    path: str, headers: dict[str, str], expected: tuple[int, Any]
) -> None:
    with FakeApiServer(api_with_a_job(api_key=AZ_KEY, token_check=Tokens(VALID_TOKEN))) as server:
        assert answer(server, path, headers) == expected


@pytest.mark.parametrize("path", [CLASSIC, V1, PROJECT])
def test_keyless_resource_refuses_keys_and_accepts_only_unexpired_tokens(path: str) -> None:
    """key_auth=False is a resource with disableLocalAuth: Entra tokens only."""
    tokens = Tokens(VALID_TOKEN)
    api = api_with_a_job(api_key=AZ_KEY, token_check=tokens, key_auth=False)
    with FakeApiServer(api) as server:
        assert answer(server, path, api_key(AZ_KEY)) == (403, KEYS_DISABLED)
        assert answer(server, path, api_key("az-wrong")) == (403, KEYS_DISABLED)
        assert answer(server, path, {}) == (401, BAD_TOKEN)
        assert answer(server, path, bearer(VALID_TOKEN)) == (200, 1)
        tokens.valid.clear()  # the token expires
        assert answer(server, path, bearer(VALID_TOKEN)) == (401, BAD_TOKEN)
        expected_key_as_bearer = (401, BAD_TOKEN) if path == CLASSIC else (403, KEYS_DISABLED)
        assert answer(server, path, bearer(AZ_KEY)) == expected_key_as_bearer
    assert [r.path for r in api.requests] == [path.split("?")[0]] * 6


def test_with_a_token_check_and_no_key_only_tokens_get_in() -> None:
    """FakeApi(token_check=...) alone: Entra tokens on Azure's forms, nothing else anywhere."""
    with FakeApiServer(api_with_a_job(token_check=Tokens(VALID_TOKEN))) as server:
        answers = [
            answer(server, path, headers)
            for path in (CLASSIC, V1, PROJECT, OPENAI)
            for headers in (bearer(VALID_TOKEN), api_key(AZ_KEY), bearer(AZ_KEY), {})
        ]
    assert answers == [
        *((200, 1), (401, BAD_KEY), (401, BAD_TOKEN), (401, BAD_KEY)),  # classic
        *((200, 1), (401, BAD_KEY), (401, BAD_KEY), (401, BAD_KEY)),  # v1
        *((200, 1), (401, BAD_KEY), (401, BAD_KEY), (401, BAD_KEY)),  # project
        *((401, OPENAI_BAD_KEY),) * 4,  # OpenAI
    ]


def test_a_foundry_project_prefix_is_the_base_url() -> None:
    api = api_with_a_job(api_key=AZ_KEY)
    with FakeApiServer(api, prefix="/api/projects/proj-demo/openai/v1") as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/api/projects/proj-demo/openai/v1"
        response = httpx.get(server.base_url + "/fine_tuning/jobs", headers=bearer(AZ_KEY), timeout=5)
        assert (response.status_code, [job["id"] for job in response.json()["data"]]) == (200, ["ftjob-1"])


def test_azure_flavour_documents_have_azure_shapes_and_validate() -> None:
    api = FakeApi(api_key=AZ_KEY, flavor="azure", newest_first=False)
    job_id = "ftjob-966a5a930e6d4404884f52441e7688c8"
    api.add_job(job_id, model="gpt-4.1-2025-04-14")
    for step in (40, 80, 120):
        api.add_checkpoint(job_id, step, {"train_loss": 1.0 / step, "full_valid_loss": 1.2 / step})
    api.add_job("ftjob-done", model="gpt-4.1-2025-04-14", status="succeeded")
    api.add_job("ftjob-rft", model="o4-mini-2025-04-16")
    api.pause_for_cost_limit("ftjob-rft")
    with FakeApiServer(api, prefix="/api/projects/p/openai/v1") as server:
        page = get_azure(server, f"/fine_tuning/jobs/{job_id}/checkpoints", limit=10)
        jobs = {job["id"]: job for job in get_azure(server, "/fine_tuning/jobs", limit=10)["data"]}
        events = get_azure(server, "/fine_tuning/jobs/ftjob-rft/events")
    validator("ListFineTuningJobCheckpointsResponse").validate(page)
    assert [(c["step_number"], c["metrics"]["step"]) for c in page["data"]] == [
        (40, 40.0),
        (80, 80.0),
        (120, 120.0),
    ]
    assert [type(c["metrics"]["step"]) for c in page["data"]] == [float] * 3
    for checkpoint in page["data"]:
        assert re.fullmatch(r"ftchkpt-[0-9a-f]{32}", checkpoint["id"]), checkpoint["id"]
        model = checkpoint["fine_tuned_model_checkpoint"]
        assert re.fullmatch(r"gpt-4\.1-2025-04-14\.ft-[0-9a-f]{32}", model), model
    assert len({c["id"] for c in page["data"]}) == 3
    assert len({c["fine_tuned_model_checkpoint"] for c in page["data"]}) == 3
    done = jobs["ftjob-done"]["fine_tuned_model"]
    assert re.fullmatch(r"gpt-4\.1-2025-04-14\.ft-[0-9a-f]{32}", done), done
    assert (jobs["ftjob-rft"]["status"], jobs[job_id]["fine_tuned_model"]) == ("paused", None)
    for job in jobs.values():
        job_validator().validate(job)
    validator("ListFineTuningJobEventsResponse").validate(events)
    assert [(e["level"], e["message"]) for e in events["data"]] == [
        ("warn", "Job paused: its cost reached the job's cost limit.")
    ]


def get_azure(server: FakeApiServer, path: str, **params: Any) -> Any:
    response = httpx.get(server.base_url + path, params=params, headers=api_key(AZ_KEY), timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


# --- DPO and reinforcement jobs (ckpt_exporter/fake/methods.py documents the shapes) ----------------


def demo_documents() -> tuple[SimulatedTraining, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The demo's jobs, each job's checkpoints and events, read over HTTP."""
    api = FakeApi(api_key="sk-k")
    training = SimulatedTraining(api, jobs=1)
    for _ in range(3):
        for job_id in training.job_ids:
            training.advance(job_id)
    with FakeApiServer(api) as server:
        jobs = {job["id"]: job for job in get(server, "/fine_tuning/jobs", limit=100).json()["data"]}
        checkpoints = {
            j: get(server, f"/fine_tuning/jobs/{j}/checkpoints", limit=100).json() for j in training.job_ids
        }
        events = {j: get(server, f"/fine_tuning/jobs/{j}/events", limit=100).json() for j in training.job_ids}
    return training, jobs, checkpoints, events


def test_demo_has_one_job_of_each_method_and_their_documents_validate() -> None:
    training, jobs, checkpoints, events = demo_documents()
    assert training.job_ids == ["ftjob-demo1", "ftjob-demo-dpo", "ftjob-demo-rft"]
    assert [jobs[j].get("method", {}).get("type") for j in training.job_ids] == [None, "dpo", "reinforcement"]
    for job_id in training.job_ids:
        job_validator().validate(jobs[job_id])
        validator("ListFineTuningJobCheckpointsResponse").validate(checkpoints[job_id])
        validator("ListFineTuningJobEventsResponse").validate(events[job_id])
    assert jobs["ftjob-demo-dpo"]["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {"beta": 0.1, "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}
        },
    }
    rft = jobs["ftjob-demo-rft"]["method"]["reinforcement"]
    assert rft["hyperparameters"] == {
        "reasoning_effort": "medium",
        "compute_multiplier": 1.0,
        "eval_interval": 5,
        "eval_samples": 4,
        "n_epochs": 1,
        "batch_size": 16,
        "learning_rate_multiplier": 1.0,
    }
    grader = rft["grader"]
    assert (grader["type"], grader["calculate_output"]) == ("multi", "0.5 * correctness + 0.5 * explanation")
    assert {name: g["type"] for name, g in grader["graders"].items()} == {
        "correctness": "string_check",
        "explanation": "score_model",
    }
    assert (jobs["ftjob-demo-dpo"]["hyperparameters"], jobs["ftjob-demo-rft"]["hyperparameters"]) == (
        {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5},
        {"n_epochs": 1, "batch_size": 16, "learning_rate_multiplier": 1.0},
    )


RFT_TOP = {
    "train_mean_reward",
    "full_valid_mean_reward",
    "completion_tokens_mean",
    "reasoning_tokens_mean",
    "mean_unresponsive_rewards",
    "full_valid_mean_parse_error",
}


def test_rft_events_carry_the_rft_guides_shape_with_consistent_numbers() -> None:
    _, _, checkpoints, events = demo_documents()
    newest = events["ftjob-demo-rft"]["data"][0]  # newest first
    data = newest["data"]
    assert (newest["type"], data["step"], data["total_steps"]) == ("metrics", 10, 1000)
    assert set(data) == {
        "step",
        "total_steps",
        *RFT_TOP,
        "valid_reasoning_tokens_mean",
        "scores",
        "errors",
        "timing",
        "usage",
        "model_graders_token_usage",
    }
    scores = data["scores"]
    graders = {g["name"]: g for g in scores["graders"]}
    assert [(g["name"], g["type"]) for g in scores["graders"]] == [
        ("correctness", "string_check"),
        ("explanation", "score_model"),
    ]
    for split, top in (("train", "train_mean_reward"), ("valid", "full_valid_mean_reward")):
        weighted = round(sum(0.5 * g[f"{split}_reward_mean"] for g in graders.values()), 4)
        assert scores[f"{split}_reward_mean"] == data[top] == weighted
    assert newest["message"] == (
        f"Step 10/1000 , train mean reward={data['train_mean_reward']:.2f}, full validation mean "
        f"reward={data['full_valid_mean_reward']:.2f}, full validation mean parse error="
        f"{data['full_valid_mean_parse_error']:.2f}"
    )
    errors = {g["name"]: g for g in data["errors"]["graders"]}
    expected_fields = {
        f"{split}_{error}_{stat}"
        for split in ("train", "valid")
        for error in ("sample_parse_error", "invalid_variable_error", "other_error")
        for stat in ("mean", "count")
    }
    assert {name: set(g) - {"name", "type"} for name, g in errors.items()} == {
        "correctness": expected_fields,
        "explanation": expected_fields,
    }
    assert errors["explanation"]["train_sample_parse_error_mean"] == data["full_valid_mean_parse_error"] > 0
    assert (
        errors["correctness"]["train_other_error_mean"]
        == errors["explanation"]["valid_other_error_mean"]
        == 0
    )
    step = data["timing"]["step"]
    assert set(step) == {"sampling", "training", "eval", "full_iteration"}
    assert step["full_iteration"] == round(step["sampling"] + step["training"] + step["eval"] + 4.5, 3)
    rft_checkpoints = checkpoints["ftjob-demo-rft"]["data"]
    assert [c["step_number"] for c in rft_checkpoints] == [10, 8, 6, 4, 2]
    assert set(rft_checkpoints[0]["metrics"]) == {"step", *RFT_TOP}
    assert {k: rft_checkpoints[0]["metrics"][k] for k in RFT_TOP} == {k: data[k] for k in RFT_TOP}


def test_dpo_jobs_report_losses() -> None:
    _, _, checkpoints, events = demo_documents()
    dpo = checkpoints["ftjob-demo-dpo"]["data"]
    assert [c["step_number"] for c in dpo] == [20, 40, 60, 80, 100]  # oldest first
    assert {tuple(sorted(c["metrics"])) for c in dpo} == {
        ("full_valid_loss", "step", "train_loss", "valid_loss")
    }
    assert all(0.75 < c["metrics"]["train_loss"] < 0.85 for c in dpo)  # ln 2 + 0.12 at the start
    newest = events["ftjob-demo-dpo"]["data"][-1]  # oldest first: the newest is last
    assert set(newest["data"]) == {"step", "total_steps", "train_loss", "valid_loss"}
    assert (newest["data"]["step"], newest["data"]["total_steps"]) == (100, 10_000)
    assert newest["data"]["train_loss"] == dpo[-1]["metrics"]["train_loss"]


def test_a_method_job_succeeds_at_its_last_step_and_then_stays() -> None:
    api = FakeApi()
    training = SimulatedTraining(api, jobs=0)
    for _ in range(600):
        training.advance(SimulatedTraining.RFT_JOB)
    job = api.jobs[SimulatedTraining.RFT_JOB]
    assert (job.status, job.checkpoints[-1]["step_number"], job.events[-1]["data"]["step"]) == (
        "succeeded",
        1000,
        1000,
    )
    assert len(job.events) == 500 and len(job.checkpoints) == SimulatedTraining.KEEP


def test_the_openai_sdk_signs_in_on_each_azure_form_as_microsoft_documents() -> None:
    """The official SDK, configured as Microsoft's docs say for each form, is let in; a keyless
    resource refuses its key with Azure's 403. (The SDK sends api-key from AzureOpenAI(api_key=),
    Authorization: Bearer from azure_ad_token_provider and from OpenAI(api_key=) on /openai/v1.)"""
    openai = pytest.importorskip("openai")
    api = api_with_a_job(api_key=AZ_KEY, token_check=Tokens(VALID_TOKEN))
    with FakeApiServer(api) as server:
        origin = f"http://{server.host}:{server.port}"
        clients = [
            openai.AzureOpenAI(azure_endpoint=origin, api_version="2024-10-21", api_key=AZ_KEY),
            openai.AzureOpenAI(
                azure_endpoint=origin, api_version="2024-10-21", azure_ad_token_provider=lambda: VALID_TOKEN
            ),
            openai.OpenAI(base_url=origin + "/openai/v1", api_key=AZ_KEY),
            openai.OpenAI(base_url=origin + "/openai/v1", api_key=VALID_TOKEN),
            openai.OpenAI(base_url=origin + "/api/projects/proj-demo/openai/v1", api_key=AZ_KEY),
        ]
        steps = [
            [c.step_number for c in client.fine_tuning.jobs.checkpoints.list("ftjob-1")] for client in clients
        ]
        sent = [(r.path, r.headers.get("api-key"), r.headers.get("Authorization")) for r in api.requests]
        api.key_auth = False  # the resource now has disableLocalAuth
        with pytest.raises(openai.PermissionDeniedError) as refused:
            clients[0].fine_tuning.jobs.checkpoints.list("ftjob-1")
    assert steps == [[10]] * 5
    assert sent == [
        ("/openai/fine_tuning/jobs/ftjob-1/checkpoints", AZ_KEY, None),
        ("/openai/fine_tuning/jobs/ftjob-1/checkpoints", None, f"Bearer {VALID_TOKEN}"),
        ("/openai/v1/fine_tuning/jobs/ftjob-1/checkpoints", None, f"Bearer {AZ_KEY}"),
        ("/openai/v1/fine_tuning/jobs/ftjob-1/checkpoints", None, f"Bearer {VALID_TOKEN}"),
        ("/api/projects/proj-demo/openai/v1/fine_tuning/jobs/ftjob-1/checkpoints", None, f"Bearer {AZ_KEY}"),
    ]
    assert (refused.value.status_code, refused.value.body) == (403, KEYS_DISABLED["error"])
