"""The dashboard's rows per fine-tuning method (helm/ckpt-exporter/files/dashboard.json).

What their queries return is proven by tests/test_prometheus_methods.py against a real Prometheus;
this module checks how the rows are built: each shows itself only when such jobs exist, and its
panels read that method's jobs only.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import load_dashboard, query_panels

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# The row of each fine-tuning method -> the variable it repeats on (a value only when such jobs exist).
METHOD_ROWS = {
    "Supervised fine-tuning": "supervised",
    "DPO fine-tuning": "dpo",
    "Reinforcement fine-tuning": "reinforcement",
}


def _method_filter(method: str) -> str:
    return f'openai_fine_tuning_job_info{{job_id=~"$job_id", method="{method}"}}'


def panels_by_row(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels below it (up to the next row), in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            out[current] = list(panel.get("panels", []))
        else:
            out.setdefault(current, []).append(panel)
    return out


def test_method_rows_show_only_when_such_jobs_exist() -> None:
    """A method row repeats on a hidden variable: it has a value only if a selected job has the method."""
    d = load_dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    rows = {p["title"]: p for p in d["panels"] if p["type"] == "row"}
    for title, method in METHOD_ROWS.items():
        assert rows[title]["repeat"] == method
        assert rows[title]["collapsed"] is False
        var = variables[method]
        query = f"label_values({_method_filter(method)}, method)"
        assert (var["type"], var["query"], var["definition"]) == ("query", query, query)
        assert var["datasource"] == DATASOURCE_REF
        assert var["hide"] == 2 and var["multi"] is False and var["includeAll"] is False
        assert var["refresh"] == 2


def test_supervised_and_dpo_panels_filter_by_their_method() -> None:
    by_row = panels_by_row(load_dashboard())
    for title in ("Supervised fine-tuning", "DPO fine-tuning"):
        method = METHOD_ROWS[title]
        assert [p["title"] for p in by_row[title]] == [
            "Best checkpoint",
            "Overfitting ratio at the latest checkpoint",
            "Hyperparameters",
        ]
        for panel in by_row[title]:
            for target in panel["targets"]:
                assert _method_filter(method) in target["expr"], (title, panel["title"])


def test_reinforcement_row() -> None:
    d = load_dashboard()
    panels = panels_by_row(d)["Reinforcement fine-tuning"]
    assert [p["title"] for p in panels] == [
        "Rewards by checkpoint step: $reinforcement_job",
        "Live rewards",
        "Reward by grader",
        "Train - valid reward gap",
        "Grader error rates",
        "Completion and reasoning tokens",
        "Step phase times",
        "Best checkpoint",
        "Hyperparameters",
    ]
    # One rewards chart per selected reinforcement job, as the loss charts are per job.
    variables = {v["name"]: v for v in d["templating"]["list"]}
    jobs = variables["reinforcement_job"]
    query = f"label_values({_method_filter('reinforcement')}, job_id)"
    assert (jobs["query"], jobs["definition"]) == (query, query)
    assert jobs["multi"] is True and jobs["includeAll"] is True and jobs["hide"] == 2
    xy = panels[0]
    assert xy["type"] == "xychart" and xy["repeat"] == "reinforcement_job"
    assert xy["options"]["dims"]["x"] == "step"
    fields = ["train_mean_reward", "valid_mean_reward", "full_valid_mean_reward"]
    assert [t["refId"] for t in xy["targets"]] == fields
    for t, field in zip(xy["targets"], fields, strict=True):
        assert t["expr"] == (
            f"max by (job_id, step) (openai_fine_tuning_checkpoint_{field}"
            '{job_id=~"$job_id", job_id=~"$reinforcement_job"})'
        )
    for panel in panels[-2:]:
        for target in panel["targets"]:
            assert _method_filter("reinforcement") in target["expr"], panel["title"]


def test_checkpoints_table_marks_the_best_checkpoint() -> None:
    panels = {p["title"]: p for p in query_panels(load_dashboard())}
    [best] = [t for t in panels["Checkpoints"]["targets"] if t["refId"] == "best"]
    assert "openai_fine_tuning_job_best_checkpoint_step" in best["expr"]
    organize = panels["Checkpoints"]["transformations"][2]["options"]
    assert organize["renameByName"]["Value #best"] == "best"
