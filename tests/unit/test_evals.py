"""Shadow runs' pure parts: the spec and its share, the offline scores, the report's numbers
(checked against values computed by hand below), and the worker's decision to shadow a job."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llmq import store
from llmq.config_check import reference_problems
from llmq.evals import judge, report, scores
from llmq.evals.spec import ShadowSpec, share_point, variant_label
from llmq.execution.shadow import Shadows
from llmq.settings import Settings
from llmq.store.models import JobStatus

# --- the spec -------------------------------------------------------------------------------


def test_a_spec_is_parsed_and_bad_ones_say_what_is_wrong() -> None:
    spec = ShadowSpec.parse({"version": 2, "chain": ["openai:gpt-5-nano"], "percent": 20})
    assert spec == ShadowSpec(chain=("openai:gpt-5-nano",), version=2, percent=20.0)
    assert ShadowSpec.parse({"chain": ["local:echo"]}).percent == 100.0
    bad = {
        "unknown shadow field(s) model": {"chain": ["local:echo"], "model": "x"},
        "unknown provider 'x'": {"chain": ["local:echo"], "judge": "x:y"},
        "shadow judge must be one provider:model link": {"chain": ["local:echo"], "judge": [1]},
        "shadow chain must be a list": {"chain": []},
        "unknown provider 'nope'": {"chain": ["nope:model"]},
        "shadow version must be a whole number": {"chain": ["local:echo"], "version": 0},
        "shadow percent must be a number in 0..100": {"chain": ["local:echo"], "percent": 101},
    }
    for message, raw in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            ShadowSpec.parse(raw)
    with pytest.raises(ValueError, match="percent"):
        ShadowSpec.parse({"chain": ["local:echo"], "percent": math.nan})


def test_the_share_is_a_stable_hash_of_the_job_id_and_close_to_the_percent() -> None:
    spec = ShadowSpec(chain=("local:echo",), percent=20)
    ids = [uuid.UUID(int=n * 7919 + 13) for n in range(20_000)]
    taken = [job_id for job_id in ids if spec.takes(job_id)]
    assert abs(len(taken) / len(ids) - 0.20) < 0.015
    assert all(spec.takes(job_id) for job_id in taken)  # the same answer every time
    assert all(share_point(str(job_id)) == share_point(job_id) for job_id in ids[:50])
    assert not any(ShadowSpec(chain=("local:echo",), percent=0).takes(i) for i in ids[:500])
    assert all(ShadowSpec(chain=("local:echo",), percent=100).takes(i) for i in ids[:500])


def test_settings_with_a_bad_shadow_spec_are_reported_by_the_config_check() -> None:
    settings = Settings(
        template_shadow={
            "summarize": {"version": 99, "chain": ["openai:gpt-5-nano"]},
            "nope": {"chain": ["openai:gpt-5-nano"]},
        }
    )
    problems = "\n".join(reference_problems(settings))
    assert "template_shadow['summarize']" in problems and "no version 99" in problems
    assert "template_shadow['nope']" in problems
    with pytest.raises(ValueError, match="template_shadow"):
        Settings(template_shadow={"summarize": {"percent": 10}})  # no chain


# --- scores ---------------------------------------------------------------------------------

SOURCE = (
    "Riverside approved a plant costing 14 million dollars for 80,000 residents. "
    "Mayor Alvarez said work starts in March."
)


def test_numbers_in_the_output_absent_from_the_source_count_as_invented() -> None:
    kept = scores.score("Riverside will spend 14 million on 80000 residents.", SOURCE)
    assert kept["numbers_kept"] == 1.0 and kept["numbers_invented"] == 0.0
    invented = scores.score("Riverside will spend 15 million on 80,000 residents.", SOURCE)
    assert invented["numbers_kept"] == 0.5 and invented["numbers_invented"] == 1.0
    assert scores.score("No figures here.", SOURCE)["numbers_kept"] == 1.0


def test_named_entities_are_checked_against_the_source() -> None:
    result = scores.score("The plan of Mayor Alvarez in Springfield starts in March.", SOURCE)
    # Mayor, Alvarez, Springfield, March: only Springfield is not in the source.
    assert result["entities_kept"] == 0.75 and result["entities_invented"] == 1.0


def test_length_compression_json_and_findings() -> None:
    result = scores.score("x" * 50, "y" * 200, findings=2)
    assert result["output_chars"] == 50.0 and result["compression"] == 0.25
    assert result["guardrail_findings"] == 2.0 and "json_valid" not in result
    schema = {"type": "object", "required": ["summary"]}
    ok = scores.score('{"summary": "s"}', SOURCE, wants_json=True, schema=schema)
    wrong = scores.score('{"other": 1}', SOURCE, wants_json=True, schema=schema)
    prose = scores.score("not json", SOURCE, wants_json=True)
    assert (ok["json_valid"], wrong["json_valid"], prose["json_valid"]) == (1.0, 0.0, 0.0)
    found = [{"rule": "pii", "count": 2, "stage": "output"}, {"rule": "pii", "stage": "input"}]
    assert scores.output_findings(found) == 2


# --- the report, against numbers computed by hand -------------------------------------------

PRIMARY, SHADOW = "v1 openai:gpt-4o-mini", "v2 openai:gpt-5-nano"


def _records() -> list[report.EvalRecord]:
    rows = []
    for i, (latency, chars) in enumerate([(100, 100), (200, 100), (300, 200), (400, 200)]):
        rows.append(
            report.EvalRecord(
                f"p{i}", "primary", PRIMARY, "succeeded", 0.002, latency,
                {"numbers_kept": 1.0, "output_chars": chars},
            )
        )  # fmt: skip
    shadow = [(50, 1.0, 50), (60, 0.5, 100), (70, 0.0, 100)]
    for i, (latency, kept, chars) in enumerate(shadow):
        rows.append(
            report.EvalRecord(
                f"p{i}", "shadow", SHADOW, "succeeded", 0.001, latency,
                {"numbers_kept": kept, "output_chars": chars},
            )
        )  # fmt: skip
    rows.append(report.EvalRecord("p3", "shadow", SHADOW, "failed", 0.001, 80, {}))
    return rows


def test_the_report_numbers_match_a_hand_computation() -> None:
    primary, shadow = report.build(_records())
    assert (primary.variant, primary.n, primary.failure_rate) == (PRIMARY, 4, 0.0)
    assert primary.cost_per_1k_usd == pytest.approx(2.0)
    # Latencies 100..400: p50 halfway between 200 and 300; p95 at rank 2.85 -> 300 + 0.85 * 100.
    assert (primary.latency_p50_ms, primary.latency_p95_ms) == (250.0, pytest.approx(385.0))
    assert primary.scores["output_chars"] == report.Stat(150.0, 150.0)
    assert primary.vs_primary == {}

    assert (shadow.variant, shadow.n, shadow.failed, shadow.failure_rate) == (SHADOW, 4, 1, 0.25)
    assert shadow.cost_per_1k_usd == pytest.approx(1.0)
    assert (shadow.latency_p50_ms, shadow.latency_p95_ms) == (65.0, pytest.approx(78.5))
    assert shadow.scores["numbers_kept"] == report.Stat(0.5, 0.5)
    # Pairs p0..p2 (p3's shadow failed): differences 0, -0.5, -1; mean -0.5, sample sd 0.5;
    # half-width 1.96 * 0.5 / sqrt(3) = 0.5658.
    diff = shadow.vs_primary["numbers_kept"]
    assert (diff.n, diff.mean) == (3, -0.5)
    assert diff.ci_low == pytest.approx(-1.065803, abs=1e-6)
    assert diff.ci_high == pytest.approx(0.065803, abs=1e-6)
    # Length ratio per pair: 50/100, 100/100, 100/200.
    assert shadow.scores["length_ratio"].mean == pytest.approx(2 / 3)
    assert shadow.vs_primary["length_ratio"].mean == pytest.approx(2 / 3 - 1)


def test_an_unpriced_call_makes_the_cost_unknown_and_one_pair_has_no_interval() -> None:
    rows = [
        report.EvalRecord("a", "primary", PRIMARY, "succeeded", None, 10, {"numbers_kept": 1.0}),
        report.EvalRecord("a", "shadow", SHADOW, "succeeded", 0.001, 10, {"numbers_kept": 0.0}),
    ]
    primary, shadow = report.build(rows)
    assert primary.cost_per_1k_usd is None
    assert shadow.vs_primary["numbers_kept"] == report.Diff(1, -1.0, None, None)


def test_csv_json_and_table_carry_the_same_numbers() -> None:
    built = report.build(_records())
    assert report.from_json(report.as_json(built)) == built
    lines = report.to_csv(built).splitlines()
    header = lines[0].split(",")
    shadow_row = dict(zip(header, lines[2].split(","), strict=True))
    assert shadow_row["variant"] == SHADOW and shadow_row["failure_rate"] == "0.25"
    assert shadow_row["numbers_kept_diff"] == "-0.5"
    assert shadow_row["numbers_kept_ci_low"] == "-1.065803"
    table = report.to_table(built)
    assert SHADOW in table and "-0.500 [-1.066, 0.066] n=3" in table


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from llmq.evals.chart import write_chart

    out = tmp_path / "evals.png"
    assert write_chart(report.build(_records()), out) == 2
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the worker's decision ------------------------------------------------------------------


def _job(**changes: object) -> store.ClaimedJob:
    fields: dict[str, object] = {
        "id": uuid.uuid4(), "tenant_id": uuid.uuid4(), "batch_id": None,
        "template": "summarize", "template_version": 1, "input": SOURCE, "params": {},
        "chain": ["openai:gpt-4o-mini"], "attempts_made": 1, "deliveries": 1,
        "created_at": datetime.now(UTC), "cancel_requested": False, "age_s": 0.0,
    }  # fmt: skip
    fields.update(changes)
    return store.ClaimedJob(**fields)  # type: ignore[arg-type]


def _shadows(batch_specs: dict[uuid.UUID, dict[str, object]] | None = None) -> Shadows:
    everyone = {"summarize": ShadowSpec(chain=("openai:gpt-5-nano",), version=2, percent=100)}
    return Shadows(
        everyone, lambda b: (batch_specs or {}).get(b), lambda jobs: None, lambda ids: None
    )


OK = store.Outcome(status=JobStatus.SUCCEEDED, result="Riverside spends 14 million.")


def test_a_succeeded_primary_gets_a_shadow_and_its_eval_row() -> None:
    job = _job()
    written = _shadows().attach(job, OK).evals
    assert written is not None and written.role == "primary"
    assert written.variant == variant_label(1, ["openai:gpt-4o-mini"])
    assert written.scores["numbers_kept"] == 1.0
    assert written.shadow is not None
    assert (written.shadow.template_version, written.shadow.chain) == (2, ["openai:gpt-5-nano"])


def test_no_shadow_for_a_failure_a_chunk_an_untaken_job_or_a_shadow() -> None:
    shadows = _shadows()
    failed = store.Outcome(status=JobStatus.FAILED, error_code="all_providers_failed")
    assert shadows.attach(_job(), failed).evals is None
    assert shadows.attach(_job(parent_id=uuid.uuid4()), OK).evals is None
    assert shadows.attach(_job(template="prompt"), OK).evals is None  # no spec for it
    as_shadow = shadows.attach(_job(kind="shadow"), failed).evals
    assert as_shadow is not None and as_shadow.role == "shadow" and as_shadow.shadow is None
    assert as_shadow.scores == {}  # a failed answer has nothing to score


def test_a_batch_spec_overrides_the_settings() -> None:
    batch_id = uuid.uuid4()
    none_taken = {"chain": ["openai:gpt-5-nano"], "percent": 0}
    shadows = _shadows({batch_id: none_taken})
    assert shadows.attach(_job(batch_id=batch_id), OK).evals is None
    assert shadows.attach(_job(batch_id=uuid.uuid4()), OK).evals is not None  # no own spec


def test_the_toml_file_takes_a_shadow_spec_as_a_table(tmp_path: Path) -> None:
    from llmq.settings import settings_from_file

    config = tmp_path / "llmq.toml"
    config.write_text(
        '[template_shadow.summarize]\nchain = ["openai:gpt-5-nano"]\npercent = 20\n',
        encoding="utf-8",
    )
    settings = settings_from_file(config)
    assert settings.template_shadow == {
        "summarize": {"chain": ["openai:gpt-5-nano"], "percent": 20}
    }
    assert reference_problems(settings) == []


# --- the judge ------------------------------------------------------------------------------


def test_the_judge_sees_each_order_half_the_time_and_its_scores_are_unswapped() -> None:
    ids = [uuid.UUID(int=n * 104_729 + 7) for n in range(4000)]
    assert abs(sum(judge.swapped(i) for i in ids) / len(ids) - 0.5) < 0.03
    plain = judge.judge_input("SRC", "primary answer", "shadow answer", swap=False)
    assert plain.index("primary answer") < plain.index("shadow answer")
    flipped = judge.judge_input("SRC", "primary answer", "shadow answer", swap=True)
    assert flipped.index("shadow answer") < flipped.index("primary answer")
    assert judge.parse_verdict('{"a": 8, "b": 3}', swap=False) == (8.0, 3.0)
    assert judge.parse_verdict('{"a": 8, "b": 3}', swap=True) == (3.0, 8.0)
    for bad in ['{"a": 11, "b": 3}', '{"a": true, "b": 3}', '{"a": 8}', "[8, 3]", "eight"]:
        assert judge.parse_verdict(bad, swap=False) is None


def test_a_shadow_with_a_judge_starts_it_and_the_judge_writes_its_verdict() -> None:
    context = store.JudgeContext("openai:gpt-4.1-mini", "Riverside spends 14 million.")
    shadows = Shadows({}, lambda b: None, lambda jobs: None, lambda ids: None, lambda j: context)
    shadow_ok = store.Outcome(status=JobStatus.SUCCEEDED, result="Atlantis spends 99 million.")
    written = shadows.attach(_job(kind="shadow"), shadow_ok).evals
    assert written is not None and written.judge is not None
    assert written.judge.link == "openai:gpt-4.1-mini" and written.judge.template == "judge_pair"
    assert SOURCE in written.judge.input and "Atlantis spends 99" in written.judge.input
    failed = store.Outcome(status=JobStatus.FAILED, error_code="all_providers_failed")
    assert shadows.attach(_job(kind="shadow"), failed).evals.judge is None  # type: ignore[union-attr]

    judge_job = _job(kind="judge", template="judge_pair")
    reply = '{"a": 9, "b": 4}'
    verdict = shadows.attach(judge_job, store.Outcome(status=JobStatus.SUCCEEDED, result=reply))
    assert verdict.evals is not None and verdict.evals.role == "judge"
    expected = (4.0, 9.0) if judge.swapped(judge_job.id) else (9.0, 4.0)
    assert verdict.evals.verdict == expected and verdict.evals.shadow is None
    nonsense = store.Outcome(status=JobStatus.SUCCEEDED, result='{"a": "good"}')
    assert shadows.attach(judge_job, nonsense).evals is None


def test_evaluation_never_fails_the_job_it_evaluates() -> None:
    def broken(batch_id: uuid.UUID) -> dict[str, object] | None:
        raise RuntimeError("a bug")

    shadows = Shadows({}, broken, lambda jobs: None, lambda ids: None)
    assert shadows.attach(_job(batch_id=uuid.uuid4()), OK) == OK  # finished as if unshadowed
