"""What encryption at rest costs per job, in CPU.

    .venv/bin/python bench/crypto.py [--jobs 5000] [--input-chars 3000] [--result-chars 600]

Runs, in one process, every seal and open a job goes through with LLMQ_ENCRYPTION_KEYS set
(llmq/store/crypto.py): its input and params sealed at submit, opened at claim; its attempt's
output, its result and its cache entry sealed; its result opened when read back. The same calls
without keys (identity functions: the no-op baseline) run in the same process, and the
difference is the cost. Prints one line and writes bench/results/crypto.json. No services.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.fernet import Fernet, MultiFernet

from bench.harness import write_results
from llmq.settings import get_settings
from llmq.store import crypto

SENTENCE = "The harbour master reported that 412 ships called at the port last quarter. "


def one_job(document: str, answer: str, params: dict[str, object]) -> None:
    """A job's trip through the store and the cache, as crypto calls."""
    stored_input = crypto.encrypt(document)  # submit
    stored_params = crypto.seal_params(params)
    crypto.decrypt(stored_input)  # claim
    crypto.open_params(stored_params)
    crypto.encrypt(answer)  # attempt output
    stored_result = crypto.encrypt(answer)  # result
    crypto.encrypt(json.dumps({"text": answer, "provider": "openai", "model": "m"}))  # cache
    crypto.decrypt(stored_result)  # GET results


def cpu_us_per_job(jobs: int, document: str, answer: str, keys: str) -> float:
    os.environ["LLMQ_ENCRYPTION_KEYS"] = keys
    get_settings.cache_clear()
    params: dict[str, object] = {"variables": {"question": "What changed?"}, "max_tokens": 300}
    for _ in range(50):  # warm up (key parsing, caches)
        one_job(document, answer, params)
    start = time.process_time()
    for _ in range(jobs):
        one_job(document, answer, params)
    return (time.process_time() - start) / jobs * 1e6


def fernet_us_per_job(jobs: int, document: str, answer: str) -> float:
    """The same eight seals and opens as MultiFernet tokens: the format llmq did not pick."""
    fernet = MultiFernet([Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())])
    params = json.dumps({"question": "What changed?"}).encode()
    doc, ans = document.encode(), answer.encode()
    start = time.process_time()
    for _ in range(jobs):
        fernet.decrypt(fernet.encrypt(doc))
        fernet.decrypt(fernet.encrypt(params))
        fernet.encrypt(ans)
        fernet.decrypt(fernet.encrypt(ans))
        fernet.encrypt(ans)
    return (time.process_time() - start) / jobs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--input-chars", type=int, default=3000)
    parser.add_argument("--result-chars", type=int, default=600)
    args = parser.parse_args()
    document = (SENTENCE * (args.input_chars // len(SENTENCE) + 1))[: args.input_chars]
    answer = (SENTENCE * (args.result_chars // len(SENTENCE) + 1))[: args.result_chars]
    keys = f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}"
    baseline = cpu_us_per_job(args.jobs, document, answer, "")
    encrypted = cpu_us_per_job(args.jobs, document, answer, keys)
    cost = encrypted - baseline
    fernet = fernet_us_per_job(args.jobs, document, answer)
    print(
        f"crypto: {cost:.1f} us CPU per job for encrypt+decrypt ({args.input_chars}-char input, "
        f"{args.result_chars}-char result; {encrypted:.1f} us with keys vs {baseline:.1f} us "
        f"no-op baseline, {args.jobs} jobs; Fernet tokens would cost {fernet:.1f} us)"
    )
    write_results(
        "crypto",
        {
            "jobs": args.jobs,
            "input_chars": args.input_chars,
            "result_chars": args.result_chars,
            "cpu_us_per_job_encrypted": round(encrypted, 2),
            "cpu_us_per_job_baseline": round(baseline, 2),
            "cpu_us_per_job_cost": round(cost, 2),
            "cpu_us_per_job_fernet_tokens": round(fernet, 2),
        },
    )


if __name__ == "__main__":
    main()
