"""The offline fixtures: schema of every JSONL, parity of each YAML with lm-eval's real task, rendering."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import lm_eval
from tor_exp.evaluation.config import FIXTURE_TASKS

TASK_DIR = Path(__file__).resolve().parents[2] / "tor_exp" / "evaluation" / "tasks"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
REAL = {  # fixture -> (real lm-eval YAML, schema check)
    "lambada_fixture": "lambada/lambada_openai.yaml",
    "hellaswag_fixture": "hellaswag/hellaswag.yaml",
    "piqa_fixture": "piqa/piqa.yaml",
    "arc_easy_fixture": "arc/arc_easy.yaml",
    "arc_challenge_fixture": "arc/arc_challenge.yaml",
    "winogrande_fixture": "winogrande/default.yaml",
}


def _rows(task: str) -> list[dict]:
    lines = (TASK_DIR / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _check_schema(task: str, doc: dict) -> None:
    def is_str(*keys):
        for k in keys:
            assert isinstance(doc[k], str) and doc[k].strip(), (task, k, doc)

    if task == "lambada_fixture":
        assert set(doc) == {"text"}
        is_str("text")
        assert len(doc["text"].split(" ")) >= 5
    elif task == "hellaswag_fixture":
        assert set(doc) == {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
                            "split_type", "label"}
        is_str("activity_label", "ctx_a", "ctx", "source_id", "split", "split_type", "label")
        assert isinstance(doc["ctx_b"], str) and isinstance(doc["ind"], int)
        assert doc["ctx"] == (doc["ctx_a"] + " " + doc["ctx_b"]).strip()
        assert len(doc["endings"]) == 4 and all(isinstance(e, str) and e for e in doc["endings"])
        assert doc["label"] in {"0", "1", "2", "3"}  # a string in the real dataset
    elif task == "piqa_fixture":
        assert set(doc) == {"goal", "sol1", "sol2", "label"}
        is_str("goal", "sol1", "sol2")
        assert doc["label"] in (0, 1)
    elif task.startswith("arc_"):
        assert set(doc) == {"id", "question", "choices", "answerKey"}
        is_str("id", "question", "answerKey")
        assert set(doc["choices"]) == {"text", "label"}
        texts, labels = doc["choices"]["text"], doc["choices"]["label"]
        assert 3 <= len(texts) == len(labels) <= 5 and len(set(labels)) == len(labels)
        assert doc["answerKey"] in labels
    elif task == "winogrande_fixture":
        assert set(doc) == {"sentence", "option1", "option2", "answer"}
        is_str("sentence", "option1", "option2")
        assert doc["sentence"].count("_") == 1 and doc["answer"] in ("1", "2")
    else:  # pragma: no cover
        raise AssertionError(task)


@pytest.mark.parametrize("task", FIXTURE_TASKS)
def test_jsonl_parses_and_has_the_real_schema(task):
    rows = _rows(task)
    assert 24 <= len(rows) <= 40
    for doc in rows:
        _check_schema(task, doc)
    # no duplicated documents
    assert len({json.dumps(d, sort_keys=True) for d in rows}) == len(rows)


@pytest.mark.parametrize("task", FIXTURE_TASKS)
def test_yaml_uses_the_real_tasks_prompt_and_metrics(task):
    from lm_eval.tasks._yaml_loader import load_yaml

    ours = load_yaml(TASK_DIR / f"{task}.yaml", resolve_func=True)
    real = load_yaml(LM_EVAL_TASKS / REAL[task], resolve_func=True)
    assert ours["task"] == task and ours["dataset_path"] == "json"
    assert "tor_exp_fixtures" in ours["tag"]
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "process_docs", "metric_list"):
        if task == "lambada_fixture" and key == "metric_list":  # the real metrics, then per-byte ones (issue 16)
            n = len(real[key])
            assert ours[key][:n] == real[key]
            assert [m["metric"] for m in ours[key][n:]] == ["byte_perplexity", "bits_per_byte"]
            continue
        assert _same(ours.get(key), real.get(key)), key


def _same(a, b) -> bool:
    """Equal values; functions must be lm-eval's own (same module file and name), not copies."""
    if callable(a) or callable(b):
        return (callable(a) and callable(b) and a.__name__ == b.__name__
                and Path(a.__code__.co_filename).resolve() == Path(b.__code__.co_filename).resolve()
                and "lm_eval" in Path(a.__code__.co_filename).parts)
    return a == b


def test_fixture_documents_render_through_lm_eval(tmp_path, monkeypatch):
    """Built by tag name from another cwd (each task reads its data file next to its YAML): every doc has a
    valid gold index and non-empty prompt."""
    from tor_exp.evaluation.runner import task_manager

    monkeypatch.chdir(tmp_path)
    tm = task_manager(["pkg://tor_exp/evaluation/tasks"], ["tor_exp_fixtures"])
    tasks = lm_eval.tasks.get_task_dict(["tor_exp_fixtures"], tm)
    assert sorted(tasks) == sorted(FIXTURE_TASKS)
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert len(docs) == len(_rows(name))
        for doc in docs:
            text = task.doc_to_text(doc)
            target = task.doc_to_target(doc)
            if task.OUTPUT_TYPE == "multiple_choice":
                choices = task.doc_to_choice(doc)
                # winogrande's "text" is the gold index (its choices carry the context)
                assert all(isinstance(c, str) and c for c in choices)
                gold = text if name == "winogrande_fixture" else target
                assert isinstance(gold, int) and 0 <= gold < len(choices), (name, doc)
            else:
                assert isinstance(text, str) and text and isinstance(target, str) and target.startswith(" ")
    # hellaswag's real preprocessing ran: no [title]/[step] artefacts left in prompts or endings
    hs = tasks["hellaswag_fixture"]
    for doc in hs.test_docs():
        assert "[" not in hs.doc_to_text(doc) and all("[" not in c for c in hs.doc_to_choice(doc))
