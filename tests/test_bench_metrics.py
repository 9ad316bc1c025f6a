"""Benchmark metrics and dataset loaders against hand-checked cases (no model)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from needs import need_shared_data

from mainrag.bench import metrics as m
from mainrag.bench.cache import CallCache, CallRecord, JsonlFile
from mainrag.bench.datasets import (
    DATASETS,
    dataset_path,
    get_spec,
    gold_answers,
    load_items,
)
from mainrag.bench.runner import RunConfig, call_settings
from mainrag.bench.systems import judge_name, parse_yes_no, system_settings
from mainrag.config import JudgeSettings, Settings
from mainrag.errors import ConfigError, InputError

ARC = {"A": "Planetary density will decrease.", "B": "Planetary years will become longer.",
       "C": "Planetary days will become shorter.", "D": "Planetary gravity will become stronger."}


@pytest.mark.parametrize(("text", "expected"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  An   apple, a day. ", "apple day"),
    ("Théâtre—the play", "théâtre— play"),  # only ASCII punctuation goes; "—" is a word boundary (SQuAD)
    ("", ""),
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert m.normalize_answer(text) == expected


def test_match_is_normalised_substring_at_token_boundaries() -> None:
    golds = ["politician", "political leader", "pol"]
    assert m.match("He was an English Conservative Politician.", golds)
    assert m.match("A political leader of Lancashire", golds)  # second gold answer
    assert not m.match("He studied politics.", golds)  # "pol" is not a token of "politics"
    assert not m.match("", golds)
    assert not m.match("anything", [""])  # an empty gold matches nothing


def test_exact_match_and_f1() -> None:
    assert m.exact_match("The Beatles.", ["beatles", "Fab Four"])
    assert not m.exact_match("The Beatles were a band", ["beatles"])
    # pred "english politician" vs gold "politician": P = 1/2, R = 1 -> F1 = 2/3
    assert m.token_f1("English politician", ["politician"]) == pytest.approx(2 / 3)
    # best over golds: "new york city" vs "new york" -> P 2/3 R 1 -> 0.8
    assert m.token_f1("New York City", ["Boston", "New York"]) == pytest.approx(0.8)
    assert m.token_f1("Paris", ["London"]) == 0.0


def test_str_em_counts_sub_questions() -> None:
    groups = [["Ali Daei", "Daei"], ["Josef Bican", "Bican"], ["Christine Sinclair"]]
    assert m.str_em("Ali Daei holds the men's record; Bican scored more overall.", groups) == pytest.approx(2 / 3)
    assert m.str_em("nobody", groups) == 0.0
    assert m.str_em("anything", []) == 0.0


@pytest.mark.parametrize(("output", "label"), [
    ("C", "C"), ("C.", "C"), ("(C)", "C"), ("C) Planetary days", "C"), ("**B**", "B"),
    ("Answer: D", "D"), ("The correct answer is C.", "C"), ("The answer is C because days shorten", "C"),
    ("Planetary days will become shorter.", "C"),  # the choice's text alone
    ("A faster spin gives shorter days, so C", "C"),  # the article "A" is no label
    ("A planet spins faster", None), ("I do not know", None),
])
def test_parse_choice(output: str, label: str | None) -> None:
    assert m.parse_choice(output, ARC) == label


def test_choice_accuracy_numeric_labels() -> None:
    choices = {"1": "iron", "2": "copper", "3": "gold", "4": "tin"}
    assert m.choice_accuracy("2", choices, "2")
    assert not m.choice_accuracy("The answer is 3", choices, "2")


def test_filter_quality_and_auc() -> None:
    labels = [True, False, True, False]
    assert m.filter_quality([True, True, False, False], labels) == (0.5, 0.5)
    assert m.filter_quality([False] * 4, labels) == (None, 0.0)
    assert m.filter_quality([True, False, False, False], [False] * 4) == (0.0, None)
    assert m.per_query_auc([0.9, 0.1, 0.8, 0.2], labels) == 1.0
    assert m.per_query_auc([0.1, 0.9, 0.5, 0.5], labels) == pytest.approx(0.125)  # 0 + 0.5 tie / 4 pairs
    assert m.per_query_auc([1, 2], [True, True]) is None


def test_yes_no_parsing_like_langchain() -> None:
    assert parse_yes_no("YES")
    assert parse_yes_no(" yes, it is")
    assert not parse_yes_no("NO")
    assert not parse_yes_no("The context is relevant")  # no YES/NO word: dropped


# -- datasets ---------------------------------------------------------------


def write(tmp_path: Path, rows: list[object], name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_gold_answer_shapes() -> None:
    assert gold_answers({"answers": ["a", "b", "a"]}) == ["a", "b"]
    assert gold_answers({"answer": "x"}) == ["x"]
    assert gold_answers({"possible_answers": '["Paris", "City of Light"]'}) == ["Paris", "City of Light"]
    assert gold_answers({"answer": {"value": "Sun", "aliases": ["Sol", "Sun"]}}) == ["Sun", "Sol"]
    with pytest.raises(InputError, match="no gold answers"):
        gold_answers({"question": "q"})


def test_self_rag_format_for_any_short_form_dataset(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answers": ["a"], "ctxs": [{"title": "T", "text": f"p{j}"} for j in range(5)]}
            for i in range(4)]
    items = load_items(get_spec("triviaqa"), dataset_path(get_spec("triviaqa"), write(tmp_path, rows)), k=3, limit=2)
    assert [it.question for it in items] == ["q0", "q1"]
    assert [len(it.documents) for it in items] == [3, 3]
    assert items[0].key == "line1"


def test_arc_own_format_lists_choices(tmp_path: Path) -> None:
    row = {"id": "x1", "question": "Which?", "choices": {"text": list(ARC.values()), "label": list(ARC)},
           "answerKey": "C", "ctxs": []}
    (item,) = load_items(get_spec("arc_challenge"), write(tmp_path, [row]), k=20)
    assert item.question.startswith("Which?\nA. Planetary density will decrease.\nB.")
    assert item.answer_key == "C" and item.golds == [ARC["C"]] and item.documents == []


def test_asqa_groups_and_oracle_contexts(tmp_path: Path) -> None:
    row = {"ambiguous_question": "Who?", "sample_id": "s1", "qa_pairs": [
        {"question": "a", "short_answers": ["X"], "context": "X did it.", "wikipage": "W"},
        {"question": "b", "short_answers": ["Y", "Z"], "context": "No context provided", "wikipage": None}]}
    (item,) = load_items(get_spec("asqa"), write(tmp_path, [row]), k=20)
    assert item.answer_groups == [["X"], ["Y", "Z"]]
    assert [d.text for d in item.documents] == ["X did it."]


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    spec = get_spec("popqa")
    with pytest.raises(InputError, match="no such file"):
        dataset_path(spec, tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n{not json\n')
    with pytest.raises(InputError, match="bad.jsonl:2: not valid JSON"):
        load_items(spec, bad, k=5)
    with pytest.raises(InputError, match=r"d.jsonl:1: not a arc_challenge record"):
        load_items(get_spec("arc_challenge"), write(tmp_path, [{"question": "q", "answers": ["a"]}]), k=5)
    with pytest.raises(InputError, match="unknown dataset"):
        get_spec("squad")
    with pytest.raises(InputError, match="pass --data"):
        dataset_path(get_spec("triviaqa"), None)


@pytest.mark.parametrize("name", [n for n, s in DATASETS.items() if s.default_file])
def test_bundled_files_load(name: str) -> None:
    spec = get_spec(name)
    try:
        path = dataset_path(spec, None)
    except InputError:
        need_shared_data(None)
    items = load_items(spec, path, k=20, limit=5)
    assert len(items) == 5 and all(it.question and it.golds for it in items)


# -- durable files ------------------------------------------------------------


def test_jsonl_file_drops_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "items.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "sys')  # killed mid-write
    assert [r["key"] for r in JsonlFile(p).rows] == ["a", "b"]
    assert p.read_text().endswith('"sys')  # a reader never rewrites: a writer may be mid-line
    f = JsonlFile(p, repair=True)  # the lock holder drops the torn tail
    assert [r["key"] for r in f.rows] == ["a", "b"]
    f.append({"key": "c"})
    assert [json.loads(line)["key"] for line in p.read_text().splitlines()] == ["a", "b", "c"]


def test_a_finished_line_ending_without_newline_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "items.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}')  # killed between the line and its newline
    f = JsonlFile(p, repair=True)
    f.append({"key": "c"})
    assert [r["key"] for r in JsonlFile(p).rows] == ["a", "b", "c"]


@pytest.mark.parametrize("damage", ['{"key": "a"}\n{oops\n{"key": "c"}\n', '{"key": "a"}\n[1, 2]\n'])
def test_a_bad_line_inside_the_file_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    p = tmp_path / "items.jsonl"
    p.write_text(damage)
    for repair in (False, True):
        with pytest.raises(InputError, match=r"items.jsonl:2"):
            JsonlFile(p, repair=repair)
    assert p.read_text() == damage  # nothing dropped


def test_call_cache_round_trip(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "calls.jsonl")
    cache.put(CallRecord(key="q|judge|0", seconds=1.5, score=-2.0, prompt_tokens=10, completion_tokens=1))
    again = CallCache(tmp_path / "calls.jsonl")
    assert len(again) == 1 and again.get("q|judge|0").score == -2.0


def test_sign_test_hand_checked() -> None:
    from mainrag.bench.report import sign_test_p

    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)  # both tails of 1/2**5
    assert sign_test_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test_p(3, 3) == 1.0


def test_resume_accepts_a_run_recorded_with_the_deprecated_judge_settings() -> None:
    """Runs recorded before ``judge_prompt`` hold ``layout``, ``judge_only`` and a judge's
    ``layout`` in run.json: the same settings under today's names match, others do not."""
    settings = Settings(judge_prompt="judge-only-prefix", judges=[
        {"name": "a", "prompt": "judge-only"}, {"name": "b", "prompt": "judge_prefix"}, {"name": "c"}])
    now = RunConfig(dataset="popqa", data="", systems=["main-rag"], model="m", settings=call_settings(settings))
    assert now.settings["judge_prompt"] == "judge-only-prefix" and "layout" not in now.settings
    recorded = {k: v for k, v in now.settings.items() if k != "judge_prompt" and not k.startswith("judges.")}
    recorded |= {"layout": "prefix", "judge_only": True, "judges.0": {"name": "a", "layout": "paper"},
                 "judges.1": {"name": "b", "prompt": "judge_prefix"}, "judges.2": {"name": "c"}}
    before = now.model_copy(update={"settings": recorded})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run on disk is no user's deprecated setting: no warning
        now.must_match(before)
    default = now.model_copy(update={"settings": call_settings(Settings())})
    with pytest.raises(ConfigError, match=r"judge_prompt: 'judge-only-prefix' -> 'paper'"):
        default.must_match(before)
    paper = {**call_settings(Settings()), "layout": "paper", "judge_only": False}
    del paper["judge_prompt"]
    default.must_match(now.model_copy(update={"settings": paper}))  # the default, as recorded before


@pytest.mark.parametrize(("prompt", "name"), [
    ("paper", "judge"), ("prefix", "judge-prefix"), ("conversation", "judge-conversation"),
    ("judge-only", "judge-only"), ("judge_prefix", "judge-prefix"), ("judge-only-prefix", "judge-only-prefix"),
    ("/somewhere/terse_judge.toml", "judge-terse-judge"), ("/somewhere/judge_v2.toml", "judge-v2"),
])
def test_the_paper_judges_keep_their_recorded_signal_names(prompt: str, name: str) -> None:
    assert judge_name(prompt) == name


def test_the_paper_variants_judge_with_the_runs_prompt_or_their_own() -> None:
    base = Settings(judge_prompt="prefix")
    assert system_settings(base, "main-rag-n1").judges == [JudgeSettings(name="judge-prefix", prompt="prefix")]
    assert system_settings(base, "judge-only").judges == [JudgeSettings(name="judge-only", prompt="judge-only")]
    assert [j.name for j in system_settings(base, "consensus").judges] == ["judge", "judge-prefix"]
    assert system_settings(base, "mainrag").judge_prompt == "prefix" and not system_settings(base, "mainrag").judges
